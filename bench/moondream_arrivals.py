"""moondream2 with questions arriving while others decode: newcomers started by the worker, or beside it.

    python -m bench.moondream_arrivals moondream/moondream/torch [--device cuda] [--gap 1.0]

Sixteen greedy questions, each about a frame of its own (encoded when it arrives, as live mode's are),
reach the app's ``Scheduler`` one every ``--gap`` seconds, over moondream2's real code at full size
(``bench.moondream_batch`` builds it: random weights, one crop per frame, 32-token answers). With
``--prepare worker`` the worker encodes each newcomer's frame and prefills its prompt during the join,
and every running answer waits for that; with ``--prepare prefill`` a preparing thread does both beside
the running batch, taking turns with the worker only at moondream2's own code (its one KV cache). Per
mode: the time to answer all sixteen, each answer's latency from its arrival, and the longest a running
answer went without a token. The report goes into the README between this device's markers and into
``bench/moondream-arrivals-<device>.md``. Nothing here is a test.
"""

from __future__ import annotations

import datetime
import os
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field

import torch
from PIL import Image

from bench.common import markdown
from bench.moondream_batch import ANSWER_TOKENS, MAX_CROPS, QUESTIONS, Answers, built_backend, publish, real_code_parser
from bench.moondream_cpu import timed
from vlm.backends.base import Job, WorkAhead
from vlm.backends.moondream import MoondreamBackend
from vlm.errors import VlmError
from vlm.results import Answer
from vlm.scheduler import Request, Scheduler

ASKED = 16
MODES: tuple[WorkAhead, ...] = ("process", "prefill")
FLAG = {"process": "`--prepare worker`", "prefill": "`--prepare prefill`"}


@dataclass
class Timeline:
    """One request's sink: when it arrived, when each piece of its answer came, when it ended."""

    arrived: float
    pieces: list[float] = field(default_factory=list)
    ended: float = 0.0
    tokens: int = 0
    error: str = ""
    done: threading.Event = field(default_factory=threading.Event)

    def waiting(self, ahead: int) -> None:
        pass

    def stream(self, delta: str) -> None:
        self.pieces.append(time.perf_counter())

    def answered(self, answer: Answer) -> None:
        self.tokens = answer.result.tokens
        self._end()

    def failed(self, error: VlmError) -> None:
        self.error = error.code
        self._end()

    def _end(self) -> None:
        self.ended = time.perf_counter()
        self.done.set()

    @property
    def latency(self) -> float:
        return self.ended - self.arrived

    @property
    def longest_gap(self) -> float:
        return max((b - a for a, b in zip(self.pieces, self.pieces[1:], strict=False)), default=0.0)


@dataclass(frozen=True)
class Run:
    mode: WorkAhead
    seconds: float
    timelines: list[Timeline]

    @property
    def tokens(self) -> int:
        return sum(timeline.tokens for timeline in self.timelines)


def frame(number: int, mode: WorkAhead) -> Image.Image:
    """A frame of its own per question and per mode, so that none is found already encoded."""
    shade = (number * 13 + (0 if mode == "process" else 7)) % 256
    return Image.new("RGB", (320, 240), (shade, 255 - shade, (shade * 3) % 256))


def arrivals(backend: MoondreamBackend, mode: WorkAhead, gap_s: float) -> Run:
    """``ASKED`` questions into a fresh scheduler, one every ``gap_s``, each answered to its 32-token budget."""
    backend.ahead = mode
    scheduler = Scheduler(backend, batch_window_s=0, timeout_s=3600, prepare_ahead=mode != "process", prepare_threads=1)
    timelines: list[Timeline] = []
    started = time.perf_counter()
    for number in range(ASKED):
        time.sleep(max(0.0, started + number * gap_s - time.perf_counter()))
        timeline = Timeline(time.perf_counter())
        job = Job(
            task="query",
            image=frame(number, mode),
            image_key=f"{mode}-{number}",
            text=QUESTIONS[number % len(QUESTIONS)],
            max_new_tokens=ANSWER_TOKENS,
        )
        scheduler.submit(Request(id=str(number), client=f"client-{number}", job=job, sink=timeline, door="socketio"))
        timelines.append(timeline)
    for timeline in timelines:
        timeline.done.wait()
    run = Run(mode, time.perf_counter() - started, timelines)
    failed = [timeline.error for timeline in timelines if timeline.error]
    assert not failed, f"{mode}: {failed}"
    return run


def report(heading: str, runs: list[Run]) -> str:
    rows = [
        [
            FLAG[run.mode],
            f"{run.seconds:.1f}",
            f"{run.tokens / run.seconds:.2f}",
            f"{statistics.median(t.latency for t in run.timelines):.1f}",
            f"{max(t.latency for t in run.timelines):.1f}",
            f"{max(t.longest_gap for t in run.timelines):.1f}",
        ]
        for run in runs
    ]
    header = ["newcomers started by", "all answered, s", "tokens / s", "median latency s", "worst s", "longest gap s"]
    return f"{heading}\n\n{markdown(rows, header)}\n"


def heading(backend: MoondreamBackend, machine: str, gap_s: float, load_at_start: float) -> str:
    return (
        f"Machine: {machine}; load average {load_at_start:.1f} at the start and {os.getloadavg()[0]:.1f} at the end, "
        f"on {os.cpu_count()} cores. moondream2's own code (44146f1) at full size, random weights, "
        f"{backend.info.dtype}, torch {torch.__version__}, {datetime.date.today().isoformat()}; "
        f"`python -m bench.moondream_arrivals`. {ASKED} greedy questions, one every {gap_s:g} s, each about a "
        f"320×240 frame of its own encoded when it arrives (max_crops {MAX_CROPS}), {ANSWER_TOKENS}-token answers, "
        "through the app's scheduler and running batch (`max_batch_size` 16, one preparing thread). Latency is from "
        "a question's arrival to its answer; the longest gap is the longest any answer went between two streamed "
        "pieces, which is what a join costs the answers already running."
    )


def main(argv: list[str] | None = None) -> None:
    parser = real_code_parser(__doc__)
    parser.add_argument("--gap", type=float, default=1.0, help="seconds between two questions' arrivals")
    args = parser.parse_args(argv)
    backend, machine, load_at_start = built_backend(args)
    warm_up = Job(task="query", image=frame(ASKED, "process"), image_key="warm-up", text=QUESTIONS[0], max_new_tokens=4)
    timed("warm-up answer", lambda: backend.generate([warm_up], Answers()))
    runs = []
    for mode in MODES:
        runs.append(arrivals(backend, mode, args.gap))
        print(f"{FLAG[mode]}: {runs[-1].seconds:.1f} s", flush=True)
    text = report(heading(backend, machine, args.gap, load_at_start), runs)
    print(text, flush=True)
    if not args.no_readme:
        publish("moondream-arrivals", "moondream2 with questions arriving while others decode", args.device, text)


if __name__ == "__main__":
    main()
    # The schedulers' threads are daemons that ran torch ops: finalising the interpreter under them aborted
    # ("terminate called without an active exception"), so the benchmark exits as soon as its report is out.
    sys.stdout.flush()
    os._exit(0)
