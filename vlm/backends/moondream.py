"""moondream2 through its own remote-code API (``query``, ``caption``, ``detect``, ``point``).

moondream2 is not an ``AutoModelForImageTextToText`` model: it ships its own Python and
its own skills, which are the point of using it. What that code does, and what this backend
does about it (read in github.com/vikhyat/moondream at 44146f1, the 2025-06-21 revision):

- It builds its layers and casts image crops in bfloat16, whatever dtype is asked for:
  the backend converts it where another dtype is wanted (``run_in``; float32 by default on a
  CPU without bfloat16 instructions) and reports the dtype the weights really have.
- It samples (temperature 0.5, top_p 0.3) unless told otherwise: every call passes the job's
  temperature, 0 (greedy) by default, and its top_p, 1 (the whole vocabulary) by default, as elsewhere.
  It samples in its logits' dtype (bfloat16, where its nucleus's running sum can drop the tail even
  at top_p 1), the running batch in float32: sampled answers differ a little between its own loop
  (``--batching wave``) and the rows; greedy ones do not.
- Its stream yields whole words, and it tells nobody how many tokens it generated: the
  backend counts the model's own prompt and per-token steps (``_prefill``,
  ``_decode_one_tok``, the two methods its ``compile()`` replaces the same way), which is
  also where a cancelled or overdue call is stopped at the next token.
- It tiles a frame into overlapping crops and resizes it to what they cover: the frame
  size clients send comes from the model's crop settings (``frame_side``).
- It keeps one KV cache in the model, so it must never run two calls at once: the worker and a
  preparing thread (``--prepare encode`` or ``prefill``) take turns at it (``own_code``). Answers
  are decoded together all the same: each starts in that cache and is copied out into a running
  batch (``moondream_rows``), which keeps its own cache.
- Its context is ``max_context`` (2048) positions, the frame's 730 among them, and nothing in it
  checks that a prompt and its answer fit: the decode loop indexes its mask past the end and
  fails mid-answer, and detect and point look for up to 50 objects, three (two) positions each,
  wherever their prompt ended. The meter ends an answer at the last position (``finish_reason``
  length), a skill looks for only as many objects as fit, and a question that leaves no room
  is refused (``question_too_long``).

The image encoding is the expensive half of a query, so it is cached per frame digest:
several questions, a caption and a detect on one snapshot encode it once.
"""

from __future__ import annotations

import dataclasses
import math
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from functools import partial
from typing import Any, ClassVar

import torch

from ..config import DEFAULT_REVISION, DEFAULT_TOKENIZER_REPO, DEFAULT_TOKENIZER_REVISION
from .base import (
    Backend,
    Decoder,
    GenerationEvents,
    Job,
    ModelInfo,
    Result,
    RowEvents,
    WorkAhead,
    failing_alone,
    never,
    question_too_long,
)
from .frame_cache import FrameCache
from .moondream_rows import (
    ANSWER_TASKS,
    AnswerStart,
    MoondreamRows,
    Prefilled,
    copied_cache,
    stopping_after_prompt,
)
from .remote_code import load_remote_code_model
from .seeds import seeded
from .stops import StopScreen
from .torch_device import cpu_multiplies_bfloat16, resolve_device, use_unplanned_attention, weights_dtype

# Webcam capture sizes and shapes; the frame size sent is chosen from how moondream2 resizes them.
CAMERA_FRAMES = ((640, 480), (1280, 720), (1920, 1080))
ASPECTS = ((4, 3), (16, 9))
MAX_UPSCALE = 1.1
# moondream2's own limit on the objects a detect or point finds (its DEFAULT_MAX_OBJECTS), and the positions each
# takes: x, y, a box's size, then the token that says whether another follows.
MAX_OBJECTS = 50
POSITIONS_PER_OBJECT = {"detect": 3, "point": 2}


class GenerationStopped(Exception):
    """Raised inside moondream2's decoding loop to end a call that was cancelled or timed out."""


class TokenMeter:
    """Counts the tokens moondream2 really processes, and stops it between two of them when told to.

    Installs itself over the model's ``_prefill`` (a prompt, written into the KV cache at
    ``pos_ids``) and ``_decode_one_tok`` (one generated token each). One answer token costs one
    decode step, the stream's word chunks notwithstanding, and the last prompt position is the
    prompt length, image included.
    """

    def __init__(self, model: Any) -> None:
        self._prefill, self._decode = model._prefill, model._decode_one_tok
        model._prefill, model._decode_one_tok = self.prefill, self.decode_one_tok
        self.context = int(getattr(model.config.text, "max_context", 2048))
        self.eos_id = model.config.tokenizer.eos_id
        self.should_stop: Callable[[], bool] = never
        self.prompt_tokens = 0
        self.tokens = 0
        self.full = False  # the last answer ended at the context's last position

    @contextmanager
    def watching(self, should_stop: Callable[[], bool]) -> Iterator[None]:
        """Count one call from zero, stopping it once ``should_stop()`` says so."""
        self.should_stop = should_stop
        self.prompt_tokens = self.tokens = 0
        self.full = False
        try:
            yield
        finally:
            self.should_stop = never

    def at_end(self, position: int) -> bool:
        """Whether ``position`` is the context's last: moondream2's loop would index its mask past the end after it."""
        return position >= self.context - 1

    def prefill(self, x: torch.Tensor, attn_mask: torch.Tensor, pos_ids: torch.Tensor, lora: Any) -> Any:
        self._check()
        if self.at_end(int(pos_ids[-1])):  # not one position left for an answer
            raise question_too_long("moondream2", self.context)
        hidden = self._prefill(x, attn_mask, pos_ids, lora)
        self.prompt_tokens, self.tokens = int(pos_ids[-1]) + 1, 0
        return hidden

    def decode_one_tok(self, x: torch.Tensor, attn_mask: torch.Tensor, pos_ids: torch.Tensor, lora: Any) -> Any:
        """One token; its mask (moondream2 passes (1, 1, context)) goes on as (1, 1, 1, context): PyTorch takes
        a 3-D mask only in its unfused attention, which rounds otherwise than the fused kernel the running
        batch (``moondream_rows``) uses, so a question would not get the same answer alone and in company.

        At the context's last position the token is decoded, but none may follow it: only end-of-text is left to
        choose, so moondream2's loop ends as at end-of-text and streams the last word it held back (an exception
        would lose it), and the answer says ``length`` (``full``)."""
        self._check()
        self.tokens += 1
        if attn_mask.dim() == 3:
            attn_mask = attn_mask.unsqueeze(1)
        logits, hidden = self._decode(x, attn_mask, pos_ids, lora)
        if self.at_end(int(pos_ids[-1])):
            self.full = True
            logits = torch.full_like(logits, float("-inf"))
            logits[..., self.eos_id] = 0.0
        return logits, hidden

    def _check(self) -> None:
        if self.should_stop():
            raise GenerationStopped


def moondream_dtype(dtype: str, device: str) -> torch.dtype:
    """bfloat16, moondream2's own, on a GPU and on a CPU with bfloat16 instructions; float32 on other
    CPUs, where bfloat16 matrix products are many times slower (see the README); or what was asked for."""
    if dtype == "auto":
        return torch.bfloat16 if device == "cuda" or cpu_multiplies_bfloat16() else torch.float32
    return getattr(torch, dtype)


def run_in(model: Any, dtype: torch.dtype) -> None:
    """Convert moondream2 to ``dtype``, which its code alone cannot do.

    It creates its layers in bfloat16 whatever ``from_pretrained`` is told, and it casts image
    crops to bfloat16 before the first layer (``prepare_crops``; nothing else in the skills used
    here is pinned to a dtype): the weights are converted, and the crops on their way into the
    first layer. Its rotary table stays in float32, as moondream2 makes it in every dtype: in
    float16 its cos and sin would be off by up to 2.4e-4.
    """
    if dtype == torch.bfloat16:
        return
    rotary = model.model.text.freqs_cis  # float32 in moondream2 whatever the weights' dtype; float16 rounds it
    model.to(dtype)
    model.model.text.freqs_cis = rotary
    patch_embedding = model.model.vision["patch_emb"]
    patch_embedding.register_forward_pre_hook(lambda layer, args: (args[0].to(layer.weight.dtype), *args[1:]))


def frame_side(vision: Any) -> int:
    """The longest frame side to send: the largest at which moondream2 enlarges no common camera frame.

    moondream2 covers a frame with overlapping ``crop_size`` crops (``overlap_margin`` patches shared
    on each side, at most ``max_crops``) and resizes the frame to exactly what its crops cover: more
    pixels than that are thrown away, fewer are upscaled (detail lost at the camera). The side is the
    largest, up to what a big webcam frame is resized to, at which a 4:3 and a 16:9 frame are each
    enlarged by at most ``MAX_UPSCALE``; with moondream2's settings (378 px, 4 x 14 px margins, 12
    crops) that is 1145 px: 16:9 becomes 1176 x 644 (2 x 4 crops), 4:3 1176 x 910 (3 x 4). A 1176 px
    16:9 frame would be stretched to 1176 x 910, 37 % taller, in 13 crops instead of 9. Where no side
    qualifies (one crop squashes every frame square) it is what a big webcam frame is resized to.
    """
    largest = max(max(_target(width, height, vision)) for width, height in CAMERA_FRAMES)
    for side in range(largest, vision.crop_size - 1, -1):
        frames = [(side, round(side * short / long)) for long, short in ASPECTS]
        if all(max(tw / w, th / h) <= MAX_UPSCALE for w, h in frames for tw, th in [_target(w, h, vision)]):
            return side
    return largest


def _target(width: int, height: int, vision: Any) -> tuple[int, int]:
    """(width, height) moondream2 resizes a ``width`` x ``height`` frame to before cutting its crops."""
    margin = vision.overlap_margin * vision.enc_patch_size
    window = vision.crop_size - 2 * margin
    rows, cols = _tiling(height - 2 * margin, width - 2 * margin, window, vision.max_crops)
    return cols * window + 2 * margin, rows * window + 2 * margin


def _tiling(height: int, width: int, window: int, max_crops: int) -> tuple[int, int]:
    """moondream2's choice of (rows, columns): enough ``window``-pixel crops to cover the area at its
    aspect ratio, scaled down in proportion where that would exceed ``max_crops``."""
    if height <= window or width <= window:
        return 1, 1
    need_rows, need_cols = math.ceil(height / window), math.ceil(width / window)
    if need_rows * need_cols > max_crops:
        scale = math.sqrt(max_crops / (need_rows * need_cols))
        return max(1, math.floor(need_rows * scale)), max(1, math.floor(need_cols * scale))
    rows = max(need_rows, math.floor(math.sqrt(max_crops * height / width)))
    cols = max(need_cols, math.floor(math.sqrt(max_crops * width / height)))
    if rows * cols > max_crops:
        if cols > rows:
            cols = max_crops // rows
        else:
            rows = max_crops // cols
    return max(1, rows), max(1, cols)


class MoondreamBackend(Backend):
    name: ClassVar[str] = "moondream"

    def __init__(
        self,
        model: Any,
        *,
        model_id: str,
        device: str,
        max_crops: int = 0,
        max_batch_size: int = 16,
        ahead: WorkAhead = "process",
    ) -> None:
        """``model`` is moondream2's ``HfMoondream``; ``max_crops`` (0: the model's own) trades detail for speed;
        ``max_batch_size`` answers decode together (with continuous batching); ``ahead`` is what ``prepare``
        does: nothing, encode the frame, or prefill a query's or caption's prompt too."""
        self.model = model
        self.ahead = ahead
        # moondream2's own code writes the model's one KV cache: the worker and a preparing thread take turns.
        self.own_code = threading.Lock()
        inner = model.model  # HfMoondream wraps the MoondreamModel that holds the config and the loop
        if max_crops:
            inner.config = dataclasses.replace(
                inner.config, vision=dataclasses.replace(inner.config.vision, max_crops=max_crops)
            )
        self.meter = TokenMeter(inner)
        self.encoded: FrameCache[Any] = FrameCache()
        side = frame_side(inner.config.vision)
        self.info = ModelInfo(
            model=model_id,
            backend=self.name,
            device=device,
            dtype=weights_dtype(model),
            capabilities=frozenset({"query", "caption", "detect", "point", "stream"}),
            image_size=side,
            input_size=side,
            max_batch_size=max_batch_size,
        )

    @classmethod
    def load(
        cls,
        model_id: str,
        *,
        revision: str | None,
        device: str,
        dtype: str,
        max_crops: int = 0,
        max_batch_size: int = 16,
        ahead: WorkAhead = "process",
    ) -> MoondreamBackend:
        device = resolve_device(device)
        use_unplanned_attention(device)
        pins = {DEFAULT_TOKENIZER_REPO: DEFAULT_TOKENIZER_REVISION} if revision == DEFAULT_REVISION else {}
        model = load_remote_code_model(
            model_id, revision=revision, dtype=torch.bfloat16, device=device, tokenizer_pins=pins
        )
        run_in(model, moondream_dtype(dtype, device))
        return cls(
            model, model_id=model_id, device=device, max_crops=max_crops, max_batch_size=max_batch_size, ahead=ahead
        )

    def decoder(self, events: RowEvents) -> Decoder:
        return MoondreamRows(self, events)

    @torch.inference_mode()  # as everywhere moondream2's code runs: its KV cache may have been made in that mode
    def generate(self, jobs: list[Job], events: GenerationEvents) -> None:
        """One job after another through moondream2's own loop (``--batching wave``); one that fails (a question
        too long) fails alone, and the next one runs."""
        for index, job in enumerate(jobs):
            if events.cancelled(index):
                continue
            result = failing_alone(events, index, partial(self.run_one, index, job, events))
            if result is not None:
                events.done(index, result)

    def prepare(self, job: Job, should_stop: Callable[[], bool] = never) -> Job:
        """On a preparing thread: the frame encoded (``--prepare encode``), and with ``prefill`` a query's or
        caption's prompt prefilled too, its start carried to the join as ``job.prepared``; a skill (detect, point)
        runs to its end there, so that the join only reports its ``Result`` and the running answers never wait."""
        if self.ahead == "process":
            return job
        with torch.inference_mode():  # grad mode is per thread: the worker's does not reach this one
            if self.ahead == "prefill" and not seeded_draws(job):
                run_ahead = self.start_answer if job.task in ANSWER_TASKS else self.run_skill
                return dataclasses.replace(job, prepared=run_ahead(job, should_stop))
            with self.own_code:
                self._encode(job)
        return job

    def run_one(self, index: int, job: Job, events: GenerationEvents) -> Result | None:
        """``job`` through moondream2's own loop, start to end; None where it was cancelled or overdue."""
        if job.task not in ANSWER_TASKS:
            return self.run_skill(job, lambda: events.cancelled(index))
        try:
            with self.own_code, self.meter.watching(lambda: events.cancelled(index)), self._seeded(job):
                return self._full_answer(index, job, events)
        except GenerationStopped:
            return None

    def run_skill(self, job: Job, should_stop: Callable[[], bool]) -> Result | None:
        """A detect or point through moondream2's own code; None where ``should_stop`` stopped it first."""
        try:
            with self.own_code, self.meter.watching(should_stop):
                encoded = self._encode(job)
                settings = {"max_objects": self._objects_that_fit(job, encoded.pos)}
                if job.task == "detect":
                    boxes = [_box(item) for item in self.model.detect(encoded, job.text, settings)["objects"]]
                    objects = [b for b in boxes if b["x_min"] < b["x_max"] and b["y_min"] < b["y_max"]]
                    return self._found(_found(len(objects), job.text), objects=objects)
                points = [_point(item) for item in self.model.point(encoded, job.text, settings)["points"]]
                return self._found(_found(len(points), job.text), points=points)
        except GenerationStopped:
            return None

    def _objects_that_fit(self, job: Job, frame_positions: int) -> int:
        """How many objects a detect or point may look for: moondream2's own 50, or fewer where its prompt (built
        as moondream2 builds it, after the frame's positions) leaves room for fewer before the context ends."""
        inner = self.model.model
        template = inner.config.tokenizer.templates[job.task]
        named = inner.tokenizer.encode(" " + job.text).ids  # moondream2 puts a space before the object's name
        prompt_end = frame_positions + len(template["prefix"]) + len(named) + len(template["suffix"])
        fitting = min(MAX_OBJECTS, (self.meter.context - prompt_end) // POSITIONS_PER_OBJECT[job.task])
        if fitting < 1:
            raise question_too_long("moondream2", self.meter.context)
        return fitting

    def start_answer(self, job: Job, should_stop: Callable[[], bool]) -> AnswerStart | None:
        """A query or caption through moondream2's own code up to its first token, its prompt's cache copied out;
        None where ``should_stop`` stopped it first."""
        with self.own_code:
            encoded = self._encode(job)
            try:
                with self.meter.watching(should_stop), stopping_after_prompt(self.model.model), self._seeded(job):
                    for _ in self._answer(job, encoded):
                        break
            except Prefilled as start:
                cache = copied_cache(self.model.model, start.position)
                return AnswerStart(start.token, start.position, self.meter.prompt_tokens, cache)
            except GenerationStopped:
                return None
        raise RuntimeError("moondream2 answered without prefilling its prompt")

    def _seeded(self, job: Job) -> AbstractContextManager[None]:
        """moondream2 samples from torch's global generators: a seeded job's draws come from its seed."""
        return seeded(job.seed if seeded_draws(job) else None, torch.device(self.info.device))

    def _answer(self, job: Job, encoded: Any) -> Iterator[str]:
        """moondream2's stream of a query's or a caption's answer."""
        settings = {"max_tokens": job.max_new_tokens, "temperature": job.temperature, "top_p": job.top_p}
        if job.task == "query":
            return self.model.query(encoded, job.text, stream=True, settings=settings)["answer"]
        return self.model.caption(encoded, length=job.length, stream=True, settings=settings)["caption"]

    def _full_answer(self, index: int, job: Job, events: GenerationEvents) -> Result:
        """A query's or caption's answer streamed to its end (or its first stop string) by moondream2's own loop."""
        screen = StopScreen(job.stop)
        answer = self._stream(index, self._answer(job, self._encode(job)), events, screen)
        cut_short = self.meter.tokens >= job.max_new_tokens or self.meter.full
        return Result(
            answer=answer,
            tokens=self.meter.tokens,
            prompt_tokens=self.meter.prompt_tokens,
            finish_reason="length" if cut_short and not screen.hit else "stop",
        )

    def _found(self, answer: str, **geometry: Any) -> Result:
        return Result(answer=answer, tokens=self.meter.tokens, prompt_tokens=self.meter.prompt_tokens, **geometry)

    def _encode(self, job: Job) -> Any:
        encoded = self.encoded.get(job.image_key)
        if encoded is None:
            encoded = self.model.encode_image(job.image)
            self.encoded.put(job.image_key, encoded)
        return encoded

    @staticmethod
    def _stream(index: int, chunks: Iterable[str], events: GenerationEvents, screen: StopScreen) -> str:
        """Forward the stream's chunks until one completes a stop string; a cancel closes it (the meter stops it
        mid-word, too)."""
        parts: list[str] = []
        iterator = iter(chunks)
        try:
            for chunk in iterator:
                if events.cancelled(index):
                    raise GenerationStopped
                parts.append(chunk)
                if delta := screen.screen(chunk):
                    events.delta(index, delta)
                if screen.hit:
                    break
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()
        return screen.cut("".join(parts)).strip()


def seeded_draws(job: Job) -> bool:
    """Whether ``job`` samples from its seed: it is prefilled on the worker, the one thread where setting torch's
    global generators to a client's seed shifts nobody else's draws (vlm/backends/seeds.py)."""
    return job.seed is not None and job.temperature > 0


def _unit(value: Any) -> float:
    """moondream2's boxes are centre +- size / 2, so they can stick out of the frame (or lie outside it,
    and are then dropped); the page draws inside it."""
    return min(1.0, max(0.0, float(value)))


def _box(item: dict[str, Any]) -> dict[str, float]:
    return {key: _unit(item[key]) for key in ("x_min", "y_min", "x_max", "y_max")}


def _point(item: dict[str, Any]) -> dict[str, float]:
    return {"x": _unit(item["x"]), "y": _unit(item["y"])}


def _found(count: int, what: str) -> str:
    return f"found {count} × {what}" if count else f"no {what} found"
