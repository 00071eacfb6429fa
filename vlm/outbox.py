"""Delivers worker-thread events to Socket.IO clients on the server's own concurrency model.

In threading mode any thread may emit. Under eventlet or gevent the worker is a native thread
that must not touch the hub, so it drops events in a deque that a green task empties every
couple of milliseconds.

A client whose unsent packets pile up past ``MAX_BACKLOG`` is not reading (its socket's buffers
are full): it is dropped rather than let the server's memory grow for it.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import Any

from flask_socketio import SocketIO

from .sessions import drop

log = logging.getLogger(__name__)


class Outbox:
    POLL_S = 0.002
    MAX_BACKLOG = 256

    def __init__(self, socketio: SocketIO, async_mode: str) -> None:
        self.socketio = socketio
        self.direct = async_mode == "threading"
        self.pending: deque[tuple[str, dict[str, Any], str | None]] = deque()
        if not self.direct:
            socketio.start_background_task(self._pump)

    def send(self, event: str, payload: dict[str, Any], sid: str | None) -> None:
        """To the client ``sid``, or to every client when it is None."""
        if self.direct:
            self._emit(event, payload, sid)
        else:
            self.pending.append((event, payload, sid))

    def _emit(self, event: str, payload: dict[str, Any], sid: str | None) -> None:
        if sid is not None and self.backlog(sid) > self.MAX_BACKLOG:
            log.warning("dropping %s: %d packets unread", sid, self.backlog(sid))
            drop(self.socketio, sid)
            return
        self.socketio.emit(event, payload, to=sid)

    def backlog(self, sid: str) -> int:
        """Packets queued for one client and not yet written to its socket (0 if it is gone or remote)."""
        server = self.socketio.server
        eio_sid = server.manager.eio_sid_from_sid(sid, "/")
        connection = server.eio.sockets.get(eio_sid) if eio_sid else None
        return connection.queue.qsize() if connection is not None else 0

    def _pump(self) -> None:
        while True:
            while self.pending:
                self._emit(*self.pending.popleft())
            self.socketio.sleep(self.POLL_S)
