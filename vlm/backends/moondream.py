"""moondream2 through its own remote-code API (``query``, ``caption``, ``detect``, ``point``).

moondream2 is not an ``AutoModelForImageTextToText`` model: it ships its own Python and
its own skills, which are the point of using it. The image encoding is the expensive half
of a query, so it is cached per frame digest: several questions, a caption and a detect on
one snapshot encode it once.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, ClassVar

from .base import Backend, GenerationEvents, Job, ModelInfo, Result, resolve_device, resolve_dtype
from .frame_cache import FrameCache
from .remote_code import load_remote_code_model

# moondream2 crops its input into 378 px tiles, up to a few per side; more is wasted bandwidth.
MOONDREAM_FRAME_SIDE = 756


class MoondreamBackend(Backend):
    name: ClassVar[str] = "moondream"

    def __init__(self, model: Any, *, model_id: str, device: str, dtype: str) -> None:
        self.model = model
        self.encoded: FrameCache[Any] = FrameCache()
        self.info = ModelInfo(
            model=model_id,
            backend=self.name,
            device=device,
            dtype=dtype,
            capabilities=frozenset({"query", "caption", "detect", "point", "stream"}),
            image_size=MOONDREAM_FRAME_SIDE,
            max_batch_size=1,
        )

    @classmethod
    def load(cls, model_id: str, *, revision: str | None, device: str, dtype: str) -> MoondreamBackend:
        device = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, device)
        model = load_remote_code_model(model_id, revision=revision, dtype=torch_dtype, device=device)
        return cls(model, model_id=model_id, device=device, dtype=str(torch_dtype).removeprefix("torch."))

    def generate(self, jobs: list[Job], events: GenerationEvents) -> None:
        for index, job in enumerate(jobs):
            if not events.cancelled(index):
                events.done(index, self._run(index, job, events))

    def _run(self, index: int, job: Job, events: GenerationEvents) -> Result:
        encoded = self._encode(job)
        settings = {"max_tokens": job.max_new_tokens}
        if job.task == "query":
            reply = self.model.query(encoded, job.text, stream=True, settings=settings)
            return self._stream(index, reply["answer"], events)
        if job.task == "caption":
            reply = self.model.caption(encoded, length=job.length, stream=True, settings=settings)
            return self._stream(index, reply["caption"], events)
        if job.task == "detect":
            objects = [_box(item) for item in self.model.detect(encoded, job.text)["objects"]]
            return Result(answer=_found(len(objects), job.text), objects=objects)
        points = [{"x": float(p["x"]), "y": float(p["y"])} for p in self.model.point(encoded, job.text)["points"]]
        return Result(answer=_found(len(points), job.text), points=points)

    def _encode(self, job: Job) -> Any:
        encoded = self.encoded.get(job.image_key)
        if encoded is None:
            encoded = self.model.encode_image(job.image)
            self.encoded.put(job.image_key, encoded)
        return encoded

    @staticmethod
    def _stream(index: int, chunks: Iterable[str] | str, events: GenerationEvents) -> Result:
        if isinstance(chunks, str):
            chunks = [chunks]
        parts: list[str] = []
        iterator: Iterator[str] = iter(chunks)
        try:
            for chunk in iterator:
                if events.cancelled(index):
                    break
                parts.append(chunk)
                events.delta(index, chunk)
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()
        return Result(answer="".join(parts).strip(), tokens=len(parts))


def _box(item: dict[str, Any]) -> dict[str, float]:
    return {key: float(item[key]) for key in ("x_min", "y_min", "x_max", "y_max")}


def _found(count: int, what: str) -> str:
    return f"found {count} × {what}" if count else f"no {what} found"
