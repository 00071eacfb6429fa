"""A request body must keep coming: after ``HEADER_TIMEOUT_S`` it must have averaged ``MIN_MESSAGE_RATE_BPS``, as
a websocket message must, or its connection is shut.

Each server bounds a body only per read (``IO_TIMEOUT_S``), so a byte every 29 s held a connection (and under
gunicorn a thread) for good. The bodies being read are checked each second on a thread of their own, and a late
one's socket is shut down: the read under way ends as at a hang-up, whichever server runs it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from ..hangup import CLIENT_SOCKET, client_socket, shut_down
from .bounds import message_too_slow

SWEEP_EVERY_S = 1.0


class TimedBody:
    """``wsgi.input``, counting the bytes read since the request began, until its end is read."""

    def __init__(self, inner: Any, length: int | None, connection: Any) -> None:
        self.inner = inner
        self.left = length  # None: chunked, read to its end
        self.connection = connection
        self.started = time.monotonic()
        self.received = 0
        self.done = False

    def _count(self, data: bytes, asked: int | None) -> bytes:
        self.received += len(data)
        if self.left is not None:
            self.left -= len(data)
        if (not data and asked != 0) or (self.left is not None and self.left <= 0):
            self.done = True
        return data

    def read(self, size: int | None = -1) -> bytes:
        return self._count(self.inner.read(size), size)

    def readline(self, size: int | None = -1) -> bytes:
        return self._count(self.inner.readline(size), size)

    def readlines(self, hint: int = -1) -> list[bytes]:
        return [self._count(line, None) for line in self.inner.readlines(hint)] or [self._count(b"", None)]

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.readline, b"")


class BodyDeadlines:
    """WSGI middleware: every body being read is timed, and cut once under the minimum rate."""

    def __init__(self, wsgi_app: Callable[..., Iterable[bytes]]) -> None:
        self.wsgi_app = wsgi_app
        self.reading: set[TimedBody] = set()
        self._lock = threading.Lock()
        threading.Thread(target=self._sweep, name="vlm-body-deadlines", daemon=True).start()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        length = environ.get("CONTENT_LENGTH", "")
        chunked = "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
        has_body = chunked or (length.isdigit() and int(length) > 0)
        connection = client_socket(environ) if has_body else None  # most requests (polls, pages) have none
        if connection is None:
            return self.wsgi_app(environ, start_response)
        body = TimedBody(environ["wsgi.input"], None if chunked else int(length), connection)
        environ["wsgi.input"], environ[CLIENT_SOCKET] = body, connection
        with self._lock:
            self.reading.add(body)
        try:
            return self.wsgi_app(environ, start_response)  # a view reads its body before it returns
        finally:
            with self._lock:
                self.reading.discard(body)

    def _sweep(self) -> None:
        while True:
            time.sleep(SWEEP_EVERY_S)
            with self._lock:
                late = [
                    body
                    for body in self.reading
                    if not body.done and message_too_slow(body.started, body.received, "a request body")
                ]
                self.reading.difference_update(late)
            for body in late:
                shut_down(body.connection)
