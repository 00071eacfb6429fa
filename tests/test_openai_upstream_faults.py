"""``--backend openai`` against an upstream that misbehaves (tests/upstream_double.py), through the real app.

One app serves every test: two requests in flight at most, a 3 s request timeout, 16-token answers,
an API key the upstream echoes in its errors and a password in its ``--base-url``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.server_process import AppProcess
from tests.socket_client import RecordingClient
from tests.upstream_double import MODEL, UpstreamDouble

KEY = "upstream-key-123"
PASSWORD = "hunter2-secret"


@pytest.fixture(scope="module")
def upstream() -> Iterator[UpstreamDouble]:
    with UpstreamDouble() as double:
        yield double


@pytest.fixture(scope="module")
def app(upstream: UpstreamDouble) -> Iterator[AppProcess]:
    base = upstream.url.replace("http://", f"http://user:{PASSWORD}@") + "/v1"
    args = ["--backend", "openai", "--base-url", base, "--model", MODEL, "--request-timeout", "3"]
    args += ["--max-batch-size", "2", "--max-new-tokens", "16"]
    with AppProcess(args, env={"OPENAI_API_KEY": KEY}) as running:
        yield running


@pytest.fixture
def client(app: AppProcess, upstream: UpstreamDouble) -> Iterator[RecordingClient]:
    upstream.mode = "ok"
    asker = RecordingClient(app.url)
    yield asker
    asker.close()


def question(rid: str, frame: str) -> dict[str, object]:
    return {"id": rid, "question": "what?", "image": frame}


def test_a_stream_of_keep_alives_is_closed_when_its_request_times_out(
    app: AppProcess, upstream: UpstreamDouble, frame: str
) -> None:
    upstream.mode = "ping"
    askers = [RecordingClient(app.url) for _ in range(3)]
    try:
        for number, asker in enumerate(askers):
            asker.sio.emit("query", question(f"stall{number}", frame))
        for number, asker in enumerate(askers):
            assert asker.final(f"stall{number}", 15)[1]["code"] == "timeout"
        assert upstream.wait_for(lambda u: u.open == 0 and u.closed >= 3, 5), (upstream.open, upstream.closed)
        upstream.mode = "ok"
        kind, answer = askers[0].ask(question("bystander", frame), timeout_s=10)
        assert (kind, answer["answer"]) == ("response", "A red square.")
    finally:
        for asker in askers:
            asker.close()


def test_a_superseded_question_is_closed_upstream_before_its_first_token(
    client: RecordingClient, upstream: UpstreamDouble, frame: str
) -> None:
    upstream.mode = "slow_first"  # 3 s before any token
    before, closed = upstream.requests, upstream.closed
    for number in range(8):
        client.sio.emit("query", question(f"live{number}", frame))
        time.sleep(0.25)
    started = time.monotonic()
    kind, answer = client.final("live7", 10)
    assert (kind, answer["answer"]) == ("response", "A red square.")
    assert time.monotonic() - started < 4.5, "the newest waited behind superseded ones"
    assert upstream.wait_for(lambda u: u.open == 0, 3)
    assert upstream.requests - before - (upstream.closed - closed) == 1, "every superseded one was closed"
