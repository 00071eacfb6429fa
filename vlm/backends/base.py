"""The one small interface every model backend implements.

A backend is loaded once. ``generate`` and its ``Decoder`` are called from the scheduler's worker
thread, one call at a time; ``prepare`` runs on preparing threads (``--prepare``), several at once
and alongside the worker, so what it shares with them must be locked or only ever set one way
before it is handed over (``FrameCache`` locks). It reports what it can do (``capabilities``) so
the page offers only working buttons, and streams through ``GenerationEvents`` so the scheduler,
not the backend, decides who hears about it.

The scheduler drives a backend through a ``Decoder``: a running batch that requests join
and leave between decode steps. Every backend has one: by default a ``WaveDecoder``, which
runs whole ``generate`` calls; backends that can do better (a step-wise decode loop, or an
upstream server that batches on its own) return their own.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Set
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Protocol, TypeVar

from PIL import Image

from ..errors import Code, VlmError

log = logging.getLogger(__name__)

Task = Literal["query", "caption", "detect", "point"]
Outcome = TypeVar("Outcome")
CaptionLength = Literal["short", "normal"]

# For models with no caption skill of their own: a caption is the answer to one of these, unless the model's
# config.json names its own ("caption_prompts": {"short": ..., "normal": ...}), as the demo model does, which
# answers only phrasings it was trained on.
CAPTION_PROMPTS: dict[CaptionLength, str] = {
    "short": "Describe the image in one short sentence.",
    "normal": "Describe the image.",
}


@dataclass(frozen=True)
class Job:
    """One unit of model work: what to do, on which frame."""

    task: Task
    # None: a text-only question (HTTP API), for backends with the "text" capability.
    image: Image.Image | None
    image_key: str
    text: str = ""
    length: CaptionLength = "normal"
    max_new_tokens: int = 128
    # 0 is greedy: the same frame and question give the same answer.
    temperature: float = 0.0
    # Where it samples, only from the likeliest tokens that make up this much probability (nucleus sampling).
    top_p: float = 1.0
    # Where it samples, the same seed draws the same answer (vlm/backends/seeds.py); None: draws differ.
    seed: int | None = None
    # The answer ends before the first of these (vlm/backends/stops.py); empty: only the model ends it.
    stop: tuple[str, ...] = ()
    # The backend's own inputs for this job, made by ``Backend.prepare`` before the job reached the model.
    prepared: Any = field(default=None, compare=False, repr=False)


def never() -> bool:
    """A stop predicate for work nobody can call off."""
    return False


def prompt_text(job: Job, caption_prompts: Mapping[CaptionLength, str] = CAPTION_PROMPTS) -> str:
    """What to ask a model that only answers questions: the question, or the caption prompt."""
    return caption_prompts[job.length] if job.task == "caption" else job.text


FinishReason = Literal["stop", "length"]


@dataclass
class Result:
    answer: str
    # Generated tokens as the model counts them (not streamed chunks), and the prompt's, for usage reports.
    tokens: int = 0
    prompt_tokens: int = 0
    # "length" when the answer was cut at ``max_new_tokens``.
    finish_reason: FinishReason = "stop"
    objects: list[dict[str, float]] | None = None
    points: list[dict[str, float]] | None = None


class GenerationEvents(Protocol):
    """How a backend reports progress on job ``index`` of the batch it was given; ``failed`` fails that job alone,
    the others going on."""

    def delta(self, index: int, text: str) -> None: ...

    def done(self, index: int, result: Result) -> None: ...

    def failed(self, index: int, error: VlmError) -> None: ...

    def cancelled(self, index: int) -> bool: ...


class RowEvents(GenerationEvents, Protocol):
    """``GenerationEvents`` by row key: a running batch's rows, not one call's batch indexes."""


def question_too_long(model: str, context: int) -> VlmError:
    """The error for a prompt that leaves no room in ``model``'s ``context`` (in tokens) for an answer."""
    return VlmError(
        Code.QUESTION_TOO_LONG,
        f"the question does not fit {model}'s context of {context} tokens with the frame; ask a shorter one",
    )


def failing_alone(events: GenerationEvents, index: int, work: Callable[[], Outcome]) -> Outcome | None:
    """``work`` for job ``index`` alone (its prefill, a skill run to its end, its whole answer); None where it failed.

    Its fault is its own (a question too long, a first draw the model cannot make) and left nothing of the
    other jobs' state half done: it fails through ``events.failed``, and the batch beside it goes on.
    """
    try:
        return work()
    except VlmError as error:
        events.failed(index, error)
    except Exception:
        log.exception("the model failed on one job of a batch; the others go on")
        events.failed(index, VlmError(Code.MODEL_ERROR, "the model failed on this request"))
    return None


class Decoder(ABC):
    """A running batch: jobs join it and rows leave it between decode steps (continuous batching).

    Rows are named by keys the caller picks, and report through ``RowEvents`` by key. A row
    leaves after ``done``, after ``failed``, or at the first step after it is cancelled. A joining
    job whose own work fails (its prefill, its first token, a skill) fails alone (``failing_alone``).
    An exception from ``join`` or ``step`` means the rows still listed by ``rows`` are lost: the
    caller fails them (and the jobs that were joining) and calls ``clear``.
    """

    # True where rows advance on threads of their own (a remote server) and ``step`` is never needed.
    advances_itself: ClassVar[bool] = False

    @abstractmethod
    def join(self, jobs: dict[int, Job]) -> None:
        """Start ``jobs``; stepping decoders run their prefill here and report each one's first token."""

    @abstractmethod
    def step(self) -> None:
        """Advance every running row by one token (or, for a ``WaveDecoder``, to its end)."""

    @abstractmethod
    def rows(self) -> Set[int]:
        """The keys of the rows still running."""

    @abstractmethod
    def clear(self) -> None:
        """Forget every row (after a failure that left the batch's state unknown)."""


class WaveDecoder(Decoder):
    """Whole ``generate`` calls: the jobs that joined since the last step run together to their end.

    Rows cannot join a running wave; this is the batching of backends without a step-wise loop.
    """

    def __init__(self, backend: Backend, events: RowEvents) -> None:
        self.backend = backend
        self.events = events
        self.jobs: dict[int, Job] = {}

    def join(self, jobs: dict[int, Job]) -> None:
        self.jobs.update(jobs)

    def step(self) -> None:
        wave = _Wave(list(self.jobs), self.events)
        self.backend.generate(list(self.jobs.values()), wave)
        self.jobs = {}
        for key in wave.keys:
            if key not in wave.ended and not self.events.cancelled(key):
                self.events.failed(key, VlmError(Code.MODEL_ERROR, "the model returned no answer"))

    def rows(self) -> Set[int]:
        return self.jobs.keys()

    def clear(self) -> None:
        self.jobs = {}


class _Wave:
    """A wave's ``GenerationEvents`` by batch index, passed on by row key; remembers who was answered or failed."""

    def __init__(self, keys: list[int], events: RowEvents) -> None:
        self.keys = keys
        self.events = events
        self.ended: set[int] = set()

    def delta(self, index: int, text: str) -> None:
        self.events.delta(self.keys[index], text)

    def done(self, index: int, result: Result) -> None:
        self.ended.add(self.keys[index])
        self.events.done(self.keys[index], result)

    def failed(self, index: int, error: VlmError) -> None:
        self.ended.add(self.keys[index])
        self.events.failed(self.keys[index], error)

    def cancelled(self, index: int) -> bool:
        return self.events.cancelled(self.keys[index])


@dataclass(frozen=True)
class ModelInfo:
    model: str
    backend: str
    device: str
    dtype: str
    capabilities: frozenset[str] = field(default_factory=frozenset)
    # The longest frame side clients should send (the page's history thumbnails are cut from it).
    image_size: int = 512
    max_batch_size: int = 1
    # The longest side the model gets anything from; the server decodes frames no larger. 0: ``image_size``.
    input_size: int = 0

    @property
    def decode_size(self) -> int:
        return self.input_size or self.image_size


# What ``prepare`` does (``--prepare``): only what needs no model (a processor's work), run the vision tower
# too, or the whole prefill (the vision tower and the prompt through the decoder, for rows a running batch steps).
WorkAhead = Literal["process", "encode", "prefill"]


class Backend(ABC):
    name: ClassVar[str]
    info: ModelInfo
    # Whether ``prepare`` has work worth a thread of its own; the scheduler runs it only then.
    prepares: bool = False

    @abstractmethod
    def generate(self, jobs: list[Job], events: GenerationEvents) -> None:
        """Run ``jobs`` together, calling ``events.done`` once per job that was not cancelled."""

    def decoder(self, events: RowEvents) -> Decoder:
        """The running batch the scheduler feeds; whole waves of ``generate`` unless a backend does better."""
        return WaveDecoder(self, events)

    def prepare(self, job: Job, should_stop: Callable[[], bool] = never) -> Job:
        """``job`` with the work done that needs no running batch (a processor's resizing, normalising,
        tokenising; a vision tower's encoding of the frame).

        Where ``prepares`` is set, the scheduler calls this on threads of their own while the model decodes
        others, so a newcomer does not stall the running batch with it. It runs alongside ``generate``, the
        decoder and itself: model parts that keep state between calls (moondream2's one KV cache) it may run
        only by taking turns with the worker; the running batch's own state it never touches. Work long enough
        to be worth calling off (a skill run to its end) ends early once ``should_stop`` says the request has.
        """
        return job
