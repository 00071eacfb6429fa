"""OpenAI's Responses API shape for ``POST /v1/responses``: the request it takes and the answer it gives.

Newer OpenAI clients and agent kits ask through ``client.responses.create`` rather than chat completions.
The question is the last user message of ``input`` (or ``input`` itself, a string): its ``input_text``
parts and at most one ``input_image`` part, a ``data:`` URL, or else the newest image of an earlier user
message. ``instructions`` and the rest of earlier turns are ignored, as system prompts are on
``/v1/chat/completions``. Nothing is stored: a response cannot be
fetched again or continued (``previous_response_id``), and options no backend honours are refused by name.

Streamed, an answer is the event sequence OpenAI sends for one text message (``response.created`` ...
``response.output_text.delta`` ... ``response.completed``), which the official client's ``responses.stream``
helper checks item by item; an answer cut at its token limit ends ``response.incomplete``, a failure
``response.failed``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from . import openai_wire as wire
from .errors import Code, VlmError
from .results import Answer

# Options no backend honours, with the values that ask for nothing.
UNHONOURED: dict[str, tuple[object, ...]] = {
    "previous_response_id": (None,),
    "conversation": (None,),
    "prompt": (None,),
    "background": (None, False),
    "tools": (None, []),
    "tool_choice": (None, "none", "auto"),
    # Plain text at OpenAI's default verbosity, which is how clients that always send the option ask for nothing.
    "text": (
        None,
        {"format": {"type": "text"}},
        {"verbosity": "medium"},
        {"format": {"type": "text"}, "verbosity": "medium"},
    ),
    "include": (None, []),
    "top_logprobs": (None, 0),
}


def parse_responses_request(body: object, *, max_question_chars: int, text_only: bool) -> wire.ApiRequest:
    """``input``'s last user message as a ``query`` under the Socket.IO rules, and the options that shape it."""
    if not isinstance(body, dict):
        raise VlmError(Code.BAD_REQUEST, "the body must be a JSON object")
    content = body.get("input")
    earlier: list[object] = []
    if not isinstance(content, str):
        turns = [item for item in content if isinstance(item, dict)] if isinstance(content, list) else []
        users = [turn for turn in turns if turn.get("role") == "user" and turn.get("type", "message") == "message"]
        if not users:
            raise VlmError(Code.BAD_REQUEST, "input must be a string or hold a user message", param="input")
        content = users[-1].get("content")
        earlier = [turn.get("content") for turn in users[:-1]]
    parts, texts = wire.message_parts(content, "input_text", "input")
    if kinds := {part.get("type") for part in parts} - {"input_text", "input_image"}:
        taken = ", ".join(sorted(map(str, kinds)))
        raise VlmError(Code.BAD_REQUEST, f"only input_text and input_image parts are taken, not {taken}", param="input")
    urls = [input_image_url(part) for part in parts if part.get("type") == "input_image"]
    urls = urls or wire.conversation_image(earlier, input_image_url)
    incoming = wire.frame_question(
        texts, urls, where="input", max_question_chars=max_question_chars, text_only=text_only
    )
    wire.refuse_unhonoured(body, UNHONOURED)
    return wire.ApiRequest(
        incoming=incoming,
        max_tokens=wire.max_tokens(body, "max_output_tokens"),
        temperature=wire.temperature(body),
        top_p=wire.top_p(body),
        streaming=wire.streaming(body),
    )


def input_image_url(part: dict[str, Any]) -> object:
    """An ``input_image`` part's URL; None for other parts."""
    return part.get("image_url") if part.get("type") == "input_image" else None


@dataclass
class ResponseObject:
    """One answer as a ``response`` object, or as the events that build one."""

    id: str
    model: str
    asked: wire.ApiRequest
    created: int = field(default_factory=lambda: int(time.time()))
    sequence: int = -1  # the first event is number 0, as OpenAI numbers them

    @property
    def message_id(self) -> str:
        return f"msg_{self.id.removeprefix('resp_')}"

    def body(self, answer: Answer) -> dict[str, Any]:
        return self._response(_status(answer), text=answer.result.answer, answer=answer)

    def sse(self, events: Iterator[wire.SinkEvent], *, on_close: Callable[[], None]) -> Iterator[str]:
        """The lifecycle and text events of one message, deltas adding up to exactly the non-streamed answer.

        ``on_close`` runs however the stream ends, including a client that hung up."""
        text = wire.AnswerText()
        where = {"item_id": self.message_id, "output_index": 0, "content_index": 0}
        try:
            yield self._event("response.created", response=self._response("in_progress"))
            yield self._event("response.in_progress", response=self._response("in_progress"))
            yield self._event("response.output_item.added", output_index=0, item=self._message("in_progress", None))
            yield self._event("response.content_part.added", **where, part=_text_part(""))
            for kind, value in events:
                if kind == "waiting":
                    yield wire.KEEPALIVE
                    continue
                if kind == "error":
                    yield self._event("response.failed", response=self._response("failed", error=value))
                    return
                delta = text.feed(value) if kind == "stream" else text.rest(value.result.answer)
                if delta:
                    yield self._event("response.output_text.delta", **where, delta=delta, logprobs=[])
                if kind == "answer":
                    yield from self._ended(value, where)
        finally:
            on_close()

    def _ended(self, answer: Answer, where: dict[str, Any]) -> Iterator[str]:
        status, said = _status(answer), answer.result.answer
        yield self._event("response.output_text.done", **where, text=said, logprobs=[])
        yield self._event("response.content_part.done", **where, part=_text_part(said))
        yield self._event("response.output_item.done", output_index=0, item=self._message(status, said))
        yield self._event(f"response.{status}", response=self._response(status, text=said, answer=answer))

    def _event(self, kind: str, **fields: Any) -> str:
        """One server-sent event: its type named on the ``event:`` line and in the data, numbered in order."""
        self.sequence += 1
        data = {"type": kind, "sequence_number": self.sequence, **fields}
        return f"event: {kind}\ndata: {json.dumps(data)}\n\n"

    def _message(self, status: str, text: str | None) -> dict[str, Any]:
        content = [] if text is None else [_text_part(text)]
        return {"type": "message", "id": self.message_id, "status": status, "role": "assistant", "content": content}

    def _response(
        self, status: str, *, text: str | None = None, answer: Answer | None = None, error: VlmError | None = None
    ) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created,
            "status": status,
            "model": self.model,
            "output": [] if text is None else [self._message(status, text)],
            "error": None if error is None else _error(error),
            "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
            "usage": None if answer is None else _usage(answer),
            "instructions": None,
            "max_output_tokens": self.asked.max_tokens,
            "temperature": self.asked.temperature,
            "top_p": self.asked.top_p,
            "parallel_tool_calls": False,
            "tool_choice": "none",
            "tools": [],
            "text": {"format": {"type": "text"}, "verbosity": "medium"},
            "store": False,
            "metadata": {},
        }


def _status(answer: Answer) -> str:
    """``incomplete`` where the answer was cut at its token limit, as OpenAI says of ``max_output_tokens``."""
    return "incomplete" if answer.result.finish_reason == "length" else "completed"


def _error(error: VlmError) -> dict[str, str]:
    """A failure as OpenAI's response error, whose codes are its own: the app's code goes in the message."""
    code = "rate_limit_exceeded" if error.code == Code.BUSY else "server_error"
    return {"code": code, "message": f"{error.message} ({error.code})"}


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": []}


def _usage(answer: Answer) -> dict[str, Any]:
    prompt, completion = answer.result.prompt_tokens, answer.result.tokens
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt + completion,
    }
