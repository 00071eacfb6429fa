"""Reaching one Socket.IO client from anywhere in the app: an event to it (or to all), and cutting it off.

Events to one client go to it directly; with ``--message-queue`` only events to everyone go through Redis.
Cutting a client off ends its Socket.IO session, its Engine.IO session and, for a websocket, its TCP connection,
since a hostile client never closes its end.
"""

from __future__ import annotations

from typing import Any

import socketio
from flask_socketio import SocketIO

from .hangup import client_socket, shut_down

NAMESPACE = "/"


def emit(socketio: SocketIO, event: str, payload: dict[str, Any], sid: str | None) -> None:
    """To one client (``sid``) or all (None, through the message queue with ``--message-queue``).

    An event for one client goes to it directly, never through Redis: every such event comes from the process
    the client is connected to (its answer, its watch's state), so once the client has left it is nobody's and
    is dropped. Through Redis, a Redis that hung (a failover, a network partition) held each one ~10 s on the
    thread that sends every event of the process, so one client leaving mid-answer stalled all the others."""
    if sid is not None and not socketio.server.manager.is_connected(sid, NAMESPACE):
        return
    socketio.emit(event, payload, to=sid, ignore_queue=sid is not None)


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
    shut_websocket(environ)


def shut_websocket(environ: dict[str, Any]) -> None:
    """Shut the TCP connection of a session that opened on a websocket (``environ`` is its handshake's), so that a
    write blocked on a client that stopped reading returns at once instead of at the write timeout."""
    websocket = environ.get("HTTP_UPGRADE", "").lower() == "websocket"
    connection = client_socket(environ) if websocket else None
    if connection is not None:
        shut_down(connection)
