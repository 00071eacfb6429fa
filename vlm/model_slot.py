"""The one loaded model, shared by every door: empty while it loads, then filled exactly once.

The web tier starts answering (``/healthz`` says ``loading``) before the model is there, so
every handler reads the slot at request time instead of holding a backend of its own.
"""

from __future__ import annotations

from .backends.base import Backend
from .errors import Code, VlmError
from .scheduler import Scheduler


class ModelSlot:
    def __init__(self) -> None:
        self.backend: Backend | None = None
        self.scheduler: Scheduler | None = None

    def install(self, backend: Backend, scheduler: Scheduler) -> None:
        self.backend, self.scheduler = backend, scheduler

    def loaded(self) -> tuple[Backend, Scheduler]:
        """The model and its scheduler; while it loads, raises the ``loading`` refusal, which each door writes in
        its own wire shape."""
        backend, scheduler = self.backend, self.scheduler
        if backend is None or scheduler is None:
            raise VlmError(Code.LOADING, "the model is still loading; try again in a moment")
        return backend, scheduler
