"""``--dtype auto``: which dtype a model runs in, by device, by the dtype its weights were saved in, and by
whether the CPU multiplies bfloat16 in hardware (this machine's own answer is checked against its flags)."""

from __future__ import annotations

import platform
from pathlib import Path

import pytest
import torch
from PIL import Image

from scripts.build_tiny_model import PROFILES
from scripts.synthetic_scenes import corpus
from scripts.vlm_factory import build_model_folder
from tests.test_transformers_backend import answered_alone
from vlm.backends import torch_device
from vlm.backends.base import Job
from vlm.backends.torch_device import cpu_multiplies_bfloat16, resolve_dtype
from vlm.backends.transformers_backend import TransformersBackend

BF16, FP16, FP32 = torch.bfloat16, torch.float16, torch.float32


@pytest.mark.unit
@pytest.mark.parametrize(
    ("asked", "device", "stored", "has_units", "runs_in"),
    [
        ("auto", "cuda", FP32, False, FP16),
        ("auto", "cuda", BF16, True, FP16),
        ("auto", "cpu", FP32, True, FP32),  # saved in float32: kept exact
        ("auto", "cpu", None, True, FP32),  # no dtype declared: taken as float32
        ("auto", "cpu", BF16, True, BF16),
        ("auto", "cpu", FP16, True, BF16),  # a CPU's float16 matrix products are far slower than bfloat16's
        ("auto", "cpu", BF16, False, FP32),  # emulated bfloat16 is many times slower than float32
        ("auto", "cpu", FP16, False, FP32),
        ("bfloat16", "cpu", FP32, False, BF16),  # asked for by name: what was asked
        ("float32", "cuda", BF16, True, FP32),
    ],
)
def test_auto_dtype_follows_the_device_the_saved_weights_and_the_cpus_units(
    monkeypatch: pytest.MonkeyPatch,
    asked: str,
    device: str,
    stored: torch.dtype | None,
    has_units: bool,
    runs_in: torch.dtype,
) -> None:
    monkeypatch.setattr(torch_device, "cpu_multiplies_bfloat16", lambda: has_units)
    assert resolve_dtype(asked, device, stored) == runs_in


@pytest.mark.unit
@pytest.mark.skipif(
    platform.machine() not in ("x86_64", "AMD64") or not Path("/proc/cpuinfo").exists(), reason="x86 Linux flags"
)
def test_bfloat16_units_are_detected_as_the_cpu_reports_them() -> None:
    flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    reported = {"avx512_bf16", "amx_bf16"} & set(flags.split(":", 1)[1].split())
    assert cpu_multiplies_bfloat16() == bool(reported)


@pytest.mark.parametrize("has_units", [True, False])
def test_a_model_saved_in_bfloat16_loads_and_answers_in_the_dtype_auto_picks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, has_units: bool
) -> None:
    monkeypatch.setattr(torch_device, "cpu_multiplies_bfloat16", lambda: has_units)
    folder = build_model_folder(
        tmp_path, "idefics3", PROFILES["tiny"], corpus(), 0, can_stop=True, dtype="bfloat16", device="cpu"
    )
    backend = TransformersBackend.load(str(folder), revision=None, device="cpu", dtype="auto")
    expected = BF16 if has_units else FP32
    assert {parameter.dtype for parameter in backend.model.parameters()} == {expected}
    assert backend.info.dtype == str(expected).removeprefix("torch.")
    job = Job(task="query", image=Image.new("RGB", (320, 240), "red"), image_key="k", text="hi", max_new_tokens=3)
    assert backend.prepare(job).prepared.inputs["pixel_values"].dtype == expected, "frames reach the model in its dtype"
    assert answered_alone(backend, job).tokens == 3
