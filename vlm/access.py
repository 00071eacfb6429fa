"""The shared access token (``--token``): one check for the page, Socket.IO, ``/v1`` and ``/metrics``."""

from __future__ import annotations

import hmac

from flask import request

TOKEN_COOKIE = "vlm_token"


class Access:
    """Without a token everyone is let in; with one, a request must present it."""

    def __init__(self, token: str | None) -> None:
        self.token = token

    def ok(self, candidate: object) -> bool:
        if not self.token:
            return True
        if not isinstance(candidate, str):
            return False
        # surrogatepass: a lone surrogate from a JSON string is a wrong token, not a traceback.
        return hmac.compare_digest(
            candidate.encode("utf-8", "surrogatepass"), self.token.encode("utf-8", "surrogatepass")
        )

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
