"""The bounds every server applies in its own terms: connections per address, and the least rate a
websocket message must arrive at (simple-websocket's, for the threading and gevent servers)."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from email.message import Message
from typing import Any, TypeVar

log = logging.getLogger("vlm.servers")

HEADER_TIMEOUT_S = 10.0
IO_TIMEOUT_S = 30.0
MIN_MESSAGE_RATE_BPS = 1024  # 5 MiB over a 1 Mbit/s phone uplink takes 40 s; this allows it 85 min
MAX_HEADER_BYTES = 65536  # a request's header lines in all, as eventlet's own cap (a browser sends a few KiB)

Connection = TypeVar("Connection")


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


def message_too_slow(started: float, received: int, what: str = "a websocket") -> bool:
    """Whether a message (or a request body) begun at ``started`` (monotonic), ``received`` bytes so far, has come
    in under the minimum rate; if so ``what`` is about to be cut, which is logged here."""
    elapsed = time.monotonic() - started
    if elapsed <= HEADER_TIMEOUT_S + received / MIN_MESSAGE_RATE_BPS:
        return False
    log.warning("cutting off %s: %d bytes of a message in %.0f s", what, received, elapsed)
    return True


class Arrivals(list[Any]):
    """simple-websocket's queue of whole messages, counting the ones put in: how the rate check below tells that
    one message ended, and the next began, within a single read (its reader takes them out meanwhile)."""

    count = 0

    def append(self, message: Any) -> None:
        self.count += 1
        super().append(message)


def cut_slow_websocket_messages() -> None:
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


def framing_refusal(headers: Message, version: str) -> str | None:
    """Why a request's headers (as ``http.client`` parses them, for either green server) frame its body or its
    target ambiguously, or None. A proxy in front that read them otherwise (the other of two lengths, a coding
    these servers ignore, the other Host) would pass on a second, smuggled request; gunicorn refuses them all.
    Only a lone ``chunked`` is a coding these servers decode."""
    lengths = headers.get_all("content-length", [])
    codings = headers.get_all("transfer-encoding", [])
    if headers.defects:
        return "a malformed header line"  # the parser dropped it and every header after it
    if len(lengths) > 1 or not all(length.strip().isdigit() for length in lengths):
        return "Content-Length not one number"
    if lengths and codings:
        return "both Content-Length and Transfer-Encoding"
    if codings and (version != "HTTP/1.1" or len(codings) > 1 or codings[0].lower() != "chunked"):
        return "a Transfer-Encoding other than chunked over HTTP/1.1"
    if len(headers.get_all("host", [])) > 1:
        return "more than one Host"
    return None


UNSAFE_LINE = "a folded line, or a bare CR or LF or a NUL, in the request line or headers"


def unsafe_line(line: bytes) -> bool:
    """Whether a request or header ``line`` holds a CR, LF or NUL other than its closing CRLF, or begins with
    whitespace (a folded header, RFC 9112 5.2). Python's header parser splits lines at a lone CR or LF and joins
    a folded line to the header before; a proxy in front that does neither, or cuts a value at a NUL, frames
    the request otherwise (a ``Content-Length`` only one of them sees). gunicorn refuses them all."""
    content = line.removesuffix(b"\r\n")
    return any(byte in content for byte in (b"\r", b"\n", b"\0")) or content.startswith((b" ", b"\t"))


class CheckedLines:
    """A request's header lines as a parser reads them (line by line), noting any ``unsafe_line``."""

    def __init__(self, rfile: Any) -> None:
        self.rfile = rfile
        self.unsafe = False

    def readline(self, limit: int = -1) -> bytes:
        line: bytes = self.rfile.readline(limit)
        self.unsafe = self.unsafe or unsafe_line(line)
        return line


def log_client_error(client: object, message: str, *args: object) -> None:
    """A server's own note about a client's request, which quotes what the client sent (a token in the URL
    too): through the root handler, which escapes and masks (vlm/logsafe.py), not straight to stderr."""
    log.warning("%s: %s", peer_address(client), message % args if args else message)
