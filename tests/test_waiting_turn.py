"""A ``/v1`` request waiting its turn: its stream carries SSE comments meanwhile, and a client that hangs up
before its turn, over plain TCP or TLS, gives its place back. In process for the view's pieces; against the real
server in each async mode, with the official ``openai`` client reading a stream that waited and curl giving up
over TLS, for the whole."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.calls_by_hand import (
    cancelled_calls,
    chat_body,
    eventually,
    hold_the_model,
    in_model_queue,
    let_go,
    post,
    streamed_on_a_thread,
)
from tests.certs import write_pair
from tests.openai_client import ask, openai_client
from tests.server_process import serving
from vlm import openai_api
from vlm.openai_api import HANGUP_CHECK_S, HttpSink, watched
from vlm.openai_wire import SinkEvent

CURL = shutil.which("curl") or "curl"
KEEPALIVE_S = 0.5  # the servers' --sse-keepalive here, so that a test sees several within a second or two


def quiet_for(clock: list[float], seconds: float, turn_s: float = 0.25) -> Iterator[SinkEvent]:
    """The sink's quiet turns over ``seconds``, one every ``turn_s`` (longer than ``HANGUP_CHECK_S``, so that
    each is a look at the client), ``watched``'s clock moving with them."""
    assert turn_s > HANGUP_CHECK_S
    for _ in range(round(seconds / turn_s)):
        clock[0] += turn_s
        yield ("quiet", None)


@pytest.mark.unit
def test_quiet_turns_become_one_comment_per_keepalive_and_a_gone_client_is_cancelled_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = [1000.0]
    monkeypatch.setattr(openai_api.time, "monotonic", lambda: clock[0])
    gone_after, checks, cancels = 2.0, [], []

    def hung_up() -> bool:
        checks.append(clock[0])
        return clock[0] - 1000.0 >= gone_after

    def events() -> Iterator[SinkEvent]:
        yield from quiet_for(clock, 1.0)
        yield ("stream", "a red")
        yield from quiet_for(clock, 2.0)
        yield ("error", "cancelled")

    seen = list(watched(events(), hung_up=hung_up, cancel=lambda: cancels.append(clock[0]), keepalive_s=0.6))
    waiting = ("waiting", None)
    assert seen == [waiting, ("stream", "a red"), waiting, waiting, ("error", "cancelled")]
    assert cancels == [1000.0 + gone_after], "cancelled at the first look that found the client gone, and only then"
    assert len(checks) == len(set(checks)) and checks[-1] == 1000.0 + gone_after, "one look per turn, none after"


@pytest.mark.unit
@pytest.mark.parametrize("green", [False, True], ids=["threading", "green"])
def test_a_sink_with_nothing_to_hand_over_gives_its_view_a_turn(green: bool) -> None:
    sink = HttpSink(time.sleep if green else None, quiet_s=0.05)
    events = iter(sink)
    started = time.monotonic()
    assert next(events) == ("quiet", None) and time.monotonic() - started >= 0.05
    sink.stream("a red")
    sink.failed(openai_api.VlmError(openai_api.Code.CANCELLED, "cancelled by the client"))
    assert [kind for kind, _ in events] == ["stream", "error"], "the final event ends the iteration"


@pytest.mark.parametrize("mode", ["threading", "eventlet", "gevent"])
def test_a_request_waiting_its_turn_keeps_its_stream_alive_and_gives_its_place_back_when_its_client_goes(
    slow_model: Path, frame: str, mode: str
) -> None:
    """One 400-token answer holds the model. Before, a stream behind it sent nothing until its first token (a
    proxy's idle timeout cut it there), and a client that hung up while queued kept its place until its first
    token was generated for nobody."""
    flags = ("--async-mode", mode, "--max-batch-size", "1", "--sse-keepalive", str(KEEPALIVE_S))
    with serving(slow_model, *flags, max_new_tokens=400) as app:
        holders = hold_the_model(app, frame)

        waiting_stream = post(app, chat_body(frame, stream=True))
        received = b""
        while received.count(b": waiting") < 2:
            piece = waiting_stream.recv(4096)
            assert piece, "the server closed the waiting stream"
            received += piece
        head, _, body = received.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and b"text/event-stream" in head
        assert body.count(b"data: ") == 1, "only the role chunk: the request is still waiting its turn"
        waiting_stream.close()
        eventually(lambda: cancelled_calls(app) == 1, "the stream's hang-up did not cancel its queued request")

        waiting_call = post(app, chat_body(frame, stream=False))
        eventually(lambda: in_model_queue(app) == 3, "the call was not queued")
        waiting_call.close()
        eventually(lambda: cancelled_calls(app) == 2 and in_model_queue(app) == 2, "the queued call kept its place")

        client = openai_client(app.url)
        reader, chunks = streamed_on_a_thread(client, frame)
        time.sleep(3 * KEEPALIVE_S)
        assert reader.is_alive(), "the stream waits its turn, its comments skipped by the client"
        let_go(holders)  # their generations are cancelled; the waiting stream's turn comes
        reader.join(60)
        assert not reader.is_alive() and "".join(chunks) == ask(client, "describe", frame, max_tokens=3)
        eventually(lambda: cancelled_calls(app) == 4 and in_model_queue(app) == 0, "the model's queue did not empty")


@pytest.mark.parametrize("mode", ["threading", "eventlet", "gevent"])
def test_a_client_on_tls_that_gives_up_waiting_gives_its_place_back(
    slow_model: Path, frame: str, mode: str, tmp_path: Path
) -> None:
    """curl, given up at its --max-time, ends its TLS connection with a close_notify alert and then its FIN. The
    alert's bytes, which nobody reads while the call waits, hid the FIN, so the call kept its place."""
    cert, key = write_pair(tmp_path / "cert.pem", tmp_path / "key.pem")
    flags = ("--async-mode", mode, "--ssl-cert", str(cert), "--ssl-key", str(key), "--max-batch-size", "1")
    body = tmp_path / "body.json"
    body.write_bytes(chat_body(frame, stream=False))
    with serving(slow_model, *flags, max_new_tokens=400) as app:
        call = [CURL, "-sS", "--cacert", str(cert), "-H", "Content-Type: application/json", "--data-binary"]
        ask_ = [*call, f"@{body}", f"{app.url}/v1/chat/completions"]
        holders = [subprocess.Popen(ask_, stdout=subprocess.DEVNULL) for _ in range(2)]  # the model, for seconds
        try:
            eventually(lambda: in_model_queue(app) == 2, "the holding calls were not queued")
            gave_up = subprocess.run([*ask_, "--max-time", "1"])
            assert gave_up.returncode == 28, "curl gave up waiting (operation timed out)"
            eventually(lambda: cancelled_calls(app) == 1 and in_model_queue(app) == 2, "the call kept its place")
        finally:
            for holder in holders:
                holder.kill()
                holder.wait()
        eventually(lambda: in_model_queue(app) == 0, "the killed holders' generations went on")
