"""Logging that a client cannot forge or read secrets from.

Request ids and questions come from strangers: a newline in one would start a fake log line and an
escape sequence would repaint the operator's terminal, so every control character in a message is
written escaped. The secrets the formatter is given (the access token, the upstream's API key and URL password)
are replaced wherever they appear, whoever logged them; ``masked`` does the same for what goes to stderr unlogged.
"""

from __future__ import annotations

import errno
import importlib
import logging
import re
import ssl
import threading
from urllib.parse import urlsplit, urlunsplit

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
MASK = "***"
# The password in a URL's userinfo (http://user:pass@host), wherever a URL is logged.
_URL_PASSWORD = re.compile(r"(://[^\s:/@]*:)[^\s/@]+@")
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# The most of a service's own error text one log line carries (a traceback or an HTML error page can be pages long).
MAX_DETAIL_CHARS = 500


def neutralise(text: str) -> str:
    """Control characters as visible escapes (``\\n``, ``\\x1b``), so one record is one plain line."""
    return _CONTROL.sub(lambda match: match.group().encode("unicode_escape").decode("ascii"), text)


def url_host(url: str) -> str:
    """``host:port`` of ``url``, without the userinfo (``user:pass@``) it may carry."""
    return urlsplit(url).netloc.rpartition("@")[2]


def masked_url(url: str) -> str:
    """``url`` with the password of its userinfo (``http://user:pass@host``) replaced by the mask."""
    parts = urlsplit(url)
    if not parts.password:
        return url
    return urlunsplit(parts._replace(netloc=f"{parts.username}:{MASK}@{url_host(url)}"))


def capped(text: str) -> str:
    """``text`` cut to its first ``MAX_DETAIL_CHARS``, saying so."""
    return text if len(text) <= MAX_DETAIL_CHARS else text[:MAX_DETAIL_CHARS] + "... (cut)"


class SafeFormatter(logging.Formatter):
    def __init__(self, secrets: tuple[str | None, ...] = ()) -> None:
        super().__init__(FORMAT)
        self.secrets = tuple(secret for secret in secrets if secret)

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = self.mask(neutralise(record.message))
        return super().formatMessage(record)

    def formatException(self, ei: object) -> str:
        return self.mask(super().formatException(ei))  # type: ignore[arg-type]

    def mask(self, text: str) -> str:
        text = _URL_PASSWORD.sub(rf"\1{MASK}@", text)
        for secret in self.secrets:
            text = text.replace(secret, MASK)
        return text


class QuietTimeouts(logging.Filter):
    """A client that stops sending mid-request is cut off by its read timeout; that is the bound working,
    not an error worth a traceback per connection (which a stranger could otherwise use to fill the disk)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], TimeoutError))


LIBRARY_LOGGERS = ("engineio.server", "socketio.server", "gevent.pywsgi", "eventlet.wsgi", "huggingface_hub")


def configure_logging(*secrets: str | None, level: str = "info") -> None:
    """One handler on the root logger for the app and the server alike, at ``level`` (``--log-level``), masking
    ``secrets`` (``Settings.log_secrets``) in every line."""
    handler = logging.StreamHandler()
    handler.setFormatter(SafeFormatter(secrets))
    handler.addFilter(QuietTimeouts())
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    # The openai client's HTTP library logs every request's URL at INFO (a --base-url's password too).
    for name in ("httpx", "httpx2"):
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("PIL").setLevel(logging.INFO)  # at DEBUG it logs every chunk of every image it opens
    threading.excepthook = log_thread_exception


def masked(text: str) -> str:
    """``text`` masked as the root logger's lines are, for what is written to stderr without logging (the start
    error)."""
    formatters = [handler.formatter for handler in logging.getLogger().handlers]
    formatter = next((found for found in formatters if isinstance(found, SafeFormatter)), SafeFormatter())
    return formatter.mask(text)


# What a websocket's writer thread meets when its client left first: the server had closed the socket under it.
DEPARTED = frozenset({errno.EBADF, errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN})


def departed(error: BaseException | None) -> bool:
    """Whether ``error`` is a write finding its client gone: over TLS the same shows as ``SSLEOFError``."""
    return isinstance(error, ssl.SSLEOFError) or (isinstance(error, OSError) and error.errno in DEPARTED)


def log_thread_exception(args: threading.ExceptHookArgs) -> None:
    """An exception that ends a thread goes through logging (masked, escaped) rather than threading's raw print.

    python-engineio's writer thread sends a websocket's close frame after the server may already have closed
    the socket of a client that left: that is a departure, not an error, and is logged at DEBUG. ``SystemExit``
    ends a thread on purpose, and threading's own hook ignores it too."""
    if issubclass(args.exc_type, SystemExit):
        return
    name = args.thread.name if args.thread is not None else "?"
    if name.endswith("(writer)") and departed(args.exc_value):
        logging.getLogger("vlm").debug("a websocket writer found its client gone (%s)", args.exc_value)
        return
    error = (args.exc_type, args.exc_value, args.exc_traceback)
    logging.getLogger("vlm").error("uncaught exception in thread %s", name, exc_info=error)  # type: ignore[arg-type]


def route_library_loggers() -> None:
    """python-engineio and python-socketio give their loggers a plain handler of their own when they
    start, huggingface_hub when it is imported (so it is imported here); without it their records (which
    quote what clients sent, or a download's URL) go through the root handler, once and masked."""
    importlib.import_module("huggingface_hub.utils.logging")
    for name in LIBRARY_LOGGERS:
        library = logging.getLogger(name)
        library.handlers.clear()
        library.propagate = True
