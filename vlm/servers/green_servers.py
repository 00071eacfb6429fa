"""eventlet's and gevent's own servers, with the same bounds in their terms: a header deadline by the library's
``Timeout``, per-address slots, a yield after every websocket read, and refusals of smuggling and slow messages."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from .bounds import (
    HEADER_TIMEOUT_S,
    IO_TIMEOUT_S,
    AddressLimits,
    cut_slow_websocket_messages,
    log_client_error,
    message_too_slow,
    no_delay,
    peer_address,
)


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

    cut_slow_websocket_messages()
    return GuardedHandler


def eventlet_protocol(limits: AddressLimits) -> type:
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
