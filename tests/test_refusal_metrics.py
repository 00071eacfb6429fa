"""What ``GET /metrics`` counts, per door, on the app built as app.py builds it (``served_app``).

Every request is counted once: refused before the model queue by the door that refused it
(``vlm_refused_requests``), or by how it ended once queued (``vlm_requests``), under the door it came in by.
"""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.doubles import ScriptedBackendDouble
from tests.frames import jpeg_data_url
from tests.in_process import IN_PROCESS_TOKEN, wait_for
from vlm.web import WebApp

pytestmark = pytest.mark.unit

AUTH = {"Authorization": f"Bearer {IN_PROCESS_TOKEN}"}


def counted(web: WebApp, name: str, *labels: str) -> dict[tuple[str, ...], float]:
    """``name``'s samples as ``/metrics`` shows them, by the values of ``labels``, zeros left out."""
    scraped = web.app.test_client().get("/metrics", headers=AUTH)
    assert scraped.status_code == 200
    return {
        tuple(sample.labels[label] for label in labels): sample.value
        for family in text_string_to_metric_families(scraped.get_data(as_text=True))
        for sample in family.samples
        if sample.name == name and sample.value
    }


def chat(question: str) -> dict[str, Any]:
    parts = [{"type": "text", "text": question}, {"type": "image_url", "image_url": {"url": jpeg_data_url()}}]
    return {"model": "any", "messages": [{"role": "user", "content": parts}]}


def response_input(question: str) -> dict[str, Any]:
    parts = [{"type": "input_text", "text": question}, {"type": "input_image", "image_url": jpeg_data_url()}]
    return {"model": "any", "input": [{"role": "user", "content": parts}]}


def test_refusals_on_both_v1_routes_that_serve_the_model_are_counted(served_app: WebApp) -> None:
    client = served_app.app.test_client()
    assert client.post("/v1/chat/completions", json={"messages": []}, headers=AUTH).status_code == 400
    assert client.post("/v1/responses", json={"input": 5}, headers=AUTH).status_code == 400
    assert client.post("/v1/responses", json={"input": "hi"}).status_code == 401
    assert client.get("/v1/responses", headers=AUTH).status_code == 405
    assert client.get("/v1/models").status_code == 401, "no request for the model: not counted"
    assert counted(served_app, "vlm_refused_requests_total", "door", "code") == {
        ("http", "bad_request"): 2,
        ("http", "unauthorized"): 1,
        ("http", "method_not_allowed"): 1,
    }


def test_a_request_that_fails_after_the_queue_is_counted_once_by_how_it_ended(served_app: WebApp) -> None:
    backend = served_app.slot.backend
    assert isinstance(backend, ScriptedBackendDouble)
    backend.fail_with = RuntimeError("the model broke")
    for path, body in (("/v1/chat/completions", chat("hi")), ("/v1/responses", response_input("hi"))):
        assert served_app.app.test_client().post(path, json=body, headers=AUTH).status_code == 500
    assert counted(served_app, "vlm_requests_total", "door", "outcome", "code") == {("http", "error", "model_error"): 2}
    assert counted(served_app, "vlm_refused_requests_total", "door", "code") == {}


def test_watch_event_refusals_are_counted_like_every_other_socketio_refusal(served_app: WebApp) -> None:
    tab = served_app.socketio.test_client(served_app.app, auth={"token": IN_PROCESS_TOKEN})
    assert tab.emit("watch_add", {"condition": " "}, callback=True)["error"]["code"] == "empty_question"
    assert tab.emit("watch_pause", {"id": "nope"}, callback=True)["error"]["code"] == "bad_request"
    assert tab.emit("watch_remove", "nope", callback=True)["error"]["code"] == "bad_request"
    assert tab.emit("watch_frame", {"image": "bm90IGFuIGltYWdl"}, callback=True)["error"]["code"] == "bad_image"
    assert tab.emit("cancel", {}, callback=True)["error"]["code"] == "bad_request"
    tab.disconnect()
    assert counted(served_app, "vlm_refused_requests_total", "door", "code") == {
        ("socketio", "empty_question"): 1,
        ("socketio", "bad_request"): 3,
        ("socketio", "bad_image"): 1,
    }


def test_each_door_counts_its_answers_under_its_own_name(served_app: WebApp) -> None:
    assert served_app.app.test_client().post("/v1/chat/completions", json=chat("hi"), headers=AUTH).status_code == 200
    tab = served_app.socketio.test_client(served_app.app, auth={"token": IN_PROCESS_TOKEN})
    tab.emit("query", {"id": "q", "question": "hi", "image": jpeg_data_url()}, callback=True)
    wait_for(tab, "response")
    added = tab.emit("watch_add", {"condition": "is there a cup?"}, callback=True)
    assert added["watch"]["checks"] == 0
    assert tab.emit("watch_frame", {"image": jpeg_data_url()}, callback=True)["checking"] == 1
    wait_for(tab, "watch_state")
    tab.disconnect()
    assert counted(served_app, "vlm_requests_total", "door", "outcome", "code") == {
        ("http", "answered", ""): 1,
        ("socketio", "answered", ""): 1,
        ("watch", "answered", ""): 1,
    }


def test_the_model_loading_is_a_counted_refusal_at_every_door(unloaded_app: WebApp) -> None:
    client = unloaded_app.app.test_client()
    assert client.post("/v1/responses", json={"input": "hi"}, headers=AUTH).status_code == 503
    assert client.post("/v1/chat/completions", json=chat("hi"), headers=AUTH).status_code == 503
    tab = unloaded_app.socketio.test_client(unloaded_app.app, auth={"token": IN_PROCESS_TOKEN})
    assert tab.emit("watch_add", {"condition": "a cup?"}, callback=True)["error"]["code"] == "loading"
    assert tab.emit("watch_frame", {"image": jpeg_data_url()}, callback=True)["error"]["code"] == "loading"
    assert tab.emit("query", {"question": "hi", "image": jpeg_data_url()}, callback=True)["error"]["code"] == "loading"
    tab.disconnect()
    assert counted(unloaded_app, "vlm_refused_requests_total", "door", "code") == {
        ("http", "loading"): 2,
        ("socketio", "loading"): 3,
    }
