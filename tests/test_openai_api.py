"""``/v1`` through the official ``openai`` client, against the real app serving a real tiny model."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
import requests

from tests.conftest import jpeg_data_url
from tests.openai_client import ask, frame_question, openai_client
from tests.server_process import AppProcess
from tests.socket_client import RecordingClient

TOKEN = "v1-shared-secret"


@pytest.fixture(scope="module")
def app(tiny_model: Path) -> Iterator[AppProcess]:
    with AppProcess(["--model", str(tiny_model), "--max-new-tokens", "12"]) as running:
        yield running


def streamed(client: openai.OpenAI, question: str, image_url: str) -> list[str]:
    """The content deltas of a streamed completion, in order."""
    chunks = client.chat.completions.create(model="any", messages=frame_question(question, image_url), stream=True)
    return [chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices]


def test_models_lists_the_loaded_model(app: AppProcess, tiny_model: Path) -> None:
    assert [model.id for model in openai_client(app.url).models.list()] == [str(tiny_model)]


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
        model="any", messages=frame_question("what shape is this?", frame), max_tokens=2)
    assert completion.choices[0].finish_reason == "length"
    assert len(completion.choices[0].message.content or "") < len(ask(openai_client(app.url), "what shape is this?",
                                                                      frame))


def test_token_is_required_when_the_server_has_one(tiny_model: Path, frame: str) -> None:
    with AppProcess(["--model", str(tiny_model), "--max-new-tokens", "4"], env={"VLM_TOKEN": TOKEN}) as guarded:
        anonymous = requests.get(f"{guarded.url}/v1/models", timeout=5)
        assert anonymous.status_code == 401
        assert anonymous.json()["error"]["type"] == "authentication_error"
        with pytest.raises(openai.AuthenticationError):
            ask(openai_client(guarded.url, api_key="wrong"), "what?", frame)
        assert ask(openai_client(guarded.url, api_key=TOKEN), "what?", frame)


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
        ({"messages": [{"role": "user", "content": "no frame here"}]}, "bad_request"),
        ({"messages": frame_question("what?", jpeg_data_url()), "max_tokens": 0}, "bad_request"),
        ({"messages": "hello"}, "bad_request"),
    ],
    ids=["not base64", "not an image", "empty question", "no image part", "zero max_tokens", "messages not a list"],
)
def test_bad_input_gets_400_in_openai_shape(app: AppProcess, body: dict[str, object], code: str) -> None:
    refused = requests.post(f"{app.url}/v1/chat/completions", json={"model": "any", **body}, timeout=30)
    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == code and refused.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("mode", ["eventlet", "gevent"])
def test_streaming_under_green_async_modes_keeps_the_server_responsive(slow_model: Path, frame: str,
                                                                       mode: str) -> None:
    """The view waits for a native worker thread; under a green hub that wait must not stall other requests."""
    with AppProcess(["--model", str(slow_model), "--max-new-tokens", "12", "--async-mode", mode]) as running:
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
