"""What OpenAI's two request shapes share: a question about one frame, and the options that shape its answer.

``/v1/chat/completions`` (vlm/openai_chat.py) and ``/v1/responses`` (vlm/openai_responses.py) name their parts
differently but ask the same thing; each finds its texts and image URLs, and this turns them into an
``ApiRequest`` under the Socket.IO rules (vlm/protocol.py), refusing what no backend here honours by name.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import Code, VlmError, http_status
from .protocol import Incoming, parse_query

MAX_TEMPERATURE = 2.0  # OpenAI's range is 0..2
SEED_RANGE = range(-(2**63), 2**64)  # what torch.manual_seed takes
ERROR_TYPE = {401: "authentication_error", 429: "rate_limit_error"}  # other 4xx: invalid_request_error
# ("stream", delta) | ("answer", Answer) | ("error", VlmError): what a request's sink hands its view, in order;
# and ("waiting", None) when there has been nothing to say for a while (vlm/openai_api.py's ``watched``).
SinkEvent = tuple[str, Any]
FINAL = frozenset({"answer", "error"})  # the kinds of event that end a request's events
# An SSE comment: every SSE parser skips it, and the connection carries bytes while the answer is awaited.
KEEPALIVE = ": waiting\n\n"


@dataclass(frozen=True)
class ApiRequest:
    incoming: Incoming
    max_tokens: int | None
    temperature: float | None  # None: the server's --temperature
    top_p: float
    streaming: bool
    stop: tuple[str, ...] = ()
    seed: int | None = None
    include_usage: bool = False


def message_parts(content: object, text_kind: str, where: str) -> tuple[list[dict[str, Any]], list[str]]:
    """A user message's content as parts (a string is one ``text_kind`` part), and the texts of those parts."""
    parts = [{"type": text_kind, "text": content}] if isinstance(content, str) else content
    if not isinstance(parts, list) or not all(isinstance(part, dict) for part in parts):
        raise VlmError(Code.BAD_REQUEST, "content must be a string or a list of parts", param=where)
    texts = [part.get("text") for part in parts if part.get("type") == text_kind]
    if not all(isinstance(text, str) for text in texts):
        raise VlmError(Code.BAD_REQUEST, f"a {text_kind} part's text must be a string", param=where)
    return parts, texts


def conversation_image(contents: list[object], image_url: Callable[[dict[str, Any]], object]) -> list[object]:
    """The newest image URL earlier user messages' ``contents`` hold (``image_url``: a part's, or None), as a list
    of one or none. Chat clients send a conversation's frame once, with its first question, and its follow-ups
    as text alone: those are questions about that frame."""
    for content in reversed(contents):
        parts = content if isinstance(content, list) else []
        urls = [url for part in parts if isinstance(part, dict) and (url := image_url(part)) is not None]
        if urls:
            return urls[-1:]
    return []


def frame_question(
    texts: list[str], urls: list[Any], *, where: str, max_question_chars: int, text_only: bool
) -> Incoming:
    """The question (the texts, one per line) about at most one frame (a ``data:`` URL); ``where`` is the
    ``param`` a refusal names. ``text_only``: the backend can answer without an image."""
    if len(urls) > 1 or not all(isinstance(url, str) for url in urls):
        raise VlmError(Code.BAD_REQUEST, "the last user message may hold one image, as a URL string", param=where)
    if not urls and not text_only:
        raise VlmError(
            Code.IMAGE_REQUIRED,
            "the loaded model answers questions about an image only: add an image with a data: URL",
            param=where,
        )
    if urls and urls[0][:5].lower() != "data:":
        raise VlmError(
            Code.BAD_IMAGE, "the image must be a data: URL; this server does not fetch remote images", param=where
        )
    fields = {"question": "\n".join(texts), "image": urls[0] if urls else None}
    try:
        return parse_query(fields, max_question_chars=max_question_chars, image_required=False)
    except VlmError as error:  # the question and the image are in the messages here
        raise VlmError(error.code, error.message, param=where) from None


def refuse_unhonoured(body: Mapping[str, Any], unhonoured: Mapping[str, tuple[object, ...]]) -> None:
    """Each option no backend honours may be left out or sent at a value that asks for nothing."""
    for name, defaults in unhonoured.items():
        if body.get(name) not in defaults:
            raise VlmError(Code.BAD_REQUEST, f"{name} is not supported by this server; leave it out", param=name)


def max_tokens(body: Mapping[str, Any], *names: str) -> int | None:
    """The first of ``names`` that is not ``null`` (the official client sends one for an explicit None)."""
    name = next((name for name in names if body.get(name) is not None), names[-1])
    value = body.get(name)
    if value is not None and (type(value) is not int or value < 1):
        raise VlmError(Code.BAD_REQUEST, f"{name} must be a positive integer", param=name)
    return value


def temperature(body: Mapping[str, Any]) -> float | None:
    return _number(body, "temperature", MAX_TEMPERATURE)


def top_p(body: Mapping[str, Any]) -> float:
    value = _number(body, "top_p", 1.0)
    return 1.0 if value is None else value


def seed(body: Mapping[str, Any]) -> int | None:
    if (value := body.get("seed")) is not None and (type(value) is not int or value not in SEED_RANGE):
        raise VlmError(Code.BAD_REQUEST, "seed must be an integer from -2**63 to 2**64 - 1", param="seed")
    return value


def streaming(body: Mapping[str, Any]) -> bool:
    if (stream := body.get("stream")) is not None and type(stream) is not bool:
        raise VlmError(Code.BAD_REQUEST, "stream must be true or false", param="stream")
    return stream is True


def _number(body: Mapping[str, Any], name: str, most: float) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if type(value) not in (int, float) or not 0 <= value <= most:
        raise VlmError(Code.BAD_REQUEST, f"{name} must be a number from 0 to {most:g}", param=name)
    return float(value)


class AnswerText:
    """Backends strip the final answer of outer whitespace; the streamed text must add up to the same.

    The text sent so far is always the stripped concatenation of the deltas seen, so leading
    whitespace never goes out and trailing whitespace waits until more text follows it.
    """

    def __init__(self) -> None:
        self.raw = ""
        self.sent = ""

    def feed(self, delta: str) -> str:
        self.raw += delta
        return self._advance(self.raw.strip())

    def rest(self, answer: str) -> str:
        """Whatever of the final answer the deltas have not carried (a tail held back mid-character)."""
        return self._advance(answer) if answer.startswith(self.sent) else ""

    def _advance(self, text: str) -> str:
        delta, self.sent = text[len(self.sent) :], text
        return delta


def error_body(code: str, message: str, status: int | None = None, param: str | None = None) -> dict[str, Any]:
    """OpenAI's error object: clients read ``message``, branch on ``type``/``code``, and point at ``param``."""
    status = status or http_status(code)
    kind = ERROR_TYPE.get(status, "invalid_request_error" if status < 500 else "server_error")
    return {"error": {"message": message, "type": kind, "code": code, "param": param}}
