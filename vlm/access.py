"""The shared access token (``--token``): one check for the page, Socket.IO, ``/v1`` and ``/metrics``.

Wrong tokens are budgeted per client address: one that keeps guessing (thousands a second came
through one Socket.IO connection) is refused, right token or not, until its budget refills. A random
token (``openssl rand -hex 16``) would outlast any guessing anyway; a short hand-picked one would not.
"""

from __future__ import annotations

import hmac
import logging
import threading

from flask import request

from .errors import Code, VlmError
from .ratelimit import RateLimiter

log = logging.getLogger(__name__)

TOKEN_COOKIE = "vlm_token"
GUESSES_PER_S = 1.0
GUESS_BURST = 30  # a person mistyping, tabs with a stale cookie after a restart with a new token
PRUNE_TOLD_AT = 1024  # addresses told they ran out, past which those with guesses again are forgotten


class Access:
    """Without a token everyone is let in; with one, a request must present it."""

    def __init__(self, token: str | None) -> None:
        self.token = token
        self.guesses = RateLimiter(GUESSES_PER_S, GUESS_BURST)
        self._out_of_guesses: set[str] = set()  # addresses told so in the log, until they have room again
        self._lock = threading.Lock()

    def ok(self, candidate: object) -> bool:
        if not self.token:
            return True
        if not isinstance(candidate, str):
            return False  # nothing presented: no guess
        address = request.remote_addr or ""
        if not self.guesses.has_room(address):
            self._say_out_of_guesses(address)
            return False
        with self._lock:
            self._out_of_guesses.discard(address)
        # surrogatepass: a lone surrogate from a JSON string is a wrong token, not a traceback.
        right = hmac.compare_digest(
            candidate.encode("utf-8", "surrogatepass"), self.token.encode("utf-8", "surrogatepass")
        )
        if not right:
            self.guesses.allow(address)  # spends one
        return right

    def _say_out_of_guesses(self, address: str) -> None:
        """One log line each time an address runs out. Addresses that never come back (one attacker has many
        IPv6 addresses) are forgotten once their guesses refilled, as their buckets are."""
        with self._lock:
            if address in self._out_of_guesses:
                return
            if len(self._out_of_guesses) >= PRUNE_TOLD_AT:
                self._out_of_guesses = {told for told in self._out_of_guesses if not self.guesses.has_room(told)}
            self._out_of_guesses.add(address)
        log.warning("%s sent too many wrong tokens: refusing every token from it for a while", address)

    def refusal(self, what: str) -> VlmError:
        """Why this request's ``what`` (a bearer token, an access token) was refused: an address out of guesses is
        told so (429: its right token is refused too, for now), any other the token is missing or wrong."""
        if self.token and not self.guesses.has_room(request.remote_addr or ""):
            return VlmError(Code.RATE_LIMITED, "too many wrong tokens from your address; try again in a minute")
        return VlmError(Code.UNAUTHORIZED, f"missing or wrong {what}")

    @staticmethod
    def bearer() -> str | None:
        """The current request's ``Authorization: Bearer`` token (the scheme's case does not matter: RFC 7235)."""
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        return token.strip() if scheme.lower() == "bearer" else None

    def bearer_ok(self) -> bool:
        return self.ok(self.bearer())

    def cookie_ok(self) -> bool:
        """The HttpOnly cookie the page sets; a new tab (or an ``<img>``) has only that."""
        return self.ok(request.cookies.get(TOKEN_COOKIE))
