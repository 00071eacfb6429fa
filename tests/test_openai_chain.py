"""Two real instances chained: B runs ``--backend openai`` against A's ``/v1``.

A Socket.IO client of B must hear exactly A's greedy answer, streamed, and the failure and
cancel paths must cross the hop too.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.openai_client import ask, openai_client
from tests.server_process import AppProcess, serving
from tests.socket_client import RecordingClient
from vlm.backends.registry import load_backend
from vlm.config import Settings
from vlm.errors import ModelLoadError

TOKEN = "upstream-secret"


def chained_to(upstream: AppProcess, model: Path, *args: str, key: str = TOKEN) -> AppProcess:
    """An instance whose model is ``upstream``; the key comes from OPENAI_API_KEY, as a deployment would set it."""
    return AppProcess(
        ["--backend", "openai", "--base-url", f"{upstream.url}/v1", "--model", str(model), *args],
        env={"OPENAI_API_KEY": key},
    )


@pytest.fixture(scope="module")
def upstream(tiny_model: Path) -> Iterator[AppProcess]:
    with serving(tiny_model, max_new_tokens=12, token=TOKEN) as running:
        yield running


@pytest.fixture(scope="module")
def chained(upstream: AppProcess, tiny_model: Path) -> Iterator[AppProcess]:
    with chained_to(upstream, tiny_model, "--max-new-tokens", "12") as running:
        yield running


@pytest.fixture(scope="module")
def clients(upstream: AppProcess, chained: AppProcess) -> Iterator[tuple[RecordingClient, RecordingClient]]:
    """One Socket.IO client of A and one of B, kept for the module (each close costs the server seconds)."""
    direct, via = RecordingClient(upstream.url, auth={"token": TOKEN}), RecordingClient(chained.url)
    yield direct, via
    direct.close()
    via.close()


def events_for(client: RecordingClient, payload: dict[str, object], event: str) -> list[tuple[str, dict[str, object]]]:
    """Every event the client received for this one request, in order."""
    client.ask(payload, event=event)
    return [(kind, body) for kind, body in client.received if body.get("id") == payload["id"]]


@pytest.mark.parametrize(
    ("event", "payload"),
    [
        ("query", {"id": "q", "question": "what shape is this?"}),
        ("skill", {"id": "c", "skill": "caption", "length": "short"}),
    ],
    ids=["query", "caption"],
)
def test_chained_instance_streams_exactly_the_upstream_answer(
    clients: tuple[RecordingClient, RecordingClient], frame: str, event: str, payload: dict[str, object]
) -> None:
    direct, via = (events_for(client, {**payload, "image": frame}, event) for client in clients)
    assert direct[-1][0] == via[-1][0] == "response"
    answer = direct[-1][1]["answer"]
    assert answer and via[-1][1]["answer"] == answer
    kinds = [kind for kind, _ in via]
    assert kinds.count("stream") > 1 and kinds.index("response") == len(kinds) - 1, "streamed, then answered"
    assert "".join(str(body["delta"]) for kind, body in via if kind == "stream") == answer


def test_chained_instance_serves_the_openai_api_too(upstream: AppProcess, chained: AppProcess, frame: str) -> None:
    assert ask(openai_client(chained.url), "what?", frame) == ask(openai_client(upstream.url, TOKEN), "what?", frame)


def test_stop_strings_cross_the_hop(upstream: AppProcess, chained: AppProcess, frame: str) -> None:
    direct = openai_client(upstream.url, TOKEN)
    words = ask(direct, "what shape is this?", frame).split()
    assert len(words) >= 3, words
    stop = {"stop": [words[len(words) // 2]]}
    answer = ask(direct, "what shape is this?", frame, **stop)
    assert len(answer.split()) < len(words)
    assert ask(openai_client(chained.url), "what shape is this?", frame, **stop) == answer


def test_text_only_question_is_refused_clearly_where_the_backend_needs_an_image(chained: AppProcess) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        openai_client(chained.url).chat.completions.create(model="any", messages=[{"role": "user", "content": "hi"}])
    assert refused.value.code == "image_required" and refused.value.param == "messages"
    assert "image" in refused.value.message


def test_missing_base_url_is_refused_with_a_sentence() -> None:
    with pytest.raises(ModelLoadError, match="--backend openai needs --base-url"):
        load_backend(Settings(backend="openai"))


def test_wrong_upstream_key_fails_at_start_with_advice(upstream: AppProcess, tiny_model: Path) -> None:
    with pytest.raises(RuntimeError, match="exited with 2") as failed, chained_to(upstream, tiny_model, key="wrong"):
        pass
    assert "Could not use the OpenAI-compatible server" in str(failed.value)
    assert "AuthenticationError" in str(failed.value)


def test_cancel_on_the_chained_instance_stops_the_upstream_generation(slow_model: Path, frame: str) -> None:
    with (
        serving(slow_model, max_new_tokens=300, token=TOKEN) as slow,
        chained_to(slow, slow_model, "--max-new-tokens", "300") as front,
    ):
        asker = RecordingClient(front.url)
        try:
            asker.start({"id": "long", "question": "describe", "image": frame})
            assert asker.sio.call("cancel", {"id": "long"}, timeout=10)["cancelled"] is True
        finally:
            asker.close()
        started = time.monotonic()
        # The upstream runs one batch at a time: a 2-token question is answered promptly only if the
        # 300-token generation (about a minute here) was stopped when its stream was closed.
        assert ask(openai_client(slow.url, TOKEN), "q", frame, max_tokens=2, timeout=20)
        assert time.monotonic() - started < 20


def test_upstream_gone_is_an_upstream_error(
    upstream: AppProcess, clients: tuple[RecordingClient, RecordingClient], frame: str
) -> None:
    """Runs last in this module: it stops the upstream."""
    upstream.terminate()
    kind, payload = clients[1].ask({"id": "orphan", "question": "what?", "image": frame})
    assert (kind, payload["code"]) == ("query_error", "upstream_error")
