"""Serving figures on real-size models: the limit, the app against it, continuous against wave batching.

    python -m bench.serving                 # this machine (CPU: what --dtype auto picks for bfloat16 weights)
    python -m bench.serving --device cuda   # a CUDA machine: float16, figures headed with the card's name

Builds random-weight models of real size (``scripts/build_real_size_model.py``) into ``--models``
(kept for the next run; on a GPU initialised there in float16, in seconds), then measures, per
model: the memory-bandwidth bound per decode step (bytes of the weights a step reads ÷ measured
copy bandwidth), raw ``generate`` time per token at
batch 1 and 16 with no server, and the app end to end on the same question, each run on a frame it
has not seen (so its cache of frame encodings cannot answer). Then, on
the small model with 96-token answers, 16 clients in live mode (each asks again the moment it is
answered, starts spread over one answer's time) against continuous batching, wave batching and
the seed re-creation, and one client alone; continuous batching once more with the processor
where ``--prepare auto`` does not put it on this device, and on a GPU with the preparing threads
running the whole prefill (``--prepare prefill``) or the vision tower (``--prepare encode``) and
with one preparing thread. Results go to ``--out`` (or ``$VLM_BENCH_OUT``) and
into the README between this device's markers. Nothing here is a test.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import astuple, dataclass, field, replace
from pathlib import Path
from typing import Any

import requests
import torch
from prometheus_client.parser import text_string_to_metric_families
from transformers import SiglipVisionConfig, SiglipVisionModel
from transformers.generation.streamers import BaseStreamer

from bench.common import (
    Asking,
    Load,
    camera_frame,
    cpu_name,
    load_test,
    markdown,
    next_camera_frame,
    pct,
    targets_table,
    write_between_markers,
)
from scripts.build_real_size_model import build_real_size_model
from tests.server_process import REPO, AppProcess
from tests.socket_client import RecordingClient
from vlm.backends.base import Job
from vlm.backends.torch_device import cpu_multiplies_bfloat16, resolve_dtype
from vlm.backends.transformers_backend import TransformersBackend
from vlm.images import decode_image
from vlm.scheduler import default_prepare_threads

README = REPO / "README.md"
# Where the real-size models are built, and kept for the next run.
MODELS = Path(tempfile.gettempdir()) / "webcam-vlm-real-size"
QUESTION = "describe the image"
SMALL, LARGE = "smolvlm-256m", "smolvlm-2.2b"
# Answers one client alone is timed over (about): the latency target divides by their median. Two or
# three, as before, gave the H100 a median of 2.8 s with a p90 of 3.7 s.
ALONE_ANSWERS = 6
# Live rows past the targets' servers, in the order they run: what a short device loan can cut (--optional-rows).
OPTIONAL_ROWS = ("prefill", "encode", "other-place", "one-thread", "seed")
# Parts of a VLM a decode step does not read: the vision side, and the embedding table (one row per token).
NOT_READ_PER_STEP = ("vision", "connector", "multi_modal_projector", "embed_tokens")


@dataclass
class Device:
    name: str  # "cpu" | "cuda"
    label: str
    dtypes: dict[str, str]  # model -> dtype it runs in
    stored: dict[str, str]  # model -> dtype its weights are saved in
    # The app's --max-crops in every run (0: SmolVLM's own 13 tiles per frame). A CPU gets one tile: 13 tiles'
    # prefill there (7.4-7.9 s in bfloat16, 37 s in float32) leaves 16 clients too few answers to measure serving with.
    max_crops: int

    def sync(self) -> None:
        if self.name == "cuda":
            torch.cuda.synchronize()


def pick_device(requested: str) -> Device:
    name = "cuda" if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()) else "cpu"
    if name == "cuda":
        label = f"{torch.cuda.get_device_name(0)}, CUDA {torch.version.cuda}, float16"
        half = {SMALL: "float16", LARGE: "float16"}
        return Device(name, label, half, half, max_crops=0)
    # Both run as the app's --dtype auto runs SmolVLM's published bfloat16 weights here: in bfloat16 where the CPU
    # multiplies it in hardware, else in float32. The large model is saved in bfloat16 either way (4.5 GB, built
    # in half the memory).
    dtype = str(resolve_dtype("auto", name, torch.bfloat16)).removeprefix("torch.")
    units = "bfloat16 instructions" if cpu_multiplies_bfloat16() else "no bfloat16 instructions"
    label = (
        f"{cpu_name()} CPU ({units}), {os.cpu_count()} cores shared with other "
        f"work, {torch.get_num_threads()} torch threads, {dtype}"
    )
    return Device(name, label, {SMALL: dtype, LARGE: dtype}, {SMALL: dtype, LARGE: "bfloat16"}, max_crops=1)


def available_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 2**20
    return float("inf")


def copy_bandwidth(device: Device) -> float:
    """Bytes per second a large tensor copy moves (each byte read once and written once)."""
    size = (1 << 30) if device.name == "cuda" else (256 << 20)
    source = torch.empty(size // 4, dtype=torch.float32, device=device.name)
    target = torch.empty_like(source)
    for _ in range(2):
        target.copy_(source)
    device.sync()
    rounds, started = 5, time.perf_counter()
    for _ in range(rounds):
        target.copy_(source)
    device.sync()
    return 2 * size * rounds / (time.perf_counter() - started)


def bytes_read_per_step(model: Any) -> int:
    return sum(
        p.numel() * p.element_size()
        for name, p in model.named_parameters()
        if not any(part in name for part in NOT_READ_PER_STEP)
    )


def real_size_folder(models: Path, name: str, device: Device) -> Path:
    """The real-size model ``name`` under ``models`` in the dtype this device stores it in, built if missing."""
    # "tiled": folders built before the processors tiled frames as the real ones do are not reused
    folder = models / f"{name}-{device.stored[name]}-tiled"
    if not (folder / "model.safetensors").exists():
        print(f"building {name} in {folder}", flush=True)
        build_real_size_model(folder, name, device.stored[name], device=device.name)
    return folder


def frame_image(frame: str, size: int) -> Any:
    """The frame as the server decodes it, so raw runs and app runs see the same pixels."""
    return decode_image(frame, max_bytes=16 << 20, max_pixels=1 << 26, target_size=size).image


class Clock(BaseStreamer):
    """When ``generate`` produced each token (it hands the streamer tokens on the CPU, so the time is real)."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def put(self, value: torch.Tensor) -> None:
        self.times.append(time.perf_counter())

    def end(self) -> None:
        self.times.append(time.perf_counter())


@dataclass
class Raw:
    bytes_per_step: int
    seconds: dict[int, float] = field(default_factory=dict)  # batch -> seconds for a whole answer
    step_ms: dict[int, float] = field(default_factory=dict)  # batch -> ms per decode step after the first token
    prepare_ms: float = 0.0  # the processor on one frame (``backend.prepare``), median of five
    prepares: bool = False  # ``--prepare auto`` puts the processor on a thread of its own for this model here
    encodes: bool = False  # its generate takes frames encoded beforehand under this transformers (--prepare encode)
    prepared_per_s: dict[int, float] = field(default_factory=dict)  # threads -> frames prepared per second


def raw_generate(folder: Path, device: Device, dtype: str, frame: str, tokens: int, batches: list[int]) -> Raw:
    """``model.generate`` straight from transformers on the app's inputs: no server, no text streaming."""
    backend = TransformersBackend.load(
        str(folder), revision=None, device=device.name, dtype=dtype, max_crops=device.max_crops
    )
    image = frame_image(frame, backend.info.decode_size)
    raw = Raw(bytes_read_per_step(backend.model))
    one = Job(task="query", image=image, image_key="prepare", text=QUESTION)
    raw.prepare_ms = statistics.median(timed_ms(backend.prepare, one) for _ in range(5))
    raw.prepares = backend.prepares
    raw.encodes = backend.image_encoder is not None
    for threads in sorted({1, default_prepare_threads()}):
        raw.prepared_per_s[threads] = frames_prepared_per_s(backend, one, threads)
    for batch in batches:
        for count in (2, tokens):  # a short first run warms up (on a CPU, bfloat16 kernels are built at first use)
            # A key of each run's own: the app encodes a new live frame every time, so no run finds it cached.
            key = f"raw{batch}-{count}"
            jobs = [
                Job(task="query", image=image, image_key=key, text=QUESTION, max_new_tokens=tokens)
                for _ in range(batch)
            ]
            clock = Clock()
            device.sync()
            started = time.perf_counter()
            with torch.inference_mode():
                backend.model.generate(
                    **backend.model_inputs(jobs),
                    max_new_tokens=count,
                    do_sample=False,
                    pad_token_id=backend.tokenizer.pad_token_id,
                    streamer=clock,
                )
            device.sync()
        raw.seconds[batch] = time.perf_counter() - started
        first_token, last_token = clock.times[1], clock.times[-2]  # times[0]: the prompt handed over
        raw.step_ms[batch] = (last_token - first_token) / (tokens - 1) * 1000
    del backend
    return raw


def frames_prepared_per_s(backend: TransformersBackend, job: Job, threads: int) -> float:
    """Frames per second ``threads`` threads prepare together, as the scheduler's preparing threads do."""
    count = 4 * threads
    with ThreadPoolExecutor(threads) as pool:
        started = time.perf_counter()
        list(pool.map(lambda _: backend.prepare(job), range(count)))
    return count / (time.perf_counter() - started)


def timed_ms(work: Any, *args: Any) -> float:
    started = time.perf_counter()
    work(*args)
    return (time.perf_counter() - started) * 1000


def app_args(folder: Path, device: Device, dtype: str, tokens: int, *extra: str) -> list[str]:
    return [
        "--model",
        str(folder),
        "--device",
        device.name,
        "--dtype",
        dtype,
        "--max-new-tokens",
        str(tokens),
        "--rate-limit",
        "100000",
        "--request-timeout",
        "3600",
        "--max-crops",
        str(device.max_crops),
        *extra,
    ]


def app_end_to_end(
    folder: Path, device: Device, dtype: str, tokens: int, batches: list[int]
) -> dict[int, tuple[float, float]]:
    """Per batch, seconds for that many clients asking at once to all be answered, and the server's model time.

    Each round's clients share one frame no round had before: the raw runs encode their frame every
    time, so the app must not answer from its cache of recent frames' encodings.

    One server for every batch: starting the app (imports, loading the model) costs more than a measurement.
    """
    with AppProcess(app_args(folder, device, dtype, tokens), ready_timeout_s=900) as app:
        clients = [RecordingClient(app.url) for _ in range(max(batches))]
        try:
            measured = {}
            for batch in batches:
                ask_together(clients[:batch], next_camera_frame(), f"warm{batch}")
                measured[batch] = ask_together(clients[:batch], next_camera_frame(), f"measured{batch}")
            return measured
        except AnswerFailed as failure:
            raise AnswerFailed(f"{failure}\n--- the app's log ends ---\n{app.log()[-4000:]}") from None
        finally:
            for client in clients:
                client.close()


class AnswerFailed(RuntimeError):
    """The app answered with an error where the benchmark needs a timed answer."""


def ask_together(clients: list[RecordingClient], frame: str, tag: str) -> tuple[float, float]:
    finals: list[tuple[str, dict[str, Any]]] = []
    started = time.perf_counter()
    threads = [
        threading.Thread(
            target=lambda c=c, i=i: finals.append(
                c.ask({"id": f"{tag}-{i}", "question": QUESTION, "image": frame}, timeout_s=3600)
            )
        )
        for i, c in enumerate(clients)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    failed = [(event, payload) for event, payload in finals if "timing" not in payload]
    if failed:
        raise AnswerFailed(f"{len(failed)} of {len(finals)} requests failed, e.g. {failed[0]}")
    return elapsed, max(payload["timing"]["model_ms"] for _, payload in finals) / 1000


def warm_up(url: str, frame: str) -> float:
    """One answer, so the measured ones do not pay for first-call costs; returns its seconds."""
    client = RecordingClient(url)
    try:
        return ask_together([client], frame, "warm")[0]
    finally:
        client.close()


def live_clients(url: str, frame: str, clients: int, seconds: float, spread_s: float, answer_s: float) -> Load:
    """Clients in live mode, each request a new camera frame; starts spread over ``spread_s``; each waits up to
    ``answer_s`` for an answer."""
    asking = Asking(QUESTION, answer_s, live=True, new_frames=True, spread_s=spread_s)
    return load_test(url, frame, clients, seconds, asking)


def limit_rows(
    name: str,
    device: Device,
    bandwidth: float,
    raw: Raw,
    tokens: int,
    batches: list[int],
    app: dict[int, tuple[float, float]],
) -> list[list[str]]:
    bound_ms = raw.bytes_per_step / bandwidth * 1000
    rows = []
    for batch in batches:
        step_ms = raw.step_ms[batch]
        raw_s = raw.seconds[batch]
        e2e_s, model_s = app[batch]
        rows.append(
            [
                name,
                device.dtypes[name],
                str(batch),
                f"{raw.bytes_per_step / 2**20:.0f}",
                f"{bound_ms:.1f}",
                f"{step_ms:.1f}",
                f"{step_ms / bound_ms:.1f}×",
                f"{batch * 1000 / step_ms:.1f}",
                f"{raw_s:.2f}",
                f"{e2e_s:.2f}",
                f"{model_s:.2f}",
                f"{(e2e_s - raw_s) / raw_s * 100:+.1f}%",
            ]
        )
    return rows


def live_section(
    loads: list[tuple[str, Load]],
    not_measured: list[str],
    clients: int,
    alone: Load,
    tokens: int,
    answer_s: float,
    window: float,
) -> str:
    """The live-load table for the servers measured so far, and why any was not."""
    rows = []
    for label, load in loads:
        # A server that answered nobody inside the window has no latency to show.
        median, p90 = (statistics.median(load.latencies), pct(load.latencies, 90)) if load.latencies else (None, None)
        rows.append(
            [
                label,
                str(1 if load is alone else clients),
                f"{load.throughput:.3f}",
                f"{load.throughput * tokens:.1f}",
                "—" if median is None else f"{median:.1f}",
                "—" if p90 is None else f"{p90:.1f}",
                "—" if median is None else f"{median / answer_s:.2f}×",
                f"{load.seconds:.0f}",
                str(load.lost),
                str(load.misrouted),
            ]
        )
    notes = "".join(f"\n\n{note}" for note in not_measured)
    return (
        f"### {clients} clients in live mode, {SMALL}, {tokens}-token answers\n\n"
        f"Each client asks again, about a new frame, the moment it is answered; starts are spread over one "
        f"answer's time ({answer_s:.1f} s alone), so requests keep arriving while others generate. The "
        f"measuring window opens once every client has been answered once (the ramp-up is over) and lasts "
        f"{window:.0f} s or three of those first answers' time, whichever is longer (its column). Throughput is "
        "each client's answers per second inside it, summed (its answers there less one, over the time from its "
        "first to its last), so bursts of answers do not make it swing with where the window's edges fall; "
        "latency is over the requests sent inside it, which are waited for. The seed design answers one request "
        "at a time, blocking, and broadcasts every answer; its unanswered requests at the window's end, and "
        "clients it could not accept while generating, count as lost.\n\n"
        + markdown(
            rows,
            [
                "server",
                "clients",
                "answers / s",
                "tokens / s",
                "median s",
                "p90 s",
                "median ÷ alone",
                "window s",
                "lost",
                "delivered to wrong client",
            ],
        )
        + notes
    )


@dataclass(frozen=True)
class BatchActivity:
    """What the running batch did, from the app's ``/metrics``: steps and the rows they decoded, joins and
    the requests they prefilled, and the seconds each kind of call took; and the requests prepared on the
    preparing threads, with their seconds."""

    steps: float = 0.0
    rows: float = 0.0
    joins: float = 0.0
    joined: float = 0.0
    step_s: float = 0.0
    join_s: float = 0.0
    prepares: float = 0.0
    prepare_s: float = 0.0

    def __sub__(self, earlier: BatchActivity) -> BatchActivity:
        return BatchActivity(*(now - then for now, then in zip(astuple(self), astuple(earlier), strict=True)))


def batch_activity(url: str) -> BatchActivity:
    samples = {
        (sample.name, sample.labels.get("call", "")): sample.value
        for family in text_string_to_metric_families(requests.get(f"{url}/metrics", timeout=30).text)
        for sample in family.samples
    }
    return BatchActivity(
        steps=samples.get(("vlm_batch_size_count", ""), 0.0),
        rows=samples.get(("vlm_batch_size_sum", ""), 0.0),
        joins=samples.get(("vlm_join_size_count", ""), 0.0),
        joined=samples.get(("vlm_join_size_sum", ""), 0.0),
        step_s=samples.get(("vlm_decoder_call_seconds_sum", "step"), 0.0),
        join_s=samples.get(("vlm_decoder_call_seconds_sum", "join"), 0.0),
        prepares=samples.get(("vlm_prepare_seconds_count", ""), 0.0),
        prepare_s=samples.get(("vlm_prepare_seconds_sum", ""), 0.0),
    )


def activity_section(activities: list[tuple[str, BatchActivity, float]]) -> str:
    """Per server under live load: the running batch's steps and joins over the whole run, and their share of it."""
    rows = []
    for label, done, seconds in activities:
        stepped = done.step_s > 0  # wave batching runs ``generate``, which is counted per call and not timed
        rows.append(
            [
                label,
                f"{seconds:.0f}",
                f"{done.steps:.0f}",
                f"{done.rows / done.steps:.1f}" if done.steps else "—",
                f"{1000 * done.step_s / done.steps:.1f}" if stepped else "—",
                f"{done.joins:.0f}" if stepped else "—",
                f"{done.joined / done.joins:.2f}" if done.joins else "—",
                f"{1000 * done.join_s / done.joins:.1f}" if done.joins else "—",
                f"{100 * done.join_s / seconds:.0f} %" if stepped else "—",
                f"{100 * done.step_s / seconds:.0f} %" if stepped else "—",
                f"{1000 * done.prepare_s / done.prepares:.1f}" if done.prepares else "—",
            ]
        )
    return (
        "What the running batch did over each whole run (ramp-up included), from the app's own `/metrics`: a join "
        "prefills newcomers while every running row waits, a step decodes one token for every row. Wave batching "
        "runs whole batches through `generate`, counted per call. A preparing thread prepares a request beside "
        "them (its last column; — where the worker does it in the join).\n\n"
        + markdown(
            rows,
            [
                "server",
                "run s",
                "steps",
                "rows / step",
                "ms / step",
                "joins",
                "requests / join",
                "ms / join",
                "time in joins",
                "time in steps",
                "ms / prepare",
            ],
        )
    )


def vision_batching(device: Device) -> str:
    """moondream2's vision tower (SigLIP-SO400M: 27 layers, 1152 wide, 378 px crops of 729 patches) per crop,
    one 640×480 frame's 9 crops at once (as moondream2 runs them) against two and four frames' crops at once.

    On a CPU only the first layer runs (27 would take minutes per crop); per-crop cost is per layer there.
    """
    layers = 27 if device.name == "cuda" else 1
    config = SiglipVisionConfig(
        hidden_size=1152,
        intermediate_size=4304,
        num_hidden_layers=layers,
        num_attention_heads=16,
        image_size=378,
        patch_size=14,
    )
    dtype = getattr(torch, device.dtypes[SMALL])
    tower = SiglipVisionModel(config).to(device.name, dtype).eval()
    per_crop = {}
    for frames in (1, 2, 4) if device.name == "cuda" else (1, 2):
        crops = torch.randn(9 * frames, 3, 378, 378, dtype=dtype, device=device.name)
        with torch.inference_mode():
            tower(pixel_values=crops[:9])  # warm-up
            device.sync()
            started = time.perf_counter()
            tower(pixel_values=crops)
            device.sync()
        per_crop[frames] = (time.perf_counter() - started) / len(crops) * 1000
    unit = "ms per crop" if layers == 27 else "ms per crop and layer (×27 for the tower)"
    rows = [[str(frames), str(9 * frames), f"{ms:.1f}", f"{per_crop[1] / ms:.2f}×"] for frames, ms in per_crop.items()]
    return markdown(rows, ["frames encoded together", "crops", unit, "throughput vs one frame"])


def prepare_line(name: str, raw: Raw) -> str:
    """A newcomer's processor work in decode steps: what the running batch waits where the worker does it."""
    step_ms = raw.step_ms[max(raw.step_ms)]
    place = (
        "a thread of its own while the running batch decodes"
        if raw.prepares
        else "the model's worker, whose matmuls already use every core"
    )
    rates = ", ".join(f"{rate:.1f} with {threads}" for threads, rate in sorted(raw.prepared_per_s.items()))
    return (
        f"Preparing one frame for {name} (its processor: resize, cut into tiles, normalise, tokenise) took "
        f"{raw.prepare_ms:.1f} ms, {raw.prepare_ms / step_ms:.2f} decode steps at batch {max(raw.step_ms)}; "
        f"`--prepare auto` runs it on {place}. Frames prepared per second by threads at once: {rates} "
        "(`--prepare-threads`)"
    )


def limit_section(limit: list[list[str]], tokens: int, notes: list[str]) -> str:
    header = [
        "model",
        "dtype",
        "batch",
        "MiB read / step",
        "bound ms / step",
        "raw ms / step",
        "raw ÷ bound",
        "raw tokens / s",
        "raw s / answer",
        "app s / answer",
        "app model s",
        "app overhead",
    ]
    return (
        f"### The limit: {tokens}-token answers, raw `generate` against the bound and the app\n\n"
        "Bound: the bytes one decode step reads (the text decoder and LM head) ÷ copy bandwidth. "
        "Raw: `model.generate` on the app's inputs, no server; per-step time is from the first token to "
        "the last over the steps between. App: clients over Socket.IO on loopback, "
        "the same question on a new frame each run, one run after a warm-up; "
        "overhead is app ÷ raw − 1.\n\n" + markdown(limit, header) + "".join(f"\n\n{line}." for line in notes)
    )


def tiles_line(max_crops: int) -> str:
    """How the runs cut a frame into tiles, for the device line."""
    if not max_crops:
        return "cut into 12 tiles and a global one, as SmolVLM's processor does"
    cut = "one tile per frame" if max_crops == 1 else f"cut into at most {max_crops} tiles and a global one"
    return f"{cut} (the app's `--max-crops {max_crops}`; SmolVLM's processor makes 12 tiles and a global one)"


def not_measured_line(label: str, failure: Exception) -> str:
    """Why a server's row is missing: the last line of what went wrong (a failed start ends with its reason)."""
    return f"{label} not measured: {str(failure).strip().splitlines()[-1]}"


def write_readme(report: str, device: Device) -> None:
    markers = (f"<!-- bench-serving-{device.name}:start -->", f"<!-- bench-serving-{device.name}:end -->")
    write_between_markers(README, markers, report)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument(
        "--models",
        type=Path,
        default=MODELS,
        help="where the real-size models are built (reused when present)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=os.environ.get("VLM_BENCH_OUT"),
        help="results file (default: $VLM_BENCH_OUT, else bench/serving-<device>.md)",
    )
    parser.add_argument("--tokens", type=int, default=32, help="answer length for the limit figures")
    parser.add_argument("--live-tokens", type=int, default=96, help="answer length under live load")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument(
        "--seconds",
        type=float,
        default=0,
        help="the shortest live-load window (0: 1.5 answers alone); never under three answers under load",
    )
    parser.add_argument("--skip-large", action="store_true", help=f"no {LARGE} figures")
    parser.add_argument(
        "--optional-rows",
        default=",".join(OPTIONAL_ROWS),
        help="which live rows to run besides the targets' two servers and one client alone, in this order, for a "
        f"short device loan (comma-separated, of: {', '.join(OPTIONAL_ROWS)}; rows this device skips anyway "
        "are skipped)",
    )
    parser.add_argument(
        "--max-crops",
        type=int,
        help="the app's --max-crops in every run (0: a frame is cut into 12 tiles and a global one, as by "
        "SmolVLM's processor); default 0 on a GPU, 1 (one tile) on a CPU",
    )
    parser.add_argument("--no-readme", action="store_true")
    args = parser.parse_args(argv)
    wanted = [row for row in args.optional_rows.split(",") if row]
    if unknown := set(wanted) - set(OPTIONAL_ROWS):
        parser.error(f"--optional-rows: no row named {', '.join(sorted(unknown))}")

    device = pick_device(args.device)
    if args.max_crops is not None:
        device = replace(device, max_crops=args.max_crops)
    frame = camera_frame()
    folders = {}
    notes: list[str] = []  # lines under the limit table: models skipped, frames prepared
    for name in [SMALL] if args.skip_large else [SMALL, LARGE]:
        folders[name] = real_size_folder(args.models, name, device)
    if LARGE in folders and device.name == "cpu" and available_gib() < 12:
        notes.append(
            f"{LARGE} not measured: {available_gib():.0f} GiB of memory free, and it needs up to ~9 GiB "
            f"in {device.dtypes[LARGE]} twice over (the raw run, then the app)"
        )
        del folders[LARGE]
    bandwidth = copy_bandwidth(device)
    out = args.out or REPO / "bench" / f"serving-{device.name}.md"
    sections: dict[str, str] = {}

    def publish() -> None:
        """Write what is measured so far: a run cut short still leaves its finished sections."""
        order = ("device", "limit", "live", "moondream", "targets")
        report = "\n\n".join(sections[key] for key in order if key in sections) + "\n"
        Path(out).write_text(f"# Serving benchmark ({device.name})\n\n" + report)
        if not args.no_readme:
            write_readme(report, device)

    sections["device"] = (
        f"Device: {device.label}. Copy bandwidth {bandwidth / 1e9:.1f} GB/s. Random-weight models of "
        f"real size (`scripts/build_real_size_model.py`), EOS suppressed, answers of fixed length; "
        f"the frame is a 640×480 camera JPEG, {tiles_line(device.max_crops)}."
    )

    limit: list[list[str]] = []
    prepares: dict[str, bool] = {}  # model -> where ``--prepare auto`` put its processor here
    encodes: dict[str, bool] = {}  # model -> whether ``--prepare encode`` can encode its frames ahead here

    def measure_limit(name: str) -> None:
        folder = folders[name]
        batches = [1, args.clients] if name == SMALL else [1]
        print(f"raw generate: {name}", flush=True)
        raw = raw_generate(folder, device, device.dtypes[name], frame, args.tokens, batches)
        print(f"app end to end: {name}", flush=True)
        app = app_end_to_end(folder, device, device.dtypes[name], args.tokens, batches)
        limit.extend(limit_rows(name, device, bandwidth, raw, args.tokens, batches, app))
        notes.append(prepare_line(name, raw))
        prepares[name] = raw.prepares
        encodes[name] = raw.encodes
        sections["limit"] = limit_section(limit, args.tokens, notes)
        publish()

    measure_limit(SMALL)
    small = folders[SMALL]
    dtype = device.dtypes[SMALL]
    tokens = args.live_tokens
    loads: list[tuple[str, Load]] = []
    not_measured: list[str] = []

    activities: list[tuple[str, BatchActivity, float]] = []

    def publish_live() -> None:
        sections["live"] = live_section(loads, not_measured, args.clients, alone, tokens, answer_s, window)
        if activities:
            sections["live"] += "\n\n" + activity_section(activities)
        publish()

    def publish_targets() -> None:
        by_label = dict(loads)
        continuous, wave = by_label["this app, continuous batching"], by_label["this app, wave batching"]
        median_ratio = statistics.median(continuous.latencies) / answer_s
        vs_wave = continuous.throughput / wave.throughput
        vs_one = continuous.throughput / alone.throughput
        failures = continuous.lost + continuous.misrouted
        checks = [
            ("newly arrived request, median latency ÷ alone", "≤ 1.5×", f"{median_ratio:.2f}×", median_ratio <= 1.5),
            ("throughput, continuous ÷ wave", "≥ 1×", f"{vs_wave:.2f}×", vs_wave >= 1),
            (f"throughput, {args.clients} clients ÷ 1 client", "≥ 4×", f"{vs_one:.2f}×", vs_one >= 4),
            ("lost or misrouted (continuous)", "0", str(failures), failures == 0),
        ]
        n = args.clients
        sections["targets"] = targets_table(checks) + (
            f"\n\nThe two ratios are tied (Little's law): in live mode every client keeps one request open, so a "
            f"request's mean time is clients ÷ throughput, and its ratio to the time alone is {n} ÷ ({n} clients' "
            f"throughput ÷ one client's) = {n} ÷ {vs_one:.2f} = {n / vs_one:.2f}× here. A latency within 1.5× "
            f"therefore needs {n} clients to get about {n / 1.5:.1f}× one client's throughput, not 4×; the median "
            "sits below that mean-based figure as far as slow answers skew the mean."
        )
        publish()

    # The targets' two servers first, so a run cut short (a lent GPU's time) still has them; then, where
    # ``--prepare auto`` chooses threads, those threads running the whole prefill (``--prepare prefill``) or
    # the vision tower (``--prepare encode``), neither measured there (README), the processor's place that
    # ``auto`` does not choose on this device, and one preparing thread.
    other_place = ("the worker", "worker") if prepares[SMALL] else ("a thread", "thread")
    optional = {
        "prefill": ("this app, continuous, prompts prefilled on the preparing threads", ["--prepare", "prefill"]),
        "encode": ("this app, continuous, frames encoded on the preparing threads", ["--prepare", "encode"]),
        "other-place": (f"this app, continuous, processor on {other_place[0]}", ["--prepare", other_place[1]]),
        "one-thread": ("this app, continuous, one preparing thread", ["--prepare-threads", "1"]),
    }
    if not prepares[SMALL]:  # the preparing threads' rows, where ``auto`` uses none
        del optional["prefill"], optional["encode"], optional["one-thread"]
    elif default_prepare_threads() == 1:  # what preparing frames on several threads is worth
        del optional["one-thread"]
    if "encode" in optional and "encode" in wanted and not encodes[SMALL]:
        label = optional.pop("encode")[0]
        not_measured.append(f"{label} not measured: this transformers' generate takes no frames encoded beforehand")
    servers = [("this app, continuous batching", []), ("this app, wave batching", ["--batching", "wave"])]
    servers += [optional[row] for row in OPTIONAL_ROWS if row in wanted and row in optional]
    for index, (label, extra) in enumerate(servers):
        print(f"live load: {label}", flush=True)
        try:
            with AppProcess(app_args(small, device, dtype, tokens, *extra), ready_timeout_s=900) as app:
                first_s = warm_up(app.url, frame)
                if not loads:  # one client alone, on the first server (the default): what the others are held to
                    alone = live_clients(app.url, frame, 1, ALONE_ANSWERS * first_s, 0, 3600)
                    answer_s = statistics.median(alone.latencies)
                    window = args.seconds or 1.5 * answer_s
                    loads.append(("this app, 1 client", alone))
                before, started = batch_activity(app.url), time.perf_counter()
                loads.append((label, live_clients(app.url, frame, args.clients, window, answer_s, 60 * answer_s)))
                activities.append((label, batch_activity(app.url) - before, time.perf_counter() - started))
        except RuntimeError as failure:  # past the targets' two servers, one that fails leaves the others standing
            if index < 2:
                raise
            not_measured.append(not_measured_line(label, failure))
        publish_live()
        if label == "this app, wave batching":
            publish_targets()

    if "seed" in wanted:
        print("live load: seed design", flush=True)
        seed_args = ["--model", str(small), "--max-new-tokens", str(tokens), "--device", device.name]
        seed_args += ["--dtype", dtype, "--max-crops", str(device.max_crops)]
        try:
            with AppProcess(seed_args, script="bench/seed_app.py", ready_timeout_s=900) as seed:
                loads.append(("seed design", live_clients(seed.url, frame, args.clients, window, answer_s, window)))
        except RuntimeError as failure:  # it did not start: the figures above still stand
            not_measured.append(not_measured_line("seed design", failure))
        publish_live()

    print("moondream2 vision batching", flush=True)
    sections["moondream"] = (
        "### moondream2: encoding several frames' crops at once\n\n"
        "moondream2 already runs a frame's crops through its vision tower as one batch; this is what batching "
        "different frames adds (a random SigLIP-SO400M-shaped tower at moondream2's crop size).\n\n"
        + vision_batching(device)
    )

    publish()
    if LARGE in folders:
        measure_limit(LARGE)
    print(Path(out).read_text())


if __name__ == "__main__":
    main()
