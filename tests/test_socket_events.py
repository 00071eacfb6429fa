"""The Socket.IO events in process, through Flask-SocketIO's own test client (no server, no model).

The real-process tests (test_server.py, test_clients.py, test_attacks.py) check the same promises
over a real socket; these pin each handler's wire shape in a fraction of the time.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from flask_socketio import SocketIOTestClient

from tests.frames import jpeg_data_url
from tests.in_process import IN_PROCESS_TOKEN as TOKEN
from tests.in_process import wait_for
from vlm.socket_transport import emit
from vlm.watch import WatchHub
from vlm.web import WebApp

pytestmark = pytest.mark.unit


@pytest.fixture
def client(served_app: WebApp) -> Iterator[SocketIOTestClient]:
    connected = served_app.socketio.test_client(served_app.app, auth={"token": TOKEN})
    yield connected
    if connected.is_connected():
        connected.disconnect()


def test_a_wrong_token_is_refused_at_connect(served_app: WebApp) -> None:
    stranger = served_app.socketio.test_client(served_app.app, auth={"token": "wrong"})
    assert not stranger.is_connected()


def test_a_query_is_acknowledged_streamed_and_answered_in_the_protocol_shape(client: SocketIOTestClient) -> None:
    ack = client.emit("query", {"id": "q1", "question": "red circle", "image": jpeg_data_url()}, callback=True)
    assert ack == {"id": "q1"}
    events = wait_for(client, "response")
    deltas = [event["args"][0] for event in events if event["name"] == "stream"]
    assert all(delta["id"] == "q1" for delta in deltas)
    assert "".join(delta["delta"] for delta in deltas) == "echo: red circle"
    (response,) = [event["args"][0] for event in events if event["name"] == "response"]
    assert list(response) == ["id", "answer", "finish_reason", "timing"], "no skill/objects/points on a query"
    assert (response["id"], response["answer"], response["finish_reason"]) == ("q1", "echo: red circle", "stop")
    assert list(response["timing"]) == [
        "queue_ms",
        "decode_ms",
        "model_ms",
        "first_token_ms",
        "total_ms",
        "tokens",
        "prompt_tokens",
    ]
    assert response["timing"]["tokens"] == 3


def test_a_refusal_in_the_handler_reaches_the_sender_as_query_error(client: SocketIOTestClient) -> None:
    ack = client.emit("query", {"id": 7, "question": "hi", "image": "not an image"}, callback=True)
    assert ack == {"id": "7", "error": {"code": "bad_image", "message": "image is not valid Base64"}}
    (event,) = client.get_received()
    assert event["name"] == "query_error"
    assert event["args"][0] == {"id": "7", "code": "bad_image", "message": "image is not valid Base64"}


def test_a_client_without_ids_hears_refusals_on_response_like_the_original_page(client: SocketIOTestClient) -> None:
    ack = client.emit("query", {"question": "", "image": jpeg_data_url()}, callback=True)
    (event,) = client.get_received()
    assert event["name"] == "response"
    assert event["args"][0] == {
        "id": ack["id"],
        "answer": "Sorry, an error occurred: question is empty",
        "error": {"code": "empty_question", "message": "question is empty"},
    }


def test_before_the_model_loads_a_query_is_refused_as_loading(unloaded_app: WebApp) -> None:
    client = unloaded_app.socketio.test_client(unloaded_app.app, auth={"token": TOKEN})
    ack = client.emit("query", {"id": "early", "question": "hi", "image": jpeg_data_url()}, callback=True)
    assert (ack["id"], ack["error"]["code"]) == ("early", "loading")
    (event,) = client.get_received()
    assert (event["name"], event["args"][0]["code"]) == ("query_error", "loading")


def test_a_skill_the_model_lacks_is_refused(client: SocketIOTestClient) -> None:
    client.emit("skill", {"id": "d", "skill": "detect", "object": "cup", "image": jpeg_data_url()}, callback=True)
    (event,) = client.get_received()
    assert event["args"][0] == {"id": "d", "code": "unsupported_skill", "message": "the loaded model cannot detect"}


def test_a_caption_names_its_skill(client: SocketIOTestClient) -> None:
    client.emit("skill", {"id": "c", "skill": "caption", "image": jpeg_data_url()}, callback=True)
    (response,) = [event["args"][0] for event in wait_for(client, "response") if event["name"] == "response"]
    assert response["skill"] == "caption"


def test_wrong_argument_counts_are_refused_and_cancel_is_only_acknowledged(client: SocketIOTestClient) -> None:
    assert client.emit("cancel", callback=True) == {
        "error": {"code": "bad_request", "message": "send exactly one payload object"}
    }, "refused in the shape of every other refusal"
    assert client.get_received() == []
    ack = client.emit("query", {"id": "two"}, "payloads", callback=True)
    (event,) = client.get_received()
    refusal = {"code": "bad_request", "message": "send exactly one payload object"}
    assert event["args"][0] == {"id": "two", **refusal}
    assert ack == {"id": "two", "error": refusal}, "the acknowledgement carries the refusal too"
    assert client.emit("cancel", {"id": "nothing-running"}, callback=True) == {
        "id": "nothing-running",
        "cancelled": False,
    }
    for malformed in ("nope", {}):
        assert client.emit("cancel", malformed, callback=True)["error"]["code"] == "bad_request"
    assert client.get_received() == [], "a malformed cancel is no failed request: no event"


def test_an_event_nobody_handles_is_not_acknowledged(client: SocketIOTestClient) -> None:
    assert client.emit("no_such_event", {"id": "x"}, callback=True) is None
    assert client.get_received() == []


def test_one_address_keeps_at_most_its_share_of_the_watches(served_app: WebApp) -> None:
    """Eight connections from one address, eight watches each, took every watch the server keeps."""
    tabs = [served_app.socketio.test_client(served_app.app, auth={"token": TOKEN}) for _ in range(3)]
    acks = [tab.emit("watch_add", {"condition": "is there a cup?"}, callback=True) for tab in tabs for _ in range(8)]
    assert sum("watch" in ack for ack in acks) == WatchHub.MAX_PER_ADDRESS
    assert acks[-1]["error"] == {"code": "busy", "message": "one address can keep at most 16 watches"}


def test_watch_events_share_the_namespace(client: SocketIOTestClient) -> None:
    added = client.emit("watch_add", {"condition": "is there a cup?"}, callback=True)
    assert added["watch"]["condition"] == "is there a cup?"
    refused = client.emit("watch_pause", {"id": added["watch"]["id"], "paused": "yes"}, callback=True)
    assert refused == {"error": {"code": "bad_request", "message": "paused must be true or false"}}
    assert client.emit("watch_remove", {"id": added["watch"]["id"]}, callback=True) == {"removed": added["watch"]["id"]}


def test_live_frames_are_logged_only_at_debug(client: SocketIOTestClient, caplog: pytest.LogCaptureFixture) -> None:
    """A live page asks several times a second all day: one INFO line each was about 100 MB of log a day."""
    caplog.set_level(logging.DEBUG, logger="vlm.socket_events")
    for rid, live in (("typed", False), ("live", True)):
        client.emit("query", {"id": rid, "question": "red circle", "image": jpeg_data_url(), "live": live})
        wait_for(client, "response")
    levels = {record.getMessage().split()[1]: record.levelno for record in caplog.records if "chars;" in record.msg}
    assert levels == {"typed": logging.INFO, "live": logging.DEBUG}


def test_an_event_for_a_client_that_left_is_dropped_not_published(
    served_app: WebApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With --message-queue, an event for a client no longer connected here went to Redis, and a hung Redis held
    the process's only sending thread ~10 s per such event: every client that left mid-answer stalled the rest
    (scale-out audit). An event for one client never goes through the queue; one for a client gone is dropped."""
    sent: list[tuple[str, str | None, bool]] = []
    monkeypatch.setattr(
        served_app.socketio, "emit", lambda event, payload, to, ignore_queue: sent.append((event, to, ignore_queue))
    )
    staying = served_app.socketio.test_client(served_app.app, auth={"token": TOKEN})
    leaving = served_app.socketio.test_client(served_app.app, auth={"token": TOKEN})
    manager = served_app.socketio.server.manager
    here, gone = (manager.sid_from_eio_sid(each.eio_sid, "/") for each in (staying, leaving))
    leaving.disconnect()
    for sid in (here, gone, None):
        emit(served_app.socketio, "stream", {"id": "q", "delta": "word"}, sid)
    assert sent == [("stream", here, True), ("stream", None, False)]
    staying.disconnect()
