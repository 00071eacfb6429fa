"""The rules of watch mode on their own: reading yes/no from an answer, debouncing, the webhook's retries."""

from __future__ import annotations

import time

import pytest

from tests.http_receiver import Receiver
from vlm.sources import source_label
from vlm.watch import Trigger, read_verdict
from vlm.webhook import WebhookSender

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
