"""SessionBounds' handshake sweep, in process: which sessions it closes, and when."""

from __future__ import annotations

import time

import engineio
import pytest
from flask import Flask
from flask_socketio import SocketIO

from vlm.sessions import HANDSHAKE_TIMEOUT_S, SessionBounds

pytestmark = pytest.mark.unit


def opened_session(socketio: SocketIO, eio_sid: str) -> float:
    """Open an Engine.IO session the way engineio does (socket first, then its connect event); returns when."""
    eio = socketio.server.eio
    eio.sockets[eio_sid] = engineio.socket.Socket(eio, eio_sid)
    opened = time.monotonic()
    eio.handlers["connect"](eio_sid, {"REMOTE_ADDR": "127.0.0.1"})
    return opened


def test_the_handshake_clock_starts_when_the_session_opens_not_when_the_sweep_first_sees_it() -> None:
    socketio = SocketIO(Flask(__name__), async_mode="threading")
    bounds = SessionBounds(socketio, per_address=4, total=8)
    opened = opened_session(socketio, "never-connects")
    bounds.sweep(opened + HANDSHAKE_TIMEOUT_S - 0.5)  # the sweep's first look at it, late
    assert "never-connects" in socketio.server.eio.sockets
    bounds.sweep(opened + HANDSHAKE_TIMEOUT_S + 0.01)
    assert "never-connects" not in socketio.server.eio.sockets
