"""What each of the three servers (Werkzeug, eventlet, gevent) needs to be told, in its own terms.

Every accepted connection gets Nagle's algorithm switched off. An answer ends with two short
Socket.IO frames back to back (the last stream delta, then the response); with Nagle on,
the second waits for the client's delayed ACK, about 40 ms on Linux, on every answer.
"""

from __future__ import annotations

import socket
from typing import Any

from werkzeug.serving import WSGIRequestHandler

from .config import Settings
from .tls import self_signed_certificate


def server_options(settings: Settings) -> dict[str, object]:
    """Keyword arguments for ``SocketIO.run``: TLS files and a connection handler with Nagle off."""
    options = tls_options(settings)
    if settings.async_mode == "threading":
        options["request_handler"] = NoDelayRequestHandler
    elif settings.async_mode == "gevent":
        options["handler_class"] = _gevent_handler()
    else:
        options["protocol"] = _eventlet_protocol()
    return options


def tls_options(settings: Settings) -> dict[str, object]:
    """Each server takes its certificate differently: Werkzeug an ssl_context, eventlet/gevent file names."""
    if not settings.https:
        return {}
    if settings.self_signed:
        cert, key = map(str, self_signed_certificate(host=settings.host))
    else:
        cert, key = str(settings.ssl_cert), str(settings.ssl_key)
    if settings.async_mode == "threading":
        return {"ssl_context": (cert, key)}
    return {"certfile": cert, "keyfile": key}


def no_delay(connection: Any) -> None:
    connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class NoDelayRequestHandler(WSGIRequestHandler):
    disable_nagle_algorithm = True


def _gevent_handler() -> type:
    from gevent.pywsgi import WSGIHandler  # imported here: gevent is only loaded when it is the server

    return _nagle_off_before(WSGIHandler, "handle", socket_attribute="socket")


def _eventlet_protocol() -> type:
    from eventlet.wsgi import HttpProtocol  # imported here: eventlet is only loaded when it is the server

    return _nagle_off_before(HttpProtocol, "setup", socket_attribute="request")


def _nagle_off_before(base: type, hook: str, *, socket_attribute: str) -> type:
    """A subclass of a server's connection class whose ``hook`` first switches Nagle off on the connection."""

    def hooked(self: Any) -> None:
        no_delay(getattr(self, socket_attribute))
        getattr(base, hook)(self)

    return type(f"NoDelay{base.__name__}", (base,), {hook: hooked})
