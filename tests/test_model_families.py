"""Families whose processors, tokenizers and templates differ from the Llama-based ones the other backend tests
build (Gemma 3 here; Qwen2-VL's processor files), and what the app must do about each: frames batched one list per
prompt, one BOS, a refusal at load where a model has no chat template or a library is missing, a frame size that is
a side, and a log line for what ``--max-crops`` and ``--prepare`` cannot do for a model."""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image
from transformers import (
    AutoModelForImageTextToText,
    AyaVisionProcessor,
    Glm4vImageProcessorPil,
    Qwen2VLConfig,
    Qwen2VLImageProcessorPil,
)
from transformers.models.deepseek_ocr2.image_processing_pil_deepseek_ocr2 import DeepseekOcr2ImageProcessorPil
from transformers.models.deepseek_ocr2.processing_deepseek_ocr2 import DeepseekOcr2Processor
from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil

from scripts.build_tiny_model import build_tiny_model
from scripts.synthetic_scenes import corpus
from scripts.vlm_factory import build_tokenizer, chat_template
from tests.test_transformers_backend import Events
from vlm.backends.base import Decoder, Job, WaveDecoder
from vlm.backends.load_failure import explain_load_failure
from vlm.backends.registry import load_backend
from vlm.backends.transformers_backend import (
    TransformersBackend,
    _processor_input_size,
    checked_chat_template,
    limit_tiles,
)
from vlm.config import parse_settings
from vlm.errors import ModelLoadError

FRAMES = [Image.new("RGB", (320, 240), color) for color in ("red", "blue", "green")]
CPU_TORCHVISION = "pip install torchvision --index-url https://download.pytorch.org/whl/cpu"


@pytest.fixture(scope="module")
def gemma3_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Gemma 3: its processor, a tokenizer that adds BOS and a template that writes one too."""
    return build_tiny_model(tmp_path_factory.mktemp("gemma3"), arch="gemma3")


@pytest.fixture(scope="module")
def gemma3(gemma3_folder: Path) -> TransformersBackend:
    return TransformersBackend.load(str(gemma3_folder), revision=None, device="cpu", dtype="float32")


def framed(question: str, frame: int, tokens: int = 8) -> Job:
    return Job(task="query", image=FRAMES[frame], image_key=str(frame), text=question, max_new_tokens=tokens)


def answered(decoder: Decoder, events: Events, work: list[Job]) -> list[str]:
    """Each job's answer, the jobs joining ``decoder`` at once as the scheduler's worker joins a batch."""
    decoder.join(dict(enumerate(work)))
    while decoder.rows():
        decoder.step()
    return [events.results[row].answer for row in range(len(work))]


@pytest.mark.parametrize("loop", ["continuous", "wave"])
def test_gemma3_frames_asked_about_at_once_answer_as_each_alone(gemma3: TransformersBackend, loop: str) -> None:
    """Gemma 3's processor reads a flat list of frames as one prompt with all of them: three requests at once
    failed together. Each prompt gets its own list, and each answer is the one it gets alone."""

    def decoder(events: Events) -> Decoder:
        return gemma3.decoder(events) if loop == "continuous" else WaveDecoder(gemma3, events)

    work = [framed("what shape is this?", frame) for frame in range(3)]
    alone = [answered(decoder(events := Events(1)), events, [job])[0] for job in work]
    together = answered(decoder(events := Events(3)), events, work)
    assert together == alone
    assert len(set(alone)) > 1, "the frames differ, so do the answers: the model sees them"


def test_gemma3_prompts_are_the_processors_own_and_answer_as_its_generate(gemma3: TransformersBackend) -> None:
    """Gemma's template writes BOS and its tokenizer adds one: the prompt must begin with one, as transformers'
    own ``apply_chat_template(tokenize=True)`` makes it, and answer as the model's ``generate`` does on that."""
    job = framed("what shape is this?", 0)
    messages = [
        {"role": "user", "content": [{"type": "image", "image": job.image}, {"type": "text", "text": job.text}]}
    ]
    own = gemma3.processor.apply_chat_template(
        messages, tokenize=True, return_dict=True, add_generation_prompt=True, return_tensors="pt"
    )
    made = gemma3.prepare(job).prepared.inputs
    assert made["input_ids"].tolist() == own["input_ids"].tolist()
    assert made["input_ids"][0, :2].tolist().count(gemma3.tokenizer.bos_token_id) == 1
    with torch.inference_mode():
        out = gemma3.model.generate(**own, max_new_tokens=job.max_new_tokens, do_sample=False)
    expected = gemma3.tokenizer.decode(out[0, own["input_ids"].shape[1] :], skip_special_tokens=True).strip()
    got = answered(WaveDecoder(gemma3, events := Events(1)), events, [job])
    assert got == [expected]


def test_a_model_without_a_chat_template_is_refused_at_load(tiny_model: Path, tmp_path: Path) -> None:
    """PaliGemma's checkpoints have no chat template (they take task prefixes): the app loaded one and then
    failed every request. Without a template anywhere the load fails and says why; a template the tokenizer
    alone keeps (older checkpoints) is used."""
    folder = Path(shutil.copytree(tiny_model, tmp_path / "no-template"))
    template = (folder / "chat_template.jinja").read_text()
    (folder / "chat_template.jinja").unlink()
    with pytest.raises(ModelLoadError) as refused:
        load_backend(parse_settings(["--model", str(folder), "--device", "cpu"]))
    assert "neither its processor nor its tokenizer has one" in str(refused.value) and "PaliGemma" in str(refused.value)
    settings = parse_settings(["--model", str(folder)])
    assert explain_load_failure(settings, refused.value) == str(refused.value)

    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**tokenizer_config, "chat_template": template}))
    loaded = TransformersBackend.load(str(folder), revision=None, device="cpu", dtype="float32")
    original = TransformersBackend.load(str(tiny_model), revision=None, device="cpu", dtype="float32")
    job = framed("what shape is this?", 0)
    assert loaded.prompt_for(job) == original.prompt_for(job)


TEXT_ONLY_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] | upper }}: {{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


def test_a_tokenizer_template_that_cannot_place_a_frame_is_refused_at_load(tiny_model: Path, tmp_path: Path) -> None:
    """An older checkpoint's tokenizer often keeps only its language model's text template, which writes the content
    list as text with no image token: the model loaded and then failed every request with a frame."""
    folder = Path(shutil.copytree(tiny_model, tmp_path / "text-only"))
    (folder / "chat_template.jinja").unlink()
    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**tokenizer_config, "chat_template": TEXT_ONLY_TEMPLATE}))
    with pytest.raises(ModelLoadError) as refused:
        TransformersBackend.load(str(folder), revision=None, device="cpu", dtype="float32")
    assert "its tokenizer's, the only one it has, does not place a frame in the prompt" in str(refused.value)
    assert "use a chat (instruct) model" in str(refused.value)


def qwen2_vl_processor_files(folder: Path) -> Path:
    """A folder with what a Qwen2-VL checkpoint's processor loads from (its config, tokenizer, image processor,
    and the processor class, whose video processor needs torchvision) and no weights: the load stops before."""
    image_tokens = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
    tokenizer = build_tokenizer(corpus(), image_tokens)
    tokenizer.save_pretrained(folder)
    Qwen2VLImageProcessorPil().save_pretrained(folder)
    (folder / "processor_config.json").write_text(json.dumps({"processor_class": "Qwen2VLProcessor"}))
    text = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64}
    vision = {"depth": 1, "embed_dim": 32, "hidden_size": 32, "num_heads": 2}
    Qwen2VLConfig(text_config={**text, "vocab_size": len(tokenizer)}, vision_config=vision).save_pretrained(folder)
    return folder


@pytest.mark.skipif(importlib.util.find_spec("torchvision") is not None, reason="torchvision is installed here")
def test_a_processor_that_needs_torchvision_says_how_to_install_it_not_to_download_the_model(tmp_path: Path) -> None:
    """transformers 5.24 needs torchvision for every processor with a video processor (Qwen2-VL, SmolVLM2,
    InternVL...): the folder is all here, so the advice is the pip command, from torch's own index."""
    settings = parse_settings(["--model", str(qwen2_vl_processor_files(tmp_path)), "--device", "cpu"])
    with pytest.raises(ImportError) as failed:
        load_backend(settings)
    explained = explain_load_failure(settings, failed.value)
    assert "needs the torchvision library" in explained and CPU_TORCHVISION in explained
    assert "hf download" not in explained and "offline" not in explained


def test_a_processor_that_needs_num2words_says_how_to_install_it() -> None:
    """SmolVLM2's processor's own words (transformers 5.24, processing_smolvlm.py)."""
    error = ImportError(
        "Package `num2words` is required to run SmolVLM processor. Install it with `pip install num2words`."
    )
    explained = explain_load_failure(parse_settings(["--model", "HuggingFaceTB/SmolVLM2-256M-Video-Instruct"]), error)
    assert "needs the num2words library" in explained and "`pip install num2words`" in explained
    assert "hf download" not in explained


@pytest.mark.parametrize(
    ("image_processor", "budget"),
    [
        (Qwen2VLImageProcessorPil(), 28 * 28 * 1280),  # Qwen2-VL / Qwen2.5-VL: {shortest_edge: 3136, longest_edge: ...}
        (Qwen2VLImageProcessorPil(size={"shortest_edge": 65536, "longest_edge": 16777216}, patch_size=16), 16777216),
        (Glm4vImageProcessorPil(), 11760000),
    ],
)
def test_a_pixel_budget_is_not_taken_for_a_side(image_processor: object, budget: int) -> None:
    """Qwen2-VL's family and GLM-4V keep a frame's pixel count between two budgets stored as ``size``'s edges:
    /api/info showed 1003520 px as the side to send. The side is now a 2:1 frame's within the budget."""
    side = _processor_input_size(SimpleNamespace(image_processor=image_processor))
    assert side == math.isqrt(2 * budget) and side * (side // 2) <= budget


def aya_vision_processor() -> AyaVisionProcessor:
    """Aya Vision's processor (GotOcr2's tiles) with tiles of 28 px: a 640x480 frame is 4x3 tiles and a thumbnail.
    Its image processor holds what a checkpoint's preprocessor_config.json serializes, GotOcr2's own
    ``crop_to_patches: false`` (InternVL3-hf's files do): the processor class turns tiling on per call."""
    tokens = ("<image>", "<|START_OF_IMG|>", "<|END_OF_IMG|>", "<|IMG_PATCH|>", "<|IMG_LINE_BREAK|>")
    image_processor = GotOcr2ImageProcessorPil(crop_to_patches=False, max_patches=12, size={"height": 28, "width": 28})
    return AyaVisionProcessor(
        image_processor,
        build_tokenizer(corpus(), tokens),
        patch_size=14,
        img_size=28,
        chat_template=chat_template("<image>"),
    )


def deepseek_ocr2_processor() -> DeepseekOcr2Processor:
    """DeepSeek-OCR2's processor, whose class pins 2 to 6 tiles of 768 px per call beside a whole-frame view."""
    return DeepseekOcr2Processor(
        DeepseekOcr2ImageProcessorPil(), build_tokenizer(corpus(), ("<image>",)), chat_template=chat_template("<image>")
    )


def test_max_crops_caps_internvl_and_aya_visions_tiles() -> None:
    """GotOcr2's ``max_patches`` counts the tiles of its grid, and a thumbnail comes with more than one. The cap was
    set on the image processor, whose ``crop_to_patches: false`` said "not implemented" for a processor that tiles."""
    frame = Image.new("RGB", (640, 480), "red")
    tiles = {}
    for max_crops in (0, 4, 1):
        processor = aya_vision_processor()
        assert not max_crops or limit_tiles(processor, max_crops)
        inputs = processor(images=[[frame]], text=["<image> hi"], return_tensors="pt")
        tiles[max_crops] = len(inputs["pixel_values"])
        patch = processor.tokenizer.convert_tokens_to_ids("<|IMG_PATCH|>")
        assert (inputs["input_ids"] == patch).sum() == tiles[max_crops] * 4, "the prompt has room for every tile"
    assert tiles == {0: 13, 4: 5, 1: 1}


def test_max_crops_caps_deepseek_ocr2s_tiles_and_says_when_it_goes_below_the_models_minimum(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """DeepSeek-OCR2's processor passes ``min_patches: 2, max_patches: 6`` with every call: the cap, set on the image
    processor's attributes, said it worked and the frame was still cut into 6 tiles."""
    frame = Image.new("RGB", (1280, 960), "red")
    tiles = {}
    for max_crops in (0, 4, 1):
        processor = deepseek_ocr2_processor()
        assert not max_crops or limit_tiles(processor, max_crops)
        inputs = processor(images=[frame], text=["<image> hi"], return_tensors="pt")
        tiles[max_crops] = len(inputs["pixel_values_local"])
    assert tiles == {0: 6, 4: 4, 1: 1}
    assert "--max-crops 1 is below the 2 tiles DeepseekOcr2Processor cuts a frame into at least" in caplog.text


class PinnedTilesProcessor(AyaVisionProcessor):
    """A processor that decides its tiles past anything the app can set (as a custom processor's call may)."""

    def _merge_kwargs(self, *args: object, **kwargs: object) -> dict[str, dict]:
        merged = super()._merge_kwargs(*args, **kwargs)
        merged["images_kwargs"] |= {"crop_to_patches": True, "max_patches": 12, "min_patches": 1}
        return merged


def test_max_crops_is_checked_on_the_probe_frame_and_a_cap_that_does_not_take_is_undone() -> None:
    """``limit_tiles`` counts the probe frame's tiles after capping: a processor still cutting 13 is reported as not
    capped, and left with the per-call settings it had."""
    aya = aya_vision_processor()
    processor = PinnedTilesProcessor(
        aya.image_processor, aya.tokenizer, patch_size=14, img_size=28, chat_template=aya.chat_template
    )
    assert not limit_tiles(processor, 1)
    assert "images_kwargs" not in vars(processor) and processor.images_kwargs == {"crop_to_patches": True}


def test_max_crops_says_it_is_not_implemented_for_a_processor_it_cannot_cap(
    gemma3_folder: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """It said Gemma 3's, LLaVA-NeXT's and others' processors do not cut frames into tiles; several do."""
    caplog.set_level(logging.INFO)
    TransformersBackend.load(str(gemma3_folder), revision=None, device="cpu", dtype="float32", max_crops=1)
    assert "--max-crops is not implemented for" in caplog.text and "Gemma3ImageProcessor" in caplog.text
    assert "does not cut frames into tiles" not in caplog.text


def test_prepare_says_at_load_what_this_model_cannot_do_ahead(
    gemma3_folder: Path, tiny_model: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Gemma 3's decoder is not stepped: its prompts cannot be prefilled ahead and it answers in waves, both said
    once at load. Its frames, one row each, are encoded ahead without a word; so are the tiny LLaVA's, which is
    stepped and says nothing either."""
    caplog.set_level(logging.INFO)
    TransformersBackend.load(str(gemma3_folder), revision=None, device="cpu", dtype="float32", ahead="prefill")
    assert "--prepare prefill: " in caplog.text and "cannot be prefilled ahead" in caplog.text
    assert "gemma3_text" in caplog.text and "is answered in waves" in caplog.text
    assert "cannot be encoded ahead" not in caplog.text
    caplog.clear()
    TransformersBackend.load(str(tiny_model), revision=None, device="cpu", dtype="float32", ahead="prefill")
    assert "ahead" not in caplog.text and "waves" not in caplog.text


def test_prepare_encode_says_at_load_when_a_models_frames_cannot_be_encoded_ahead(
    tiny_model: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """InternVL's and Aya Vision's processor gives the vision tower a row per tile, Qwen2-VL's flat patches: the
    frames cannot be encoded (or cached) one by one, and ``--prepare encode`` said nothing. Aya Vision's real
    processor beside the tiny LLaVA's weights, which the check at load never runs."""
    model = AutoModelForImageTextToText.from_pretrained(tiny_model)
    processor = aya_vision_processor()
    template = checked_chat_template(processor, "tiles")
    TransformersBackend(model, processor, model_id="tiles", chat_template=template, ahead="encode")
    assert "--prepare encode: tiles's processor" in caplog.text and "cannot be encoded ahead" in caplog.text
