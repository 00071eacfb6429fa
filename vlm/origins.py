"""Which pages may open a Socket.IO connection: the defence against cross-site WebSocket hijacking.

By default only the app's own page: its origin is the scheme and ``Host`` the request came with,
or a proxy's ``X-Forwarded-Proto``/``-Host`` (as Engine.IO's own rule has it; the Host guard has
already refused a forwarded name that is not ours). ``--cors-origin`` adds others. A refusal is
logged once per origin: Engine.IO logs only the first of the process, and behind a proxy that
does not say it serves https (Apache's default) every visit of the real page is refused.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

LOGGED_ORIGINS = 64  # distinct refused origins worth a line each; past these, a flood of made-up ones is not,
LATER_EVERY_S = 60.0  # but one new origin a minute still is: the flood must not hide a real misconfiguration


class RefusalLog:
    """Which refused origins get a log line: each of the first ``LOGGED_ORIGINS`` once, then a new one a minute."""

    def __init__(self) -> None:
        self.logged: set[str] = set()
        self.last_s = -LATER_EVERY_S
        self.lock = threading.Lock()

    def worth_a_line(self, origin: str) -> bool:
        with self.lock:
            now = time.monotonic()
            if origin in self.logged or (len(self.logged) >= LOGGED_ORIGINS and now - self.last_s < LATER_EVERY_S):
                return False
            if len(self.logged) < LOGGED_ORIGINS:
                self.logged.add(origin)
            self.last_s = now
            return True


def own_origins(environ: dict[str, Any]) -> set[str]:
    host = environ.get("HTTP_HOST", "")
    own = {f"{environ.get('wsgi.url_scheme', 'http')}://{host}"}
    if "HTTP_X_FORWARDED_PROTO" in environ or "HTTP_X_FORWARDED_HOST" in environ:
        scheme = environ.get("HTTP_X_FORWARDED_PROTO", environ.get("wsgi.url_scheme", "http"))
        forwarded_host = environ.get("HTTP_X_FORWARDED_HOST", host)
        own.add(f"{scheme.split(',')[0].strip()}://{forwarded_host.split(',')[0].strip()}")
    return own


def socket_origins(extra: tuple[str, ...]) -> str | Callable[[str | None, dict[str, Any]], bool]:
    """Engine.IO's ``cors_allowed_origins``: ``*`` for any, else a check that logs what it refuses."""
    if "*" in extra:
        return "*"
    refusals = RefusalLog()

    def allowed(origin: str | None, environ: dict[str, Any]) -> bool:
        if not origin:  # asked for the CORS headers of a request that sent none: nothing to allow or refuse
            return False
        own = own_origins(environ)
        if origin in own or origin in extra:
            return True
        if refusals.worth_a_line(origin):
            log.warning(
                "refused a Socket.IO connection from a page at %r: this server's own origin here is %s "
                "(behind a proxy that serves https, it must send X-Forwarded-Proto: https; "
                "--cors-origin allows another site's page)",
                origin,
                " or ".join(sorted(own)),
            )
        return False

    return allowed
