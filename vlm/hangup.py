"""A client's socket: where each server keeps it, whether the client has hung up, and shutting it down.

A non-streamed answer writes nothing until it is complete, so a closed connection shows only as
the socket becoming readable: with nothing to read (EOF), or, where TCP says so, with the peer's side
closed behind bytes nobody reads (a TLS client sends its close_notify alert before its FIN, and those
bytes would otherwise hide the FIN for good). The socket is found where each server
puts it in the WSGI environ (as simple-websocket finds it); on a server that hides it, a hang-up
is never reported and the answer is generated as before.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import socket
from typing import Any

HANG_UPS = frozenset({errno.ECONNRESET, errno.EPIPE, errno.ENOTCONN, errno.ECONNABORTED, errno.ETIMEDOUT})
# Linux's TCP states (include/net/tcp_states.h) once the peer has closed its side: CLOSE, CLOSE_WAIT, LAST_ACK.
PEER_CLOSED_STATES = frozenset({7, 8, 9})


CLIENT_SOCKET = "vlm.client_socket"  # where a middleware that wraps ``wsgi.input`` leaves the socket it found


def client_socket(environ: dict[str, Any]) -> Any:
    if CLIENT_SOCKET in environ:
        return environ[CLIENT_SOCKET]
    if "gunicorn.socket" in environ:
        return environ["gunicorn.socket"]
    if "eventlet.input" in environ:
        return environ["eventlet.input"].get_socket()
    stream = environ.get("wsgi.input")
    stream = getattr(stream, "rfile", stream)  # gevent.pywsgi wraps its file object
    return getattr(getattr(stream, "raw", None), "_sock", None)


def hung_up(environ: dict[str, Any]) -> bool:
    connection = client_socket(environ)
    try:
        descriptor = connection.fileno() if connection is not None else -1
        if descriptor < 0:
            return connection is not None
        if not select.select([descriptor], [], [], 0)[0]:
            return False
        # A look through a duplicate descriptor: the server's own socket object (green or TLS) is left alone.
        with socket.socket(fileno=os.dup(descriptor)) as probe:
            return peer_closed(probe) or probe.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError as error:  # only the peer's doing; out of descriptors (os.dup) says nothing about the client
        return error.errno in HANG_UPS


def peer_closed(connection: socket.socket) -> bool:
    """Whether TCP has seen the peer close its side, whatever is still unread (Linux only; False elsewhere)."""
    if connection.family not in (socket.AF_INET, socket.AF_INET6) or not hasattr(socket, "TCP_INFO"):
        return False
    return connection.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0] in PEER_CLOSED_STATES


def shut_down(connection: Any) -> None:
    """Both directions of ``connection``'s TCP connection, from any thread, through a copy of its descriptor: the
    server's own object (green, or TLS) is left alone, and a read under way on it returns the end of the stream."""
    with contextlib.suppress(OSError), socket.socket(fileno=os.dup(connection.fileno())) as handle:
        handle.shutdown(socket.SHUT_RDWR)
