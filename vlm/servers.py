"""The HTTP servers, each bounded so that a stranger's connections cannot exhaust the process.

Default (``threading``): gunicorn's threaded worker (``gthread``), run inside this process
rather than under gunicorn's forking arbiter: Socket.IO without sticky sessions needs exactly
one worker, and that worker holds the model, so a supervisor that restarts it would reload
the model anyway (run several processes with ``--message-queue`` to scale; docs/DEPLOYMENT.md).
``eventlet`` and ``gevent`` keep their own servers, with the same bounds set in their terms.

Bounds on every connection, in every mode:
- at most ``--max-connections`` open at once (more wait in the listen backlog) and
  ``--max-connections-per-ip`` from one address (more are closed at once);
- a request's headers must arrive within ``HEADER_TIMEOUT_S``; after that every read or write
  may stall at most ``IO_TIMEOUT_S``, which is longer than the Socket.IO ping interval, so
  a live websocket never hits it, while a client that stops reading (its buffers full) is
  dropped instead of piling up answers;
- Nagle's algorithm off: an answer ends with two short frames back to back (the last stream
  delta, then the response); with Nagle on, the second waits for the client's delayed ACK,
  about 40 ms on Linux, on every answer.
"""

from __future__ import annotations

import errno
import logging
import os
import queue
import signal
import socket
import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from .config import Settings
from .tls import served_files

log = logging.getLogger(__name__)

HEADER_TIMEOUT_S = 10.0
IO_TIMEOUT_S = 30.0
IDLE_THREAD_S = 5.0
DRAIN_GRACE_S = 35

WsgiApp = Callable[..., Any]


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


def no_delay(connection: Any) -> None:
    connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def peer_address(client: object) -> str:
    return str(client[0]) if isinstance(client, tuple) and client else str(client)


class ShrinkingThreadPool:
    """The pool gunicorn's threaded worker runs connections on, whose idle threads end.

    ``concurrent.futures.ThreadPoolExecutor`` keeps every thread it ever started, so one burst
    of connections would leave the process at its peak thread count for good. ``spare`` is
    threads waiting minus jobs queued; a job that finds none spare starts a thread.
    """

    def __init__(self, max_workers: int, idle_s: float = IDLE_THREAD_S) -> None:
        self.max_workers = max_workers
        self.idle_s = idle_s
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
                future, work, args = self._jobs.get(timeout=self.idle_s)
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
            host = f"[{settings.host}]" if ":" in settings.host else settings.host
            options: dict[str, object] = {
                "bind": [f"{host}:{settings.port}"],
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

    class GuardedConn(TConn):  # type: ignore[misc]
        """Headers within ``HEADER_TIMEOUT_S``; the per-address slot is given back once it is closed.

        gunicorn closes a finished connection gracefully on its main loop, lingering up to 2 s
        for the peer to close first: a client that never does would hold up every other
        connection's accept and close for 2 s each. The linger runs on a pool thread instead.
        """

        pool: ShrinkingThreadPool

        def init(self) -> None:
            super().init()
            self.sock.settimeout(HEADER_TIMEOUT_S)

        def close(self, graceful: bool = False) -> None:
            if graceful:
                self.pool.submit(self._close, True)
            else:
                self._close(False)

        def _close(self, graceful: bool) -> None:
            try:
                super().close(graceful)
            finally:
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
            if not limits.admit(peer_address(client_addr)):
                client_sock.close()
                return
            self.nr_conns += 1
            client_sock.setblocking(True)
            no_delay(client_sock)
            conn = GuardedConn(self.cfg, client_sock, client_addr, listener.getsockname())
            conn.pool = self.tpool
            self.enqueue_req(conn)

        def handle_request(self, req: Any, conn: Any) -> bool:
            conn.sock.settimeout(IO_TIMEOUT_S)
            return bool(super().handle_request(req, conn))

        def handle_exit(self, sig: int, frame: object) -> None:
            on_sigterm()

        def handle_quit(self, sig: int, frame: object) -> None:
            """gunicorn's own SIGINT and SIGQUIT exit mid-generation, which aborts the process (SIGABRT)."""
            on_sigint()

        def is_parent_alive(self) -> bool:
            return True  # no arbiter: whoever started ``python app.py`` may come and go

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

    class GuardedHandler(WSGIHandler):  # type: ignore[misc]
        def handle(self) -> None:
            address = peer_address(self.client_address)
            if not limits.admit(address):
                self.socket.close()
                return
            # Same object and layout, one method changed.
            self.socket.__class__ = YieldingSSLSocket if isinstance(self.socket, GeventSSLSocket) else YieldingSocket
            try:
                no_delay(self.socket)
                self.socket.settimeout(HEADER_TIMEOUT_S)
                super().handle()
            finally:
                limits.release(address)

        def run_application(self) -> None:
            self.socket.settimeout(IO_TIMEOUT_S)
            super().run_application()
            if self.environ.get("HTTP_UPGRADE", "").lower() == "websocket":
                # Its bytes are websocket frames now, whatever the app did with them: a client that hung up
                # mid-upgrade left a close frame that pywsgi would read as the next request's first line.
                self.close_connection = True

        def log_error(self, msg: str, *args: object) -> None:
            """pywsgi writes these (which quote what the client sent) straight to stderr."""
            log.warning("%s: %s", peer_address(self.client_address), msg % args if args else msg)

    return GuardedHandler


def _eventlet_protocol(limits: AddressLimits) -> type:
    from eventlet.websocket import RFC6455WebSocket  # imported here: eventlet is only loaded when it is the server
    from eventlet.wsgi import HttpProtocol

    # eventlet unmasks websocket frames one byte at a time in Python: a 5 MiB frame held the whole
    # server for ~1.7 s. The same XOR done by numpy takes milliseconds.
    RFC6455WebSocket._apply_mask = staticmethod(unmask)

    class GuardedProtocol(HttpProtocol):  # type: ignore[misc]
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

    return GuardedProtocol
