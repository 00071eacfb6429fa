"""What a request ends with, and the ``Sink`` it is delivered to.

The scheduler knows nothing of wires: it hands each request's sink typed events (text deltas,
one ``Answer`` or one ``VlmError``) and every transport formats its own shape from them
(vlm/socket_sink.py for Socket.IO, vlm/openai_api.py for ``/v1``, vlm/watch.py for watch checks).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from .backends.base import Result, Task
from .errors import VlmError


@dataclass(frozen=True)
class Timing:
    """Where an answered request's time went, in milliseconds."""

    queue_ms: float
    decode_ms: float
    model_ms: float
    first_token_ms: float
    total_ms: float


@dataclass(frozen=True)
class Answer:
    """An answered request: its id and task, the backend's result and the timing around it."""

    id: str
    task: Task
    result: Result
    timing: Timing


class Sink(Protocol):
    """Where one request's events go. Exactly one of ``answered`` and ``failed`` is called, last."""

    def waiting(self, ahead: int) -> None:
        """Queued for a while, ``ahead`` requests go before it. Called under the scheduler's lock: hand it on, never
        block."""

    def stream(self, delta: str) -> None: ...

    def answered(self, answer: Answer) -> None: ...

    def failed(self, error: VlmError) -> None: ...
