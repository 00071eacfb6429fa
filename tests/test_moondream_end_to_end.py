"""The moondream backend end to end: the real app, the real python-socketio client, offline.

moondream2's weights cannot be downloaded here, so the app serves the look-alike of
scripts/build_remote_code_fixture.py instead: it breaks under transformers 5 the way moondream2 does,
offers moondream2's API and behaves like its code (bfloat16, sampling defaults, word-chunked streaming,
crop tiling, one KV cache, a tokenizer fetched from the Hugging Face cache). Its weights are random, so
these tests check the path and the shape of every reply, and what the model reports about itself.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from scripts.build_remote_code_fixture import QUESTION, TOKENIZER_REPO, fixture_image
from tests.frames import data_url
from tests.moondream_like import MoondreamLike
from tests.server_process import AppProcess
from tests.socket_client import RecordingClient

MAX_NEW_TOKENS = 64


def serve(moondream_like: MoondreamLike, *extra: str, hub_cache: Path | None = None) -> AppProcess:
    args = [
        "--model",
        str(moondream_like.folder),
        "--backend",
        "moondream",
        "--max-new-tokens",
        str(MAX_NEW_TOKENS),
        *extra,
    ]
    return AppProcess(args, env={"HF_HUB_CACHE": str(hub_cache or moondream_like.hub_cache)})


@pytest.fixture(scope="module")
def app(moondream_like: MoondreamLike) -> Iterator[AppProcess]:
    with serve(moondream_like, "--dtype", "bfloat16") as running:  # moondream2's own dtype: expected.json's
        yield running


@pytest.fixture(scope="module")
def expected(moondream_like: MoondreamLike) -> dict[str, Any]:
    return json.loads((moondream_like.folder / "expected.json").read_text())


FIXTURE_FRAME = data_url(fixture_image(), "PNG")  # lossless: the model sees expected.json's pixels


def deltas(client: RecordingClient, request_id: str) -> list[str]:
    return [payload["delta"] for event, payload in client.received if event == "stream" and payload["id"] == request_id]


def response(client: RecordingClient, payload: dict[str, Any], event: str) -> dict[str, Any]:
    kind, reply = client.ask(payload, event)
    assert kind == "response", reply
    return reply


def chat(app: AppProcess, **body: Any) -> dict[str, Any]:
    content = [{"type": "image_url", "image_url": {"url": FIXTURE_FRAME}}, {"type": "text", "text": QUESTION}]
    reply = requests.post(
        f"{app.url}/v1/chat/completions",
        timeout=60,
        json={"model": "any", "messages": [{"role": "user", "content": content}], **body},
    )
    assert reply.status_code == 200, reply.text
    return reply.json()


def test_info_reports_the_models_dtype_frame_size_and_skills(app: AppProcess) -> None:
    info = requests.get(f"{app.url}/api/info", timeout=5).json()
    assert info["backend"] == "moondream"
    assert set(info["capabilities"]) == {"query", "caption", "detect", "point", "stream"}
    assert info["dtype"] == "bfloat16"
    assert info["image_size"] == info["input_size"] == 1145  # see vlm.backends.moondream.frame_side
    assert "(bfloat16)" in app.log(), "the ready line names the weights' dtype"


def test_query_is_greedy_with_true_token_counts(client: RecordingClient, expected: dict[str, Any]) -> None:
    first = response(client, {"id": "q1", "question": QUESTION, "image": FIXTURE_FRAME}, "query")
    streamed = deltas(client, "q1")
    again = response(client, {"id": "q2", "question": QUESTION, "image": FIXTURE_FRAME}, "query")
    assert first["answer"] == again["answer"] == expected["answer"].strip() == "".join(streamed).strip()
    assert first["timing"]["tokens"] == expected["tokens"]
    # The running batch streams each token; moondream2's own stream would have sent whole words.
    assert len(streamed) > len(expected["answer"].split())
    assert first["timing"]["prompt_tokens"] > 730  # the image prefix, then the question
    assert first["finish_reason"] == "stop"


def test_v1_answer_cut_at_max_tokens_says_length(app: AppProcess, expected: dict[str, Any]) -> None:
    reply = chat(app, max_tokens=5)
    assert reply["choices"][0]["finish_reason"] == "length"
    assert reply["choices"][0]["message"]["content"] == expected["answer"][:5].strip()
    assert chat(app)["choices"][0]["finish_reason"] == "stop"


def test_v1_temperature_reaches_the_model(app: AppProcess) -> None:
    sampled = {chat(app, temperature=1.0, max_tokens=20)["choices"][0]["message"]["content"] for _ in range(5)}
    greedy = {chat(app, temperature=0, max_tokens=20)["choices"][0]["message"]["content"] for _ in range(2)}
    assert len(sampled) > 1 and len(greedy) == 1


@pytest.mark.parametrize("length", ["short", "normal"])
def test_caption_streams(client: RecordingClient, frame: str, length: str) -> None:
    reply = response(client, {"id": length, "skill": "caption", "length": length, "image": frame}, "skill")
    assert reply["skill"] == "caption"
    assert reply["answer"] == "".join(deltas(client, length)).strip()


def test_detect_returns_boxes_in_the_frame(client: RecordingClient, frame: str) -> None:
    reply = response(client, {"id": "d1", "skill": "detect", "object": "Shape", "image": frame}, "skill")
    assert reply["skill"] == "detect" and isinstance(reply["objects"], list)
    for box in reply["objects"]:
        assert 0 <= box["x_min"] < box["x_max"] <= 1 and 0 <= box["y_min"] < box["y_max"] <= 1, box


def test_point_returns_points_in_the_frame(client: RecordingClient, frame: str) -> None:
    reply = response(client, {"id": "p1", "skill": "point", "object": "shape", "image": frame}, "skill")
    assert reply["skill"] == "point" and reply["points"]
    for point in reply["points"]:
        assert 0 <= point["x"] <= 1 and 0 <= point["y"] <= 1, point


def test_missing_tokenizer_is_named_with_the_hf_download_line(moondream_like: MoondreamLike, tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="exited with 2") as failure, serve(moondream_like, hub_cache=tmp_path):
        pass
    log = str(failure.value)
    assert f"tokenizer.json of {TOKENIZER_REPO} (revision main)" in log
    assert f"hf download {TOKENIZER_REPO} tokenizer.json" in log
    assert "huggingface-cli" not in log


def test_a_prompt_and_answer_longer_than_the_context_end_cleanly(moondream_like: MoondreamLike) -> None:
    """moondream2's 2048-position context is not checked by its code: an answer running past it failed mid-stream
    as model_error (its decode loop indexes its mask past the end), and so did a question too long to fit."""
    long_budget = ("--max-new-tokens", "1500", "--max-question-chars", "2500")
    with serve(moondream_like, *long_budget) as running:
        client = RecordingClient(running.url)
        try:
            frame = data_url(fixture_image(), "PNG")
            kind, reply = client.ask({"id": "short", "question": QUESTION, "image": frame})
            room = 2048 - reply["timing"]["prompt_tokens"]  # the frame's positions, the template's, the question's
            question = QUESTION + " " + "x" * (room - 16)  # a token a character: 16 positions left to answer in
            kind, reply = client.ask({"id": "long", "question": question, "image": frame}, timeout_s=600)
            assert kind == "response", reply
            timing = reply["timing"]
            assert reply["finish_reason"] == "length" and timing["prompt_tokens"] + timing["tokens"] <= 2048, reply
            kind, reply = client.ask({"id": "huge", "question": QUESTION + " " + "x" * room, "image": frame})
            assert (kind, reply["code"]) == ("query_error", "question_too_long"), reply
            kind, reply = client.ask({"id": "after", "question": QUESTION, "image": frame})
            assert kind == "response" and reply["finish_reason"] in {"stop", "length"}
        finally:
            client.close()


def single_row_steps(app: AppProcess) -> tuple[float, float]:
    """(steps of the running batch, those that decoded one row) so far, from the app's own /metrics."""
    families = text_string_to_metric_families(requests.get(f"{app.url}/metrics", timeout=10).text)
    samples = {(s.name, s.labels.get("le")): s.value for family in families for s in family.samples}
    return samples[("vlm_batch_size_count", None)], samples[("vlm_batch_size_bucket", "1.0")]


ASKS = [
    {"question": f"{QUESTION} {word}", "image": data_url(Image.new("RGB", (64, 48), colour), "PNG")}
    for word, colour in zip("abcd", ("red", "navy", "olive", "white"), strict=True)
]


def ask_alone_then_together(app: AppProcess) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``ASKS`` one after another from one client, then all at once from a client each: the replies both ways."""
    clients = [RecordingClient(app.url) for _ in ASKS]
    try:
        alone = [response(clients[0], {"id": f"alone-{n}", **ask}, "query") for n, ask in enumerate(ASKS)]
        with ThreadPoolExecutor(len(ASKS)) as pool:
            together = list(
                pool.map(lambda n: response(clients[n], {"id": f"together-{n}", **ASKS[n]}, "query"), range(len(ASKS)))
            )
    finally:
        for client in clients:
            client.close()
    for one, other in zip(alone, together, strict=True):
        assert (one["answer"], one["finish_reason"]) == (other["answer"], other["finish_reason"])
        assert one["timing"]["tokens"] == other["timing"]["tokens"]
    return alone, together


def test_clients_at_once_decode_together_and_get_what_each_gets_alone(app: AppProcess) -> None:
    steps, single = single_row_steps(app)
    ask_alone_then_together(app)
    after_steps, after_single = single_row_steps(app)
    assert after_steps - steps > after_single - single, "no step decoded two answers at once"


@pytest.mark.parametrize(
    "flags",
    [("--batching", "wave"), ("--prepare", "prefill", "--prepare-threads", "2")],
    ids=["wave", "prefilled-ahead"],
)
def test_other_schedules_give_the_running_batchs_answers(
    app: AppProcess, moondream_like: MoondreamLike, flags: tuple[str, ...]
) -> None:
    """``--batching wave`` runs each question through moondream2's own loop, one after another, and a lone row
    of the running batch computes the same numbers; ``--prepare prefill`` starts each answer on a preparing
    thread while the worker decodes others. Both give the same answers as the default."""
    continuous, _ = ask_alone_then_together(app)
    with serve(moondream_like, "--dtype", "bfloat16", *flags) as other_app:
        other, _ = ask_alone_then_together(other_app)
    assert [reply["answer"] for reply in other] == [reply["answer"] for reply in continuous]
