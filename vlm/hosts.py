"""Host header allow-list: the defence against DNS rebinding.

A web page on ``attacker.example`` can make its own name resolve to 127.0.0.1 and then talk to
this server as same-origin, past the Origin check, carrying ``Host: attacker.example``. So
a request must name this server: an IP address (a page that knows only an address is not
rebinding a name), ``localhost``, the ``--host`` name, a ``--cors-origin``'s host, or an
``--allowed-host`` (``*`` for any, e.g. behind a proxy that checks names itself). So must every
name in ``X-Forwarded-Host``: a proxy that does not pass the browser's ``Host`` on (Apache
without ``ProxyPreserveHost``) names this server by address and puts the rebound name there,
where Engine.IO's origin rule reads it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import urlsplit

from .config import Settings

WILDCARD = "*"


def allowed_hosts(settings: Settings) -> frozenset[str]:
    names = {"localhost", settings.host.lower(), *(name.lower() for name in settings.allowed_hosts)}
    for origin in settings.cors_origins:
        if origin == WILDCARD:
            continue
        hostname = urlsplit(origin).hostname
        if hostname:
            names.add(hostname.lower())
    return frozenset(names)


def host_name(header: str) -> str:
    """``example.com:5000`` -> ``example.com``; ``[::1]:5000`` -> ``::1``."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:].split("]", 1)[0]
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def host_allowed(header: str, names: frozenset[str]) -> bool:
    if WILDCARD in names:
        return True
    name = host_name(header).rstrip(".")
    if not name:
        return False
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return name in names
    return True


def host_guard(wsgi_app: Callable[..., Iterable[bytes]], names: frozenset[str]) -> Callable[..., Iterable[bytes]]:
    """Answer 421 (Misdirected Request) to any request whose Host is not one of ours."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        forwarded = environ.get("HTTP_X_FORWARDED_HOST")
        named = [environ.get("HTTP_HOST", ""), *(forwarded.split(",") if forwarded else ())]
        if all(host_allowed(host, names) for host in named):
            return wsgi_app(environ, start_response)
        body = b"This server does not answer to that Host name (see --allowed-host).\n"
        start_response(
            "421 Misdirected Request",
            [("Content-Type", "text/plain"), ("Connection", "close"), ("Content-Length", str(len(body)))],
        )
        return [body]

    return app
