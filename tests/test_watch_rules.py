"""The rules of watch mode on their own: reading yes/no from an answer, debouncing, the webhook's retries."""

from __future__ import annotations

import http.client
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

import pytest
from PIL import Image

from tests.http_receiver import Receiver
from vlm.errors import Code, VlmError
from vlm.sources import source_label
from vlm.watch import Frame, Trigger, WatchHub, read_verdict
from vlm.webhook import WebhookSender, post_within

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("answer", "verdict"),
    [
        ("yes", "yes"),
        ("Yes, there is a person by the door.", "yes"),
        ("  YES.", "yes"),
        ("no", "no"),
        ("No, the door is closed.", "no"),
        ("Not that I can see.", "no"),
        ("a red circle", "unclear"),
        ("", "unclear"),
        ("yesterday it was", "unclear"),
    ],
)
def test_the_first_word_of_the_answer_is_the_verdict(answer: str, verdict: str) -> None:
    assert read_verdict(answer) == verdict


def feed(trigger: Trigger, verdicts: str, start: float = 0.0, step: float = 1.0) -> list[int]:
    """Checks one per ``step`` seconds ('y' yes, 'n' no, '?' unclear); the indices that alerted."""
    names = {"y": "yes", "n": "no", "?": "unclear"}
    return [i for i, v in enumerate(verdicts) if trigger.feed(names[v], start + i * step)]  # type: ignore[arg-type]


def test_two_of_three_yes_alert_once_while_it_stays_true() -> None:
    assert feed(Trigger(), "nnyyyyyyyy") == [3]


def test_one_stray_yes_does_not_alert() -> None:
    assert feed(Trigger(), "nnynnynnyn?y?n") == []


def test_it_alerts_again_after_turning_false_and_the_cooldown() -> None:
    trigger = Trigger(cooldown_s=30)
    assert feed(trigger, "yynnn" + "yy" + "n" * 40 + "yy") == [1, 48]


def test_a_watch_resumed_while_its_condition_holds_again_alerts_again() -> None:
    """Paused while on, it kept its old yes votes: resumed on a new true event, it never turned on, so never
    alerted. Resuming forgets them; the cooldown still holds."""
    trigger = Trigger(cooldown_s=0)
    assert feed(trigger, "yy") == [1]
    trigger.forget()
    assert feed(trigger, "yy", start=100) == [1]
    quiet = Trigger(cooldown_s=30)
    assert feed(quiet, "yy") == [1]
    quiet.forget()
    assert feed(quiet, "yy", start=5) == [], "within the cooldown"


def test_a_flicker_within_the_cooldown_stays_quiet() -> None:
    assert feed(Trigger(cooldown_s=30), "yynnnyynnnyy") == [1]


def test_source_labels_never_show_credentials_or_queries() -> None:
    assert source_label("rtsp://admin:hunter2@10.0.0.5:554/stream1?token=x") == "rtsp://10.0.0.5:554/stream1"
    assert source_label("/home/me/videos/door.mp4") == "door.mp4"


def test_webhook_retries_until_the_receiver_accepts() -> None:
    results: list[bool] = []
    with Receiver(statuses=(503, 500, 200)) as receiver:
        sender = WebhookSender(receiver.url, on_result=results.append, first_pause_s=0.05)
        sender.send({"condition": "is there a triangle?"})
        assert receiver.wait_for(1, 10) == [{"condition": "is there a triangle?"}]
        deadline = time.monotonic() + 5
        while not results and time.monotonic() < deadline:
            time.sleep(0.02)
    assert receiver.attempts == 3
    assert results == [True]


def test_webhook_gives_up_on_a_refusal_and_on_a_dead_receiver() -> None:
    results: list[bool] = []
    with Receiver(statuses=(400,)) as receiver:
        refused = WebhookSender(receiver.url, on_result=results.append, first_pause_s=0.05)
        refused.send({"n": 1})
        deadline = time.monotonic() + 5
        while not results and time.monotonic() < deadline:
            time.sleep(0.02)
        assert receiver.attempts == 1, "a 4xx refusal must not be retried"
    dead_url = receiver.url  # the server is closed now: connections are refused
    dead = WebhookSender(dead_url, on_result=results.append, attempts=3, first_pause_s=0.05, timeout_s=1)
    started = time.monotonic()
    dead.send({"n": 2})
    while len(results) < 2 and time.monotonic() - started < 10:
        time.sleep(0.02)
    assert results == [False, False]


def wait_for_results(results: list[bool], count: int, within_s: float) -> None:
    deadline = time.monotonic() + within_s
    while len(results) < count and time.monotonic() < deadline:
        time.sleep(0.02)


def test_a_redirect_is_not_a_delivery() -> None:
    """requests followed a 302 as a GET without the alert, and counted any 3xx as delivered."""
    results: list[bool] = []
    with Receiver(statuses=(302,)) as receiver:
        WebhookSender(receiver.url, on_result=results.append, first_pause_s=0.05).send({"n": 1})
        wait_for_results(results, 1, within_s=5)
        assert (results, receiver.attempts, receiver.posts) == ([False], 1, [])


@contextmanager
def trickling_receiver() -> Iterator[str]:
    """A receiver that reads the POST, then answers one header line a second and never finishes."""
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                connection, _ = server.accept()
            except OSError:
                return
            with connection:
                connection.recv(65536)
                connection.sendall(b"HTTP/1.1 200 OK\r\n")
                while not stop.wait(1.0):
                    try:
                        connection.sendall(b"X-Slow: 1\r\n")
                    except OSError:
                        break

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}/hook"
    finally:
        stop.set()
        server.close()


def test_each_attempt_ends_within_the_timeout_however_slowly_the_receiver_answers() -> None:
    """requests' timeout was per read, so a header line a second kept one attempt going for good."""
    results: list[bool] = []
    with trickling_receiver() as url:
        sender = WebhookSender(url, on_result=results.append, attempts=2, first_pause_s=0.05, timeout_s=1)
        started = time.monotonic()
        sender.send({"n": 1})
        wait_for_results(results, 1, within_s=20)
        assert results == [False] and time.monotonic() - started < 8, "two attempts of 1 s and a pause"


def test_credentials_in_the_url_are_sent_as_basic_auth() -> None:
    with Receiver() as receiver:
        seen: list[str | None] = []
        receiver.on_headers = lambda headers: seen.append(headers.get("Authorization"))
        url = receiver.url.replace("http://", "http://alert%20bot:p%40ss@")
        results: list[bool] = []
        WebhookSender(url, on_result=results.append).send({"n": 1})
        assert receiver.wait_for(1, 10) == [{"n": 1}]
    assert seen == ["Basic YWxlcnQgYm90OnBAc3M="]  # "alert bot:p@ss"


@pytest.mark.parametrize(
    ("url", "host", "port"),
    [("http://[::1]/hook", "::1", 80), ("https://[fe80::abcd]/hook", "fe80::abcd", 443), ("http://h:8080/", "h", 8080)],
)
def test_the_webhook_connects_to_the_urls_own_host_and_port(
    url: str, host: str, port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given no port, http.client parses one out of the host: an IPv6 host (``::1``) became host ':' port 1."""
    opened: list[tuple[str, int]] = []

    class ConnectionDouble:
        def __init__(self, host: str, port: int, timeout: float) -> None:
            opened.append((host, port))
            raise ConnectionRefusedError  # what is checked is where it would connect

    monkeypatch.setattr(http.client, "HTTPConnection", ConnectionDouble)
    monkeypatch.setattr(http.client, "HTTPSConnection", ConnectionDouble)
    with pytest.raises(ConnectionRefusedError):
        post_within(urlsplit(url), b"{}", timeout_s=1)
    assert opened == [(host, port)]


def test_a_frame_makes_its_picture_once_however_many_threads_ask_at_once() -> None:
    """The watch, preview viewers and alerts read one frame at once; PyAV converting a frame on two threads at
    the same time crashes the process (Python 3.12's ``cached_property`` no longer locks)."""
    made: list[Image.Image] = []

    def load() -> Image.Image:
        time.sleep(0.05)  # as long as a conversion: every reader arrives while the first is still in it
        made.append(Image.new("RGB", (4, 4)))
        return made[-1]

    frame = Frame(seq=1, load=load, captured=time.time())
    seen: list[Image.Image] = []
    readers = [threading.Thread(target=lambda: seen.append(frame.image)) for _ in range(8)]
    for reader in readers:
        reader.start()
    for reader in readers:
        reader.join(5)
    assert len(made) == 1 and len(seen) == 8 and all(image is made[0] for image in seen)


def test_a_check_that_ends_after_its_watch_was_removed_tells_the_tab_nothing() -> None:
    """Its ``watch_state`` after the removal made the page draw the removed watch again (a keyboard user's second
    Remove then took the wrong one)."""
    told: list[tuple[str, object, object]] = []
    hub = WatchHub(
        scheduler=lambda: None,
        notify=lambda event, payload, to: told.append((event, payload, to)),
        on_alert=lambda _: None,
        max_new_tokens=8,
        max_condition_chars=100,
    )
    frame = Frame(seq=1, load=lambda: Image.new("RGB", (4, 4)), captured=time.time())
    for end in ("answered", "failed"):
        watch = hub.add("is there a star?", "tab", owner="tab-1")
        hub.remove(watch)
        if end == "answered":
            hub.checked(watch, frame, "yes")
        else:
            hub.failed(watch, frame, VlmError(Code.TIMEOUT, "the model took too long"))
    assert [event for event, *_ in told if event == "watch_state"] == []
