"""The moondream backend against the moondream2 look-alike (scripts/build_remote_code_fixture.py), in process.

The look-alike behaves like moondream2's code in everything the backend depends on (bfloat16 layers,
sampling defaults, word-chunked streaming, crop tiling, one shared KV cache), and a few tests here check
that it does, so that the backend's tests cannot pass on a kinder model. The real moondream2 is tested
too where its weights are cached.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import torch
from PIL import Image

from scripts.build_remote_code_fixture import QUESTION, fixture_image
from tests.moondream_like import MoondreamLike, hub_cache
from vlm.backends import moondream
from vlm.backends.base import Job, Result, WaveDecoder
from vlm.backends.load_failure import download_commands
from vlm.backends.moondream import MoondreamBackend, frame_side
from vlm.config import DEFAULT_MODEL, DEFAULT_REVISION
from vlm.errors import Code, VlmError

FRAME = Image.new("RGB", (640, 480), "red")
GREEDY = {"temperature": 0}


@dataclasses.dataclass(frozen=True)
class RealVision:
    """moondream2's crop settings (``VisionConfig`` in moondream/torch/config.py at 44146f1)."""

    crop_size: int = 378
    enc_patch_size: int = 14
    max_crops: int = 12
    overlap_margin: int = 4


class Events:
    def __init__(self, cancel_after: int | None = None) -> None:
        self.deltas: list[str] = []
        self.results: list[Result] = []
        self.failures: dict[int, VlmError] = {}
        self.cancel_after = cancel_after

    def delta(self, index: int, text: str) -> None:
        self.deltas.append(text)

    def done(self, index: int, result: Result) -> None:
        self.results.append(result)

    def failed(self, index: int, error: VlmError) -> None:
        self.failures[index] = error

    def cancelled(self, index: int) -> bool:
        return self.cancel_after is not None and len(self.deltas) >= self.cancel_after


def load(moondream_like: MoondreamLike, dtype: str = "bfloat16", **options: Any) -> MoondreamBackend:
    with hub_cache(moondream_like.hub_cache):
        return MoondreamBackend.load(str(moondream_like.folder), revision=None, device="cpu", dtype=dtype, **options)


def test_loading_sets_the_attention_kernels_for_its_device(
    moondream_like: MoondreamLike, monkeypatch: pytest.MonkeyPatch
) -> None:
    """moondream2 decodes through the same attention as any model: off cuDNN's per-shape plans on a GPU."""
    devices: list[str] = []
    monkeypatch.setattr(moondream, "use_unplanned_attention", devices.append)
    load(moondream_like)
    assert devices == ["cpu"]


@pytest.fixture(scope="module")
def md(moondream_like: MoondreamLike) -> MoondreamBackend:
    """In moondream2's own bfloat16, so that its answers are the look-alike's ``expected.json``."""
    return load(moondream_like)


@pytest.fixture(scope="module")
def expected(moondream_like: MoondreamLike) -> dict[str, Any]:
    return json.loads((moondream_like.folder / "expected.json").read_text())


def job(task: str, text: str = "", image: Image.Image = FRAME, key: str = "frame-1", **extra: Any) -> Job:
    return Job(task=task, image=image, image_key=key, text=text, **extra)  # type: ignore[arg-type]


def ask(md: MoondreamBackend, the_job: Job, events: Events | None = None) -> Result:
    events = events or Events()
    md.generate([the_job], events)
    assert events.failures == {} and len(events.results) == 1
    return events.results[0]


def question(key: str = "fixture-image", **extra: Any) -> Job:
    return job("query", QUESTION, image=fixture_image(), key=key, **extra)


# --- the look-alike is as strict as moondream2 --------------------------------------------------


def test_look_alike_samples_unless_told_otherwise(md: MoondreamBackend) -> None:
    encoded = md.model.encode_image(fixture_image())
    answers = {md.model.query(encoded, QUESTION, settings={"max_tokens": 20})["answer"] for _ in range(5)}
    assert len(answers) > 1, "moondream2 samples at temperature 0.5 by default; so must its look-alike"


def test_look_alike_streams_words_not_tokens(md: MoondreamBackend, expected: dict[str, Any]) -> None:
    encoded = md.model.encode_image(fixture_image())
    chunks = list(md.model.query(encoded, QUESTION, stream=True, settings=GREEDY)["answer"])
    assert "".join(chunks) == expected["answer"]
    assert 1 < len(chunks) < expected["tokens"]
    assert all(chunk.endswith(" ") for chunk in chunks[:-1])


def test_look_alike_cannot_run_outside_bfloat16(moondream_like: MoondreamLike) -> None:
    model = load(moondream_like).model.to(torch.float32)
    with pytest.raises(RuntimeError, match="dtype"):
        model.encode_image(fixture_image())


def test_look_alike_corrupts_two_interleaved_calls(md: MoondreamBackend) -> None:
    """Its one KV cache is why the scheduler never runs two calls on a backend at once."""
    mine, other = md.model.encode_image(fixture_image()), md.model.encode_image(Image.new("RGB", (640, 480), "navy"))
    alone = "".join(md.model.query(mine, QUESTION, stream=True, settings=GREEDY)["answer"])
    interleaved = md.model.query(mine, QUESTION, stream=True, settings=GREEDY)["answer"]
    md.model.query(other, "what colour is this?", settings=GREEDY)
    assert "".join(interleaved) != alone


def test_look_alike_samples_in_bfloat16_as_moondream2(md: MoondreamBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    """moondream2 softmaxes its bfloat16 logits and cuts its nucleus in bfloat16, and draws from that: its
    probabilities round otherwise than the running batch's float32 ones (44146f1 kept 2636 of 51200 tokens of
    peaked logits at top_p 1). A look-alike drawing in float32 would hide the difference between the two loops."""
    inner = md.model.model
    drawn_from: list[torch.Tensor] = []
    draw = torch.multinomial
    monkeypatch.setattr(torch, "multinomial", lambda probs, *rest, **kw: drawn_from.append(probs) or draw(probs, 1))
    logits = torch.randn(1, inner.config.text.vocab_size, generator=torch.Generator().manual_seed(0))
    inner._pick(logits.to(torch.bfloat16), 1.0, 0.9)
    (probabilities,) = drawn_from
    assert probabilities.dtype == torch.bfloat16
    assert 0 < int((probabilities > 0).sum()) < logits.size(-1), "the nucleus is cut"


def test_look_alike_prompts_a_query_as_moondream2(md: MoondreamBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    """moondream2 (44146f1) puts the answer suffix at a query prompt's end twice."""
    inner = md.model.model
    prompts: list[list[int]] = []
    prefill_prompt = inner._prefill_prompt
    monkeypatch.setattr(
        inner,
        "_prefill_prompt",
        lambda tokens, *rest: prompts.append(tokens[0].tolist()) or prefill_prompt(tokens, *rest),
    )
    "".join(
        md.model.query(
            md.model.encode_image(fixture_image()), QUESTION, stream=True, settings={"max_tokens": 1, **GREEDY}
        )["answer"]
    )
    template = inner.config.tokenizer.templates["query"]
    assert prompts == [template["prefix"] + inner.tokenizer.encode(QUESTION).ids + template["suffix"] * 2]


def test_look_alike_tiles_frames_as_moondream2(md: MoondreamBackend) -> None:
    cut_crops = sys.modules[type(md.model.model).__module__].cut_crops
    vision = md.model.model.config.vision
    crops, tiling = cut_crops(Image.new("RGB", (640, 480)), vision)
    assert tiling == (2, 4) and len(crops) == 9  # resized to 1176 x 644, one global crop


# --- the backend ---------------------------------------------------------------------------------


def test_answers_are_greedy_by_default(md: MoondreamBackend, expected: dict[str, Any]) -> None:
    first = ask(md, question())
    again = ask(md, question(key="same-frame-encoded-again"))
    assert first.answer == again.answer == expected["answer"].strip()


def test_temperature_is_honoured(md: MoondreamBackend) -> None:
    answers = {ask(md, question(temperature=1.0, max_new_tokens=20)).answer for _ in range(5)}
    assert len(answers) > 1


def test_wave_batching_answers_frames_encoded_ahead_on_a_preparing_thread(
    moondream_like: MoondreamLike, expected: dict[str, Any]
) -> None:
    """moondream2 makes its KV cache at its first call, and writes into it in place. Made on a preparing thread
    (in inference mode), it is an inference tensor, which the worker's own loop may only write in that mode too:
    ``--batching wave --prepare encode`` failed every answer that way."""
    backend = load(moondream_like, ahead="encode")
    with ThreadPoolExecutor(1) as preparing:
        prepared = preparing.submit(backend.prepare, question()).result()
    assert ask(backend, prepared).answer == expected["answer"].strip()


def test_token_counts_are_the_models_own(md: MoondreamBackend, expected: dict[str, Any]) -> None:
    events = Events()
    result = ask(md, question(), events)
    inner = md.model.model
    template = inner.config.tokenizer.templates["query"]
    suffixes = 2 * len(template["suffix"])  # moondream2 appends it twice
    prompt = len(template["prefix"]) + len(inner.tokenizer.encode(QUESTION).ids) + suffixes
    image_prefix = 1 + (inner.config.vision.crop_size // inner.config.vision.enc_patch_size) ** 2
    assert result.tokens == expected["tokens"] > len(events.deltas)
    assert result.prompt_tokens == image_prefix + prompt
    assert result.finish_reason == "stop"


def test_an_answer_cut_at_max_new_tokens_says_length(md: MoondreamBackend, expected: dict[str, Any]) -> None:
    result = ask(md, question(max_new_tokens=5))
    assert (result.tokens, result.finish_reason) == (5, "length")
    assert result.answer == expected["answer"][:5].strip()


def test_cancel_stops_generation_at_the_next_token(md: MoondreamBackend) -> None:
    events = Events(cancel_after=1)
    md.generate([question()], events)
    assert events.results == [] and len(events.deltas) == 1
    assert md.meter.tokens <= len(events.deltas[0]) + 1, "no more than one token after the cancel"


def test_skills_return_geometry_inside_the_frame(md: MoondreamBackend) -> None:
    detect = ask(md, job("detect", "shape"))
    point = ask(md, job("point", "shape"))
    caption = ask(md, job("caption", length="short", max_new_tokens=8))
    assert detect.objects is not None and point.points is not None and caption.answer
    for box in detect.objects:
        assert 0 <= box["x_min"] < box["x_max"] <= 1 and 0 <= box["y_min"] < box["y_max"] <= 1, box
    for spot in point.points:
        assert 0 <= spot["x"] <= 1 and 0 <= spot["y"] <= 1, spot
    assert detect.tokens > 0 and detect.prompt_tokens > 0


@pytest.mark.parametrize(("task", "positions"), [("detect", 3), ("point", 2)])
@pytest.mark.parametrize("room", [3, 4, 8, 30])
def test_a_skill_near_the_contexts_end_looks_for_only_the_objects_that_fit(
    md: MoondreamBackend, task: str, positions: int, room: int
) -> None:
    """moondream2's detect (point) takes three (two) positions per object, up to 50 objects, and checks none of
    them against its context: an object's name that left room for the prompt but not for its objects failed the
    request (and, in company, every answer in the running batch)."""
    frame_and_template = ask(md, job(task, "x")).prompt_tokens  # the look-alike finds its 50 objects there
    result = ask(md, job(task, "x" * (1 + 2048 - frame_and_template - room)))  # ``room`` positions left
    found = result.objects if task == "detect" else result.points
    assert result.prompt_tokens == 2048 - room
    assert found is not None and len(found) == room // positions and result.tokens == positions * len(found)


def test_a_skill_with_no_room_for_one_object_is_too_long(md: MoondreamBackend) -> None:
    frame_and_template = ask(md, job("detect", "x")).prompt_tokens
    events = Events()
    md.generate([job("detect", "x" * (1 + 2048 - frame_and_template - 2))], events)
    assert events.results == [] and events.failures[0].code == Code.QUESTION_TOO_LONG


def test_a_question_too_long_in_a_wave_fails_alone(md: MoondreamBackend) -> None:
    """``--batching wave`` runs its jobs one after another through moondream2's own loop: one question too long
    for the context failed every other one in the wave, even those after it that never ran."""
    events = Events()
    wave = WaveDecoder(md, events)
    too_long = job("query", "why " * 600, image=fixture_image(), key="fixture-image")
    wave.join({0: question(max_new_tokens=6), 1: too_long, 2: question(max_new_tokens=4)})
    wave.step()
    assert {key: error.code for key, error in events.failures.items()} == {1: Code.QUESTION_TOO_LONG}
    assert [result.tokens for result in events.results] == [6, 4]
    assert not wave.rows()


def test_image_is_encoded_once_per_frame(md: MoondreamBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    inner = md.model.model
    calls: list[Image.Image] = []
    encode = inner.encode_image

    def counting(image: Any, *rest: Any) -> Any:
        if isinstance(image, Image.Image):  # the skills pass an encoding through encode_image too
            calls.append(image)
        return encode(image, *rest)

    monkeypatch.setattr(inner, "encode_image", counting)
    for task in ("query", "caption", "detect"):
        ask(md, job(task, "square", key="once", max_new_tokens=4))
    assert len(calls) == 1
    ask(md, job("query", "q", key="twice", max_new_tokens=4))
    assert len(calls) == 2


def test_info_reports_the_real_dtype_and_the_models_frame_size(md: MoondreamBackend) -> None:
    assert md.info.dtype == "bfloat16"
    assert md.info.image_size == md.info.input_size == 1145
    assert md.info.capabilities >= {"query", "caption", "detect", "point", "stream"}
    assert md.info.max_batch_size == 16  # answers decoded together (vlm/backends/moondream_rows.py)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_other_dtypes_work_and_are_reported(moondream_like: MoondreamLike, dtype: str) -> None:
    other = load(moondream_like, dtype=dtype)
    assert other.info.dtype == dtype
    assert {p.dtype for p in other.model.parameters()} == {getattr(torch, dtype)}
    own = load(moondream_like).model.model.text.freqs_cis
    assert torch.equal(other.model.model.text.freqs_cis, own), "moondream2's rotary table is float32 in every dtype"
    detect = ask(other, job("detect", "shape"))
    assert ask(other, question(max_new_tokens=6)).tokens == 6 and detect.objects is not None


@pytest.mark.parametrize(("has_units", "runs_in"), [(True, "bfloat16"), (False, "float32")])
def test_auto_dtype_on_a_cpu_is_its_own_only_where_the_cpu_multiplies_bfloat16(
    moondream_like: MoondreamLike, monkeypatch: pytest.MonkeyPatch, has_units: bool, runs_in: str
) -> None:
    monkeypatch.setattr(moondream, "cpu_multiplies_bfloat16", lambda: has_units)
    assert load(moondream_like, dtype="auto").info.dtype == runs_in


def test_frame_side_follows_moondream2s_tiling() -> None:
    # Worked out by hand from moondream2's select_tiling: 1145 x 644 (16:9) becomes 2 x 4 crops, 1176 x 644;
    # 1145 x 859 (4:3) 3 x 4, 1176 x 910; at 1176 x 662 a 16:9 frame would also take 3 x 4 and be stretched.
    assert frame_side(RealVision()) == 1145
    assert frame_side(RealVision(max_crops=4)) == 644
    assert frame_side(RealVision(max_crops=1)) == 378


def test_the_look_alike_hardly_enlarges_frames_of_that_side(md: MoondreamBackend) -> None:
    cut_crops = sys.modules[type(md.model.model).__module__].cut_crops
    vision = md.model.model.config.vision
    window = vision.crop_size - 2 * vision.overlap_margin * vision.enc_patch_size
    margin = 2 * vision.overlap_margin * vision.enc_patch_size
    side = md.info.image_size
    for width, height in [(side, round(side * 3 / 4)), (side, round(side * 9 / 16))]:
        rows, cols = cut_crops(Image.new("RGB", (width, height)), vision)[1]
        assert cols * window + margin <= 1.1 * width and rows * window + margin <= 1.1 * height, (rows, cols)


def test_fewer_crops_make_smaller_frames(moondream_like: MoondreamLike) -> None:
    few = load(moondream_like, max_crops=1)
    assert few.model.model.config.vision.max_crops == 1
    assert few.info.image_size == few.info.input_size == 378
    assert ask(few, question(max_new_tokens=4)).tokens == 4


# --- the real moondream2, where its weights are cached --------------------------------------------


def cached_moondream() -> tuple[str, str | None] | None:
    """moondream2 and its revision as the app would load it, if this machine has its weights (never on CI: no model
    hub here): a folder given in ``VLM_MOONDREAM_PATH``, or the pinned release in the Hugging Face cache (its
    tokenizer then pinned too)."""
    local = os.environ.get("VLM_MOONDREAM_PATH")
    if local:
        return local, None
    try:
        from huggingface_hub import snapshot_download

        snapshot_download(DEFAULT_MODEL, revision=DEFAULT_REVISION, local_files_only=True)
    except Exception:
        return None
    return DEFAULT_MODEL, DEFAULT_REVISION


@pytest.fixture(scope="module")
def real_moondream() -> Iterator[MoondreamBackend]:
    cached = cached_moondream()
    if cached is None:
        download = " && ".join(download_commands(DEFAULT_MODEL, DEFAULT_REVISION))
        pytest.skip(
            f"moondream2 is not in the HF cache (no model hub here); run `{download}`, or set VLM_MOONDREAM_PATH"
        )
    model, revision = cached
    yield MoondreamBackend.load(model, revision=revision, device="auto", dtype="auto")


def test_real_moondream2_answers_greedily_with_true_counts(real_moondream: MoondreamBackend) -> None:
    first = ask(real_moondream, job("query", "What colour is this image?", max_new_tokens=16))
    again = ask(real_moondream, job("query", "What colour is this image?", key="again", max_new_tokens=16))
    assert "red" in first.answer.lower() and first.answer == again.answer
    assert 0 < first.tokens <= 16 and first.prompt_tokens > 730
    own = torch.cuda.is_available() or moondream.cpu_multiplies_bfloat16()
    assert real_moondream.info.dtype == ("bfloat16" if own else "float32")
    assert real_moondream.info.image_size == 1145
