"""The pacing of a client's streamed text: while others stream, at most one delta per interval, merged, never
overtaken; alone, every delta at once."""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from types import SimpleNamespace

import pytest

from vlm.outbox import Coalescing, Outbox, Outgoing, Pacer
from vlm.socket_sink import STREAM_EVENT, STREAM_INTERVAL_S, merged_deltas

pytestmark = pytest.mark.unit

INTERVAL = STREAM_INTERVAL_S
STREAM_PACING = Coalescing(STREAM_EVENT, merged_deltas, INTERVAL)


def delta(text: str, sid: str = "a", request: str = "q1") -> Outgoing:
    return Outgoing("stream", {"id": request, "delta": text}, sid)


def response(sid: str = "a", request: str = "q1") -> Outgoing:
    return Outgoing("response", {"id": request, "answer": "done"}, sid)


def sharing(pacer: Pacer, now: float = 0.0) -> Pacer:
    """``pacer`` with another client (``other``) streaming since ``now``."""
    assert pacer.admit(delta("x", sid="other"), now) == [delta("x", sid="other")]
    return pacer


def test_a_client_streaming_alone_gets_every_delta_at_once_until_another_streams() -> None:
    pacer = Pacer(STREAM_PACING)
    for number, now in enumerate((0.0, 0.01, 0.02)):
        assert pacer.admit(delta(str(number)), now) == [delta(str(number))]
    assert pacer.admit(delta("b", sid="b"), 0.03) == [delta("b", sid="b")], "the other's first delta goes at once"
    assert pacer.admit(delta("3"), 0.035) == [], "now they share: paced"
    assert pacer.due(0.02 + INTERVAL) == [delta("3")]


def test_the_first_delta_goes_at_once_and_the_next_ones_wait_and_merge() -> None:
    pacer = sharing(Pacer(STREAM_PACING))
    assert pacer.admit(delta("a "), 0.0) == [delta("a ")]
    assert pacer.admit(delta("red "), 0.01) == []
    assert pacer.admit(delta("ball"), 0.02) == []
    assert pacer.due(INTERVAL / 2) == []
    assert pacer.due(INTERVAL) == [delta("red ball")]
    assert pacer.due(2 * INTERVAL) == []


def test_an_answer_releases_the_waiting_delta_before_it() -> None:
    pacer = sharing(Pacer(STREAM_PACING))
    pacer.admit(delta("a "), 0.0)
    pacer.admit(delta("cat"), 0.01)
    assert pacer.admit(response(), 0.02) == [delta("cat"), response()]
    assert not pacer.held


def test_two_requests_of_one_client_never_merge() -> None:
    pacer = sharing(Pacer(STREAM_PACING))
    pacer.admit(delta("one", request="q1"), 0.0)
    pacer.admit(delta("two", request="q1"), 0.01)
    assert pacer.admit(delta("three", request="q2"), 0.02) == [delta("two", request="q1")]
    assert pacer.due(0.02 + INTERVAL) == [delta("three", request="q2")]


def test_clients_are_paced_apart() -> None:
    pacer = sharing(Pacer(STREAM_PACING))
    pacer.admit(delta("a", sid="a"), 0.0)
    assert pacer.admit(delta("b", sid="a"), 0.01) == []
    assert pacer.admit(delta("c", sid="b"), 0.01) == [delta("c", sid="b")]
    assert pacer.next_due_s(0.01) == pytest.approx(INTERVAL - 0.01)


def test_an_event_to_everyone_releases_every_waiting_delta_first() -> None:
    pacer = sharing(Pacer(STREAM_PACING))
    for sid in ("a", "b"):
        pacer.admit(delta("1", sid=sid), 0.0)
        pacer.admit(delta("2", sid=sid), 0.01)
    alert = Outgoing("watch_alert", {"text": "door open"}, None)
    assert pacer.admit(alert, 0.02) == [delta("2", sid="a"), delta("2", sid="b"), alert]


def test_clients_quiet_for_an_interval_are_forgotten() -> None:
    pacer = Pacer(STREAM_PACING)
    for number in range(100):
        pacer.admit(delta("x", sid=f"client-{number}"), 0.0)
    pacer.due(INTERVAL)
    assert pacer.last_sent == {} and pacer.next_due_s(INTERVAL) is None


def test_deltas_merge_only_within_one_request() -> None:
    assert merged_deltas({"id": "q1", "delta": "a"}, {"id": "q1", "delta": "b"}) == {"id": "q1", "delta": "ab"}
    assert merged_deltas({"id": "q1", "delta": "a"}, {"id": "q2", "delta": "b"}) is None


class SocketIODouble:
    """Records emits into one client socket's queue; emitting to ``refuses`` raises, as a transport error would.
    An emit waits for ``may_emit`` (set unless the test clears it), as one that lost the CPU would."""

    def __init__(self, refuses: str = "") -> None:
        self.refuses = refuses
        self.emitted: list[tuple[str, str | None]] = []
        self.emitting = threading.Event()
        self.may_emit = threading.Event()
        self.may_emit.set()
        self.socket_queue: queue.Queue[str] = queue.Queue()
        self.server = SimpleNamespace(
            manager=SimpleNamespace(eio_sid_from_sid=lambda sid, namespace: None, is_connected=lambda sid, ns: True),
            eio=SimpleNamespace(sockets={"client": SimpleNamespace(queue=self.socket_queue)}),
        )

    def emit(self, event: str, payload: dict[str, object], to: str | None, ignore_queue: bool = False) -> None:
        self.emitting.set()
        self.may_emit.wait(5)
        if to == self.refuses:
            raise ConnectionError("the transport failed")
        self.emitted.append((event, to))
        self.socket_queue.put(event)


def test_a_failed_delivery_does_not_stop_the_others() -> None:
    socketio = SocketIODouble(refuses="broken")
    outbox = Outbox(socketio, "threading", STREAM_PACING)  # type: ignore[arg-type]
    outbox.send("response", {"id": "q1"}, "broken")
    outbox.send("response", {"id": "q2"}, "fine")
    deadline = time.monotonic() + 5
    while outbox.undelivered or not socketio.emitted:
        assert time.monotonic() < deadline, "the pump stopped"
        time.sleep(0.01)
    assert socketio.emitted == [("response", "fine")]


def test_an_event_the_pump_is_emitting_is_still_undelivered() -> None:
    """A drain on SIGTERM exits once the outbox is empty: between the pump taking an answer off its queue and
    emitting it, the answer was in neither ``pending`` nor ``held``, and went unsent."""
    socketio = SocketIODouble()
    socketio.may_emit.clear()
    outbox = Outbox(socketio, "threading", STREAM_PACING)  # type: ignore[arg-type]
    outbox.send("response", {"id": "q1"}, "a")
    assert socketio.emitting.wait(5)
    assert outbox.pending == deque() and outbox.undelivered, "taken, not emitted: still undelivered"
    socketio.may_emit.set()
    deadline = time.monotonic() + 5
    while outbox.undelivered:
        assert time.monotonic() < deadline, "the pump stopped"
        time.sleep(0.01)
    assert socketio.emitted == [("response", "a")]


def test_packets_queued_for_a_socket_are_unwritten_until_its_writer_takes_them() -> None:
    socketio = SocketIODouble()
    outbox = Outbox(socketio, "threading", STREAM_PACING)  # type: ignore[arg-type]
    assert not outbox.unwritten
    outbox.send("response", {"id": "q1"}, "a")
    deadline = time.monotonic() + 5
    while outbox.undelivered:
        assert time.monotonic() < deadline, "the pump stopped"
        time.sleep(0.01)
    assert outbox.unwritten, "emitted into the socket's queue, which its writer has not emptied"
    assert socketio.socket_queue.get_nowait() == "response"
    assert not outbox.unwritten


def test_an_answer_does_not_wait_behind_an_event_to_everyone() -> None:
    """With ``--message-queue`` an event to everyone is a Redis publish; a hung Redis held it ~10 s, and every answer
    of the process waited behind it in the one pump."""
    socketio = SocketIODouble()
    socketio.may_emit.clear()  # the broadcast's emit hangs, as a publish to a hung Redis does
    outbox = Outbox(socketio, "threading", STREAM_PACING)  # type: ignore[arg-type]
    outbox.send("watch_alert", {"text": "door open"}, None)
    assert socketio.emitting.wait(5)
    held = socketio.may_emit
    socketio.may_emit = threading.Event()
    socketio.may_emit.set()  # emits from here on go through
    outbox.send("response", {"id": "q1"}, "a")
    deadline = time.monotonic() + 2
    while ("response", "a") not in socketio.emitted:
        assert time.monotonic() < deadline, "the answer waited behind the broadcast"
        time.sleep(0.01)
    assert outbox.undelivered, "the broadcast is still on its way"
    held.set()
    while outbox.undelivered:
        assert time.monotonic() < deadline + 3, "the broadcast never left"
        time.sleep(0.01)
    assert ("watch_alert", None) in socketio.emitted
