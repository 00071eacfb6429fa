"""A real python-socketio client that records every event it receives, for protocol tests."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

import engineio
import socketio

EVENTS = ("response", "stream", "query_error")
Found = TypeVar("Found")


class _InOrderEngineIO(engineio.Client):
    """python-engineio's client hands every message to a thread of its own, so on a loaded machine two events
    were recorded in the other order than the server sent them (a delta after its neighbour, seen in a test).
    This one hands each over on the thread that read it, in the order it came."""

    def _trigger_event(self, event: str, *args: Any, run_async: bool = False, **kwargs: Any) -> Any:
        return super()._trigger_event(event, *args, run_async=False, **kwargs)


class InOrderClient(socketio.Client):
    """python-socketio's own client, its events handled in the order they arrived."""

    def _engineio_client_class(self) -> type[engineio.Client]:
        return _InOrderEngineIO


class RecordingClient:
    def __init__(
        self,
        url: str,
        auth: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        events: tuple[str, ...] = EVENTS,
    ) -> None:
        self.received: list[tuple[str, dict[str, Any]]] = []
        self.changed = threading.Condition()
        self.sio = InOrderClient(reconnection=False)
        for event in events:
            self.sio.on(event, self._recorder(event))
        self.sio.connect(url, auth=auth, headers=headers or {}, transports=["websocket"], wait_timeout=10)

    def _recorder(self, event: str) -> Any:
        def record(payload: dict[str, Any]) -> None:
            with self.changed:
                self.received.append((event, payload))
                self.changed.notify_all()

        return record

    def final(self, request_id: str | None, timeout_s: float = 60.0) -> tuple[str, dict[str, Any]]:
        """The one `response` or `query_error` for a request id (``None``: the first final of any id)."""

        def first_final() -> tuple[str, dict[str, Any]] | None:
            return next(((e, p) for e, p in self.received if e != "stream" and request_id in (None, p.get("id"))), None)

        return self._wait_for(first_final, timeout_s, f"no final event for {request_id}")

    def start(self, payload: dict[str, Any], timeout_s: float = 60.0) -> None:
        """Send a query and return once its first token has streamed back (the generation is running)."""
        self.sio.emit("query", payload)
        rid = str(payload["id"])
        self._wait_for(
            lambda: any(e == "stream" and p.get("id") == rid for e, p in self.received),
            timeout_s,
            f"{rid} never started streaming",
        )

    def _wait_for(self, found: Callable[[], Found], timeout_s: float, failure: str) -> Found:
        with self.changed:
            result = self.changed.wait_for(found, timeout_s)
            if not result:
                raise TimeoutError(f"{failure}; got {self.received[-5:]}")
            return result

    def ask(self, payload: dict[str, Any], event: str = "query", timeout_s: float = 60.0) -> tuple[str, dict[str, Any]]:
        self.sio.emit(event, payload)
        return self.final(str(payload["id"]), timeout_s)

    def close(self) -> None:
        """Disconnect without waiting for the close handshake.

        Werkzeug and gevent servers (simple-websocket) never answer websocket-client's closing
        frame, so a blocking disconnect idles for its 3 s close timeout; browsers do not wait.
        """
        threading.Thread(target=self.sio.disconnect, daemon=True).start()
