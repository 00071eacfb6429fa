"""The default server: gunicorn's threaded worker (``gthread``) run inside this process, with a header deadline
checked on each turn of its loop, per-address slots, and a thread pool whose idle threads end."""

from __future__ import annotations

import errno
import os
import queue
import signal
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from ..config import Settings
from ..hangup import shut_down
from ..network import in_url
from ..tls import tls_files
from .bounds import (
    HEADER_TIMEOUT_S,
    IO_TIMEOUT_S,
    AddressLimits,
    cut_slow_websocket_messages,
    no_delay,
    peer_address,
)

IDLE_THREAD_S = 5.0
DRAIN_GRACE_S = 35

WsgiApp = Callable[..., Any]


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
            shut_down(conn.sock)  # the descriptor's: an SSL socket's own shutdown would unwrap TLS


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


def serve_gunicorn(
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

        def init_signals(self) -> None:
            """SIGHUP (the terminal that started it closed) drains as SIGTERM does; it killed the process."""
            super().init_signals()
            signal.signal(signal.SIGHUP, self.handle_exit)

        def is_parent_alive(self) -> bool:
            return True  # no arbiter: whoever started ``python app.py`` may come and go

    cut_slow_websocket_messages()
    application = Application()
    gunicorn_log = glogging.Logger(application.cfg)
    for logger in (gunicorn_log.error_log, gunicorn_log.access_log):
        logger.handlers = []  # through the root handler, whose formatter escapes and masks (vlm/logsafe.py)
        logger.propagate = True
    sockets = create_sockets(application.cfg, gunicorn_log)
    worker = GuardedWorker(0, os.getppid(), sockets, application, IO_TIMEOUT_S, application.cfg, gunicorn_log)
    worker.pid = os.getpid()
    worker.init_process()
