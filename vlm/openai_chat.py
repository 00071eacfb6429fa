"""OpenAI's Chat Completions shape for ``POST /v1/chat/completions``: the request it takes and the answer it gives.

The last user message is the question: its text parts, and its one ``image_url`` part, a ``data:`` URL,
is the frame (without one, the newest image of an earlier user message is: a follow-up asks about the
conversation's frame). Earlier turns' text and system prompts are ignored. ``stop`` strings (up to four,
as OpenAI allows) end the answer before the first to appear; options no backend honours are refused by name,
and accepted at the values that ask for nothing (OpenAI's defaults, as clients send them).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from .errors import Code, VlmError
from .openai_wire import (
    KEEPALIVE,
    AnswerText,
    ApiRequest,
    SinkEvent,
    conversation_image,
    error_body,
    frame_question,
    max_tokens,
    message_parts,
    refuse_unhonoured,
    seed,
    streaming,
    temperature,
    top_p,
)
from .results import Answer

MAX_STOPS = 4  # OpenAI's own limit
MAX_STOP_CHARS = 256  # a row holds back up to this much while a stop string may be starting
# Options no backend honours, with the values that ask for nothing (OpenAI's defaults, as clients send them).
UNHONOURED: dict[str, tuple[object, ...]] = {
    "response_format": (None, {"type": "text"}),
    "logprobs": (None, False),
    "top_logprobs": (None, 0),
    "tools": (None, []),
    "tool_choice": (None, "none", "auto"),
    "functions": (None, []),
    "function_call": (None, "none", "auto"),
    "logit_bias": (None, {}),
    "presence_penalty": (None, 0),
    "frequency_penalty": (None, 0),
    "audio": (None,),
    "modalities": (None, ["text"]),
    "prediction": (None,),
}


def parse_chat(body: object, *, max_question_chars: int, text_only: bool) -> ApiRequest:
    """The last user message as a ``query`` validated by the Socket.IO rules, and the options that shape it.

    ``text_only``: the backend can answer without an image; otherwise a message without one is refused.
    """
    if not isinstance(body, dict):
        raise VlmError(Code.BAD_REQUEST, "the body must be a JSON object")
    messages = body.get("messages")
    turns = (
        [turn for turn in messages if isinstance(turn, dict) and turn.get("role") == "user"]
        if isinstance(messages, list)
        else []
    )
    if not turns:
        raise VlmError(Code.BAD_REQUEST, "messages must hold a user message", param="messages")
    parts, texts = message_parts(turns[-1].get("content"), "text", "messages")
    if kinds := {part.get("type") for part in parts} - {"text", "image_url"}:
        taken = ", ".join(sorted(map(str, kinds)))
        raise VlmError(Code.BAD_REQUEST, f"only text and image_url parts are taken, not {taken}", param="messages")
    urls = [chat_image_url(part) for part in parts if part.get("type") == "image_url"]
    urls = urls or conversation_image([turn.get("content") for turn in turns[:-1]], chat_image_url)
    incoming = frame_question(texts, urls, where="messages", max_question_chars=max_question_chars, text_only=text_only)
    if (n := body.get("n")) is not None and (type(n) is not int or n != 1):
        raise VlmError(Code.BAD_REQUEST, "n must be 1: this server returns one choice", param="n")
    refuse_unhonoured(body, UNHONOURED)
    return ApiRequest(
        incoming=incoming,
        max_tokens=max_tokens(body, "max_completion_tokens", "max_tokens"),
        temperature=temperature(body),
        top_p=top_p(body),
        streaming=streaming(body),
        stop=_stop(body),
        seed=seed(body),
        include_usage=isinstance(options := body.get("stream_options"), dict) and options.get("include_usage") is True,
    )


def chat_image_url(part: dict[str, Any]) -> object:
    """An ``image_url`` part's URL (``{"url": ...}``, or a plain string as some clients send it); None for others."""
    if part.get("type") != "image_url":
        return None
    image = part.get("image_url")
    return image.get("url") if isinstance(image, dict) else image


def _stop(body: dict[str, Any]) -> tuple[str, ...]:
    """``stop`` as OpenAI takes it: one string or a list of them; empty strings ask for nothing."""
    value = body.get("stop")
    stops = [value] if isinstance(value, str) else [] if value is None else value
    if (
        not isinstance(stops, list)
        or len(stops) > MAX_STOPS
        or not all(isinstance(stop, str) and len(stop) <= MAX_STOP_CHARS for stop in stops)
    ):
        raise VlmError(
            Code.BAD_REQUEST,
            f"stop must be a string or a list of up to {MAX_STOPS} strings, each up to {MAX_STOP_CHARS} characters",
            param="stop",
        )
    return tuple(stop for stop in stops if stop)


@dataclass(frozen=True)
class Completion:
    """One answer in the OpenAI wire shapes: a ``chat.completion``, or ``chat.completion.chunk`` events."""

    id: str
    model: str
    include_usage: bool = False
    created: int = field(default_factory=lambda: int(time.time()))

    def body(self, answer: Answer) -> dict[str, Any]:
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": answer.result.answer},
            "finish_reason": answer.result.finish_reason,
        }
        return {**self._envelope("chat.completion"), "choices": [choice], "usage": usage(answer)}

    def sse(self, events: Iterator[SinkEvent], *, on_close: Callable[[], None]) -> Iterator[str]:
        """Deltas trimmed so that they add up to exactly the non-streamed answer, then ``data: [DONE]``.

        With ``stream_options.include_usage`` a last chunk with no choices carries the usage, as OpenAI sends it.
        ``on_close`` runs however the stream ends, including a client that hung up.
        """
        text = AnswerText()
        try:
            yield self._chunk({"role": "assistant", "content": ""})
            for kind, value in events:
                if kind == "waiting":
                    yield KEEPALIVE
                    continue
                if kind == "error":
                    yield _data(error_body(value.code, value.message))
                    break
                delta = text.feed(value) if kind == "stream" else text.rest(value.result.answer)
                if delta:
                    yield self._chunk({"content": delta})
                if kind == "answer":
                    yield self._chunk({}, value.result.finish_reason)
                    if self.include_usage:
                        yield _data({**self._envelope("chat.completion.chunk"), "choices": [], "usage": usage(value)})
            yield "data: [DONE]\n\n"
        finally:
            on_close()

    def _chunk(self, delta: dict[str, str], finish_reason: str | None = None) -> str:
        choice = {"index": 0, "delta": delta, "finish_reason": finish_reason}
        return _data({**self._envelope("chat.completion.chunk"), "choices": [choice]})

    def _envelope(self, kind: str) -> dict[str, Any]:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}


def usage(answer: Answer) -> dict[str, int]:
    """Token counts as the backend's model counted them (``Result.tokens`` and ``prompt_tokens``)."""
    prompt, completion = answer.result.prompt_tokens, answer.result.tokens
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _data(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload)}\n\n"
