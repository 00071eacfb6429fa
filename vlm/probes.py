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
from typing import Literal, Protocol, Self, runtime_checkable

from .logsafe import capped, masked_url

log = logging.getLogger(__name__)

INTERVAL_S = 5.0
TIMEOUT_S = 2.0
# Failed checks in a row before a probe reports its service failing: one slow answer (a model server busy
# generating can miss TIMEOUT_S now and then) must not take every process out of a load balancer.
FAILURES_TO_REPORT = 2

# "model_missing": the model server answers, but no longer lists the model this process asks it for.
ProbeState = Literal["checking", "ok", "unreachable", "model_missing"]
FAILING: frozenset[ProbeState] = frozenset({"unreachable", "model_missing"})


class ModelMissing(Exception):
    """The service answered, without what this process needs of it (the model it asks for)."""


def described(error: Exception) -> str:
    """An error for a log line, capped: a proxy's HTML error page can be long."""
    return capped(f"{type(error).__name__}: {error}")


class Probe:
    """Runs ``check`` (which raises when ``label`` does not answer, ``ModelMissing`` when it answers without what is
    needed) every ``INTERVAL_S`` on a thread of its own; ``state`` says how the checks went, a failure counting from
    the ``FAILURES_TO_REPORT``-th in a row and one success ending it. ``consequence`` ends the WARNING line of an
    outage: what it stops; ``describe`` words a failed check's error for that line."""

    def __init__(
        self,
        label: str,
        check: Callable[[], object],
        consequence: str,
        state: ProbeState = "checking",
        describe: Callable[[Exception], str] = described,
    ) -> None:
        self.label = label
        self.check = check
        self.consequence = consequence
        self.state: ProbeState = state
        self.describe = describe
        self.failures = 0  # failed checks in a row
        self.thread = threading.Thread(target=self._run, name="vlm-probe", daemon=True)

    def start(self) -> Self:
        self.thread.start()
        return self

    def _run(self) -> None:
        while True:
            self.check_once()
            time.sleep(INTERVAL_S)

    def check_once(self) -> None:
        """One check, and the state it leads to."""
        try:
            self.check()
        except Exception as error:  # whatever the client raises, the service did not answer
            self._failed(error)
        else:
            self._answered()

    def _failed(self, error: Exception) -> None:
        self.failures += 1
        state: ProbeState = "model_missing" if isinstance(error, ModelMissing) else "unreachable"
        if self.failures < FAILURES_TO_REPORT or state == self.state:
            return
        how = "does not answer" if state == "unreachable" else "answers without the model asked for"
        log.warning("%s %s (%s): %s", self.label, how, self.describe(error), self.consequence)
        self.state = state

    def _answered(self) -> None:
        self.failures = 0
        if self.state in FAILING:
            log.warning("%s answers again", self.label)
        self.state = "ok"


@runtime_checkable
class Probed(Protocol):
    """A backend that depends on a service it probes (``--backend openai``'s model server), for ``/healthz``."""

    def health(self) -> Probe: ...


class MessageQueueProbe(Probe):
    """Pings the Redis at ``url``. A process whose Redis is down still answers its own clients, so this never
    makes ``/healthz`` fail: a load balancer would take every process out at once."""

    def __init__(self, url: str) -> None:
        import redis  # imported here: only a scaled-out web tier needs it

        client = redis.Redis.from_url(url, socket_timeout=TIMEOUT_S, socket_connect_timeout=TIMEOUT_S)
        consequence = "events for clients of other processes do not reach them"
        super().__init__(f"message queue {masked_url(url)}", client.ping, consequence)
