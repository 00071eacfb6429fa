"""eventlet's and gevent's own servers, with the same bounds in their terms: a header deadline by the library's
``Timeout``, per-address slots, a yield after every websocket read, and refusals of smuggling and slow messages."""

from __future__ import annotations

import contextlib
import re
import ssl
import time
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

from .bounds import (
    HEADER_TIMEOUT_S,
    IO_TIMEOUT_S,
    MAX_HEADER_BYTES,
    UNSAFE_LINE,
    AddressLimits,
    CheckedLines,
    cut_slow_websocket_messages,
    framing_refusal,
    log,
    log_client_error,
    message_too_slow,
    no_delay,
    peer_address,
    unsafe_line,
)

# RFC 9112 7.1: a chunk's size in hex digits (16 at most here), its extensions after a ";", then CRLF.
CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,16})(?:[ \t]*;[^\r\n]*)?\r\n")


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


class CappedLines:
    """A request's stream as the header parser reads it (line by line), refusing lines past ``MAX_HEADER_BYTES``
    in all with a ``ValueError``, which pywsgi answers 400."""

    def __init__(self, rfile: Any) -> None:
        self.rfile = rfile
        self.left = MAX_HEADER_BYTES

    def readline(self, limit: int = -1) -> bytes:
        line: bytes = self.rfile.readline(limit)
        self.left -= len(line)
        if self.left < 0:
            raise ValueError(f"request headers over {MAX_HEADER_BYTES} bytes")
        return line


@contextlib.contextmanager
def tls_failures_quiet(client: object) -> Iterator[None]:
    """A TLS error ending a connection (a failed handshake: a scanner, plain http to the https port; a client gone
    mid-answer) is the client's doing, as a reset is: one DEBUG line, where eventlet's hub printed a traceback."""
    try:
        yield
    except ssl.SSLError as error:
        log.debug("%s: TLS ended: %s", peer_address(client), error)


def unmask(data: bytes, mask: bytes, length: int | None = None, offset: int = 0) -> bytes:
    """RFC 6455 masking of ``data[:length]``, starting ``offset`` bytes into the 4-byte ``mask`` cycle."""
    import numpy  # a transformers dependency; vectorised XOR is ~100x the per-byte loop

    length = len(data) if length is None else length
    key = numpy.resize(numpy.frombuffer(bytes(mask[(offset + i) % 4] for i in range(4)), numpy.uint8), length)
    return (numpy.frombuffer(data, numpy.uint8, count=length) ^ key).tobytes()


def gevent_handler(limits: AddressLimits) -> type:
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
        # A client gone mid-answer, over TLS: the twin of a broken pipe, which pywsgi logged with a traceback.
        ignored_socket_errors = (*WSGIHandler.ignored_socket_errors, ssl.SSL_ERROR_EOF)

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

        def read_request(self, raw_requestline: str) -> Any:
            if unsafe_line(raw_requestline.encode("latin-1")):
                raise ValueError(UNSAFE_LINE)  # answered 400, connection closed
            return super().read_request(raw_requestline)

        def MessageClass(self, rfile: Any, *args: Any) -> Any:
            """The headers, at most ``MAX_HEADER_BYTES`` of them (pywsgi took 100 lines of 64 KiB each), refused
            when framed ambiguously: pywsgi read a body with both lengths as chunked, one with two lengths by the
            first, split lines at a bare CR or LF, joined folded ones and kept the connection, so it answered a
            request that a proxy in front would not have seen."""
            lines = CheckedLines(CappedLines(rfile))
            headers = super().MessageClass(lines, *args)
            refusal = UNSAFE_LINE if lines.unsafe else framing_refusal(headers, self.request_version)
            if refusal:
                raise ValueError(refusal)  # answered 400, connection closed
            return headers

        def _handle_client_error(self, error: Exception) -> Any:
            """pywsgi prints the traceback of any invalid request but a ``ValueError`` (more than 100 headers,
            say) to stderr; as a ``ValueError`` it is one line through ``log_error``, and a 400 all the same."""
            if not isinstance(error, ValueError):
                error = ValueError(f"{type(error).__name__}: {error}")
            return super()._handle_client_error(error)

        def log_error(self, msg: str, *args: object) -> None:
            log_client_error(self.client_address, msg, *args)

    cut_slow_websocket_messages()
    return GuardedHandler


def eventlet_protocol(limits: AddressLimits) -> type:
    import eventlet  # imported here: eventlet is only loaded when it is the server
    from eventlet.websocket import FailedConnectionError, RFC6455WebSocket
    from eventlet.wsgi import ChunkReadError, HttpProtocol

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
        once under the minimum rate: a megabyte frame sent a byte at a time was read for good. eventlet bounds
        each frame at engineio's limit but not a message's frames together: past it too, the message ends with
        code 1009 (a stranger's endless fragments, before any Socket.IO connect, were all kept)."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.started = time.monotonic()
            self.received = 0

        def push(self, data: bytes, final: bool = False) -> None:
            self.received += len(data)
            if self.received > self.max_frame_length:
                raise FailedConnectionError(1009, f"message over {self.max_frame_length} bytes")
            super().push(data, final)
            if message_too_slow(self.started, self.received):
                raise FailedConnectionError(1008, "message too slow")

    RFC6455WebSocket.Message = MessageInTime

    class StrictChunks:
        """A chunked body's stream as eventlet reads it, held to RFC 9112 7.1: eventlet reads a chunk's size as
        Python reads a number (``0x5``, `` 5 ``, ``0_5``, ended by a bare LF) and skips whatever line follows
        its data, so a proxy in front that reads sizes strictly ends the body elsewhere, and eventlet answered
        the request hidden behind it. A size line, the CRLF after a chunk's data or a trailer line out of form
        fails the read (eventlet's own ``ChunkReadError``) and the connection is closed after the answer."""

        def __init__(self, rfile: Any, close_after: Callable[[], None]) -> None:
            self.rfile = rfile
            self.close_after = close_after
            self.left = 0  # bytes of the current chunk's data still to come
            self.next_line = "size"  # or "data", "end of data", "trailer", "done"

        def read(self, size: int = -1) -> bytes:
            return self._data(self.rfile.read(size))

        def readline(self, size: int = -1) -> bytes:
            if self.left:  # the data, read by line
                return self._data(self.rfile.readline(size))
            line: bytes = self.rfile.readline(size)
            expected = self.next_line
            if line and not self._in_form(line):
                self.close_after()
                raise ChunkReadError(f"a chunked body's {expected} line out of form")
            return line

        def _data(self, data: bytes) -> bytes:
            self.left -= len(data)
            if self.left <= 0:
                self.left, self.next_line = 0, "end of data"
            return data

        def _in_form(self, line: bytes) -> bool:
            """Whether ``line`` is the line that comes next, moving on to what comes after it."""
            if self.next_line == "size":
                size = CHUNK_SIZE.fullmatch(line)
                if size is None:
                    return False
                self.left = int(size[1], 16)
                self.next_line = "data" if self.left else "trailer"
                return True
            if self.next_line == "end of data":
                self.next_line = "size"
                return line == b"\r\n"
            if self.next_line == "trailer":
                if line == b"\r\n":
                    self.next_line = "done"
                return line.endswith(b"\r\n") and not unsafe_line(line)
            return False  # the body has ended: nothing more is its to read

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
                with tls_failures_quiet(self.client_address):
                    super().handle()
            finally:
                limits.release(address)

        def parse_request(self) -> bool:
            """The headers, refused when framed ambiguously: eventlet answered the request hidden behind the first
            of two lengths, read a body by a Transfer-Encoding it does not decode (or on HTTP/1.0) as none, and
            split lines at a bare CR or LF, joined folded ones."""
            headers_stream, lines = self.rfile, CheckedLines(self.rfile)
            self.rfile = lines
            try:
                if not super().parse_request():
                    return False
            finally:
                self.rfile = headers_stream
            unsafe = lines.unsafe or unsafe_line(self.raw_requestline)
            refusal = UNSAFE_LINE if unsafe else framing_refusal(self.headers, self.request_version)
            if refusal:
                self.send_error(400, refusal)  # and the connection closed
                return False
            return True

        def get_environ(self) -> Any:
            environ = super().get_environ()
            body = environ["eventlet.input"]
            if body.chunked_input:
                body.rfile = StrictChunks(body.rfile, close_after=partial(setattr, self, "close_connection", 1))
            return environ

        def finish(self) -> None:
            """eventlet's own closes the response stream first; when its client is gone (a cut body's) the
            answer left in it fails to flush, the request stream's close after it is skipped, and that stream kept
            the socket open until a garbage collection, minutes later. Both are closed here whatever happened."""
            try:
                with tls_failures_quiet(self.client_address):
                    super().finish()
            finally:
                self.rfile.close()
                self.connection.close()

        def log_message(self, template: str, *args: object) -> None:
            """http.server writes these (a malformed request's line, token and all) straight to stderr."""
            log_client_error(self.client_address, template, *args)

    return GuardedProtocol
