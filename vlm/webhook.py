"""One JSON POST per alert to the operator's ``--webhook-url``, off every request path.

The URL comes only from the command line, never from a client, so nobody can make the
server open connections of their choosing. Posts wait in a bounded queue for one thread of
their own: a slow or dead receiver delays only other posts, never a check or a page. Each
post is retried with growing pauses on a connection error, a timeout, a 429 or a 5xx; a 4xx
is the receiver refusing it, so it is not repeated. Only a 2xx is a delivery: a redirect is not
followed (it would turn the POST into a GET without the alert) and counts as a refusal. Lost
posts are logged and counted.

Each attempt, the answer's status line and headers included, ends within ``timeout_s``: a timer
shuts the socket at the deadline, because a per-read timeout (requests') let a receiver that
answers a byte every few seconds hold the one sender thread for as long as it liked. Proxy
settings from the environment are not used: the receiver is the operator's own.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import logging
import queue
import socket
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import SplitResult, unquote, urlsplit

from .logsafe import url_host

log = logging.getLogger(__name__)

TIMEOUT_S = 5.0
ATTEMPTS = 4
FIRST_PAUSE_S = 0.5
QUEUE_SIZE = 100


class WebhookSender:
    def __init__(
        self,
        url: str,
        *,
        on_result: Callable[[bool], None] = lambda ok: None,
        timeout_s: float = TIMEOUT_S,
        attempts: int = ATTEMPTS,
        first_pause_s: float = FIRST_PAUSE_S,
    ) -> None:
        self.url = url
        # Only the host goes into logs: the path or query of a webhook URL often holds a secret.
        self.host = url_host(url)
        self.on_result = on_result
        self.timeout_s = timeout_s
        self.attempts = attempts
        self.first_pause_s = first_pause_s
        self.pending: queue.Queue[dict[str, Any]] = queue.Queue(QUEUE_SIZE)
        threading.Thread(target=self._run, name="vlm-webhook", daemon=True).start()

    def send(self, payload: dict[str, Any]) -> None:
        try:
            self.pending.put_nowait(payload)
        except queue.Full:
            log.warning("webhook to %s: %d posts already waiting; dropped one", self.host, QUEUE_SIZE)
            self.on_result(False)

    def _run(self) -> None:
        while True:
            payload = self.pending.get()
            self.on_result(self._deliver(payload))

    def _deliver(self, payload: dict[str, Any]) -> bool:
        pause = self.first_pause_s
        body = json.dumps(payload).encode()
        for attempt in range(1, self.attempts + 1):
            try:
                status = post_within(urlsplit(self.url), body, self.timeout_s)
                if 200 <= status < 300:
                    return True
                problem = f"HTTP {status}"
                if status < 500 and status != 429:
                    advice = "; redirects are not followed: give the URL it redirects to" if status < 400 else ""
                    log.warning("webhook to %s refused the alert (%s)%s; not retried", self.host, problem, advice)
                    return False
            except (OSError, http.client.HTTPException, UnicodeError) as error:  # UnicodeError: a host IDNA refuses
                problem = type(error).__name__
            if attempt < self.attempts:
                log.info(
                    "webhook to %s failed (%s), attempt %d of %d; retrying in %.1f s",
                    self.host,
                    problem,
                    attempt,
                    self.attempts,
                    pause,
                )
                time.sleep(pause)
                pause *= 2
        log.warning("webhook to %s failed %d times (%s); alert not delivered", self.host, self.attempts, problem)
        return False


def post_within(url: SplitResult, body: bytes, timeout_s: float) -> int:
    """POST a JSON ``body`` to ``url``; the answer's status, all within ``timeout_s`` or an ``OSError``."""
    https = url.scheme == "https"
    kind = http.client.HTTPSConnection if https else http.client.HTTPConnection
    # The port always given: with none, http.client parses one out of the host, and an IPv6 host (::1) has colons.
    connection = kind(url.hostname or "", url.port or (443 if https else 80), timeout=timeout_s)
    headers = {"Content-Type": "application/json", "Content-Length": str(len(body))}
    if url.username is not None:  # user:password@host, as requests took it
        credentials = f"{unquote(url.username)}:{unquote(url.password or '')}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(credentials).decode()
    expired = threading.Event()

    def expire() -> None:  # shutting the socket wakes a blocked read; closing it from this thread would not
        expired.set()
        with contextlib.suppress(OSError, AttributeError):  # AttributeError: no socket yet, or closed already
            connection.sock.shutdown(socket.SHUT_RDWR)

    deadline = threading.Timer(timeout_s, expire)  # from before the connect: a TLS handshake counts too
    deadline.start()
    try:
        connection.connect()
        connection.request("POST", (url.path or "/") + (f"?{url.query}" if url.query else ""), body, headers)
        status = connection.getresponse().status
    except (OSError, http.client.HTTPException):
        if not expired.is_set():
            raise
    finally:
        deadline.cancel()
        connection.close()
    if expired.is_set():  # the shut socket may also read as headers that simply ended
        raise TimeoutError(f"no answer within {timeout_s:g} s")
    return status
