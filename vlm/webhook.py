"""One JSON POST per alert to the operator's ``--webhook-url``, off every request path.

The URL comes only from the command line, never from a client, so nobody can make the
server open connections of their choosing. Posts wait in a bounded queue for one thread of
their own: a slow or dead receiver delays only other posts, never a check or a page. Each
post is retried with growing pauses on a connection error, a timeout, a 429 or a 5xx; a 4xx
is the receiver refusing it, so it is not repeated. Lost posts are logged and counted.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import requests

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
        self.host = urlsplit(url).netloc.rsplit("@", 1)[-1]
        self.on_result = on_result
        self.timeout_s = timeout_s
        self.attempts = attempts
        self.first_pause_s = first_pause_s
        self.pending: queue.Queue[dict[str, Any]] = queue.Queue(QUEUE_SIZE)
        self.session = requests.Session()
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
        for attempt in range(1, self.attempts + 1):
            try:
                response = self.session.post(self.url, json=payload, timeout=self.timeout_s)
                if response.ok:
                    return True
                problem = f"HTTP {response.status_code}"
                if response.status_code < 500 and response.status_code != 429:
                    log.warning("webhook to %s refused the alert (%s); not retried", self.host, problem)
                    return False
            except requests.RequestException as error:
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
