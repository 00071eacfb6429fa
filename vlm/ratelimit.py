"""Token buckets per connection and per client address: a flood is refused before any work is spent on it.

A connection's bucket is forgotten when it disconnects; an address's bucket is not (reconnecting or
opening more connections must not reset it), so idle full address buckets are pruned instead, which
keeps the table bounded by the addresses active in the last minute.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass


class RateLimiter:
    PRUNE_EVERY_S = 60.0

    def __init__(self, rate_per_s: float, burst: float) -> None:
        self.rate = rate_per_s
        self.burst = float(burst)
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()
        self._pruned = time.monotonic()

    def allow(self, client: str) -> bool:
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(client, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            allowed = tokens >= 1.0
            self._buckets[client] = (tokens - 1.0 if allowed else tokens, now)
            if now - self._pruned > self.PRUNE_EVERY_S:
                self._prune(now)
            return allowed

    def has_room(self, client: str) -> bool:
        """Whether ``allow`` would let ``client`` in now, without spending anything."""
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(client, (self.burst, now))
            return min(self.burst, tokens + (now - last) * self.rate) >= 1.0

    def forget(self, client: str) -> None:
        with self._lock:
            self._buckets.pop(client, None)

    def _prune(self, now: float) -> None:
        """Drop buckets that have refilled completely: forgetting them changes nothing."""
        self._pruned = now
        refill_s = self.burst / self.rate if self.rate > 0 else float("inf")
        for client, (_, last) in list(self._buckets.items()):
            if now - last > refill_s:
                del self._buckets[client]


@dataclass
class Verdict:
    allowed: bool
    drop: bool  # the sender kept going long after being refused: close its connection


class EventGate:
    """Every Socket.IO event passes here first: per-connection and per-address buckets, and a sender
    that keeps flooding after ``strikes`` refusals in a row is dropped rather than answered forever."""

    def __init__(self, per_connection: RateLimiter, per_address: RateLimiter, strikes: int) -> None:
        self.per_connection = per_connection
        self.per_address = per_address
        self.strikes = strikes
        self._refused: dict[str, int] = {}
        self._lock = threading.Lock()

    def check(self, connection: str, address: str) -> Verdict:
        allowed = self.per_connection.allow(connection) and self.per_address.allow(address)
        with self._lock:
            refused = 0 if allowed else self._refused.get(connection, 0) + 1
            if refused:
                self._refused[connection] = refused
            else:
                self._refused.pop(connection, None)
        return Verdict(allowed=allowed, drop=refused > self.strikes)

    def forget(self, connection: str) -> None:
        self.per_connection.forget(connection)
        with self._lock:
            self._refused.pop(connection, None)
