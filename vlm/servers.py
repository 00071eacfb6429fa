"""The HTTP servers, each bounded so that a stranger's connections cannot exhaust the process.

Default (``threading``): gunicorn's threaded worker (``gthread``), run inside this process
rather than under gunicorn's forking arbiter: Socket.IO without sticky sessions needs exactly
one worker, and that worker holds the model, so a supervisor that restarts it would reload
the model anyway (run several processes with ``--message-queue`` to scale; docs/DEPLOYMENT.md).
``eventlet`` and ``gevent`` keep their own servers, with the same bounds set in their terms.

Bounds on every connection, in every mode:
- at most ``--max-connections`` open at once (more wait in the listen backlog) and
  ``--max-connections-per-ip`` from one address (more are closed at once);
- a request's line and headers must all have arrived ``HEADER_TIMEOUT_S`` after the wait for
  them began (a deadline: a timeout on each read let a byte every few seconds hold a connection
  for good); after that every read or write may stall at most ``IO_TIMEOUT_S``, which is longer
  than the Socket.IO ping interval, so a live websocket never hits it, while a client that stops
  reading (its buffers full) is dropped instead of piling up answers;
- a websocket message still arriving after ``HEADER_TIMEOUT_S`` must have come at
  ``MIN_MESSAGE_RATE_BPS`` on average (a megabyte frame sent a byte at a time held its
  connection for good); a request's body has only the per-read bound;
- a green server yields to its other connections after every websocket read, however fast the
  client sends (a flood held the whole server);
- a request with both ``Content-Length`` and ``Transfer-Encoding`` is refused and its connection
  closed (RFC 9112 6.1: a proxy framing it otherwise would pass a second, smuggled request);
- Nagle's algorithm off: an answer ends with two short frames back to back (the last stream
  delta, then the response); with Nagle on, the second waits for the client's delayed ACK,
  about 40 ms on Linux, on every answer.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import queue
import signal
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

from .config import Settings
from .network import in_url
from .tls import served_files

log = logging.getLogger(__name__)

HEADER_TIMEOUT_S = 10.0
IO_TIMEOUT_S = 30.0
MIN_MESSAGE_RATE_BPS = 1024  # 5 MiB over a 1 Mbit/s phone uplink takes 40 s; this allows it 85 min
IDLE_THREAD_S = 5.0
DRAIN_GRACE_S = 35

WsgiApp = Callable[..., Any]
Connection = TypeVar("Connection")


def serve(
    settings: Settings,
    wsgi_app: WsgiApp,
    *,
    socketio: Any,
    on_sigterm: Callable[[], None],
    on_sigint: Callable[[], None],
) -> None:
    """Serve until the process exits; SIGTERM calls ``on_sigterm`` (which starts draining, then exits), SIGINT
    (Ctrl-C) and SIGQUIT ``on_sigint`` (which stops at once)."""
    # Behind a trusted proxy every connection comes from the proxy: only the total bound means anything
    # there (sessions and events are still limited per forwarded client address, vlm/sessions.py).
    per_address = settings.max_connections if settings.trusted_proxy else settings.max_connections_per_ip
    limits = AddressLimits(per_address)
    if settings.async_mode == "threading":
        _serve_gunicorn(settings, wsgi_app, limits, on_sigterm, on_sigint)
        return
    signal.signal(signal.SIGTERM, lambda *_: on_sigterm())
    for quick in (signal.SIGINT, signal.SIGQUIT):
        signal.signal(quick, lambda *_: on_sigint())
    options: dict[str, object] = dict(tls_files(settings))
    if settings.async_mode == "gevent":
        options.update(handler_class=_gevent_handler(limits), spawn=settings.max_connections)
    else:
        options.update(
            protocol=_eventlet_protocol(limits),
            max_size=settings.max_connections,
            keepalive=HEADER_TIMEOUT_S,
            socket_timeout=IO_TIMEOUT_S,
        )
    socketio.run(wsgi_app, host=settings.host, port=settings.port, log_output=False, **options)


def tls_files(settings: Settings) -> dict[str, str]:
    """The pair each server is given, as app.py's start checks made (or remade) and loaded it: not loaded again,
    which would also repeat the warning about a certificate near its end."""
    if not settings.https:
        return {}
    cert, key = served_files(settings)
    return {"certfile": cert, "keyfile": key}


class AddressLimits:
    """Open connections per client address; ``admit`` before serving, ``release`` once closed."""

    def __init__(self, per_address: int) -> None:
        self.per_address = per_address
        self._open: Counter[str] = Counter()
        self._lock = threading.Lock()

    def admit(self, address: str) -> bool:
        with self._lock:
            if self._open[address] >= self.per_address:
                return False
            self._open[address] += 1
            return True

    def release(self, address: str) -> None:
        with self._lock:
            self._open[address] -= 1
            if self._open[address] <= 0:
                del self._open[address]

    def take(self, client: socket.socket, address: object, set_up: Callable[[], Connection]) -> Connection | None:
        """``set_up()``'s connection if ``address`` has room, else None with ``client`` closed. A socket reset
        before it is set up (macOS answers setsockopt on one with EINVAL) is closed and gives its slot back."""
        peer = peer_address(address)
        if not self.admit(peer):
            client.close()
            return None
        try:
            return set_up()
        except OSError:
            client.close()
            self.release(peer)
            return None


def no_delay(connection: Any) -> None:
    connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def peer_address(client: object) -> str:
    return str(client[0]) if isinstance(client, tuple) and client else str(client)


class HeaderDeadlines:
    """gunicorn's connections still sending their request line and headers, each with the moment it must have
    finished. ``cut_late`` shuts down the socket of each one past it: the thread reading it then reads the end
    of the stream and closes the connection as after a hang-up (a TLS handshake is bounded the same way)."""

    def __init__(self) -> None:
        self._due: dict[Any, float] = {}
        self._lock = threading.Lock()

    def expect(self, conn: Any) -> None:
        with self._lock:
            self._due[conn] = time.monotonic() + HEADER_TIMEOUT_S

    def heard(self, conn: Any) -> None:
        with self._lock:
            self._due.pop(conn, None)

    def cut_late(self) -> None:
        now = time.monotonic()
        with self._lock:
            late = [conn for conn, due in self._due.items() if due <= now]
            for conn in late:
                del self._due[conn]
        for conn in late:
            with contextlib.suppress(OSError):  # closed meanwhile
                socket.socket.shutdown(conn.sock, socket.SHUT_RDWR)  # the descriptor's: an SSL socket's own unwraps


class GreenHeadersDeadline:
    """For the green servers' handlers (gevent's ``WSGIHandler``, eventlet's ``HttpProtocol``): a request's
    line and headers must all arrive within ``HEADER_TIMEOUT_S`` of the wait for them. The timer raises
    ``TimeoutError`` in the handler's greenlet, which both servers treat as a socket timeout; ``get_environ``,
    called once the headers are in, stops it."""

    start_timer: Callable[[float, BaseException], Any]  # the green library's Timeout, started

    def handle_one_request(self) -> Any:
        self.headers_due = self.start_timer(HEADER_TIMEOUT_S, TimeoutError("request headers too slow"))
        try:
            return super().handle_one_request()  # type: ignore[misc]
        finally:
            self.headers_due.cancel()

    def get_environ(self) -> Any:
        self.headers_due.cancel()
        return super().get_environ()  # type: ignore[misc]


def message_too_slow(started: float, received: int) -> bool:
    """Whether a websocket message begun at ``started`` (monotonic), ``received`` bytes so far, has come in under
    the minimum rate; if so its websocket is about to be cut, which is logged here."""
    elapsed = time.monotonic() - started
    if elapsed <= HEADER_TIMEOUT_S + received / MIN_MESSAGE_RATE_BPS:
        return False
    log.warning("cutting off a websocket: %d bytes of a message in %.0f s", received, elapsed)
    return True


class Arrivals(list[Any]):
    """simple-websocket's queue of whole messages, counting the ones put in: how the rate check below tells that
    one message ended, and the next began, within a single read (its reader takes them out meanwhile)."""

    count = 0

    def append(self, message: Any) -> None:
        self.count += 1
        super().append(message)


def _cut_slow_websocket_messages() -> None:
    """simple-websocket (the threading and gevent servers' websockets) reads a message for as long as its
    bytes keep coming; a message under the minimum rate now ends its reader as a hang-up does (an ``OSError``),
    which ends the connection. Once per process."""
    from simple_websocket.ws import Base  # imported here: eventlet has websockets of its own

    handle_events = Base._handle_events
    if getattr(handle_events, "in_time", False):
        return

    def handle_events_in_time(ws: Any) -> bool:
        if not isinstance(ws.input_buffer, Arrivals):
            ws.input_buffer = Arrivals(ws.input_buffer)
        arrived = ws.input_buffer.count
        keep_going = bool(handle_events(ws))
        if ws.incoming_message is None or ws.input_buffer.count != arrived:
            ws.message_started = None  # the message under way, if any, began in this read
        if ws.incoming_message is None:
            return keep_going
        ws.message_started = getattr(ws, "message_started", None) or time.monotonic()
        if message_too_slow(ws.message_started, ws.incoming_message_len):
            raise ConnectionAbortedError("websocket message too slow")
        return keep_going

    handle_events_in_time.in_time = True  # type: ignore[attr-defined]
    Base._handle_events = handle_events_in_time


def log_client_error(client: object, message: str, *args: object) -> None:
    """A server's own note about a client's request, which quotes what the client sent (a token in the URL
    too): through the root handler, which escapes and masks (vlm/logsafe.py), not straight to stderr."""
    log.warning("%s: %s", peer_address(client), message % args if args else message)


class ShrinkingThreadPool:
    """The pool gunicorn's threaded worker runs connections on, whose idle threads end.

    ``concurrent.futures.ThreadPoolExecutor`` keeps every thread it ever started, so one burst
    of connections would leave the process at its peak thread count for good. ``spare`` is
    threads waiting minus jobs queued; a job that finds none spare starts a thread.
    """

    def __init__(self, max_workers: int) -> None:
        self.max_workers = max_workers
        self._jobs: queue.SimpleQueue[tuple[Future[Any], Callable[..., Any], tuple[Any, ...]]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._spare = 0
        self._threads = 0

    def submit(self, work: Callable[..., Any], *args: Any) -> Future[Any]:
        future: Future[Any] = Future()
        with self._lock:
            self._jobs.put((future, work, args))
            self._spare -= 1
            if self._spare < 0 and self._threads < self.max_workers:
                self._threads += 1
                self._spare += 1
                threading.Thread(target=self._work, name="vlm-http", daemon=True).start()
        return future

    def shutdown(self, wait: bool = True, **_: Any) -> None:
        """Threads are daemons and end with the process; jobs still queued are abandoned."""

    def _work(self) -> None:
        while True:
            try:
                future, work, args = self._jobs.get(timeout=IDLE_THREAD_S)
            except queue.Empty:
                with self._lock:
                    if not self._jobs.empty():
                        continue
                    self._spare -= 1
                    self._threads -= 1
                    return
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(work(*args))
                except BaseException as error:  # handed to gunicorn through the future, as its own pool does
                    future.set_exception(error)
            with self._lock:
                self._spare += 1


def _serve_gunicorn(
    settings: Settings,
    wsgi_app: WsgiApp,
    limits: AddressLimits,
    on_sigterm: Callable[[], None],
    on_sigint: Callable[[], None],
) -> None:
    from gunicorn import glogging
    from gunicorn.app.base import BaseApplication
    from gunicorn.sock import create_sockets
    from gunicorn.workers.gthread import TConn, ThreadWorker

    class Application(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            options: dict[str, object] = {
                "bind": [f"{in_url(settings.host)}:{settings.port}"],
                "threads": settings.max_connections,
                "worker_connections": settings.max_connections,
                # Every HTTP request gets its own connection (the long-lived ones are websockets), so
                # all threads serve requests and none waits on a kept-alive connection.
                "keepalive": 0,
                "graceful_timeout": DRAIN_GRACE_S,
                # X-Forwarded-* are honoured only with --trusted-proxy, by the app (vlm/web.py).
                "forwarded_allow_ips": "",
                "accesslog": None,
                **tls_files(settings),
            }
            for key, value in options.items():
                self.cfg.set(key, value)

        def load(self) -> WsgiApp:
            return wsgi_app

    headers_due = HeaderDeadlines()

    class GuardedConn(TConn):  # type: ignore[misc]
        """The per-address slot is given back once it is closed.

        gunicorn closes a finished connection gracefully on its main loop, lingering up to 2 s
        for the peer to close first: a client that never does would hold up every other
        connection's accept and close for 2 s each. The linger runs on a pool thread instead.
        """

        pool: ShrinkingThreadPool

        def close(self, graceful: bool = False) -> None:
            if graceful:
                self.pool.submit(self._close, True)
            else:
                self._close(False)

        def _close(self, graceful: bool) -> None:
            try:
                super().close(graceful)
            finally:
                headers_due.heard(self)
                if not getattr(self, "released", False):
                    self.released = True
                    limits.release(peer_address(self.client))

    class GuardedWorker(ThreadWorker):  # type: ignore[misc]
        def get_thread_pool(self) -> ShrinkingThreadPool:
            return ShrinkingThreadPool(self.cfg.threads)

        def accept(self, listener: socket.socket) -> None:
            try:
                client_sock, client_addr = listener.accept()
            except OSError as error:
                if error.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                    raise
                return

            def set_up() -> GuardedConn:
                client_sock.setblocking(True)
                no_delay(client_sock)
                return GuardedConn(self.cfg, client_sock, client_addr, listener.getsockname())

            conn = limits.take(client_sock, client_addr, set_up)
            if conn is None:
                return
            self.nr_conns += 1
            conn.pool = self.tpool
            headers_due.expect(conn)
            self.enqueue_req(conn)

        def handle_request(self, req: Any, conn: Any) -> bool:
            headers_due.heard(conn)
            conn.sock.settimeout(IO_TIMEOUT_S)
            return bool(super().handle_request(req, conn))

        def murder_pending(self) -> None:
            """Runs on every turn of the main loop (at least once a second), so late headers are cut there too."""
            super().murder_pending()
            headers_due.cut_late()

        def handle_exit(self, sig: int, frame: object) -> None:
            on_sigterm()

        def handle_quit(self, sig: int, frame: object) -> None:
            """gunicorn's own SIGINT and SIGQUIT exit mid-generation, which aborts the process (SIGABRT)."""
            on_sigint()

        def is_parent_alive(self) -> bool:
            return True  # no arbiter: whoever started ``python app.py`` may come and go

    _cut_slow_websocket_messages()
    application = Application()
    gunicorn_log = glogging.Logger(application.cfg)
    for logger in (gunicorn_log.error_log, gunicorn_log.access_log):
        logger.handlers = []  # through the root handler, whose formatter escapes and masks (vlm/logsafe.py)
        logger.propagate = True
    sockets = create_sockets(application.cfg, gunicorn_log)
    worker = GuardedWorker(0, os.getppid(), sockets, application, IO_TIMEOUT_S, application.cfg, gunicorn_log)
    worker.pid = os.getpid()
    worker.init_process()


def unmask(data: bytes, mask: bytes, length: int | None = None, offset: int = 0) -> bytes:
    """RFC 6455 masking of ``data[:length]``, starting ``offset`` bytes into the 4-byte ``mask`` cycle."""
    import numpy  # a transformers dependency; vectorised XOR is ~100x the per-byte loop

    length = len(data) if length is None else length
    key = numpy.resize(numpy.frombuffer(bytes(mask[(offset + i) % 4] for i in range(4)), numpy.uint8), length)
    return (numpy.frombuffer(data, numpy.uint8, count=length) ^ key).tobytes()


def _gevent_handler(limits: AddressLimits) -> type:
    import gevent  # imported here: gevent is only loaded when it is the server
    from gevent.pywsgi import WSGIHandler
    from gevent.socket import socket as GeventSocket
    from gevent.ssl import SSLSocket as GeventSSLSocket

    class Yielding:
        """A gevent socket only yields to other greenlets when a read would block, so a client that
        keeps data coming held the hub: simple-websocket's reader (which reads a copy made by
        ``dup``, of this same class; an https socket has no copy and is read itself) read the whole
        flood before the handler that drops the flooder could run. This one yields after every read."""

        __slots__ = ()

        def recv(self, *args: Any) -> bytes:
            data = super().recv(*args)  # type: ignore[misc]
            gevent.sleep(0)
            return bytes(data)

    class YieldingSocket(Yielding, GeventSocket):  # type: ignore[misc]
        __slots__ = ()

    class YieldingSSLSocket(Yielding, GeventSSLSocket):  # type: ignore[misc]
        """The same for https: an SSL socket's layout is its own, so it cannot take the plain class."""

        __slots__ = ()

    class GuardedHandler(GreenHeadersDeadline, WSGIHandler):  # type: ignore[misc]
        start_timer = staticmethod(gevent.Timeout.start_new)

        def handle(self) -> None:
            address = peer_address(self.client_address)
            if not limits.admit(address):
                self.socket.close()
                return
            # Same object and layout, one method changed.
            self.socket.__class__ = YieldingSSLSocket if isinstance(self.socket, GeventSSLSocket) else YieldingSocket
            try:
                no_delay(self.socket)
                self.socket.settimeout(IO_TIMEOUT_S)
                super().handle()
            finally:
                limits.release(address)

        def run_application(self) -> None:
            super().run_application()
            if self.environ.get("HTTP_UPGRADE", "").lower() == "websocket":
                # Its bytes are websocket frames now, whatever the app did with them: a client that hung up
                # mid-upgrade left a close frame that pywsgi would read as the next request's first line.
                self.close_connection = True

        def MessageClass(self, *args: Any) -> Any:
            """The headers, refused with both lengths: pywsgi read such a body as chunked and kept the
            connection, so it answered the request a proxy framing by Content-Length would not have seen."""
            headers = super().MessageClass(*args)
            if "content-length" in headers and "transfer-encoding" in headers:
                raise ValueError("both Content-Length and Transfer-Encoding")  # answered 400, connection closed
            return headers

        def _handle_client_error(self, error: Exception) -> Any:
            """pywsgi prints the traceback of any invalid request but a ``ValueError`` (more than 100 headers,
            say) to stderr; as a ``ValueError`` it is one line through ``log_error``, and a 400 all the same."""
            if not isinstance(error, ValueError):
                error = ValueError(f"{type(error).__name__}: {error}")
            return super()._handle_client_error(error)

        def log_error(self, msg: str, *args: object) -> None:
            log_client_error(self.client_address, msg, *args)

    _cut_slow_websocket_messages()
    return GuardedHandler


def _eventlet_protocol(limits: AddressLimits) -> type:
    import eventlet  # imported here: eventlet is only loaded when it is the server
    from eventlet.websocket import FailedConnectionError, RFC6455WebSocket
    from eventlet.wsgi import HttpProtocol

    # eventlet unmasks websocket frames one byte at a time in Python: a 5 MiB frame held the whole
    # server for ~1.7 s. The same XOR done by numpy takes milliseconds.
    RFC6455WebSocket._apply_mask = staticmethod(unmask)
    recv_frame = RFC6455WebSocket._recv_frame

    def recv_frame_then_yield(websocket: Any, message: Any = None) -> Any:
        """A green socket yields only when a read would block, so a client that kept frames coming (even
        Engine.IO pings, before any Socket.IO connect) held the hub: /healthz waited 12-17 s and the session
        sweep never ran. As gevent's ``Yielding`` socket does, this yields after every frame."""
        frame = recv_frame(websocket, message)
        eventlet.sleep(0)
        return frame

    RFC6455WebSocket._recv_frame = recv_frame_then_yield

    class MessageInTime(RFC6455WebSocket.Message):  # type: ignore[misc, name-defined]
        """A message's bytes as they come (a frame's payload, read by the chunk), ended with close code 1008
        once under the minimum rate: a megabyte frame sent a byte at a time was read for good."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.started = time.monotonic()
            self.received = 0

        def push(self, data: bytes, final: bool = False) -> None:
            super().push(data, final)
            self.received += len(data)
            if message_too_slow(self.started, self.received):
                raise FailedConnectionError(1008, "message too slow")

    RFC6455WebSocket.Message = MessageInTime

    class GuardedProtocol(GreenHeadersDeadline, HttpProtocol):  # type: ignore[misc]
        start_timer = staticmethod(eventlet.Timeout)

        def setup(self) -> None:
            no_delay(self.request)
            super().setup()

        def handle(self) -> None:
            address = peer_address(self.client_address)
            if not limits.admit(address):
                return
            try:
                super().handle()
            finally:
                limits.release(address)

        def log_message(self, template: str, *args: object) -> None:
            """http.server writes these (a malformed request's line, token and all) straight to stderr."""
            log_client_error(self.client_address, template, *args)

    return GuardedProtocol
