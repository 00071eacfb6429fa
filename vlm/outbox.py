"""Delivers events to Socket.IO clients off the model's worker, a client's streamed text paced.

Every event goes through one pump: a thread in threading mode, a green task under eventlet or
gevent (where the worker is a native thread that must not touch the hub). The worker only
appends to a deque, so sending never holds up a decode step.

While other clients stream too, a client is sent at most one text delta per
``Coalescing.interval_s``: the first goes at once, later ones wait and merge into one. Sixteen
clients streaming every decode step were one packet each per token, and on a 2-core CPU their
sending cost the model a third of its steps. A client streaming alone shares the pump with
nobody, so its deltas go as they come: held, its last one went out just before its answer, on
the answer's critical path (the demo model's overhead p50 rose from 7.8 to 9.9 ms).
An event that is not a delta first releases the client's waiting one, so nothing overtakes it.

A client whose unsent packets pile up past ``MAX_BACKLOG`` is not reading (its socket's buffers
are full): it is dropped rather than let the server's memory grow for it.

An event to every client (a ``--watch`` alert) leaves on a thread of its own in threading mode: with
``--message-queue`` it is a Redis publish, which a hung Redis holds ~10 s, and every answer of the
process waited behind it in the pump. (The green modes take no message queue.)
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from flask_socketio import SocketIO

from .socket_transport import drop, emit

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outgoing:
    event: str
    payload: dict[str, Any]
    sid: str | None  # None: every client


@dataclass(frozen=True)
class Coalescing:
    """Which event may wait and merge, how two merge (None: they may not), and how often one may leave."""

    event: str
    merge: Callable[[dict[str, Any], dict[str, Any]], dict[str, Any] | None]
    interval_s: float


class Pacer:
    """Per client, at most one ``Coalescing.event`` per interval while others send it too; what waits merges.
    No threads, no clock."""

    def __init__(self, coalescing: Coalescing) -> None:
        self.coalescing = coalescing
        self.held: dict[str, Outgoing] = {}  # by client, in the order they began waiting
        self.last_sent: dict[str, float] = {}

    def admit(self, item: Outgoing, now: float) -> list[Outgoing]:
        """What to send now, in order, for ``item`` arriving at ``now``."""
        sid = item.sid
        if item.event != self.coalescing.event or sid is None:
            return [*self._release(sid, now), item]
        if (waiting := self.held.get(sid)) is not None:
            if (merged := self.coalescing.merge(waiting.payload, item.payload)) is not None:
                self.held[sid] = replace(waiting, payload=merged)
                return []
            self.held[sid] = item
            self.last_sent[sid] = now
            return [waiting]
        interval = self.coalescing.interval_s
        if now - self.last_sent.get(sid, -interval) >= interval or not self._others_streaming(sid, now):
            self.last_sent[sid] = now
            return [item]
        self.held[sid] = item
        return []

    def _others_streaming(self, sid: str, now: float) -> bool:
        """Whether a client other than ``sid`` was sent the event within the interval, or has one waiting."""
        interval = self.coalescing.interval_s
        recent = any(other != sid and now - sent < interval for other, sent in self.last_sent.items())
        return recent or any(other != sid for other in self.held)

    def _release(self, sid: str | None, now: float) -> list[Outgoing]:
        """What ``sid`` (every client, when None) has waiting, to go before its next other event."""
        sids = list(self.held) if sid is None else [sid] if sid in self.held else []
        for waiting in sids:
            self.last_sent[waiting] = now
        return [self.held.pop(waiting) for waiting in sids]

    def due(self, now: float) -> list[Outgoing]:
        """Waiting events whose interval has passed; clients quiet for a whole interval are forgotten."""
        interval = self.coalescing.interval_s
        ready = [sid for sid in self.held if now - self.last_sent[sid] >= interval]
        for sid in ready:
            self.last_sent[sid] = now
        quiet = [sid for sid, sent in self.last_sent.items() if now - sent >= interval and sid not in self.held]
        for sid in quiet:
            del self.last_sent[sid]
        return [self.held.pop(sid) for sid in ready]

    def next_due_s(self, now: float) -> float | None:
        """Seconds until a waiting event is due (None: nothing waits)."""
        if not self.held:
            return None
        return max(0.0, min(self.last_sent[sid] for sid in self.held) + self.coalescing.interval_s - now)


class Outbox:
    POLL_S = 0.002
    MAX_BACKLOG = 256

    def __init__(self, socketio: SocketIO, async_mode: str, coalescing: Coalescing) -> None:
        self.socketio = socketio
        self.pending: deque[Outgoing] = deque()
        self.pacer = Pacer(coalescing)
        self.green = async_mode != "threading"
        self.delivering = False  # the pump has taken events and may not have emitted them all yet
        self.wake = threading.Event()
        self.broadcasts: queue.SimpleQueue[Outgoing] = queue.SimpleQueue()
        self.broadcasting = False
        if self.green:
            socketio.start_background_task(self._pump_green)
        else:
            threading.Thread(target=self._pump_thread, name="vlm-outbox", daemon=True).start()
            threading.Thread(target=self._broadcast_thread, name="vlm-broadcasts", daemon=True).start()

    def send(self, event: str, payload: dict[str, Any], sid: str | None) -> None:
        """To the client ``sid``, or to every client when it is None."""
        if sid is None and not self.green:
            self.broadcasts.put(Outgoing(event, payload, sid))
            return
        self.pending.append(Outgoing(event, payload, sid))
        if not self.green and not self.wake.is_set():  # set: the pump has yet to clear it, then drains this too
            self.wake.set()

    @property
    def undelivered(self) -> bool:
        """Whether an event sent here has not yet reached its socket's queue.

        ``delivering`` is read last: an event the pump has taken out of ``pending`` or ``held`` and not
        yet emitted would otherwise be in neither, and a drain on shutdown would exit without it.
        """
        return bool(
            self.pending or self.pacer.held or self.delivering or not self.broadcasts.empty() or self.broadcasting
        )

    @property
    def unwritten(self) -> bool:
        """Whether a connected client's socket still has packets queued for its writer."""
        return any(not connection.queue.empty() for connection in list(self.socketio.server.eio.sockets.values()))

    def backlog(self, sid: str) -> int:
        """Packets queued for one client and not yet written to its socket (0 if it is gone or remote)."""
        server = self.socketio.server
        eio_sid = server.manager.eio_sid_from_sid(sid, "/")
        connection = server.eio.sockets.get(eio_sid) if eio_sid else None
        return connection.queue.qsize() if connection is not None else 0

    def _pump_thread(self) -> None:
        while True:
            self.wake.wait(self.pacer.next_due_s(time.monotonic()))
            self.wake.clear()
            self._deliver()

    def _broadcast_thread(self) -> None:
        while True:
            item = self.broadcasts.get()
            self.broadcasting = True
            try:
                self._emit(item)
            finally:
                self.broadcasting = False

    def _pump_green(self) -> None:
        while True:
            self._deliver()
            self.socketio.sleep(self.POLL_S)

    def _deliver(self) -> None:
        self.delivering = True
        try:
            while self.pending:
                for item in self.pacer.admit(self.pending.popleft(), time.monotonic()):
                    self._emit(item)
            for item in self.pacer.due(time.monotonic()):
                self._emit(item)
        finally:
            self.delivering = False

    def _emit(self, item: Outgoing) -> None:
        try:
            if item.sid is not None and self.backlog(item.sid) > self.MAX_BACKLOG:
                log.warning("dropping %s: %d packets unread", item.sid, self.backlog(item.sid))
                drop(self.socketio, item.sid)
                return
            emit(self.socketio, item.event, item.payload, item.sid)
        except Exception:  # the pump serves every client: one failed delivery must not stop it
            log.exception("could not deliver %s to %s", item.event, item.sid)
