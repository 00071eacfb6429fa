"""Whether ``--message-queue`` answers, for ``/healthz`` and one log line when that changes.

python-socketio's own Redis connection has no read timeout and only logs errors per event while Redis is
down, which an operator cannot poll. A connection of its own with short timeouts asks Redis every few
seconds instead. A process whose Redis is down still answers its own clients, so this never makes
``/healthz`` fail: a load balancer would take every process out at once.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Literal

from .logsafe import masked_url

log = logging.getLogger(__name__)

INTERVAL_S = 5.0
TIMEOUT_S = 2.0

QueueState = Literal["checking", "ok", "unreachable"]


class MessageQueueProbe:
    """Pings the Redis at ``url`` every ``INTERVAL_S`` on a thread of its own."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.state: QueueState = "checking"
        self.thread = threading.Thread(target=self._run, name="vlm-queue-probe", daemon=True)

    def start(self) -> MessageQueueProbe:
        self.thread.start()
        return self

    def _run(self) -> None:
        import redis  # imported here: only a scaled-out web tier needs it

        client = redis.Redis.from_url(self.url, socket_timeout=TIMEOUT_S, socket_connect_timeout=TIMEOUT_S)
        while True:
            try:
                client.ping()
            except redis.RedisError as error:
                self._set("unreachable", f"{type(error).__name__}: {error}")
            else:
                self._set("ok", "")
            time.sleep(INTERVAL_S)

    def _set(self, state: QueueState, problem: str) -> None:
        if state == "unreachable" and self.state != "unreachable":
            log.warning(
                "message queue %s does not answer (%s): events for clients of other processes do not reach them",
                masked_url(self.url),
                problem,
            )
        elif state == "ok" and self.state == "unreachable":
            log.info("message queue %s answers again", masked_url(self.url))
        self.state = state
