"""The moondream backend end to end: the real app, the real python-socketio client, offline.

moondream2's weights cannot be downloaded here, so the app serves the tiny ``trust_remote_code`` model of
scripts/build_remote_code_fixture.py instead: it breaks under transformers 5 the way moondream2 does and
offers moondream2's API (streaming ``query`` and ``caption``, ``detect``, ``point``). Its weights are
random, so these tests check the path and the shape of every reply (remote-code loader, backend, scheduler,
wire protocol), not what the answers say.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests

from scripts.build_remote_code_fixture import QUESTION, build_remote_code_fixture
from tests.server_process import AppProcess
from tests.socket_client import RecordingClient

MAX_NEW_TOKENS = 4


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppProcess]:
    model = build_remote_code_fixture(tmp_path_factory.mktemp("moondream-like"))
    args = ["--model", str(model), "--backend", "moondream", "--max-new-tokens", str(MAX_NEW_TOKENS)]
    with AppProcess(args) as running:
        yield running


def deltas(client: RecordingClient, request_id: str) -> list[str]:
    return [payload["delta"] for event, payload in client.received if event == "stream" and payload["id"] == request_id]


def response(client: RecordingClient, payload: dict[str, Any], event: str) -> dict[str, Any]:
    kind, reply = client.ask(payload, event)
    assert kind == "response", reply
    return reply


def test_info_lists_the_skills(app: AppProcess) -> None:
    info = requests.get(f"{app.url}/api/info", timeout=5).json()
    assert info["backend"] == "moondream"
    assert set(info["capabilities"]) == {"query", "caption", "detect", "point", "stream"}


def test_query_streams_its_answer_within_the_token_budget(client: RecordingClient, frame: str) -> None:
    reply = response(client, {"id": "q1", "question": QUESTION, "image": frame}, "query")
    streamed = deltas(client, "q1")
    assert streamed, "the answer was not streamed"
    assert reply["answer"] and reply["answer"] == "".join(streamed).strip()
    assert len(streamed) == reply["timing"]["tokens"] <= MAX_NEW_TOKENS


@pytest.mark.parametrize("length", ["short", "normal"])
def test_caption_streams(client: RecordingClient, frame: str, length: str) -> None:
    reply = response(client, {"id": length, "skill": "caption", "length": length, "image": frame}, "skill")
    assert reply["skill"] == "caption"
    assert reply["answer"] == "".join(deltas(client, length)).strip()


def test_detect_returns_boxes_in_the_frame(client: RecordingClient, frame: str) -> None:
    reply = response(client, {"id": "d1", "skill": "detect", "object": "Shape", "image": frame}, "skill")
    assert reply["skill"] == "detect" and reply["objects"]
    for box in reply["objects"]:
        assert 0 <= box["x_min"] < box["x_max"] <= 1 and 0 <= box["y_min"] < box["y_max"] <= 1, box


def test_point_returns_points_in_the_frame(client: RecordingClient, frame: str) -> None:
    reply = response(client, {"id": "p1", "skill": "point", "object": "shape", "image": frame}, "skill")
    assert reply["skill"] == "point" and reply["points"]
    for point in reply["points"]:
        assert 0 <= point["x"] <= 1 and 0 <= point["y"] <= 1, point
