"""Clients nobody on this project wrote: seed-format Socket.IO clients (no ids) and other origins.

The original page sent ``query`` ``{question, image}`` and listened only for ``response``; the
original server answered every query, errors included, on ``response``. These tests hold the
app to that for clients that send no id, while clients that do keep ``query_error``.
"""

from __future__ import annotations

import pytest
import requests

from tests.frames import jpeg_data_url
from tests.server_process import AppProcess
from tests.socket_client import RecordingClient
from tests.test_security import websocket_handshake

EXTRA_ORIGIN = "http://widget.example"
MAX_QUESTION = 60


pytestmark = pytest.mark.app("demo", "--max-question-chars", str(MAX_QUESTION), "--cors-origin", EXTRA_ORIGIN)


def responses(client: RecordingClient, count: int) -> list[dict[str, object]]:
    def enough() -> list[dict[str, object]] | None:
        found = [payload for event, payload in client.received if event == "response"]
        return found if len(found) >= count else None

    return client._wait_for(enough, 60, f"fewer than {count} responses")


def test_back_to_back_queries_without_ids_are_each_answered_in_order(client: RecordingClient, frame: str) -> None:
    questions = ["what shape is this?", "what color is this?", "what is this?"]
    acks = [client.sio.call("query", {"question": question, "image": frame}, timeout=10) for question in questions]
    assert all(isinstance(ack, dict) and ack["id"] for ack in acks), acks
    answered = responses(client, 3)
    assert [payload["id"] for payload in answered] == [ack["id"] for ack in acks]
    assert all(payload["answer"] and "error" not in payload for payload in answered)
    assert not [event for event, _ in client.received if event == "query_error"]


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        ({"question": "x" * (MAX_QUESTION + 1), "image": jpeg_data_url()}, "question_too_long"),
        ({"question": "what?", "image": "data:image/jpeg;base64,!!!"}, "bad_image"),
        ({"question": "what?"}, "bad_request"),
        ("not even an object", "bad_request"),
    ],
    ids=["question too long", "bad image", "no image", "payload a string"],
)
def test_errors_reach_clients_without_ids_on_response(client: RecordingClient, payload: object, code: str) -> None:
    ack = client.sio.call("query", payload, timeout=10)
    assert ack["error"]["code"] == code, "the acknowledgement carries the refusal, whenever the event arrives"
    [answer] = responses(client, 1)
    assert str(answer["answer"]).startswith("Sorry, an error occurred: ")
    assert answer["error"]["code"] == code and answer["id"] == ack["id"]
    assert not [event for event, _ in client.received if event == "query_error"]


def test_clients_with_ids_keep_query_error_and_get_their_id_acknowledged(client: RecordingClient) -> None:
    ack = client.sio.call("query", {"id": "mine", "question": "x" * (MAX_QUESTION + 1), "image": "AAAA"}, timeout=10)
    assert (ack["id"], ack["error"]["code"]) == ("mine", "question_too_long")
    kind, payload = client.final("mine")
    assert (kind, payload["code"]) == ("query_error", "question_too_long")


def test_cors_origin_lets_its_pages_call_v1_and_no_other_origin(app: AppProcess) -> None:
    """A browser asks first (a preflight, without credentials) for the headers OpenAI's JS client sends."""
    asked = "authorization, content-type, x-stainless-os"
    for origin, allowed in ((EXTRA_ORIGIN, True), ("http://evil.example", False)):
        preflight = requests.options(
            f"{app.url}/v1/chat/completions",
            headers={
                "Origin": origin,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": asked,
            },
            timeout=10,
        )
        assert preflight.ok
        headers = preflight.headers
        assert headers.get("Access-Control-Allow-Origin") == (origin if allowed else None), origin
        if allowed:
            assert "POST" in headers["Access-Control-Allow-Methods"]
            assert headers["Access-Control-Allow-Headers"] == asked and "Origin" in headers["Vary"]
        models = requests.get(f"{app.url}/v1/models", headers={"Origin": origin}, timeout=10)
        assert models.ok and models.headers.get("Access-Control-Allow-Origin") == (origin if allowed else None)
        missing = requests.get(f"{app.url}/v1/nothing", headers={"Origin": origin}, timeout=10)
        assert missing.status_code == 404 and missing.headers.get("Access-Control-Allow-Origin") == (
            origin if allowed else None
        ), "a refusal the page can read too"
        if allowed:
            assert "x-should-retry" in models.headers["Access-Control-Expose-Headers"], "so the JS client sees it"


def test_cors_origin_widens_the_own_origin(app: AppProcess) -> None:
    assert websocket_handshake(app.url, app.url), "the app's own page must keep connecting"
    assert websocket_handshake(app.url, EXTRA_ORIGIN)
    assert not websocket_handshake(app.url, "http://evil.example")
