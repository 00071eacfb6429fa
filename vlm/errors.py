"""Every error a client can be told about: its code, what it means, and its HTTP status.

One exception type, ``VlmError``, carries a code from ``Code`` (or, for errors Flask raises,
a code made from the HTTP reason) from wherever a request is refused or fails to the one place
that writes it on a wire: the Socket.IO sink, the ``/v1`` error object, a watch's refusal. The
codes are part of the protocol (docs/PROTOCOL.md); adding one here is all it takes to use it.
"""

from __future__ import annotations

from enum import StrEnum


class Code(StrEnum):
    """An error code as it goes on the wire, with its HTTP status and its meaning."""

    status: int
    meaning: str

    def __new__(cls, value: str, status: int, meaning: str) -> Code:
        member = str.__new__(cls, value)
        member._value_ = value
        member.status = status
        member.meaning = meaning
        return member

    BAD_REQUEST = "bad_request", 400, "the payload is malformed: a field missing, of the wrong type or out of range"
    BAD_IMAGE = "bad_image", 400, "the frame is not a JPEG, PNG or WebP image in a data URL or bare Base64"
    IMAGE_TOO_LARGE = "image_too_large", 400, "the frame is over --max-image-bytes or its pixel limit"
    IMAGE_REQUIRED = "image_required", 400, "the loaded model answers questions about an image only"
    EMPTY_QUESTION = "empty_question", 400, "the question (or watch condition) is empty"
    QUESTION_TOO_LONG = "question_too_long", 400, "the question is over --max-question-chars or the model's context"
    UNSUPPORTED_SKILL = "unsupported_skill", 400, "the skill is unknown or the loaded model cannot do it"
    MODEL_NOT_FOUND = "model_not_found", 404, "the server serves another model"
    NOT_FOUND = "not_found", 404, "no such resource"
    UNAUTHORIZED = "unauthorized", 401, "the access token is missing or wrong"
    RATE_LIMITED = "rate_limited", 429, "the connection or address sends events faster than its rate limit"
    BUSY = "busy", 429, "the queue is full, or the client has too much waiting"
    CANCELLED = "cancelled", 400, "cancelled by the client or superseded by its newer request"
    LOADING = "loading", 503, "the model is still loading"
    SHUTTING_DOWN = "shutting_down", 503, "the server is shutting down or restarting: ask again once it is back"
    MODEL_ERROR = "model_error", 500, "the model failed or ran out of memory on this request"
    UPSTREAM_ERROR = "upstream_error", 502, "--backend openai: the upstream server failed or could not be reached"
    TIMEOUT = "timeout", 504, "no answer within --request-timeout"


def http_status(code: str) -> int:
    """The HTTP status for a code; codes this app does not define (Flask's own) are client errors."""
    return Code(code).status if code in Code._value2member_map_ else 400


class VlmError(Exception):
    """A refusal or failure the client hears about by ``code``; ``message`` is written for a person.

    ``request_id`` is the request it answers, where known; ``param`` names the offending ``/v1``
    parameter, for OpenAI-style error objects.
    """

    def __init__(self, code: str, message: str, request_id: str | None = None, *, param: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id
        self.param = param

    def as_object(self) -> dict[str, dict[str, str]]:
        """``{"error": {"code", "message"}}``: how watch mode's routes and every Socket.IO acknowledgement carry it."""
        return {"error": {"code": self.code, "message": self.message}}


class ModelLoadError(RuntimeError):
    """The model could not be found or loaded; the message is written for the operator, not sent to clients."""
