"""Test doubles, named as such: they stand in for a model only inside unit tests."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Set
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any, ClassVar

from vlm.backends.base import (
    Backend,
    Decoder,
    GenerationEvents,
    Job,
    ModelInfo,
    Result,
    RowEvents,
    failing_alone,
    never,
)
from vlm.errors import VlmError
from vlm.results import Answer


class ScriptedBackendDouble(Backend):
    """Answers ``echo: <text>`` word by word, after an optional per-word delay; can be told to fail or hang.

    It records how many calls were inside it at once (``most_inside``): a real model with one KV cache
    (moondream2) corrupts both answers when that is ever more than one. Like a real backend it stops at
    the next word once a request is cancelled, but not while it hangs (``hang_once`` models a call stuck
    where it cannot look, such as a long image encoding).
    """

    name: ClassVar[str] = "double"

    def __init__(self, *, max_batch_size: int = 4, word_delay_s: float = 0.0) -> None:
        self.info = ModelInfo(
            model="double",
            backend=self.name,
            device="cpu",
            dtype="float32",
            capabilities=frozenset({"query", "caption", "stream"}),
            max_batch_size=max_batch_size,
        )
        self.word_delay_s = word_delay_s
        self.batches: list[list[str]] = []
        self.fail_with: BaseException | None = None
        self.hang = threading.Event()
        self.hang_once = False
        self.released = threading.Event()
        self.words_emitted = 0
        self.inside = 0
        self.most_inside = 0
        self.entry = threading.Lock()

    def generate(self, jobs: list[Job], events: GenerationEvents) -> None:
        with self.entry:
            self.inside += 1
            self.most_inside = max(self.most_inside, self.inside)
        try:
            self._generate(jobs, events)
        finally:
            with self.entry:
                self.inside -= 1

    def _generate(self, jobs: list[Job], events: GenerationEvents) -> None:
        self.batches.append([job.text for job in jobs])
        if self.fail_with is not None:
            raise self.fail_with
        while self.hang.is_set():
            time.sleep(0.01)
        if self.hang_once:
            self.hang_once = False
            self.released.wait()
        words = [f"echo: {job.text}".split() for job in jobs]
        for step in range(max(len(w) for w in words)):
            if all(events.cancelled(index) for index in range(len(jobs))):
                return  # every row answered, cancelled or timed out
            time.sleep(self.word_delay_s)
            for index, row in enumerate(words):
                if step < len(row) and not events.cancelled(index):
                    self.words_emitted += 1
                    events.delta(index, ("" if step == 0 else " ") + row[step])
                    if step == len(row) - 1:
                        events.done(index, Result(answer=" ".join(row), tokens=len(row)))


class SteppingBackendDouble(ScriptedBackendDouble):
    """``ScriptedBackendDouble`` answers, decoded step-wise: one word per row per step, rows join between steps.

    Like the real decoders, a job joins with its first word streamed. ``steps`` records which rows (by question)
    each step computed, ``joined`` the jobs that joined. A question in ``fails_alone`` fails its own join as a
    real prefill's fault does (``failing_alone``); one in ``breaks_join`` raises out of the join once the jobs
    before it have started, as a running batch's cache that cannot grow would.
    """

    def __init__(self, *, max_batch_size: int = 4, word_delay_s: float = 0.0) -> None:
        super().__init__(max_batch_size=max_batch_size, word_delay_s=word_delay_s)
        self.steps: list[list[str]] = []
        self.joined: list[Job] = []
        self.fails_alone: set[str] = set()
        self.breaks_join: set[str] = set()

    def decoder(self, events: RowEvents) -> Decoder:
        return _WordDecoder(self, events)


class _WordDecoder(Decoder):
    def __init__(self, backend: SteppingBackendDouble, events: RowEvents) -> None:
        self.backend = backend
        self.events = events
        self.running: dict[int, tuple[str, list[str]]] = {}
        self.emitted: dict[int, int] = {}

    def join(self, jobs: dict[int, Job]) -> None:
        self.backend.joined.extend(jobs.values())
        for key, job in jobs.items():
            if job.text in self.backend.breaks_join:
                raise RuntimeError("the running batch cannot take this job")
            if failing_alone(self.events, key, partial(self._prefill, job)) is not None:
                self.running[key] = (job.text, f"echo: {job.text}".split())
                self.emitted[key] = 0
                self._next_word(key)

    def _prefill(self, job: Job) -> Job:
        if job.text in self.backend.fails_alone:
            raise ValueError("this job's prefill failed")
        return job

    def step(self) -> None:
        time.sleep(self.backend.word_delay_s)
        self.backend.steps.append([text for text, _ in self.running.values()])
        for key in list(self.running):
            if self.events.cancelled(key):
                del self.running[key]
            else:
                self._next_word(key)

    def _next_word(self, key: int) -> None:
        words = self.running[key][1]
        index = self.emitted[key]
        self.events.delta(key, ("" if index == 0 else " ") + words[index])
        self.emitted[key] = index + 1
        if index + 1 == len(words):
            del self.running[key]
            self.events.done(key, Result(answer=" ".join(words), tokens=len(words)))

    def rows(self) -> Set[int]:
        return self.running.keys()

    def clear(self) -> None:
        self.running = {}


class PreparingBackendDouble(SteppingBackendDouble):
    """``SteppingBackendDouble`` with work to do before the model, as a processor has.

    ``prepared_by`` records (question, thread) per ``prepare``; questions in ``held`` wait there
    until ``release`` is set, and questions in ``unpreparable`` fail there.
    """

    prepares = True

    def __init__(self, *, max_batch_size: int = 4, word_delay_s: float = 0.0) -> None:
        super().__init__(max_batch_size=max_batch_size, word_delay_s=word_delay_s)
        self.prepared_by: list[tuple[str, str]] = []
        self.held: set[str] = set()
        self.release = threading.Event()
        self.unpreparable: set[str] = set()
        self.stop_checks: dict[str, Callable[[], bool]] = {}  # by question: what prepare was told to stop on

    def prepare(self, job: Job, should_stop: Callable[[], bool] = never) -> Job:
        self.prepared_by.append((job.text, threading.current_thread().name))
        self.stop_checks[job.text] = should_stop
        if job.text in self.unpreparable:
            raise ValueError("this frame cannot be processed")
        if job.text in self.held:
            self.release.wait(5)
        return replace(job, prepared=f"inputs for {job.text}")


@dataclass
class RecordingSinkDouble:
    """Collects what the scheduler delivers to many requests: ``to(rid)`` is the sink of request ``rid``.

    Events are ``("queued", rid, ahead)``, ``("stream", rid, delta)``, ``("response", rid, Answer)`` and
    ``("query_error", rid, code)``.
    """

    events: list[tuple[str, str, Any]] = field(default_factory=list)
    finished: threading.Condition = field(default_factory=threading.Condition)

    def to(self, request_id: str) -> _RequestSink:
        return _RequestSink(self, request_id)

    def record(self, kind: str, request_id: str, value: Any) -> None:
        with self.finished:
            self.events.append((kind, request_id, value))
            self.finished.notify_all()

    def finals(self) -> dict[str, tuple[str, Any]]:
        return {rid: (kind, value) for kind, rid, value in self.events if kind in ("response", "query_error")}

    def wait_finals(self, count: int, timeout_s: float = 5.0) -> dict[str, tuple[str, Any]]:
        with self.finished:
            self.finished.wait_for(lambda: len(self.finals()) >= count, timeout_s)
        return self.finals()


@dataclass(frozen=True)
class _RequestSink:
    recording: RecordingSinkDouble
    request_id: str

    def waiting(self, ahead: int) -> None:
        self.recording.record("queued", self.request_id, ahead)

    def stream(self, delta: str) -> None:
        self.recording.record("stream", self.request_id, delta)

    def answered(self, answer: Answer) -> None:
        self.recording.record("response", self.request_id, answer)

    def failed(self, error: VlmError) -> None:
        self.recording.record("query_error", self.request_id, error.code)
