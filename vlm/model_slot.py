"""The one loaded model, shared by every door: empty while it loads, then filled exactly once.

The web tier starts answering (``/healthz`` says ``loading``) before the model is there, so
every handler reads the slot at request time instead of holding a backend of its own.
"""

from __future__ import annotations

from .backends.base import Backend
from .scheduler import Scheduler


class ModelSlot:
    def __init__(self) -> None:
        self.backend: Backend | None = None
        self.scheduler: Scheduler | None = None

    def install(self, backend: Backend, scheduler: Scheduler) -> None:
        self.backend, self.scheduler = backend, scheduler

    def decode_size(self) -> int | None:
        """The longest frame side worth decoding, once a model is loaded."""
        return self.backend.info.decode_size if self.backend is not None else None
