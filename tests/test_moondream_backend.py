"""The moondream backend against a double of moondream2's documented API, plus the real thing when cached."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from vlm.backends.base import Job, Result
from vlm.backends.moondream import MoondreamBackend
from vlm.config import DEFAULT_MODEL, DEFAULT_REVISION

FRAME = Image.new("RGB", (64, 48), "red")


class MoondreamApiDouble:
    """Mimics moondream2's public methods: encode_image, query/caption (streaming), detect, point."""

    def __init__(self) -> None:
        self.encoded = 0
        self.closed_early = False

    def encode_image(self, image: Image.Image) -> dict[str, Any]:
        self.encoded += 1
        return {"encoded": image.size}

    def _stream(self, words: list[str]) -> Iterator[str]:
        try:
            for index, word in enumerate(words):
                yield word if index == 0 else " " + word
        except GeneratorExit:
            self.closed_early = True
            raise

    def query(self, image: Any, question: str, stream: bool = False, settings: Any = None) -> dict[str, Any]:
        assert isinstance(image, dict), "the backend passes the cached encoding, not the raw image"
        words = ["a", "red", "square", "on", "a", "plain", "background"][: settings["max_tokens"]]
        return {"answer": self._stream(words) if stream else " ".join(words)}

    def caption(self, image: Any, length: str = "normal", stream: bool = False, settings: Any = None) -> dict[str, Any]:
        words = ["red", "square"] if length == "short" else ["a", "red", "square", "in", "the", "middle"]
        return {"caption": self._stream(words)}

    def detect(self, image: Any, obj: str) -> dict[str, Any]:
        return {"objects": [{"x_min": 0.1, "y_min": 0.2, "x_max": 0.5, "y_max": 0.6}]}

    def point(self, image: Any, obj: str) -> dict[str, Any]:
        return {"points": [{"x": 0.3, "y": 0.4}]}


class Events:
    def __init__(self, cancel_after: int | None = None) -> None:
        self.deltas: list[str] = []
        self.results: list[Result] = []
        self.cancel_after = cancel_after

    def delta(self, index: int, text: str) -> None:
        self.deltas.append(text)

    def done(self, index: int, result: Result) -> None:
        self.results.append(result)

    def cancelled(self, index: int) -> bool:
        return self.cancel_after is not None and len(self.deltas) >= self.cancel_after


def backend() -> tuple[MoondreamBackend, MoondreamApiDouble]:
    double = MoondreamApiDouble()
    return MoondreamBackend(double, model_id="double", device="cpu", dtype="float32"), double


def job(task: str, text: str = "", key: str = "frame-1", **extra: Any) -> Job:
    return Job(task=task, image=FRAME, image_key=key, text=text, **extra)  # type: ignore[arg-type]


def test_query_streams_and_respects_token_budget() -> None:
    md, _ = backend()
    events = Events()
    md.generate([job("query", "what is this?", max_new_tokens=3)], events)
    assert "".join(events.deltas) == "a red square"
    assert events.results[0].answer == "a red square"


def test_skills_return_normalised_geometry() -> None:
    md, _ = backend()
    events = Events()
    md.generate([job("detect", "square")], events)
    md.generate([job("point", "square")], events)
    md.generate([job("caption", length="short")], events)
    detect, point, caption = events.results
    assert detect.objects == [{"x_min": 0.1, "y_min": 0.2, "x_max": 0.5, "y_max": 0.6}]
    assert point.points == [{"x": 0.3, "y": 0.4}]
    assert caption.answer == "red square"


def test_image_is_encoded_once_per_frame() -> None:
    md, double = backend()
    for task in ("query", "caption", "detect"):
        md.generate([job(task, "square")], Events())
    assert double.encoded == 1
    md.generate([job("query", "q", key="frame-2")], Events())
    assert double.encoded == 2


def test_cancel_closes_the_token_stream() -> None:
    md, double = backend()
    events = Events(cancel_after=2)
    md.generate([job("query", "q")], events)
    assert len(events.deltas) == 2
    assert double.closed_early


def test_capabilities_include_the_skills() -> None:
    md, _ = backend()
    assert md.info.capabilities >= {"query", "caption", "detect", "point", "stream"}
    assert md.info.max_batch_size == 1


def cached_moondream() -> Path | None:
    """moondream2's weights, if this machine has them (never on CI: no model hub here)."""
    local = os.environ.get("VLM_MOONDREAM_PATH")
    if local:
        return Path(local)
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(DEFAULT_MODEL, revision=DEFAULT_REVISION, local_files_only=True))
    except Exception:
        return None


@pytest.mark.skipif(cached_moondream() is None,
                    reason="moondream2 weights are not in the HF cache (no model hub here); "
                           "set VLM_MOONDREAM_PATH to a downloaded folder to run this")
def test_real_moondream2_answers_about_a_frame() -> None:
    path = cached_moondream()
    md = MoondreamBackend.load(str(path), revision=None, device="auto", dtype="auto")
    events = Events()
    md.generate([job("query", "What colour is this image?", max_new_tokens=16)], events)
    assert "red" in events.results[0].answer.lower()
