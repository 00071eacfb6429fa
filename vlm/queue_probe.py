"""Whether a service this process needs answers, for ``/healthz`` and one log line each way when that changes.

python-socketio's own Redis connection has no read timeout and only logs errors per event while Redis is
down, and an upstream model server that died is noticed only by the next question; neither is something an
operator can poll. A probe asks the service every few seconds, with a short timeout, on a thread of its own.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Literal, Self

from .logsafe import masked_url

log = logging.getLogger(__name__)

INTERVAL_S = 5.0
TIMEOUT_S = 2.0

ProbeState = Literal["checking", "ok", "unreachable"]


class Probe:
    """Runs ``check`` (which raises when ``label`` does not answer) every ``INTERVAL_S`` on a thread of its own;
    ``state`` says how the last check went. ``consequence`` ends the WARNING line of an outage: what it stops;
    ``mask`` hides secrets the service may echo in its error (an API key) from that line."""

    def __init__(
        self,
        label: str,
        check: Callable[[], object],
        consequence: str,
        state: ProbeState = "checking",
        mask: Callable[[str], str] = str,
    ) -> None:
        self.label = label
        self.check = check
        self.consequence = consequence
        self.state: ProbeState = state
        self.mask = mask
        self.thread = threading.Thread(target=self._run, name="vlm-probe", daemon=True)

    def start(self) -> Self:
        self.thread.start()
        return self

    def _run(self) -> None:
        while True:
            try:
                self.check()
            except Exception as error:  # whatever the client raises, the service did not answer
                self._set("unreachable", self.mask(f"{type(error).__name__}: {error}"))
            else:
                self._set("ok", "")
            time.sleep(INTERVAL_S)

    def _set(self, state: ProbeState, problem: str) -> None:
        if state == "unreachable" and self.state != "unreachable":
            log.warning("%s does not answer (%s): %s", self.label, problem, self.consequence)
        elif state == "ok" and self.state == "unreachable":
            log.warning("%s answers again", self.label)
        self.state = state


class MessageQueueProbe(Probe):
    """Pings the Redis at ``url``. A process whose Redis is down still answers its own clients, so this never
    makes ``/healthz`` fail: a load balancer would take every process out at once."""

    def __init__(self, url: str) -> None:
        import redis  # imported here: only a scaled-out web tier needs it

        client = redis.Redis.from_url(url, socket_timeout=TIMEOUT_S, socket_connect_timeout=TIMEOUT_S)
        consequence = "events for clients of other processes do not reach them"
        super().__init__(f"message queue {masked_url(url)}", client.ping, consequence)
