"""The serving benchmark reads what the running batch did from the app's own ``/metrics``, by the names it exports."""

from __future__ import annotations

import platform
from pathlib import Path

import pytest

from bench import step_anatomy
from bench.common import camera_frame, cpu_name
from bench.serving import BatchActivity, activity_section, batch_activity, pick_device, raw_generate
from tests.frames import jpeg_data_url
from tests.server_process import serving
from tests.socket_client import RecordingClient
from vlm.backends import decode_attention
from vlm.backends.transformers_backend import TransformersBackend

CPUINFO = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""


def test_the_running_batchs_steps_joins_and_preparations_are_read_from_the_live_app(tiny_model: Path) -> None:
    with serving(tiny_model, "--prepare", "thread", max_new_tokens=8) as app:
        before = batch_activity(app.url)
        clients = [RecordingClient(app.url) for _ in range(3)]
        try:
            for number, client in enumerate(clients):
                client.sio.emit("query", {"id": f"q{number}", "question": "what is it?", "image": jpeg_data_url()})
            assert all(client.final(f"q{number}")[0] == "response" for number, client in enumerate(clients))
        finally:
            for client in clients:
                client.close()
        done = batch_activity(app.url) - before
    assert done.joined == 3 and 1 <= done.joins <= 3, done
    assert done.steps >= 1 and done.rows >= done.steps and done.step_s > 0 and done.join_s > 0, done
    assert done.prepares == 3 and done.prepare_s > 0, "each request was prepared on a preparing thread"
    table = activity_section([("this app", done, 10.0)])
    assert "| this app | 10 |" in table and f"| {done.steps:.0f} |" in table


@pytest.mark.unit
def test_a_wave_of_generate_calls_shows_no_step_or_join_times() -> None:
    table = activity_section([("wave", BatchActivity(steps=4, rows=40), 10.0)])
    assert "| wave | 10 | 4 | 10.0 | — | — | — | — | — | — | — |" in table


@pytest.mark.unit
@pytest.mark.skipif("model name" not in CPUINFO, reason="no CPU model name reported (not Linux)")
def test_benchmarks_name_the_machine_by_its_cpu_model() -> None:
    assert cpu_name() != platform.machine() and f": {cpu_name()}\n" in CPUINFO


def test_raw_generate_times_every_batch_on_a_frame_it_has_not_encoded(slow_model: Path) -> None:
    """The GPU run calls this first: an API it leans on, gone, costs a device loan (FrameCache.clear did)."""
    raw = raw_generate(slow_model, pick_device("cpu"), "float32", camera_frame(), tokens=4, batches=[1, 2])
    assert set(raw.seconds) == set(raw.step_ms) == {1, 2} and all(ms > 0 for ms in raw.step_ms.values()), raw
    assert raw.prepare_ms > 0 and raw.prepared_per_s, raw


def test_the_step_anatomy_times_steps_and_a_join_and_names_the_operations(tiny_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "anatomy.md"
    measured = ["--batches", "1,3", "--calls", "2", "--attention", "eager"]
    step_anatomy.main(["--device", "cpu", "--model", str(tiny_model), *measured, "--out", str(out), "--no-readme"])
    rows = [line for line in out.read_text().splitlines() if line.startswith("| ") and "---" not in line][1:]
    calls = [row.split(" | ")[:2] for row in rows]
    assert calls == [
        ["| decode step", "1"],
        ["| decode step", "3"],
        ["| decode step, eager attention", "1"],
        ["| decode step, eager attention", "3"],
        ["| decode step, joined at once (no padding)", "3"],
        ["| a newcomer's join", "2"],
    ]
    for row in rows:
        cells = row.split(" | ")
        assert float(cells[2]) > 0 and float(cells[3]) > 0, "wall time and the operations' CPU time"
        assert cells[4:8] == ["—"] * 4 and cells[9] == "— |", "no GPU columns on a CPU"
        assert "`aten::" in cells[8], "the operations that took the CPU's time are named"


def test_kernel_names_lose_their_template_arguments_and_parameters() -> None:
    """Names as the profiler gives them for CUDA kernels (of PyTorch's elementwise ops, its memory-efficient
    attention and cuBLAS)."""
    assert step_anatomy.kernel_name(
        "void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<c10::Half>, "
        "std::array<char*, 3ul> >(int, at::native::CUDAFunctor_add<c10::Half>, std::array<char*, 3ul>)"
    ) == ("at::native::vectorized_elementwise_kernel")
    assert step_anatomy.kernel_name("fmha_cutlassF_f16_aligned_64x64_rf_sm80(PyTorchMemEffAttention::Params)") == (
        "fmha_cutlassF_f16_aligned_64x64_rf_sm80"
    )
    assert step_anatomy.kernel_name("sm90_xmma_gemm_f16f16_f16f32_f32_tn_n_tilesize64x64x64") == (
        "sm90_xmma_gemm_f16f16_f16f32_f32_tn_n_tilesize64x64x64"
    )


def test_stepping_under_another_attention_gives_each_part_its_own_back(tiny_model: Path) -> None:
    """On a CPU the app's text decoder steps under an attention of its own; restoring the model's top-level one
    (plain SDPA) replaced it, and the anatomy's later rows were measured off the app's path."""
    backend = TransformersBackend.load(str(tiny_model), revision=None, device="cpu", dtype="float32")
    text = backend.model.config.get_text_config()
    assert text._attn_implementation == decode_attention.NAME
    with step_anatomy.stepping_under(backend.model, "eager"):
        assert text._attn_implementation == "eager"
    assert text._attn_implementation == decode_attention.NAME
    assert backend.model.config._attn_implementation == "sdpa"
