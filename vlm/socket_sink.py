"""The Socket.IO wire shapes of a request's events, and the sink that sends them to the one client that asked.

Answers, scheduler failures and the handlers' own refusals all leave through ``SocketSink``,
so a client reads every outcome the same way (docs/PROTOCOL.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from .errors import VlmError
from .results import Answer

Send = Callable[[str, dict[str, Any], str | None], None]


def response_payload(answer: Answer) -> dict[str, Any]:
    """The ``response`` event: ``skill``, ``objects`` and ``points`` only where they apply."""
    result = answer.result
    timing = {**asdict(answer.timing), "tokens": result.tokens, "prompt_tokens": result.prompt_tokens}
    payload: dict[str, Any] = {
        "id": answer.id,
        "answer": result.answer,
        "finish_reason": result.finish_reason,
        "timing": timing,
    }
    if answer.task != "query":
        payload["skill"] = answer.task
    if result.objects is not None:
        payload["objects"] = result.objects
    if result.points is not None:
        payload["points"] = result.points
    return payload


def merged_deltas(earlier: dict[str, Any], later: dict[str, Any]) -> dict[str, Any] | None:
    """Two ``stream`` events of one request as one; None for two requests' (a client may have two)."""
    if earlier["id"] != later["id"]:
        return None
    return {"id": earlier["id"], "delta": earlier["delta"] + later["delta"]}


# The event that carries a request's text as it is generated; a client gets at most one every
# STREAM_INTERVAL_S (20 a second: smooth to read, one packet where a fast model makes several tokens).
STREAM_EVENT = "stream"
STREAM_INTERVAL_S = 0.05


def error_event(request_id: str | None, error: VlmError, *, seed: bool) -> tuple[str, dict[str, Any]]:
    """A refusal or failure as the client can read it.

    A client that sent an id listens for ``query_error``. One that sent none is written like the
    original page, which listens only for ``response`` and shows its ``answer``: it gets the
    error there, worded as the original server worded its errors, so it never waits forever.
    """
    if seed:
        return "response", {
            "id": request_id,
            "answer": f"Sorry, an error occurred: {error.message}",
            "error": {"code": error.code, "message": error.message},
        }
    return "query_error", {"id": request_id, "code": error.code, "message": error.message}


def is_seed(payload: object) -> bool:
    """A payload without an id comes from a client written like the original page (see ``error_event``)."""
    return not (isinstance(payload, dict) and payload.get("id") is not None)


@dataclass(frozen=True)
class SocketSink:
    """One request's events, to the client ``sid``; ``seed`` for clients that sent no id."""

    send: Send
    sid: str
    request_id: str | None
    seed: bool = False

    def waiting(self, ahead: int) -> None:
        if not self.seed:  # the original page's protocol has no such event
            self.send("queued", {"id": self.request_id, "ahead": ahead}, self.sid)

    def stream(self, delta: str) -> None:
        self.send(STREAM_EVENT, {"id": self.request_id, "delta": delta}, self.sid)

    def answered(self, answer: Answer) -> None:
        self.send("response", response_payload(answer), self.sid)

    def failed(self, error: VlmError) -> None:
        self.send(*error_event(self.request_id, error, seed=self.seed), self.sid)
