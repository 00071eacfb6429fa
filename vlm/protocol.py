"""Validate Socket.IO payloads before any work is spent on them.

The page is not the only client: anything that speaks Socket.IO can send anything, so
each field is checked for type and size and a refusal names the field. Unknown extra
fields are ignored, so newer clients keep working with older servers. The HTTP API
(vlm/openai_api.py) goes through the same checks, so both doors refuse alike.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import get_args

from .backends.base import CaptionLength, Job, Task
from .config import Settings
from .errors import Code, VlmError
from .images import DecodedImage, decode_image

SKILLS = ("caption", "detect", "point")
MAX_ID_CHARS = 128
GREEDY_BELOW = 1e-5
MAX_OBJECT_CHARS = 100


@dataclass(frozen=True)
class Incoming:
    id: str
    task: Task
    text: str
    image: object
    length: CaptionLength = "normal"
    live: bool = False  # one of the page's live-mode frames: several a second, so logged only at DEBUG


def request_id(payload: object) -> str:
    """The client's id (as a string), or a fresh one so every reply can still be matched."""
    raw = payload.get("id") if isinstance(payload, dict) else None
    if raw is None:
        return uuid.uuid4().hex
    if isinstance(raw, bool) or not isinstance(raw, str | int):
        raise VlmError(Code.BAD_REQUEST, "id must be a string or an integer")
    text = str(raw)
    if not text or len(text) > MAX_ID_CHARS:
        raise VlmError(Code.BAD_REQUEST, f"id must be 1 to {MAX_ID_CHARS} characters")
    return text


def parse_query(payload: object, *, max_question_chars: int, image_required: bool = True) -> Incoming:
    """``image_required=False`` (the HTTP API's text-only conversations) lets ``image`` be absent (``None``)."""
    rid, fields = _envelope(payload)
    question = _text_field(fields, "question", rid)
    if not question:
        raise VlmError(Code.EMPTY_QUESTION, "question is empty", rid)
    if len(question) > max_question_chars:
        raise VlmError(Code.QUESTION_TOO_LONG, f"question is longer than {max_question_chars} characters", rid)
    image = _image_field(fields, rid) if image_required or fields.get("image") is not None else None
    return Incoming(id=rid, task="query", text=question, image=image, live=_live(fields, rid))


def parse_skill(payload: object, *, capabilities: frozenset[str]) -> Incoming:
    rid, fields = _envelope(payload)
    skill = fields.get("skill")
    if skill not in SKILLS:
        raise VlmError(Code.UNSUPPORTED_SKILL, f"skill must be one of {', '.join(SKILLS)}", rid)
    if skill not in capabilities:
        raise VlmError(Code.UNSUPPORTED_SKILL, f"the loaded model cannot {skill}", rid)
    text = ""
    if skill in ("detect", "point"):
        text = _text_field(fields, "object", rid)
        if not text or len(text) > MAX_OBJECT_CHARS:
            raise VlmError(Code.BAD_REQUEST, f"object must be 1 to {MAX_OBJECT_CHARS} characters", rid)
    length = fields.get("length", "normal")
    if length not in get_args(CaptionLength):
        raise VlmError(Code.BAD_REQUEST, "length must be 'short' or 'normal'", rid)
    image = _image_field(fields, rid)
    return Incoming(id=rid, task=skill, text=text, image=image, length=length, live=_live(fields, rid))


def to_job(
    incoming: Incoming,
    settings: Settings,
    *,
    decode_size: int,
    max_new_tokens: int | None = None,
    temperature: float | None = None,
    top_p: float = 1.0,
    stop: tuple[str, ...] = (),
    seed: int | None = None,
) -> tuple[Job, float]:
    """The frame decoded under the server's limits, as model work, and the decode time in ms.

    ``max_new_tokens`` is a client's own limit; it can only lower the server's. A text-only
    request (no image) becomes a job without a frame. ``temperature`` is a client's own, in place of
    ``--temperature``; ``top_p``, ``stop`` and ``seed`` are a client's own, too. Raises ``VlmError``.
    """
    frame = None
    if incoming.image is not None:
        try:
            frame = decode_frame(incoming.image, settings, decode_size)
        except VlmError as error:
            raise VlmError(error.code, error.message, incoming.id) from error
    job = Job(
        task=incoming.task,
        image=frame.image if frame else None,
        image_key=frame.digest if frame else "",
        text=incoming.text,
        length=incoming.length,
        max_new_tokens=min(settings.max_new_tokens, max_new_tokens or settings.max_new_tokens),
        temperature=sampling_temperature(settings.temperature if temperature is None else temperature),
        top_p=top_p,
        stop=stop,
        seed=seed,
    )
    return job, frame.decode_ms if frame else 0.0


def sampling_temperature(asked: float) -> float:
    """Below ``GREEDY_BELOW`` a temperature is greedy, as vLLM takes it: logits divided by 1e-39 overflow to NaN
    probabilities, which no sampler can draw from."""
    return 0.0 if asked < GREEDY_BELOW else asked


def decode_frame(image: object, settings: Settings, side: int) -> DecodedImage:
    """A client's frame (data URL or bare Base64) decoded under the server's byte and pixel limits, scaled to
    ``side`` px at most: how every door that takes a frame decodes it. Raises ``VlmError``."""
    return decode_image(
        image, max_bytes=settings.max_image_bytes, max_pixels=settings.max_image_pixels, target_size=side
    )


def parse_cancel(payload: object) -> str:
    """The id of the request to cancel; none is made up, since a made-up one names nothing."""
    if isinstance(payload, dict) and payload.get("id") is None:
        raise VlmError(Code.BAD_REQUEST, "id is missing: name the request to cancel")
    rid, _ = _envelope(payload)
    return rid


def _envelope(payload: object) -> tuple[str, dict[str, object]]:
    if not isinstance(payload, dict):
        raise VlmError(Code.BAD_REQUEST, "payload must be a JSON object")
    return request_id(payload), payload


def _text_field(fields: dict[str, object], name: str, rid: str) -> str:
    value = fields.get(name)
    if value is None:
        raise VlmError(Code.BAD_REQUEST, f"{name} is missing", rid)
    if not isinstance(value, str):
        raise VlmError(Code.BAD_REQUEST, f"{name} must be a string", rid)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise VlmError(Code.BAD_REQUEST, f"{name} is not valid UTF-8 text", rid) from None
    return value.strip()


def _live(fields: dict[str, object], rid: str) -> bool:
    """``live`` marks the page's live-mode frames. The scheduler's latest-wins rule already serves them; the flag
    only keeps them out of the INFO log (a live page asks several times a second, all day)."""
    live = fields.get("live", False)
    if not isinstance(live, bool):
        raise VlmError(Code.BAD_REQUEST, "live must be true or false", rid)
    return live


def _image_field(fields: dict[str, object], rid: str) -> object:
    if "image" not in fields or fields["image"] is None:
        raise VlmError(Code.BAD_REQUEST, "image is missing", rid)
    return fields["image"]
