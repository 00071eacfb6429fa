"""Where the running batch's time goes: decode steps and a newcomer's join, under torch's profiler.

    python -m bench.step_anatomy                 # this machine
    python -m bench.step_anatomy --device cuda   # a CUDA machine: how much of a step the GPU is busy

On the H100 a decode step of the real-size SmolVLM-256M took 35 ms against a 0.1-ms bandwidth bound:
the CPU launching kernels, not the GPU running them, seems to set the pace. This measures it before
anything is built on it (CUDA graphs replay a step's kernels with one launch): for steps at 1 and 16
rows and for one newcomer joining 15 running rows, the wall time (timed without the profiler), the
time the GPU spends in kernels and the kernels the CPU launched (on a GPU), and the operations that
took the CPU's own time; and 16 rows joined at once, unpadded, as ``generate``'s batch is (on the
H200 a padded 16-row step took twice a one-row step; ``generate``'s did not). The model is
``bench.serving``'s SmolVLM-256M (built when missing) or ``--model``; the batch is the app's
``StepDecoder`` on requests prepared beforehand, as a GPU's preparing threads prepare them. Results
go to ``--out`` and into the README between this device's markers. Nothing here is a test.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from itertools import count
from pathlib import Path
from typing import Any

from torch.profiler import ProfilerActivity, profile

from bench.common import markdown, next_camera_frame, write_between_markers
from bench.serving import (
    MODELS,
    QUESTION,
    README,
    SMALL,
    Device,
    frame_image,
    pick_device,
    real_size_folder,
    tiles_line,
)
from tests.server_process import REPO
from vlm.backends.base import Job, Result
from vlm.backends.step_decoder import StepDecoder, can_step
from vlm.backends.transformers_backend import TransformersBackend
from vlm.errors import VlmError

# What a profile lists besides the work: its own bookkeeping.
BOOKKEEPING = ("ProfilerStep", "[memory]")
TOP_OPERATIONS = 4


@dataclass(frozen=True)
class Anatomy:
    """One kind of call: its median wall time, and per call the CPU's own time in torch's operations, the GPU's
    time in kernels and the kernels launched (None on a CPU); the host operations that took most of the CPU's
    own time, with their shares of it, and the kernels that took most of the GPU's (none on a CPU). Wall time
    past the operations' is Python's (or waiting)."""

    label: str
    rows: int
    wall_ms: float
    host_ms: float
    busy_ms: float | None
    launches: float | None
    launch_us: float | None  # the CPU's own time per ``cudaLaunchKernel`` call
    top: list[tuple[str, float]]
    kernels: list[tuple[str, float]]


def kernel_name(key: str) -> str:
    """A CUDA kernel's name without its template arguments and parameter list, which run to hundreds of characters."""
    name = key.removeprefix("void ")
    return name[: min((at for at in (name.find("<"), name.find("(")) if at > 0), default=len(name))]


class Rows:
    """Row events: nothing is read but which rows the benchmark cancelled (so a newcomer can leave again)."""

    def __init__(self) -> None:
        self.ended: set[int] = set()

    def delta(self, index: int, text: str) -> None:
        pass

    def done(self, index: int, result: Result) -> None:
        pass

    def failed(self, index: int, error: VlmError) -> None:
        pass

    def cancelled(self, index: int) -> bool:
        return index in self.ended


def anatomy(
    device: Device, label: str, rows: int, work: Callable[[], None], between: Callable[[], None], calls: int
) -> Anatomy:
    """``calls`` calls of ``work`` timed, then as many under the profiler; ``between`` runs untimed before each."""
    walls = []
    for _ in range(calls):
        between()
        device.sync()
        started = time.perf_counter()
        work()
        device.sync()
        walls.append((time.perf_counter() - started) * 1000)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.name == "cuda" else [])
    host: Counter[str] = Counter()
    kernels: Counter[str] = Counter()
    kernel_us = launches = launching_us = 0.0
    for _ in range(calls):
        between()
        with profile(activities=activities) as run:
            work()
            device.sync()
        for entry in run.key_averages():
            if entry.key.startswith(BOOKKEEPING):
                continue
            host[entry.key] += entry.self_cpu_time_total
            kernel_us += entry.self_device_time_total
            if entry.self_device_time_total > 0:
                kernels[kernel_name(entry.key)] += entry.self_device_time_total
            if entry.key.startswith("cudaLaunchKernel"):
                launches += entry.count
                launching_us += entry.self_cpu_time_total
    on_gpu = device.name == "cuda"
    total = sum(host.values()) or 1.0
    return Anatomy(
        label,
        rows,
        statistics.median(walls),
        total / 1000 / calls,
        kernel_us / 1000 / calls if on_gpu else None,
        launches / calls if on_gpu else None,
        launching_us / launches if on_gpu and launches else None,
        [(name, spent / total) for name, spent in host.most_common(TOP_OPERATIONS)],
        [(name, spent / kernel_us) for name, spent in kernels.most_common(TOP_OPERATIONS)],
    )


@contextmanager
def stepping_under(model: Any, attention: str) -> Iterator[None]:
    """``model`` under transformers' ``attention`` while the block runs, then each of its parts under its own
    again: the app gives a CPU's text decoder an attention of its own (vlm/backends/decode_attention.py), which
    restoring the model's top-level one would replace."""
    config = model.config
    own = {"": config._attn_implementation} | {
        name: getattr(config, name)._attn_implementation for name in config.sub_configs
    }
    model.set_attn_implementation(attention)
    try:
        yield
    finally:
        model.set_attn_implementation(own)


def measure(
    backend: TransformersBackend, device: Device, batches: list[int], calls: int, attentions: list[str]
) -> list[Anatomy]:
    """Decode steps at each batch size, the rows joined a step apart as in a live batch, then the largest batch
    joined at once (unpadded), then a newcomer's join into a batch one short of the largest. The steps are
    measured again under each of ``attentions`` (transformers' attention implementations) after the model's own:
    a padded batch takes the masked path, which a GPU may run very differently."""
    events = Rows()
    decoder = StepDecoder(backend.model, backend.tokenizer, backend.eos_ids, backend.model_inputs, events)
    keys = count()

    def requests(number: int) -> dict[int, Job]:
        """Questions about frames nobody asked about before, prepared as a preparing thread prepares them."""
        prepared = {}
        for key in [next(keys) for _ in range(number)]:
            image = frame_image(next_camera_frame(), backend.info.decode_size)
            job = Job(task="query", image=image, image_key=f"anatomy-{key}", text=QUESTION, max_new_tokens=1 << 20)
            prepared[key] = backend.prepare(job)
        return prepared

    def fill(rows: int) -> None:
        """A batch of ``rows`` as a live one fills: each joins a step after the one before, so rows are padded."""
        decoder.clear()
        for key, job in requests(rows).items():
            decoder.join({key: job})
            decoder.step()

    def warmed_steps(label: str, rows: int) -> Anatomy:
        for _ in range(3):  # first calls build kernels and plans
            decoder.step()
        return anatomy(device, label, rows, decoder.step, lambda: None, calls)

    results = []
    for rows in batches:
        fill(rows)
        results.append(warmed_steps("decode step", rows))
    for attention in attentions:
        with stepping_under(backend.model, attention):
            for rows in batches:
                fill(rows)
                results.append(warmed_steps(f"decode step, {attention} attention", rows))
    if max(batches) > 1:  # the same rows prefilled together, as generate's batch is: one length, no padding
        decoder.clear()
        decoder.join(requests(max(batches)))
        results.append(warmed_steps("decode step, joined at once (no padding)", max(batches)))
    fill(max(batches) - 1)
    running = set(decoder.rows())
    newcomers = [requests(1) for _ in range(2 * calls + 1)]

    def newcomer_left() -> None:
        """The last newcomer leaves and the batch takes a step: back to its size for the next join."""
        events.ended.update(decoder.rows() - running)
        decoder.step()

    decoder.join(newcomers.pop())  # the first join pays for first-call costs
    results.append(
        anatomy(
            device, "a newcomer's join", max(batches) - 1, lambda: decoder.join(newcomers.pop()), newcomer_left, calls
        )
    )
    return results


def report(device: Device, model: str, results: list[Anatomy]) -> str:
    on_gpu = device.name == "cuda"
    rows = []
    for result in results:
        busy = "—" if result.busy_ms is None else f"{result.busy_ms:.1f}"
        share = "—" if result.busy_ms is None else f"{result.busy_ms / result.wall_ms:.0%}"
        launches = "—" if result.launches is None else f"{result.launches:.0f}"
        launch_us = "—" if result.launch_us is None else f"{result.launch_us:.1f}"
        top = ", ".join(f"`{name}` {part:.0%}" for name, part in result.top)
        kernels = ", ".join(f"`{name}` {part:.0%}" for name, part in result.kernels) or "—"
        rows.append(
            [
                result.label,
                str(result.rows),
                f"{result.wall_ms:.1f}",
                f"{result.host_ms:.1f}",
                busy,
                share,
                launches,
                launch_us,
                top,
                kernels,
            ]
        )
    table = markdown(
        rows,
        [
            "call",
            "rows",
            "wall ms",
            "CPU in operations ms",
            "GPU in kernels ms",
            "GPU busy",
            "kernels launched",
            "CPU µs / launch",
            "the CPU's own time, most first",
            "the GPU's time in kernels, most first",
        ],
    )
    reading = (
        "Where the GPU is busy for a small share of a step, the CPU's launching is the step's pace, and replaying "
        "the step's kernels as one CUDA graph would bring it towards the kernels' own time."
        if on_gpu
        else "On a CPU the operations run where they are launched: their shares are where a step's time goes."
    )
    return (
        f"Device: {device.label}. Model: {model}, {tiles_line(device.max_crops)}. The app's `StepDecoder` on "
        "requests prepared beforehand, each joining a step after the one before, as in a live batch (so rows are "
        "padded), except the rows joined at once; wall time is the median of calls timed without the profiler; "
        "the other "
        "columns are per call, from as many calls under torch's profiler (its `key_averages`: the CPU's own "
        "time per operation, kernel time on the device by kernel, `cudaLaunchKernel` calls; the profiler slows the "
        "operations, and wall time past theirs is Python's or waiting). A join is a newcomer's "
        f"prefill (its frame through the vision tower, its prompt through the decoder) and its cache appended "
        f"to the running rows'.\n\n{table}\n\n{reading}\n"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--models", type=Path, default=MODELS, help="where bench.serving builds its models")
    parser.add_argument("--model", type=Path, help=f"a model folder to measure instead of {SMALL}")
    parser.add_argument("--max-crops", type=int, help="the app's --max-crops (default: as bench.serving's)")
    parser.add_argument("--batches", default="1,16", help="rows per decode step, comma-separated")
    parser.add_argument("--calls", type=int, default=20, help="calls timed, and as many profiled, of each kind")
    parser.add_argument(
        "--attention",
        default="",
        help="transformers attention implementations to step under too, comma-separated (e.g. eager)",
    )
    parser.add_argument("--out", type=Path, help="results file (default: bench/step-anatomy-<device>.md)")
    parser.add_argument("--no-readme", action="store_true")
    args = parser.parse_args(argv)

    device = pick_device(args.device)
    if args.max_crops is not None:
        device = replace(device, max_crops=args.max_crops)
    folder = args.model or real_size_folder(args.models, SMALL, device)
    backend = TransformersBackend.load(
        str(folder),
        revision=None,
        device=device.name,
        dtype="auto" if args.model else device.dtypes[SMALL],
        max_crops=device.max_crops,
    )
    if not can_step(backend.model):
        parser.error(f"{folder}: the app does not step this model one token at a time (see can_step)")
    batches = sorted({int(rows) for rows in args.batches.split(",")})
    attentions = [name for name in args.attention.split(",") if name]
    results = measure(backend, device, batches, args.calls, attentions)
    text = report(device, folder.name if args.model else SMALL, results)
    out = args.out or REPO / "bench" / f"step-anatomy-{device.name}.md"
    out.write_text(f"# Step anatomy ({device.name})\n\n{text}")
    if not args.no_readme:
        markers = (f"<!-- bench-step-anatomy-{device.name}:start -->", f"<!-- bench-step-anatomy-{device.name}:end -->")
        write_between_markers(README, markers, text)
    print(text)


if __name__ == "__main__":
    main()
