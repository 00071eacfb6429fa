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
- a websocket message, or a request body, still arriving after ``HEADER_TIMEOUT_S`` must have
  come at ``MIN_MESSAGE_RATE_BPS`` on average (a megabyte frame or body sent a byte at a time held
  its connection for good; bodies: ``body_rate``);
- a green server yields to its other connections after every websocket read, however fast the
  client sends (a flood held the whole server);
- a TLS handshake is part of the wait for the headers, after the per-address admission;
- a request framed ambiguously (both ``Content-Length`` and ``Transfer-Encoding``, two lengths, a coding other than
  ``chunked``, two ``Host``, a malformed header line, a folded line, a bare CR or LF or a NUL inside a line) is
  refused and its connection closed (RFC 9112 6.1: a proxy framing it otherwise would pass a second, smuggled
  request); gunicorn refuses these itself, the green servers by ``framing_refusal`` and ``unsafe_line``, and
  gevent's headers are capped in all;
- Nagle's algorithm off: an answer ends with two short frames back to back (the last stream
  delta, then the response); with Nagle on, the second waits for the client's delayed ACK,
  about 40 ms on Linux, on every answer.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Any

from ..config import Settings
from ..tls import tls_files
from .bounds import HEADER_TIMEOUT_S, IO_TIMEOUT_S, AddressLimits
from .green_servers import eventlet_protocol, gevent_handler
from .gunicorn_server import WsgiApp, serve_gunicorn


def serve(
    settings: Settings,
    wsgi_app: WsgiApp,
    *,
    socketio: Any,
    on_sigterm: Callable[[], None],
    on_sigint: Callable[[], None],
) -> None:
    """Serve until the process exits; SIGTERM and SIGHUP call ``on_sigterm`` (which starts draining, then exits),
    SIGINT (Ctrl-C) and SIGQUIT ``on_sigint`` (which stops at once)."""
    # Behind a trusted proxy every connection comes from the proxy: only the total bound means anything
    # there (sessions and events are still limited per forwarded client address, vlm/sessions.py).
    per_address = settings.max_connections if settings.trusted_proxy else settings.max_connections_per_ip
    limits = AddressLimits(per_address)
    if settings.async_mode == "threading":
        serve_gunicorn(settings, wsgi_app, limits, on_sigterm, on_sigint)
        return
    for draining in (signal.SIGTERM, signal.SIGHUP):  # SIGHUP: the terminal that started it closed
        signal.signal(draining, lambda *_: on_sigterm())
    for quick in (signal.SIGINT, signal.SIGQUIT):
        signal.signal(quick, lambda *_: on_sigint())
    options: dict[str, object] = dict(tls_files(settings))
    if settings.async_mode == "gevent":
        options.update(handler_class=gevent_handler(limits), spawn=settings.max_connections)
        if settings.https:
            # gevent shook hands before its handler ran, under no bound: a client that never did held a slot for
            # good. Now the handler's first read does, after the per-address admission and under the header deadline.
            options.update(do_handshake_on_connect=False)
    else:
        options.update(
            protocol=eventlet_protocol(limits),
            max_size=settings.max_connections,
            keepalive=HEADER_TIMEOUT_S,
            socket_timeout=IO_TIMEOUT_S,
        )
    socketio.run(wsgi_app, host=settings.host, port=settings.port, log_output=False, **options)
