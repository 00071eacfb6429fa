"""The one small interface every model backend implements.

A backend is loaded once and then only ever called from the scheduler's worker thread,
one batch at a time, so implementations need no locking of their own. It reports what it
can do (``capabilities``) so the page offers only working buttons, and streams through
``GenerationEvents`` so the scheduler, not the backend, decides who hears about it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import ClassVar, Literal, Protocol

import torch
from PIL import Image

Task = Literal["query", "caption", "detect", "point"]
CaptionLength = Literal["short", "normal"]

# For models with no caption skill of their own: a caption is the answer to one of these.
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


def prompt_text(job: Job) -> str:
    """What to ask a model that only answers questions: the question, or the caption prompt."""
    return CAPTION_PROMPTS[job.length] if job.task == "caption" else job.text


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


class BackendError(RuntimeError):
    """A failure the client should hear about by name (``upstream_error``, ``timeout``, ...), not as a model_error."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class GenerationEvents(Protocol):
    """How a backend reports progress on job ``index`` of the batch it was given."""

    def delta(self, index: int, text: str) -> None: ...

    def done(self, index: int, result: Result) -> None: ...

    def cancelled(self, index: int) -> bool: ...


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


class Backend(ABC):
    name: ClassVar[str]
    info: ModelInfo

    @abstractmethod
    def generate(self, jobs: list[Job], events: GenerationEvents) -> None:
        """Run ``jobs`` together, calling ``events.done`` once per job that was not cancelled."""


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for, but PyTorch sees no CUDA GPU")
    return device


def weights_dtype(model: torch.nn.Module) -> str:
    """The dtype the weights really have, which is not always the one asked for (a mix is listed)."""
    return "/".join(sorted({str(p.dtype).removeprefix("torch.") for p in model.parameters()})) or "n/a"


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    """fp16 keeps a GPU-resident model small and fast; CPUs are fastest and exact in fp32."""
    if dtype == "auto":
        return torch.float16 if device == "cuda" else torch.float32
    return getattr(torch, dtype)
