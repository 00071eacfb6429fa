"""Reaching one Socket.IO client from anywhere in the app: an event to it (or to all), and cutting it off.

Events to a client connected to this process go to it directly; with ``--message-queue`` only the rest go
through Redis. Cutting a client off ends its Socket.IO session, its Engine.IO session and, for a websocket,
its TCP connection, since a hostile client never closes its end.
"""

from __future__ import annotations

from typing import Any

import socketio
from flask_socketio import SocketIO

from .hangup import client_socket, shut_down

NAMESPACE = "/"


def emit(socketio: SocketIO, event: str, payload: dict[str, Any], sid: str | None) -> None:
    """To one client (``sid``) or all (None). A client connected to this process is sent to directly: through the
    message queue (``--message-queue``) every event waited on Redis, and a Redis that hung (a failover, a network
    partition) held every answer of the process ~10 s per event, though each answer's client was right here."""
    here = sid is not None and socketio.server.manager.is_connected(sid, NAMESPACE)
    socketio.emit(event, payload, to=sid, ignore_queue=here)


def drop(socketio: SocketIO, sid: str) -> None:
    """End a client's Socket.IO session and its Engine.IO transport (a namespace disconnect alone
    leaves the connection open for the client to close, which a hostile one never does)."""
    server = socketio.server
    eio_sid = server.manager.eio_sid_from_sid(sid, NAMESPACE)
    server.disconnect(sid)
    if eio_sid is not None:
        cut(server, eio_sid)


def cut(server: socketio.Server, eio_sid: str) -> None:
    """End an Engine.IO session, and the TCP connection of a session that opened on a websocket: a client that
    ignores the close stays no longer than it takes its server to notice the socket is shut. (A polling
    session's first request may have come on a connection a browser shares among its tabs.)"""
    environ = server.environ.get(eio_sid) or {}
    server.eio.disconnect(eio_sid)
    websocket = environ.get("HTTP_UPGRADE", "").lower() == "websocket"
    connection = client_socket(environ) if websocket else None
    if connection is not None:
        shut_down(connection)
