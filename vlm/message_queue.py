"""``--message-queue``: the Redis that several app processes share, checked before the app serves.

Flask-SocketIO connects to it lazily, so an unreachable one showed only later, as an error per emit
while the process looked healthy; a URL it cannot use failed with advice to install kombu.
"""

from __future__ import annotations

from urllib.parse import urlsplit

SCHEMES = ("redis", "rediss", "unix")
CONNECT_TIMEOUT_S = 3.0


def shown(url: str) -> str:
    """The URL without its password, for messages."""
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    return parts._replace(netloc=host).geturl()


def message_queue_problem(url: str) -> str | None:
    """Why the app cannot use ``url`` as its message queue, in a sentence; None if Redis answers there."""
    import redis  # imported here: only a scaled-out web tier needs it

    if urlsplit(url).scheme not in SCHEMES:
        return f"--message-queue {shown(url)} is not a Redis URL: give redis://host:6379/0 (rediss:// for TLS)"
    try:
        redis.Redis.from_url(url, socket_connect_timeout=CONNECT_TIMEOUT_S, socket_timeout=CONNECT_TIMEOUT_S).ping()
    except (redis.RedisError, ValueError) as error:
        return (
            f"--message-queue {shown(url)}: Redis does not answer there ({error}). Start redis-server, or check "
            "the host, port and password; every app process behind one address needs the same one"
        )
    return None
