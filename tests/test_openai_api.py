"""``/v1`` through the official ``openai`` client, against the real app serving a real tiny model."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import openai
import pytest
import requests
from PIL import Image

from tests.frames import jpeg_data_url
from tests.openai_client import ask, frame_question, openai_client
from tests.server_process import REPO, AppProcess, serving
from tests.socket_client import RecordingClient

TOKEN = "v1-shared-secret"


pytestmark = pytest.mark.app("tiny", max_new_tokens=12)


def streamed(client: openai.OpenAI, question: str, image_url: str, **options: Any) -> list[str]:
    """The content deltas of a streamed completion, in order."""
    chunks = client.chat.completions.create(
        model="any", messages=frame_question(question, image_url), stream=True, **options
    )
    return [chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices]


def test_models_show_the_name_the_operator_gave_never_a_path(app: AppProcess, tiny_model: Path) -> None:
    client = openai_client(app.url)
    assert [model.id for model in client.models.list()] == [tiny_model.name]
    assert client.models.retrieve(tiny_model.name).id == tiny_model.name
    with pytest.raises(openai.NotFoundError) as missing:
        client.models.retrieve("gpt-4o")
    assert missing.value.code == "model_not_found"
    completion = client.chat.completions.create(model="any", messages=frame_question("what?", jpeg_data_url()))
    assert completion.model == tiny_model.name
    for path in ("/healthz", "/api/info"):
        assert requests.get(f"{app.url}{path}", timeout=5).json()["model"] == tiny_model.name


def test_usage_and_finish_reason_on_every_completion(app: AppProcess, frame: str) -> None:
    client = openai_client(app.url)
    completion = client.chat.completions.create(model="any", messages=frame_question("what shape is this?", frame))
    usage = completion.usage
    assert usage is not None and usage.completion_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert completion.choices[0].finish_reason in ("stop", "length")
    chunks = list(
        client.chat.completions.create(
            model="any",
            messages=frame_question("what shape is this?", frame),
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].choices == [] and chunks[-1].usage == usage, "the last chunk carries the same usage"
    assert [chunk.choices[0].finish_reason for chunk in chunks[:-1]][-1] == completion.choices[0].finish_reason
    plain = list(client.chat.completions.create(model="any", messages=frame_question("what?", frame), stream=True))
    assert all(chunk.usage is None for chunk in plain), "usage is streamed only when asked for"


def test_text_only_questions_and_plain_string_image_urls(app: AppProcess, frame: str) -> None:
    client = openai_client(app.url)
    text_only = client.chat.completions.create(model="any", messages=[{"role": "user", "content": "say hello"}])
    assert text_only.choices[0].message.content
    as_string = [
        {
            "role": "user",
            "content": [{"type": "text", "text": "what shape is this?"}, {"type": "image_url", "image_url": frame}],
        }
    ]
    answer = client.chat.completions.create(model="any", messages=as_string).choices[0].message.content  # type: ignore[arg-type]
    assert answer == ask(client, "what shape is this?", frame)


def test_sampling_options_the_server_honours_or_refuses_by_name(app: AppProcess, frame: str) -> None:
    client = openai_client(app.url)
    sampled = client.chat.completions.create(
        model="any", messages=frame_question("what?", frame), temperature=0.7, n=1
    ).choices[0]
    assert sampled.finish_reason in {"stop", "length"}, "answered (a sample may be empty: EOS drawn first)"
    assert ask(client, "what?", frame, temperature=2, top_p=0) == ask(client, "what?", frame), (
        "top_p 0 leaves only the likeliest token to sample"
    )
    assert ask(client, "what?", frame, temperature=1e-39) == ask(client, "what?", frame), "as good as greedy"
    refusals = [
        ({"n": 2}, "n"),
        ({"temperature": 3}, "temperature"),
        ({"temperature": -0.1}, "temperature"),
        ({"max_tokens": 1.5}, "max_tokens"),
        ({"max_completion_tokens": "8"}, "max_completion_tokens"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),  # OpenAI takes four at most
        ({"stop": ["a", 1]}, "stop"),
        ({"stop": "x" * 257}, "stop"),
        # Options no backend honours: once silently ignored, so a client asking for them got something else.
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"logprobs": True, "top_logprobs": 2}, "logprobs"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}, "tools"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_p": "0.5"}, "top_p"),
        ({"presence_penalty": 1.0}, "presence_penalty"),
        ({"extra_body": {"stream": "true"}}, "stream"),
        ({"seed": 1.5}, "seed"),
        ({"extra_body": {"seed": "7"}}, "seed"),
        ({"seed": 2**64}, "seed"),
    ]
    for options, param in refusals:
        with pytest.raises(openai.BadRequestError) as refused:
            ask(client, "what?", frame, **options)
        assert refused.value.param == param, options
    defaults = {"stop": None, "response_format": {"type": "text"}, "logprobs": False, "tools": [], "top_p": 1}
    assert ask(client, "what?", frame, **defaults) == ask(client, "what?", frame), "defaults ask for nothing"


def test_a_seed_draws_the_same_sampled_answer_again(app: AppProcess, frame: str) -> None:
    client = openai_client(app.url)
    hot = {"temperature": 2.0, "seed": 2**64 - 1}
    first = ask(client, "what?", frame, **hot)
    assert ask(client, "what?", frame, **hot) == first == "".join(streamed(client, "what?", frame, **hot)).strip()
    assert len({ask(client, "what?", frame, temperature=2.0, seed=seed) for seed in range(6)}) > 1


def test_stop_strings_end_the_answer_before_the_first_to_appear(app: AppProcess, frame: str) -> None:
    client = openai_client(app.url)
    whole = client.chat.completions.create(model="any", messages=frame_question("what shape is this?", frame))
    text = whole.choices[0].message.content or ""
    words = text.split()
    assert len(words) >= 3, text
    stop = words[len(words) // 2]
    expected = text[: text.index(stop)].rstrip()
    stopped = client.chat.completions.create(
        model="any", messages=frame_question("what shape is this?", frame), stop=[stop, "never said"]
    )
    assert (stopped.choices[0].message.content, stopped.choices[0].finish_reason) == (expected, "stop")
    assert stopped.usage and whole.usage and stopped.usage.completion_tokens < whole.usage.completion_tokens
    assert "".join(streamed(client, "what shape is this?", frame, stop=stop)) == expected, "as one string too"


def test_a_null_max_completion_tokens_leaves_max_tokens_in_force(app: AppProcess, frame: str) -> None:
    """The official client sends ``null`` for an explicit None; max_tokens must still hold."""
    completion = openai_client(app.url).chat.completions.create(
        model="any", messages=frame_question("what shape is this?", frame), max_tokens=1, max_completion_tokens=None
    )
    assert (completion.choices[0].finish_reason, completion.usage and completion.usage.completion_tokens) == (
        "length",
        1,
    )


def test_completion_equals_streamed_concatenation_and_socket_answer(app: AppProcess, frame: str) -> None:
    client = openai_client(app.url)
    answer = ask(client, "what shape is this?", frame)
    deltas = streamed(client, "what shape is this?", frame)
    assert answer and "".join(deltas) == answer
    assert sum(1 for delta in deltas if delta) > 1, "the answer came in pieces"
    socket_client = RecordingClient(app.url)
    try:
        kind, payload = socket_client.ask({"id": "same", "question": "what shape is this?", "image": frame})
    finally:
        socket_client.close()
    assert (kind, payload["answer"]) == ("response", answer), "one model, one scheduler, one greedy answer"


def test_max_tokens_can_only_shorten_the_answer(app: AppProcess, frame: str) -> None:
    completion = openai_client(app.url).chat.completions.create(
        model="any", messages=frame_question("what shape is this?", frame), max_tokens=2
    )
    assert completion.choices[0].finish_reason == "length"
    assert len(completion.choices[0].message.content or "") < len(
        ask(openai_client(app.url), "what shape is this?", frame)
    )


def test_token_is_required_when_the_server_has_one(tiny_model: Path, frame: str) -> None:
    with serving(tiny_model, max_new_tokens=4, token=TOKEN) as guarded:
        anonymous = requests.get(f"{guarded.url}/v1/models", timeout=5)
        assert anonymous.status_code == 401
        assert anonymous.json()["error"]["type"] == "authentication_error"
        with pytest.raises(openai.AuthenticationError):
            ask(openai_client(guarded.url, api_key="wrong"), "what?", frame)
        assert ask(openai_client(guarded.url, api_key=TOKEN), "what?", frame)
        for scheme in ("bearer", "BEARER"):  # the scheme's case does not matter (RFC 7235); curl users type either
            reply = requests.get(f"{guarded.url}/v1/models", headers={"Authorization": f"{scheme} {TOKEN}"}, timeout=5)
            assert reply.status_code == 200, scheme
        assert requests.get(f"{guarded.url}/v1/models", headers={"Authorization": TOKEN}, timeout=5).status_code == 401


def test_remote_image_url_is_refused_and_never_fetched(app: AppProcess) -> None:
    with socket.create_server(("127.0.0.1", 0)) as bait:
        bait.settimeout(0.3)
        url = f"http://127.0.0.1:{bait.getsockname()[1]}/frame.jpg"
        with pytest.raises(openai.BadRequestError) as refused:
            ask(openai_client(app.url), "what is this?", url)
        with pytest.raises(TimeoutError):
            bait.accept()
    assert refused.value.code == "bad_image" and "data: URL" in refused.value.message


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"messages": frame_question("what?", "data:image/jpeg;base64,!!!")}, "bad_image"),
        ({"messages": frame_question("what?", "data:image/png;base64,aGVsbG8=")}, "bad_image"),
        ({"messages": frame_question(" ", jpeg_data_url())}, "empty_question"),
        ({"messages": frame_question("x" * 5000, jpeg_data_url())}, "question_too_long"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": jpeg_data_url()}] * 2}]},
            "bad_request",
        ),
        ({"messages": frame_question("what?", jpeg_data_url()), "max_tokens": 0}, "bad_request"),
        ({"messages": "hello"}, "bad_request"),
    ],
    ids=[
        "not base64",
        "not an image",
        "empty question",
        "long question",
        "two images",
        "zero max_tokens",
        "messages not a list",
    ],
)
def test_bad_input_gets_400_in_openai_shape(app: AppProcess, body: dict[str, object], code: str) -> None:
    refused = requests.post(f"{app.url}/v1/chat/completions", json={"model": "any", **body}, timeout=30)
    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == code and refused.json()["error"]["type"] == "invalid_request_error"
    assert set(refused.json()["error"]) == {"message", "type", "code", "param"}
    assert refused.json()["error"]["param"] in {"messages", "max_tokens"}, "what to fix, as OpenAI points at it"


def test_a_data_url_scheme_in_capitals_is_a_data_url(app: AppProcess, frame: str) -> None:
    """URL schemes are case-insensitive; the Socket.IO door already took ``DATA:``."""
    assert ask(openai_client(app.url), "what?", "DATA" + frame.removeprefix("data")) == ask(
        openai_client(app.url), "what?", frame
    )


def curl(*args: str) -> tuple[int, dict[str, object]]:
    """The HTTP status and JSON body as curl gets them."""
    if shutil.which("curl") is None:
        pytest.fail("curl is missing: install Debian's curl (apt-get install curl)", pytrace=False)
    done = subprocess.run(
        ["curl", "-sS", "-w", "\n%{http_code}", *args], capture_output=True, text=True, timeout=60, check=True
    )
    body, _, status = done.stdout.rpartition("\n")
    return int(status), json.loads(body)


@pytest.mark.parametrize(
    ("args", "status", "code"),
    [
        (["/v1/completions", "-d", "{}", "-H", "Content-Type: application/json"], 404, "not_found"),
        (["/v1/nothing/here"], 404, "not_found"),
        (["/v1/models/gpt-4o"], 404, "model_not_found"),
        (["/v1/chat/completions"], 405, "method_not_allowed"),
        (["-X", "DELETE", "/v1/models"], 405, "method_not_allowed"),
        (["/v1/chat/completions", "-d", "not json", "-H", "Content-Type: application/json"], 400, "bad_request"),
    ],
    ids=["legacy completions", "unknown path", "unknown model", "GET completions", "DELETE models", "not JSON"],
)
def test_every_v1_error_is_an_openai_error_object_under_curl(
    app: AppProcess, args: list[str], status: int, code: str
) -> None:
    got, body = curl(*[f"{app.url}{arg}" if arg.startswith("/v1") else arg for arg in args])
    assert got == status
    error = body["error"]
    assert isinstance(error, dict) and set(error) == {"message", "type", "code", "param"}
    assert error["code"] == code and error["message"]


def test_the_readmes_curl_example_works_as_written(app: AppProcess, tmp_path: Path) -> None:
    """Copied into a shell as it stands, with a ``photo.jpg`` beside it; only the address is this test's."""
    readme = (REPO / "README.md").read_text()
    (command,) = re.findall(r"```bash\n(curl -s http://127\.0\.0\.1:5000/v1/chat/completions.*?)```", readme, re.S)
    Image.new("RGB", (320, 240), "red").save(tmp_path / "photo.jpg")
    done = subprocess.run(
        ["bash", "-c", command.replace("http://127.0.0.1:5000", app.url)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    completion = json.loads(done.stdout)
    assert completion["object"] == "chat.completion" and completion["usage"]["prompt_tokens"] > 0, completion


def test_curl_without_a_json_content_type_is_told_to_send_one(app: AppProcess) -> None:
    """curl's ``-d`` sends a form; the body is JSON all the same, so "not a JSON object" told nobody what to fix."""
    status, body = curl(f"{app.url}/v1/chat/completions", "-d", '{"messages": [{"role": "user", "content": "hi"}]}')
    assert status == 400
    assert "Content-Type: application/json" in body["error"]["message"]  # type: ignore[index]


def test_parts_no_backend_takes_are_refused_not_dropped(app: AppProcess, frame: str) -> None:
    """A file or audio part used to be dropped without a word, and the text alone answered."""
    client = openai_client(app.url)
    for part in ({"type": "file", "file": {"file_data": "abc"}}, {"type": "input_audio", "input_audio": {}}):
        with pytest.raises(openai.BadRequestError) as refused:
            client.chat.completions.create(
                model="any", messages=[{"role": "user", "content": [{"type": "text", "text": "what?"}, part]}]
            )
        assert refused.value.param == "messages" and part["type"] in refused.value.message


def test_curl_gets_an_answer_with_usage(app: AppProcess, frame: str) -> None:
    request = {"model": "any", "messages": frame_question("what shape is this?", frame)}
    status, body = curl(
        f"{app.url}/v1/chat/completions", "-H", "Content-Type: application/json", "-d", json.dumps(request)
    )
    assert status == 200 and body["choices"][0]["message"]["content"]  # type: ignore[index]
    assert body["usage"]["completion_tokens"] > 0  # type: ignore[index]
    assert requests.get(f"{app.url}/nowhere", timeout=5).headers["Content-Type"].startswith("text/html"), (
        "outside /v1, Flask's own error page"
    )


@pytest.mark.parametrize("mode", ["eventlet", "gevent"])
def test_streaming_under_green_async_modes_keeps_the_server_responsive(slow_model: Path, frame: str, mode: str) -> None:
    """The view waits for a native worker thread; under a green hub that wait must not stall other requests."""
    with serving(slow_model, "--async-mode", mode, max_new_tokens=12) as running:
        client = openai_client(running.url)
        first_delta, finished = threading.Event(), threading.Event()
        deltas: list[str] = []

        def consume() -> None:
            chunks = client.chat.completions.create(model="any", messages=frame_question("q", frame), stream=True)
            for chunk in chunks:
                if chunk.choices and chunk.choices[0].delta.content:
                    deltas.append(chunk.choices[0].delta.content)
                    first_delta.set()
            finished.set()

        reader = threading.Thread(target=consume)
        reader.start()
        assert first_delta.wait(60)
        probe_started = time.monotonic()
        assert requests.get(f"{running.url}/healthz", timeout=5).status_code == 200
        probe_s = time.monotonic() - probe_started
        assert not finished.is_set(), "the probe was answered while the stream was still open"
        reader.join(60)
        assert probe_s < 1.0 and "".join(deltas) == ask(client, "q", frame)


def test_a_full_queue_answers_429_with_retry_after_and_then_serves(slow_model: Path, frame: str) -> None:
    with serving(slow_model, "--max-queue", "1", "--max-batch-size", "1", max_new_tokens=60) as full:
        body = {"model": "any", "messages": frame_question("what?", frame)}
        replies: list[requests.Response] = []
        posts = [
            threading.Thread(
                target=lambda: replies.append(requests.post(f"{full.url}/v1/chat/completions", json=body, timeout=120))
            )
            for _ in range(4)
        ]
        for post in posts:
            post.start()
        for post in posts:
            post.join()
        refused = [reply for reply in replies if reply.status_code == 429]
        assert refused and all(reply.status_code in {200, 429} for reply in replies), [r.status_code for r in replies]
        assert {(r.headers.get("Retry-After"), r.json()["error"]["code"]) for r in refused} == {("1", "busy")}
        assert ask(openai_client(full.url), "what?", frame, max_tokens=2) is not None, "served once the queue moves"


@pytest.mark.parametrize("mode", ["threading", "eventlet", "gevent"])
def test_a_chunked_body_is_read_and_bounded_in_every_async_mode(tiny_model: Path, frame: str, mode: str) -> None:
    """A body sent without Content-Length (a client streaming its upload): eventlet once read it as empty, and
    one over the transport limit was cut short and refused as bad JSON instead of 413."""
    with serving(tiny_model, "--async-mode", mode, "--max-image-bytes", "100000", max_new_tokens=4) as running:
        url = f"{running.url}/v1/chat/completions"
        body = json.dumps({"model": "any", "messages": frame_question("what?", frame)}).encode()
        headers = {"Content-Type": "application/json"}
        chunked = requests.post(url, data=iter([body[:100], body[100:]]), headers=headers, timeout=60)
        assert chunked.status_code == 200, chunked.text
        assert chunked.json()["choices"][0]["message"]["content"] == ask(openai_client(running.url), "what?", frame)
        oversized = iter([b'{"messages": "', *[b"x" * 65536] * 4, b'"}'])  # past twice --max-image-bytes
        refused = requests.post(url, data=oversized, headers=headers, timeout=60)
        assert (refused.status_code, refused.json()["error"]["code"]) == (413, "request_entity_too_large")
        assert ask(openai_client(running.url), "what?", frame) is not None, "served after the refusal"
