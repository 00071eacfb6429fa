"""The real app in a subprocess, a real tiny model, the real python-socketio client."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests
from PIL import Image

from tests.frames import data_url, jpeg_data_url
from tests.server_process import AppProcess, serving
from tests.socket_client import RecordingClient
from vlm.config import ASYNC_MODES
from vlm.socket_sink import STREAM_INTERVAL_S

pytestmark = pytest.mark.app("tiny", max_new_tokens=12)


def test_healthz_and_info(app: AppProcess, tiny_model: Path) -> None:
    health = requests.get(f"{app.url}/healthz", timeout=5)
    assert health.status_code == 200
    assert health.json() == {"status": "ok", "model": tiny_model.name, "backend": "transformers", "device": "cpu"}
    info = requests.get(f"{app.url}/api/info", timeout=5).json()
    assert "query" in info["capabilities"] and "detect" not in info["capabilities"]
    assert info["image_size"] >= 256


def test_page_is_served_with_security_headers(app: AppProcess) -> None:
    page = requests.get(app.url, timeout=5)
    assert page.status_code == 200 and "socket.io" in page.text
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    assert page.headers["X-Content-Type-Options"] == "nosniff"


@pytest.fixture(scope="module", params=ASYNC_MODES)
def app_in_each_mode(request: pytest.FixtureRequest, tiny_model: Path) -> Iterator[AppProcess]:
    """The server as each async mode runs it (each wires its own connection handler: see vlm/servers/)."""
    with serving(tiny_model, "--async-mode", request.param, max_new_tokens=12) as running:
        yield running


def test_answer_streams_and_reaches_only_the_sender(app_in_each_mode: AppProcess, frame: str) -> None:
    client, bystander = RecordingClient(app_in_each_mode.url), RecordingClient(app_in_each_mode.url)
    try:
        kind, payload = client.ask({"id": "q1", "question": "what shape is this?", "image": frame})
        assert kind == "response", payload
        assert payload["answer"]
        assert set(payload["timing"]) >= {"queue_ms", "decode_ms", "model_ms", "first_token_ms", "total_ms"}
        streamed = "".join(p["delta"] for e, p in client.received if e == "stream" and p["id"] == "q1")
        assert streamed.strip() == payload["answer"]
        time.sleep(0.3)
        assert bystander.received == []
    finally:
        client.close()
        bystander.close()


def test_a_client_streaming_alone_gets_every_token_as_it_comes(app_in_each_mode: AppProcess, frame: str) -> None:
    """Nobody shares the pump with a lone client, so its deltas are not held back (see the paced test below)."""
    client = RecordingClient(app_in_each_mode.url)
    try:
        kind, payload = client.ask({"id": "p1", "question": "what shape is this?", "image": frame})
        assert kind == "response", payload
        deltas = [p["delta"] for e, p in client.received if e == "stream" and p["id"] == "p1"]
        assert "".join(deltas).strip() == payload["answer"]
        assert len(deltas) == payload["timing"]["tokens"], (
            "one delta per token of the tiny model's word-level vocabulary"
        )
    finally:
        client.close()


def test_greedy_answers_are_deterministic(client: RecordingClient, frame: str) -> None:
    first = client.ask({"id": "d1", "question": "what color is the circle?", "image": frame})[1]["answer"]
    second = client.ask({"id": "d2", "question": "what color is the circle?", "image": frame})[1]["answer"]
    assert first == second


def test_seed_format_payload_works(client: RecordingClient) -> None:
    bare_base64 = jpeg_data_url("blue").split(",", 1)[1]
    client.sio.emit("query", {"question": "what is this?", "image": bare_base64})
    deadline = time.monotonic() + 30
    while not any(e == "response" for e, _ in client.received) and time.monotonic() < deadline:
        time.sleep(0.05)
    responses = [p for e, p in client.received if e == "response"]
    assert responses and responses[0]["id"] and responses[0]["answer"]


def test_bad_image_errors_to_sender_and_server_keeps_answering(client: RecordingClient, frame: str) -> None:
    kind, payload = client.ask({"id": "bad", "question": "what?", "image": "data:image/jpeg;base64,!!!"})
    assert (kind, payload["code"]) == ("query_error", "bad_image")
    assert payload["message"]
    assert client.ask({"id": "good", "question": "what?", "image": frame})[0] == "response"


def test_back_to_back_questions_are_taken_in_the_order_sent(client: RecordingClient, frame: str) -> None:
    """The newer question must win even when the older one's frame takes far longer to decode.

    A big PNG decodes for a tenth of a second, the JPEG after it in about a millisecond: were
    the two handled side by side, the newer would be queued first and then superseded by the
    older, so the page would show the answer to the question the user had replaced.
    """
    slow_frame = data_url(Image.new("RGB", (4000, 4000), "green"), "PNG")
    client.sio.emit("query", {"id": "older", "question": "what is this?", "image": slow_frame})
    client.sio.emit("query", {"id": "newer", "question": "what is this?", "image": frame})
    assert client.final("newer")[0] == "response"
    client.final("older")
    finals = [p["id"] for e, p in client.received if e != "stream"]
    assert finals == ["older", "newer"]


def test_skill_caption_and_unsupported_skill(client: RecordingClient, frame: str) -> None:
    kind, payload = client.ask({"id": "cap", "skill": "caption", "image": frame, "length": "short"}, event="skill")
    assert kind == "response" and payload["skill"] == "caption"
    kind, payload = client.ask({"id": "det", "skill": "detect", "object": "cup", "image": frame}, event="skill")
    assert (kind, payload["code"]) == ("query_error", "unsupported_skill")


def test_concurrent_clients_each_get_their_own_answer(app: AppProcess, frame: str) -> None:
    clients = [RecordingClient(app.url) for _ in range(6)]
    try:
        for index, each in enumerate(clients):
            each.sio.emit("query", {"id": f"c{index}", "question": "how many shapes are there?", "image": frame})
        for index, each in enumerate(clients):
            assert each.final(f"c{index}")[0] == "response"
            assert {p["id"] for _, p in each.received} == {f"c{index}"}
    finally:
        for each in clients:
            each.close()


@pytest.fixture(scope="module")
def slow_app(slow_model: Path) -> Iterator[AppProcess]:
    with serving(slow_model, max_new_tokens=400) as running:
        yield running


def test_clients_streaming_together_get_paced_deltas(slow_app: AppProcess, frame: str) -> None:
    """While another client streams, a client gets at most one delta per STREAM_INTERVAL_S, the tokens merged.

    The two ask together and decode in one batch, so each streams while the other does, to the end."""
    clients = [RecordingClient(slow_app.url) for _ in range(2)]
    try:
        for number, client in enumerate(clients):
            client.sio.emit("query", {"id": f"p{number}", "question": "describe the image", "image": frame})
        for number, client in enumerate(clients):
            kind, payload = client.final(f"p{number}", timeout_s=120)
            assert kind == "response", payload
            deltas = [p["delta"] for e, p in client.received if e == "stream"]
            timing = payload["timing"]
            streaming_s = (timing["model_ms"] - timing["first_token_ms"]) / 1000
            assert "".join(deltas).strip() == payload["answer"]
            # One per interval of the model's streaming, plus: the first goes at once, the last waiting one goes
            # with the answer, and the pump's clock runs up to an interval behind the model's at either end. (On
            # an idle machine that is far fewer than the tokens, so they were merged; on one so loaded that a
            # token takes longer than an interval there is nothing to merge, and the bound still holds.)
            assert len(deltas) <= streaming_s / STREAM_INTERVAL_S + 3, (len(deltas), timing)
    finally:
        for client in clients:
            client.close()


def test_slow_generation_does_not_stall_another_client(slow_app: AppProcess, frame: str) -> None:
    asker, other = RecordingClient(slow_app.url), RecordingClient(slow_app.url)
    try:
        asker.start({"id": "long", "question": "describe the image", "image": frame})
        acks = [other.sio.call("cancel", {"id": "nothing"}, timeout=10) for _ in range(5)]
        health = requests.get(f"{slow_app.url}/healthz", timeout=10).status_code
        assert acks == [{"id": "nothing", "cancelled": False}] * 5 and health == 200
        assert not any(e == "response" for e, _ in asker.received), "answered while the generation still ran"
    finally:
        asker.close()
        other.close()


def test_cancel_stops_generation_promptly(slow_app: AppProcess, frame: str) -> None:
    asker = RecordingClient(slow_app.url)
    try:
        asker.start({"id": "stop-me", "question": "describe the image", "image": frame})
        assert asker.sio.call("cancel", {"id": "stop-me"}, timeout=10)["cancelled"] is True
        kind, payload = asker.final("stop-me")
        assert (kind, payload["code"]) == ("query_error", "cancelled")
        settled = len(asker.received)
        time.sleep(0.5)
        assert len(asker.received) == settled, "no more tokens stream after the cancel"
        asker.start({"id": "next", "question": "q", "image": frame, "live": True})
        asker.sio.emit("cancel", {"id": "next"})
        assert asker.final("next")[1]["code"] == "cancelled"
    finally:
        asker.close()


def test_new_question_supersedes_unfinished_one(slow_app: AppProcess, frame: str) -> None:
    asker = RecordingClient(slow_app.url)
    try:
        asker.start({"id": "old", "question": "describe the image", "image": frame})
        asker.start({"id": "new", "question": "what shape is this?", "image": frame})
        assert asker.final("old")[1]["code"] == "cancelled"
    finally:
        asker.close()


@pytest.mark.parametrize(
    ("mode", "stop"),
    [("threading", signal.SIGHUP), ("gevent", signal.SIGTERM), ("eventlet", signal.SIGHUP)],
    ids=["threading-SIGHUP", "gevent-SIGTERM", "eventlet-SIGHUP"],
)
def test_sigterm_drains_in_flight_requests(slow_model: Path, frame: str, mode: str, stop: signal.Signals) -> None:
    """Both transports' answers under way when SIGTERM comes are finished and delivered whole before the exit.
    SIGHUP (the terminal that started the server closed) drains the same way: it killed the process at once."""
    with serving(slow_model, "--async-mode", mode, max_new_tokens=150) as running:  # ~1.5 s an answer here
        asker = RecordingClient(running.url)
        body = {"messages": [{"role": "user", "content": "hi"}], "stream": True}
        stream = requests.post(f"{running.url}/v1/chat/completions", json=body, stream=True, timeout=60)
        lines = stream.iter_lines(decode_unicode=True)
        assert next(line for line in lines if line.startswith("data: {")), "the stream began"
        asker.start({"id": "last", "question": "what?", "image": frame})
        assert running.process is not None
        running.process.send_signal(stop)
        kind, _ = asker.final("last", timeout_s=30)
        rest = [line for line in lines if line]
        assert running.process.wait(30) == 0
        assert kind == "response"
        assert rest[-1] == "data: [DONE]", "the stream ended whole"
        last = json.loads(rest[-2].removeprefix("data: "))
        assert last["choices"][0]["finish_reason"] in ("stop", "length")


def test_a_drain_out_of_time_tells_the_unfinished_and_leaves_the_load_balancer(slow_model: Path) -> None:
    """Past ``--drain-timeout`` the requests still running once vanished without a final event (a Socket.IO
    client heard only the disconnect, a /v1 stream was cut mid-chunk), and /healthz said ok throughout."""
    with serving(slow_model, "--drain-timeout", "1", max_new_tokens=430) as running:  # 430 tokens: ~4 s here
        frame = jpeg_data_url()
        asker = RecordingClient(running.url)
        body = {"messages": [{"role": "user", "content": "hi"}], "stream": True}
        stream = requests.post(f"{running.url}/v1/chat/completions", json=body, stream=True, timeout=60)
        lines = stream.iter_lines(decode_unicode=True)
        assert next(line for line in lines if line.startswith("data: {")), "the stream began"
        try:
            asker.start({"id": "long", "question": "describe", "image": frame})
            assert running.process is not None
            running.process.send_signal(signal.SIGTERM)
            health = requests.get(f"{running.url}/healthz", timeout=5)
            assert (health.status_code, health.json()["status"]) == (503, "draining")
            said = asker.final("long", timeout_s=30)
            rest = [line for line in lines if line]
        finally:
            asker.close()
        assert said[0] == "query_error" and said[1]["code"] == "shutting_down" and "shut down" in said[1]["message"]
        assert (
            rest[-1] == "data: [DONE]"
            and json.loads(rest[-2].removeprefix("data: "))["error"]["code"] == "shutting_down"
        )
        assert running.process.wait(30) == 0
        assert "2 unfinished requests were told the server shut down" in running.log()


@contextmanager
def answering(slow_model: Path, frame: str, mode: str, tokens: int) -> Iterator[tuple[AppProcess, RecordingClient]]:
    """The app in ``mode`` and a client whose ``tokens``-token answer (about 100 a second here) has begun."""
    with serving(slow_model, "--async-mode", mode, max_new_tokens=tokens) as running:
        asker = RecordingClient(running.url)
        try:
            asker.start({"id": "long", "question": "describe", "image": frame})
            assert running.process is not None
            yield running, asker
        finally:
            asker.close()


@pytest.mark.parametrize("mode", ASYNC_MODES)
def test_ctrl_c_mid_answer_stops_at_once_and_tells_the_unfinished(slow_model: Path, frame: str, mode: str) -> None:
    """Ctrl-C in the terminal (SIGINT): under gunicorn it exited with the model's thread inside torch, and the
    process aborted ("terminate called without an active exception", exit 134)."""
    with answering(slow_model, frame, mode, tokens=430) as (running, asker):
        assert running.process is not None
        running.process.send_signal(signal.SIGINT)
        said = asker.final("long", timeout_s=10)
        assert said[0] == "query_error" and said[1]["code"] == "shutting_down", said
        assert running.process.wait(10) == 0
        log = running.log()
    assert "interrupted: 1 unfinished requests were told the server shut down" in log
    assert "terminate called" not in log and "Traceback" not in log


@pytest.mark.parametrize("mode", ASYNC_MODES)
def test_ctrl_c_while_draining_after_sigterm_exits_at_once(slow_model: Path, frame: str, mode: str) -> None:
    """SIGTERM and Ctrl-C share one stop: the second of either exits at once, with 1, not after the drain."""
    with answering(slow_model, frame, mode, tokens=4000) as (running, _):
        assert running.process is not None
        running.process.send_signal(signal.SIGTERM)
        health = requests.get(f"{running.url}/healthz", timeout=5)
        assert (health.status_code, health.json()["status"]) == (503, "draining")
        running.process.send_signal(signal.SIGINT)
        assert running.process.wait(5) == 1, "the drain would have waited up to 30 s for the answer"


def ask_at_once(url: str, questions: list[tuple[str, str]]) -> list[tuple[str, dict]]:
    """Each (question, frame) from a client of its own, all sent together; the finals in that order."""
    clients = [RecordingClient(url) for _ in questions]
    try:
        for index, (each, (question, image)) in enumerate(zip(clients, questions, strict=True)):
            each.sio.emit("query", {"id": f"q{index}", "question": question, "image": image})
        return [each.final(f"q{index}") for index, each in enumerate(clients)]
    finally:
        for each in clients:
            each.close()


def test_answers_are_the_same_wherever_the_processor_runs(tiny_model: Path) -> None:
    """``--prepare thread`` collates rows the processor made one at a time on several threads at once;
    ``--prepare encode`` brings their frames encoded too, ``--prepare prefill`` their prompts prefilled; on the
    worker it takes the batch."""
    questions = [
        (question, jpeg_data_url(color, size))
        for question, color, size in [
            ("what shape is this?", "red", (640, 480)),
            ("what colour is it?", "blue", (480, 640)),
            ("describe the image in a few words", "green", (320, 240)),
            ("is there a circle?", "white", (640, 360)),
        ]
    ]
    answers = {}
    for place, threads in (("thread", "3"), ("encode", "2"), ("prefill", "2"), ("worker", "0")):
        with serving(tiny_model, "--prepare", place, "--prepare-threads", threads, max_new_tokens=12) as running:
            finals = ask_at_once(running.url, questions)
        assert all(kind == "response" for kind, _ in finals), finals
        answers[place, threads] = [payload["answer"] for _, payload in finals]
    assert len({tuple(given) for given in answers.values()}) == 1, answers


def test_a_generation_past_the_request_timeout_ends_timeout_and_the_server_goes_on(slow_model: Path) -> None:
    """The real model running past ``--request-timeout``: its sender hears ``timeout`` once, the generation stops
    at its next token (the server is healthy again, not stuck), and a bystander is answered."""
    with serving(slow_model, "--request-timeout", "1", max_new_tokens=430) as running:  # 430 tokens: ~4 s here
        asker = RecordingClient(running.url)
        try:
            frame = jpeg_data_url()
            assert asker.ask({"id": "long", "question": "describe", "image": frame}, timeout_s=60) == (
                "query_error",
                {"id": "long", "code": "timeout", "message": "no answer within 1 s"},
            )
            bystander = requests.post(
                f"{running.url}/v1/chat/completions",
                json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
                timeout=60,
            )
            assert bystander.status_code == 200 and bystander.json()["usage"]["completion_tokens"] <= 2
            assert requests.get(f"{running.url}/healthz", timeout=5).json()["status"] == "ok"
            time.sleep(1.5)  # past the time the long generation would have streamed on, had it not stopped
            assert [event for event, payload in asker.received if payload.get("id") == "long"][-1] == "query_error"
        finally:
            asker.close()
