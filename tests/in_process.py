"""Helpers for tests that run the app inside the test process (Flask-SocketIO's test client)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flask_socketio.test_client import SocketIOTestClient

IN_PROCESS_TOKEN = "in-process-token"


def wait_for(client: SocketIOTestClient, name: str, timeout_s: float = 5.0) -> list[dict[str, Any]]:
    """What Flask-SocketIO's test ``client`` received until an event named ``name`` came: events arrive from the
    model worker's thread."""
    received: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        received += client.get_received()
        if any(event["name"] == name for event in received):
            return received
        time.sleep(0.01)
    raise AssertionError(f"no {name!r} within {timeout_s} s: {received}")
