"""Bounds on Engine.IO sessions, which a stranger can open before any token is checked.

- A session is opened by one unauthenticated GET, so handshakes are rate-limited per client
  address, and sessions are capped per address and in total.
- A session that has not completed the Socket.IO connect (where the token is checked) within
  ``HANDSHAKE_TIMEOUT_S`` is closed; otherwise each would hold state and a ping timer until
  the 30 s ping timeout.
- python-engineio 4.15.1 (the newest release) answers a malformed or oversized polling POST by
  calling ``disconnect(sid)``, which closes the session with ``wait=True`` and blocks in
  ``queue.join()`` for a poll that never comes: the request is never answered and its socket
  and thread are held for good. ``PromptDisconnectServer`` closes without waiting; the CLOSE
  packet is still queued for any poll or websocket writer that is there to take it, and a
  closed session's next message ends its transport.
- A client that hangs up during the polling-to-websocket upgrade (the official client does when
  closed within a few milliseconds of connecting) made engineio's answer to its ``2probe`` raise
  ``OSError`` out of the websocket handler, past every server: gunicorn and gevent logged a
  traceback at ERROR, and the session stayed marked as upgrading, so its polls got only NOOPs.
  ``upgrade_hangups_tolerated`` ends that upgrade as engineio ends any other failed one: one INFO
  line, the session left on polling (where a client that is gone times out).
- engineio checks a websocket message's size only once the message is whole, and simple-websocket (the
  threading and gevent servers' websockets) is never told a limit, so it kept every byte of a message for as
  long as they came: a stranger's unfinished 64 MiB message, before any Socket.IO connect, took 64 MiB of the
  server. ``websocket_messages_bounded`` tells it engineio's limit, and a message past it closes the
  connection with code 1009 as it arrives (eventlet's own websocket: vlm/servers/green_servers.py).
- A request for a session that has just closed (a client's poll or upgrade crossing its own close
  packet) is logged by engineio at ERROR the first time; here it is INFO every time.
- A message that Socket.IO cannot decode (JSON it refuses, or nested past Python's recursion limit,
  which engineio logged as a traceback per message) is answered with ``bad_request``.
- Binary packets are refused and their sender cut off: this protocol never uses them, and
  python-socketio keeps a binary event's attachments until as many as its header announces have
  come (a billion, say), with nothing charged for them.
- ``connect`` and ``disconnect`` sent as events ran the namespace's own handlers: ``disconnect``
  reset the sender's event budget, ``connect`` logged a traceback. A client never sends them, so
  one that does is cut off.
- A session cut by the server has its TCP connection closed with it: a silent websocket otherwise
  stayed open until the 30 s read timeout, and 256 of them every half minute kept everyone out.
- One poll at a time per session: more were each held for the 30 s poll, and a few sessions of
  overlapping polls took every connection.
- Socket.IO errors (4xx) also close the HTTP connection, so a malformed exchange ends there.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs

import engineio
import socketio
from flask_socketio import SocketIO
from simple_websocket.ws import Base as SimpleWebSocket

from .errors import Code, VlmError
from .ratelimit import RateLimiter
from .socket_sink import error_event
from .socket_transport import NAMESPACE, cut, emit

log = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT_S = 5.0
HANDSHAKES_PER_S = 10.0
SWEEP_EVERY_S = 1.0
SOCKET_PATH = "/socket.io/"  # where Socket.IO is served (its default)
BINARY_PACKETS = ("5", "6")  # Socket.IO's BINARY_EVENT and BINARY_ACK


class PromptDisconnectServer(engineio.Server):
    def _trigger_event(self, event: str, *args: Any, **kwargs: Any) -> Any:
        """A message for a session already closed ends its transport: engineio's websocket loop would
        otherwise keep reading (and dispatching) whatever a dropped flooder still sends."""
        if event == "message" and args and args[0] not in self.sockets:
            raise engineio.exceptions.SocketIsClosedError()
        return super()._trigger_event(event, *args, **kwargs)

    def _log_error_once(self, message: str, message_key: str) -> None:
        if message_key == "bad-sid":  # "Invalid session" / "Session is disconnected": a client's own race
            self.logger.info(message)
            return
        super()._log_error_once(message, message_key)

    def disconnect(self, sid: str | None = None) -> None:
        sockets = [self.sockets.get(sid)] if sid is not None else list(self.sockets.values())
        for session in sockets:
            if session is not None:
                session.close(wait=False, reason=self.reason.SERVER_DISCONNECT)
        if sid is None:
            self.sockets = {}
        else:
            self.sockets.pop(sid, None)


class ReservedNamesRefused(socketio.Server):
    def _handle_event(self, eio_sid: str, namespace: str | None, id: int | None, data: list[Any]) -> None:
        """``connect`` and ``disconnect`` as events would run the namespace's own handlers (see module doc)."""
        if data and data[0] in self.reserved_events:
            log.warning("cutting off %s: it sent %r as an event", eio_sid, data[0])
            cut(self, eio_sid)
            return
        super()._handle_event(eio_sid, namespace, id, data)


def websocket_messages_bounded(websocket: Callable[..., Any]) -> Callable[..., Any]:
    """engineio's websocket transport (``websocket(handler, server)``), with simple-websocket's reader told the
    largest message engineio accepts, which it checks as the message arrives (see module doc). Its reader starts
    before the handler; what it reads meanwhile is one receive's worth."""

    def transport(handler: Callable[[Any], Any], server: Any) -> Any:
        def handle(ws: Any) -> Any:
            reader = getattr(ws, "ws", None)  # eventlet's websocket is the handler's own ``ws``, and has no reader
            if isinstance(reader, SimpleWebSocket) and reader.max_message_size is None:
                reader.max_message_size = server.max_http_buffer_size
            return handler(ws)

        return websocket(handle, server)

    return transport


def upgrade_hangups_tolerated(websocket: Callable[..., Any]) -> Callable[..., Any]:
    """engineio's websocket transport (``websocket(handler, server)``), with a handler that treats a
    send failing mid-upgrade as the client hanging up (see module doc). ``handler`` is the bound
    ``_websocket_handler`` of the session's engineio socket."""

    def transport(handler: Callable[[Any], Any], server: Any) -> Any:
        def handle(ws: Any) -> Any:
            try:
                return handler(ws)
            except OSError as error:
                session = getattr(handler, "__self__", None)
                if session is None or not session.upgrading:
                    raise
                session.upgrading = False
                log.info("%s: client hung up during the websocket upgrade (%s)", session.sid, type(error).__name__)
                return []

        return websocket(handle, server)

    return transport


class SessionBounds:
    def __init__(self, socketio: SocketIO, *, per_address: int, total: int) -> None:
        self.socketio = socketio
        self.per_address = per_address
        self.total = total
        # A burst as large as the session cap: a page of many tabs (or a test's 32 clients) may all connect at once.
        self.handshakes = RateLimiter(HANDSHAKES_PER_S, per_address)
        self._unconnected_since: dict[str, float] = {}
        self._polling: set[str] = set()  # sessions with a poll waiting
        self._polling_lock = threading.Lock()
        socketio.server.__class__ = ReservedNamesRefused  # same object, one method changes (see module doc)
        eio = socketio.server.eio
        eio.__class__ = PromptDisconnectServer  # same object, three methods change (see module doc)
        # A copy of the async driver's table, which every engineio server in the process shares.
        # Outermost the one that reads the session off engineio's own bound handler.
        websocket = upgrade_hangups_tolerated(websocket_messages_bounded(eio._async["websocket"]))
        eio._async = {**eio._async, "websocket": websocket}
        eio.handlers["message"] = self._answering_undecodable(eio.handlers["message"])
        eio.handlers["connect"] = self._timing_from_open(eio.handlers["connect"])

    def _timing_from_open(self, connect: Callable[[str, Any], Any]) -> Callable[[str, Any], Any]:
        """The handshake clock starts when the session opens, not when the sweep first sees it: otherwise a
        session had up to a sweep interval more than ``HANDSHAKE_TIMEOUT_S``."""

        def opened(eio_sid: str, environ: Any) -> Any:
            self._unconnected_since[eio_sid] = time.monotonic()
            return connect(eio_sid, environ)

        return opened

    def _answering_undecodable(self, handle: Callable[[str, Any], Any]) -> Callable[[str, Any], Any]:
        """A message Socket.IO cannot decode (its JSON refuses integers over 100 digits) gets a
        ``bad_request`` reply; engineio would log a traceback and leave the sender waiting. A binary
        packet cuts its sender off (see module doc)."""

        def message(eio_sid: str, data: Any) -> Any:
            if isinstance(data, bytes) or data[:1] in BINARY_PACKETS:
                log.warning("cutting off %s: it sent a binary packet", eio_sid)
                cut(self.socketio.server, eio_sid)
                return None
            try:
                return handle(eio_sid, data)
            except (ValueError, RecursionError) as error:
                log.warning("undecodable message from %s: %s", eio_sid, type(error).__name__)
                sid = self.socketio.server.manager.sid_from_eio_sid(eio_sid, NAMESPACE)
                if sid is not None:
                    refusal = VlmError(Code.BAD_REQUEST, "the message is not valid Socket.IO JSON")
                    emit(self.socketio, *error_event(None, refusal, seed=False), sid)
                return None

        return message

    def start(self) -> None:
        self.socketio.start_background_task(self._sweep_forever)

    def wrap(self, wsgi_app: Callable[..., Iterable[bytes]]) -> Callable[..., Any]:
        """Refuse handshakes over the bounds; close the connection after any Engine.IO error."""

        def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            if not environ.get("PATH_INFO", "").startswith(SOCKET_PATH):
                return wsgi_app(environ, start_response)
            query = parse_qs(environ.get("QUERY_STRING", ""))
            if "sid" not in query:
                refusal = self.refusal(environ.get("REMOTE_ADDR", ""))
                if refusal:
                    return _plain(start_response, *refusal)

            def closing_on_error(status: str, headers: list[tuple[str, str]], *rest: Any) -> Any:
                if status[:1] == "4":
                    headers = [(k, v) for k, v in headers if k.lower() != "connection"] + [("Connection", "close")]
                return start_response(status, headers, *rest)

            poll = environ.get("REQUEST_METHOD") == "GET" and query.get("transport") == ["polling"]
            if not poll or "sid" not in query:
                return wsgi_app(environ, closing_on_error)
            return self._one_poll_at_a_time(
                query["sid"][0], lambda: wsgi_app(environ, closing_on_error), start_response
            )

        return app

    def _one_poll_at_a_time(
        self, sid: str, answer: Callable[[], Iterable[bytes]], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        """A session's poll, unless one is waiting already (the reference server refuses that overlap too)."""
        with self._polling_lock:
            overlapping = sid in self._polling
            self._polling.add(sid)
        if overlapping:
            return _plain(start_response, "400 Bad Request", "a poll of this session is waiting already")
        try:
            return answer()  # engineio's poll waits for its packets here, then returns them whole
        finally:
            with self._polling_lock:
                self._polling.discard(sid)

    def refusal(self, address: str) -> tuple[str, str] | None:
        environs = list(self.socketio.server.environ.values())
        if len(environs) >= self.total:
            return "503 Service Unavailable", "too many sessions; try again shortly"
        if sum(1 for environ in environs if environ.get("REMOTE_ADDR") == address) >= self.per_address:
            return "429 Too Many Requests", "too many sessions from your address"
        if not self.handshakes.allow(address):
            return "429 Too Many Requests", "too many new sessions from your address; slow down"
        return None

    def _sweep_forever(self) -> None:
        while True:
            self.socketio.sleep(SWEEP_EVERY_S)
            try:
                self.sweep(time.monotonic())
            except Exception:  # the sweeper must outlive any one bad session
                log.exception("session sweep failed")

    def sweep(self, now: float) -> None:
        """Close sessions that have not connected to Socket.IO within the handshake timeout."""
        server = self.socketio.server
        eio = server.eio
        alive = set(eio.sockets)
        for eio_sid in list(self._unconnected_since):
            if eio_sid not in alive or server.manager.sid_from_eio_sid(eio_sid, NAMESPACE) is not None:
                del self._unconnected_since[eio_sid]
        for eio_sid in alive:
            if server.manager.sid_from_eio_sid(eio_sid, NAMESPACE) is not None:
                continue
            since = self._unconnected_since.setdefault(eio_sid, now)  # left the namespace, kept the session
            if now - since >= HANDSHAKE_TIMEOUT_S:
                del self._unconnected_since[eio_sid]
                cut(server, eio_sid)


def _plain(start_response: Callable[..., Any], status: str, message: str) -> list[bytes]:
    body = (message + "\n").encode()
    start_response(
        status, [("Content-Type", "text/plain"), ("Connection", "close"), ("Content-Length", str(len(body)))]
    )
    return [body]
