"""The addresses the app is reached by: what a wildcard ``--host`` means to a phone on the LAN."""

from __future__ import annotations

import socket

# Listening on every interface: an address to bind, not one a browser can open.
WILDCARD_HOSTS = ("0.0.0.0", "::", "")


# Reached from this machine only: no other device can open the page, so neither a token nor https is needed.
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def in_url(host: str) -> str:
    """``host`` as a URL writes it: an IPv6 address in brackets."""
    return f"[{host}]" if ":" in host else host


def is_wildcard(host: str) -> bool:
    return host in WILDCARD_HOSTS


def is_loopback(host: str) -> bool:
    return host in LOOPBACK_HOSTS


def lan_address() -> str:
    """The address other devices would use ("" without a route); no packet is sent (UDP connect only picks a route)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))
            return str(probe.getsockname()[0])
        except OSError:
            return ""
