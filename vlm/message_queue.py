"""``--message-queue``: python-socketio's Redis manager, listening again within seconds once Redis is back.

Its own listener waits 1, 2, 4 ... up to 60 s between tries and never starts over, so after an outage of a minute
a process stayed unsubscribed for up to a minute more while Redis answered: every event to everyone (a watch alert)
published then reached no client of another process, and nothing said so.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

import socketio

log = logging.getLogger(__name__)

CHANNEL = "flask-socketio"  # Flask-SocketIO's default, which other emitters (write-only managers) use too
RETRY_MAX_S = 2.0


class RedisQueue(socketio.RedisManager):
    """A ``RedisManager`` whose listener tries again every ``RETRY_MAX_S`` at most while Redis is away."""

    def __init__(self, url: str) -> None:
        super().__init__(url, channel=CHANNEL)

    def _redis_listen_with_retries(self) -> Iterator[Any]:
        wait = 0.5
        while True:
            try:
                self._redis_connect()
                self.pubsub.subscribe(self.channel)
                wait = 0.5
                yield from self.pubsub.listen()
            except Exception as error:  # whatever redis-py raises, Redis is away: subscribe again
                log.debug("listening on the message queue failed (%s); again in %.1f s", type(error).__name__, wait)
                time.sleep(wait)
                wait = min(2 * wait, RETRY_MAX_S)
