"""``--backend openai`` against an upstream that misbehaves (tests/upstream_double.py), through the real app.

One app serves every test: two requests in flight at most, a 3 s request timeout, 16-token answers,
an API key the upstream echoes in its errors and a password in its ``--base-url``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import openai
import pytest
from PIL import Image

from tests.openai_client import frame_question, openai_client
from tests.server_process import AppProcess
from tests.socket_client import RecordingClient
from tests.upstream_double import MODEL, UpstreamDouble
from vlm.backends.base import Job, Result
from vlm.backends.openai_backend import Forwarder, OpenAIBackend
from vlm.errors import VlmError

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
    upstream.mode = "slow_first"  # 2 s before any token (the request timeout is 3 s)
    before, closed = upstream.requests, upstream.closed
    for number in range(8):
        client.sio.emit("query", question(f"live{number}", frame))
        time.sleep(0.25)
    started = time.monotonic()
    kind, answer = client.final("live7", 10)
    assert (kind, answer.get("answer")) == ("response", "A red square."), answer
    assert time.monotonic() - started < 3.5, "the newest waited behind superseded ones"
    assert upstream.wait_for(lambda u: u.open == 0, 3)
    assert upstream.requests - before - (upstream.closed - closed) == 1, "every superseded one was closed"


@pytest.mark.parametrize("mode", ["nonsse", "html200", "empty", "cut", "filter", "badjson"])
def test_a_broken_or_partial_answer_is_an_upstream_error(
    client: RecordingClient, upstream: UpstreamDouble, frame: str, mode: str
) -> None:
    upstream.mode = mode
    kind, payload = client.ask(question(mode, frame), timeout_s=10)
    assert (kind, payload.get("code")) == ("query_error", "upstream_error"), payload


def test_the_upstream_error_text_reaches_the_log_once_masked_never_the_client(
    app: AppProcess, client: RecordingClient, upstream: UpstreamDouble, frame: str
) -> None:
    logged_before = len(app.log().splitlines())
    for mode in ("s500", "refuse", "badjson"):
        upstream.mode = mode
        kind, payload = client.ask(question(f"fail-{mode}", frame), timeout_s=10)
        assert kind == "query_error", payload
        assert not any(leak in payload["message"] for leak in ("srv", "10.0.0.7", KEY)), payload
    assert client.final("fail-s500")[1]["message"] == "the model server answered HTTP 500"
    time.sleep(0.5)
    log = "\n".join(app.log().splitlines()[logged_before:])
    warnings = [line for line in log.splitlines() if "WARNING" in line and "upstream request failed" in line]
    assert len(warnings) == 3, warnings
    assert "HTTP 500" in warnings[0] and "/srv/vllm/engine.py" in warnings[0]
    assert "Traceback (most recent call last)" not in log and KEY not in log


@pytest.mark.parametrize(("mode", "most"), [("flood", 16 * 10240), ("one_huge", 16 * 32)])
def test_an_upstream_that_ignores_max_tokens_is_cut_at_the_limit(
    client: RecordingClient, upstream: UpstreamDouble, frame: str, mode: str, most: int
) -> None:
    upstream.mode = mode
    kind, payload = client.ask(question(mode, frame), timeout_s=15)
    assert (kind, payload["finish_reason"]) == ("response", "length"), payload.get("message")
    assert 0 < len(payload["answer"]) <= min(most, 16 * 32)
    assert upstream.wait_for(lambda u: u.open == 0, 5)


def test_stop_strings_go_upstream_and_hold_where_the_upstream_ignores_them(
    app: AppProcess, upstream: UpstreamDouble, frame: str
) -> None:
    """The double answers "A red square." whatever it is asked, as a server without ``stop`` would."""
    upstream.mode = "ok"
    client = openai_client(app.url)
    asked = {"model": "any", "messages": frame_question("what?", frame), "stop": ["red", "never said"]}
    completion = client.chat.completions.create(**asked)
    assert upstream.last_body["stop"] == ["red", "never said"]
    assert (completion.choices[0].message.content, completion.choices[0].finish_reason) == ("A", "stop")
    chunks = client.chat.completions.create(**asked, stream=True)
    assert "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices) == "A"
    assert upstream.wait_for(lambda u: u.open == 0, 5), "nothing is left open upstream"


def test_sampling_settings_and_a_seed_go_upstream(app: AppProcess, upstream: UpstreamDouble, frame: str) -> None:
    upstream.mode = "ok"
    client = openai_client(app.url)
    client.chat.completions.create(model="any", messages=frame_question("what?", frame), temperature=0.9, top_p=0.5)
    assert upstream.last_body["top_p"] == 0.5 and "seed" not in upstream.last_body, "no seed asked for, none sent"
    client.chat.completions.create(model="any", messages=frame_question("what?", frame), temperature=0.9, seed=-3)
    assert (upstream.last_body["temperature"], upstream.last_body["seed"]) == (0.9, -3)


def test_an_upstream_that_refuses_stop_strings_is_asked_again_without_them(
    app: AppProcess, upstream: UpstreamDouble, frame: str
) -> None:
    upstream.mode = "refuses_stop"
    asked_before = upstream.requests
    completion = openai_client(app.url).chat.completions.create(
        model="any", messages=frame_question("what?", frame), stop=["red"]
    )
    assert (completion.choices[0].message.content, completion.choices[0].finish_reason) == ("A", "stop")
    assert upstream.requests - asked_before == 2 and "stop" not in upstream.last_body


def test_the_password_in_base_url_is_never_logged(app: AppProcess, client: RecordingClient, frame: str) -> None:
    assert client.ask(question("plain", frame))[0] == "response"
    assert PASSWORD not in app.log()
    with pytest.raises(RuntimeError, match="exited with 2") as failed:
        base = f"http://user:{PASSWORD}@127.0.0.1:9/v1"
        with AppProcess(["--backend", "openai", "--base-url", base, "--model", MODEL]):
            pass
    assert "Could not use the OpenAI-compatible server" in str(failed.value) and PASSWORD not in str(failed.value)


class AdmitNextOnDone:
    """Row events as the scheduler gives them: a row that is done reads as cancelled, and its freed slot admits
    the next job at once, from within ``done``."""

    def __init__(self, double: UpstreamDouble, next_job: Job) -> None:
        self.double, self.next_job = double, next_job
        self.outcomes: dict[int, tuple[str, str]] = {}
        self.forwarder: Forwarder | None = None

    def delta(self, row: int, text: str) -> None:
        pass

    def cancelled(self, row: int) -> bool:
        return row in self.outcomes

    def failed(self, row: int, error: VlmError) -> None:
        self.outcomes[row] = ("failed", error.code)

    def done(self, row: int, result: Result) -> None:
        self.outcomes[row] = ("done", result.answer)
        if row == 0 and self.forwarder is not None:
            self.double.mode = "slow_no_done"
            self.forwarder.join({1: self.next_job})
            time.sleep(0.3)  # past the cancel watcher's poll, while row 1 reuses row 0's pooled connection


@pytest.mark.unit
def test_a_finished_rows_connection_reused_by_the_next_row_is_not_cut() -> None:
    """A finished row reads as cancelled; the watcher once cut its response after its connection had gone back to
    the pool and been taken by the next row, failing that healthy request (found in review)."""
    job = Job(task="query", image=Image.new("RGB", (32, 32)), image_key="k", text="what?", max_new_tokens=16)
    with UpstreamDouble("no_done") as double:
        client = openai.OpenAI(base_url=f"{double.url}/v1", api_key="k", timeout=10, max_retries=0)
        events = AdmitNextOnDone(double, job)
        forwarder = events.forwarder = Forwarder(OpenAIBackend(client, model=MODEL, max_batch_size=2), events)
        forwarder.join({0: job})
        deadline = time.monotonic() + 10
        while len(events.outcomes) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    assert events.outcomes == {0: ("done", "A red square."), 1: ("done", "B")}
