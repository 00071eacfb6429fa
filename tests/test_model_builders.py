"""The random-model builders share one path: built straight in the stored dtype on the chosen device."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText

from scripts.build_real_size_model import CONFIGS
from scripts.build_tiny_model import PROFILES
from scripts.synthetic_scenes import corpus
from scripts.vlm_factory import build_model, build_model_folder
from tests.server_process import REPO
from vlm.backends.transformers_backend import limit_tiles


def test_a_model_is_built_in_the_dtype_it_is_stored_in(tmp_path: Path) -> None:
    """The serving benchmark builds float16 on a GPU this way; on a CPU the same path runs here."""
    folder = build_model_folder(
        tmp_path, "idefics3", PROFILES["tiny"], corpus(), 0, can_stop=False, dtype="float16", device="cpu"
    )
    model = AutoModelForImageTextToText.from_pretrained(folder)
    assert {parameter.dtype for parameter in model.parameters()} == {torch.float16}
    assert torch.get_default_dtype() == torch.float32, "the builder leaves the default dtype as it found it"


@pytest.mark.parametrize(("name", "tile"), [("smolvlm-256m", 512), ("smolvlm-2.2b", 384)])
def test_real_size_processors_cut_a_camera_frame_as_the_published_ones_do(name: str, tile: int) -> None:
    """SmolVLM's preprocessor_config.json: longest side 2048 (2.2 B: 1536), tiles of 512 (384), so a 640x480
    frame is 4x3 tiles and one of the whole frame; the app's ``--max-crops`` caps that (1: one tile)."""
    frame = Image.new("RGB", (640, 480), "gray")
    with torch.device("meta"):  # the processor is what is checked; weights would take seconds for nothing
        _, processor = build_model("idefics3", CONFIGS[name], corpus(), 0, can_stop=False)
    for max_crops, tiles in ((0, 13), (4, 5), (1, 1)):
        if max_crops:
            assert limit_tiles(processor, max_crops)
        inputs = processor(images=[frame], text=["<image> what is this?"], return_tensors="pt")
        assert tuple(inputs["pixel_values"].shape) == (1, tiles, 3, tile, tile), max_crops
        image_token = processor.tokenizer.convert_tokens_to_ids("<image>")
        assert (inputs["input_ids"] == image_token).sum() == tiles * processor.image_seq_len


@pytest.mark.parametrize(
    ("package", "module", "flag", "path_edit"),
    [
        ("scripts", "build_tiny_model", "--profile", "sys.path"),
        ("bench", "serving", "--skip-large", "Path(__file__)"),
        ("bench", "moondream_cpu", "--dtype", "sys.path"),  # moondream2's code is loaded as a package of its own
    ],
)
def test_scripts_and_benchmarks_run_as_modules_of_their_package(
    package: str, module: str, flag: str, path_edit: str
) -> None:
    """``python -m PACKAGE.NAME`` is the documented form: imports are package-relative, no sys.path edits."""
    assert not [path.name for path in (REPO / package).glob("*.py") if path_edit in path.read_text()]
    command = [sys.executable, "-m", f"{package}.{module}", "--help"]
    shown = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0 and flag in shown.stdout, shown.stderr
