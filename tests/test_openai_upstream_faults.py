"""``--backend openai`` against an upstream that misbehaves (tests/upstream_double.py), through the real app.

One app serves every test: two requests in flight at most, a 3 s request timeout, 16-token answers,
an API key the upstream echoes in its errors and a password in its ``--base-url``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx2
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
from vlm.logsafe import MAX_DETAIL_CHARS

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


# Each failing mode, and what of the upstream's own words its operator's log line must carry.
ENGINE_WORDS = {
    "s500": 'HTTP 500: {"message": "Traceback: File /srv/vllm/engine.py',
    "detail400": 'HTTP 400: {"detail": "Server is pinned to \'fake\'',
    "detail422": "Unexpected fields in the request",
    "plain500": "HTTP 500: Internal Server Error",
    "stream_error": "error in the stream: 'LlavaProcessor' object has no attribute 'get_vocab'",
    "refuse": "Server disconnected",
    "badjson": "JSONDecodeError",
}


def test_the_upstream_error_text_reaches_the_log_once_masked_never_the_client(
    app: AppProcess, client: RecordingClient, upstream: UpstreamDouble, frame: str
) -> None:
    """FastAPI's ``detail``, a text/plain body and a streamed error string as well as OpenAI's error object: the
    log once said only "Error code: 400" or "An error occurred during streaming" for transformers serve's."""
    logged_before = len(app.log().splitlines())
    for mode in ENGINE_WORDS:
        upstream.mode = mode
        kind, payload = client.ask(question(f"fail-{mode}", frame), timeout_s=10)
        assert kind == "query_error", payload
        assert not any(leak in payload["message"] for leak in ("srv", "10.0.0.7", KEY, "pinned", "vocab")), payload
    assert client.final("fail-s500")[1]["message"] == "the model server answered HTTP 500"
    time.sleep(0.5)
    log = "\n".join(app.log().splitlines()[logged_before:])
    warnings = [line for line in log.splitlines() if "WARNING" in line and "upstream request failed" in line]
    assert len(warnings) == len(ENGINE_WORDS), warnings
    for line, words in zip(warnings, ENGINE_WORDS.values(), strict=True):
        assert words in line, (words, line)
    assert "key=***" in warnings[1]
    assert "Traceback (most recent call last)" not in log and KEY not in log


@pytest.mark.unit
def test_the_upstream_words_in_the_log_are_capped() -> None:
    """A server can answer a page-long traceback; the log line keeps its start."""
    request = httpx2.Request("POST", "http://upstream/v1/chat/completions")
    error = openai.InternalServerError(
        "Error code: 500", response=httpx2.Response(500, request=request), body="boom " * 1000
    )
    client = openai.OpenAI(base_url="http://upstream/v1", api_key="k", max_retries=0)
    detail = OpenAIBackend(client, model=MODEL, max_batch_size=1)._detail(error)
    assert detail.startswith("HTTP 500: boom boom") and detail.endswith("... (cut)")
    assert len(detail) <= MAX_DETAIL_CHARS + len("... (cut)")


@pytest.mark.parametrize(
    ("mode", "message"),
    [("die", "the connection to the model server broke"), ("refuse", "the model server could not be reached")],
)
def test_a_connection_lost_mid_answer_is_told_apart_from_one_never_made(
    client: RecordingClient, upstream: UpstreamDouble, frame: str, mode: str, message: str
) -> None:
    """An engine killed mid-answer was reported as one that "could not be reached" (audit s24, F9)."""
    upstream.mode = mode
    kind, payload = client.ask(question(mode, frame), timeout_s=10)
    assert (kind, payload["code"], payload["message"]) == ("query_error", "upstream_error", message)


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


class Outcomes:
    """Row events that record each row's outcome; no row is ever cancelled."""

    def __init__(self) -> None:
        self.outcomes: dict[int, tuple[str, str]] = {}

    def delta(self, row: int, text: str) -> None:
        pass

    def cancelled(self, row: int) -> bool:
        return False

    def failed(self, row: int, error: VlmError) -> None:
        self.outcomes[row] = ("failed", error.code)

    def done(self, row: int, result: Result) -> None:
        self.outcomes[row] = ("done", result.answer)


def forwarded(backend: OpenAIBackend, job: Job) -> tuple[str, str]:
    """What one job streamed through ``backend`` came to: ("done", answer) or ("failed", code)."""
    events = Outcomes()
    try:
        backend._stream(0, job, events)
    except VlmError as error:
        events.failed(0, error)
    return events.outcomes[0]


STOPPED = Job(task="query", image=Image.new("RGB", (32, 32)), image_key="k", text="what?", stop=("red",))


def backend_of(double: UpstreamDouble) -> OpenAIBackend:
    """A backend of ``double``, with no probe running (its checks are made by hand)."""
    client = openai.OpenAI(base_url=f"{double.url}/v1", api_key="k", timeout=5, max_retries=0)
    return OpenAIBackend(client, model=MODEL, max_batch_size=1, listed=(MODEL,))


@pytest.mark.unit
@pytest.mark.parametrize("mode", ["refuses_stop", "stop_500", "engine"])
def test_a_request_whose_stop_strings_fail_upstream_is_asked_again_without_them_and_then_sent_without(
    mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A 400 naming ``stop`` (an older instance of this app), a text/plain 500, and transformers serve's error in
    the stream after its role chunk (audit s24, F1: every ``/v1`` request with ``stop`` got a 502 behind it). Once
    asking without them worked, later requests go without at once: each had cost two requests, for good."""
    caplog.set_level("INFO")
    with UpstreamDouble(mode) as double:
        backend = backend_of(double)
        answers = []
        for _ in range(3):
            asked_before = double.requests
            answers.append((forwarded(backend, STOPPED), double.requests - asked_before))
            assert "stop" not in double.last_body
    assert answers == [(("done", "A"), 2), (("done", "A"), 1), (("done", "A"), 1)]
    assert caplog.text.count("from now on they are not sent") == 1


@pytest.mark.unit
@pytest.mark.parametrize(
    ("mode", "code"),
    [
        ("busy", "busy"),
        ("bad_key", "upstream_error"),
        ("no_model", "upstream_error"),
        ("unavailable", "upstream_error"),
        ("refuse", "upstream_error"),
        ("waited_then_shutting_down", "upstream_error"),
        ("waited_then_timeout", "timeout"),
    ],
)
def test_a_failure_stop_strings_cannot_cause_is_not_asked_again(mode: str, code: str) -> None:
    """A 429 was asked again at once, doubling the load of a server that said it was overloaded; so were a bad key,
    an unknown model, an engine loading and a connection refused. So was an error in the stream that says it is about
    time or shutting down, as this app streams one for a request that waited its turn past --sse-keepalive: once
    the second try reached a process not shutting down, stop strings were no longer sent, for good."""
    with UpstreamDouble(mode) as double:
        assert forwarded(backend_of(double), STOPPED) == ("failed", code)
        assert double.requests == 1 and double.last_body["stop"] == ["red"]


def test_a_request_with_stop_strings_that_fails_after_its_first_word_is_not_asked_again(
    app: AppProcess, upstream: UpstreamDouble, frame: str
) -> None:
    """Its words have gone to the client already: asking again would send them twice."""
    upstream.mode = "cut"
    asked_before = upstream.requests
    with pytest.raises(openai.APIError):
        openai_client(app.url).chat.completions.create(
            model="any", messages=frame_question("what?", frame), stop=["never said"]
        )
    assert upstream.requests - asked_before == 1


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
