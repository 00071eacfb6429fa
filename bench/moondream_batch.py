"""moondream2's running batch (``MoondreamRows``) against its own loop, on its real code at full size.

    git clone https://github.com/vikhyat/moondream && git -C moondream checkout 44146f1
    python -m bench.moondream_batch moondream/moondream/torch [--device cuda] [--dtype auto]

The code is moondream2's own at the commit its 2025-06-21 revision ships, built as
``bench.moondream_cpu`` builds it: full size (1.93 B parameters), random weights, in the dtype the
app's ``--dtype auto`` gives on the device (or ``--dtype``), behind the app's ``MoondreamBackend``
with one crop per frame (the vision tower is not what this measures). Sixteen greedy questions,
four about each of four frames encoded beforehand, are answered through moondream2's own loop one
after another and through ``MoondreamRows`` all at once: how many answers agree, how far one
batched step's logits are from moondream2's own ``_decode_one_tok`` (alone and among 16 rows),
what a decode step costs at 1, 4 and 16 rows against the own loop's per token, and the time
to answer all sixteen each way. Random weights never end an answer on purpose, so every answer
runs to its 32-token budget. Each number is printed when measured; the report goes into the
README between this device's markers and into ``bench/moondream-batch-<device>.md``. Nothing
here is a test.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import os
import statistics
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import torch
from PIL import Image
from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from bench.common import cpu_name, markdown, write_between_markers
from bench.moondream_cpu import Wrapper, build, load_real_code, timed
from tests.server_process import REPO
from vlm.backends import moondream_rows
from vlm.backends.base import Job, Result
from vlm.backends.moondream import MoondreamBackend, moondream_dtype
from vlm.backends.moondream_rows import MoondreamRows
from vlm.backends.torch_device import use_unplanned_attention
from vlm.errors import VlmError

FRAMES = {colour: Image.new("RGB", (320, 240), colour) for colour in ("red", "navy", "olive", "white")}
# Different lengths, so that the rows of one batch sit at different positions.
QUESTIONS = (
    "what is this?",
    "what colour is the big box?",
    "is anyone standing near the door right now?",
    "describe everything you can see on the table in front of the window",
)
ANSWER_TOKENS = 32
BATCHES = (1, 4, 16)
MAX_CROPS = 1
# The stand-in tokenizer's ids for the questions' words: clear of moondream2's special ids (0-9).
FIRST_WORD_ID = 100


def whole_vocabulary_tokenizer(size: int, words: Iterable[str]) -> Tokenizer:
    """A stand-in for moondream2's tokenizer (on the hub, out of reach) that names every id its LM head can pick.

    ``bench.moondream_cpu``'s has 64 tokens and decodes the other 51136 ids as nothing, so answers of
    random weights would be mostly empty text; here id ``i`` is the word ``t<i>``, and the questions'
    words have ids of their own, so a question is one token per word.
    """
    names = [f"▁t{index}" for index in range(size)]
    for index, word in enumerate(sorted(set(words)), start=FIRST_WORD_ID):
        names[index] = f"▁{word}"
    tokenizer = Tokenizer(models.WordLevel({name: index for index, name in enumerate(names)}, unk_token=names[0]))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    return tokenizer


class HfLike(Wrapper):
    """moondream2's ``HfMoondream`` as the backend calls it: the skills are the inner model's own."""

    @property
    def encode_image(self) -> Callable[..., Any]:
        return self.model.encode_image

    @property
    def query(self) -> Callable[..., Any]:
        return self.model.query

    @property
    def caption(self) -> Callable[..., Any]:
        return self.model.caption

    @property
    def detect(self) -> Callable[..., Any]:
        return self.model.detect

    @property
    def point(self) -> Callable[..., Any]:
        return self.model.point


def real_backend(code: Path, device: str, dtype: torch.dtype) -> MoondreamBackend:
    """moondream2's code at full size with random weights, on ``device`` in ``dtype``, behind the app's backend."""
    model = build(load_real_code(code.resolve()), dtype)
    words = (word for question in QUESTIONS for word in question.split())
    model.tokenizer = whole_vocabulary_tokenizer(model.config.text.vocab_size, words)
    use_unplanned_attention(device)
    wrapped = HfLike(model).to(device)
    return MoondreamBackend(wrapped, model_id="moondream2 44146f1, random weights", device=device, max_crops=MAX_CROPS)


def make_jobs(max_new_tokens: int = ANSWER_TOKENS) -> list[Job]:
    """Every question about every frame, greedy: job ``4 * f + q`` asks question ``q`` about frame ``f``."""
    return [
        Job(task="query", image=image, image_key=colour, text=question, max_new_tokens=max_new_tokens)
        for colour, image in FRAMES.items()
        for question in QUESTIONS
    ]


class Answers:
    """Row events that keep each answer by key; a failure ends the benchmark, where every question fits."""

    def __init__(self) -> None:
        self.results: dict[int, Result] = {}

    def delta(self, index: int, text: str) -> None:
        pass

    def done(self, index: int, result: Result) -> None:
        self.results[index] = result

    def failed(self, index: int, error: VlmError) -> None:
        raise error

    def cancelled(self, index: int) -> bool:
        return False


def synchronizer(backend: MoondreamBackend) -> Callable[[], None]:
    """What waits for the device's queued work, so that a clock reading after it includes that work."""
    return torch.cuda.synchronize if backend.info.device == "cuda" else lambda: None


@dataclass(frozen=True)
class Call:
    started: float
    ended: float
    logits: torch.Tensor  # (rows, vocabulary), as returned: before the caller forbids any token


@contextmanager
def calls(owner: Any, name: str, sync: Callable[[], None]) -> Iterator[list[Call]]:
    """Every call of ``owner.name`` while the block runs: its start and end (the device synchronized) and its logits
    (the first of what it returns, where that is a tuple), copied before the caller edits them in place."""
    own = getattr(owner, name)
    seen: list[Call] = []

    def watched(*args: Any, **kwargs: Any) -> Any:
        sync()
        started = time.perf_counter()
        output = own(*args, **kwargs)
        sync()
        logits = output[0] if isinstance(output, tuple) else output
        seen.append(Call(started, time.perf_counter(), logits.detach().clone()))
        return output

    with mock.patch.object(owner, name, watched):
        yield seen


@dataclass(frozen=True)
class StepSpeed:
    """One decode step's median time, and the answer tokens it adds per second (one per row)."""

    label: str
    rows: int
    ms: float

    @property
    def tokens_per_s(self) -> float:
        return self.rows * 1000 / self.ms


def own_token_speed(backend: MoondreamBackend, job: Job, repeats: int) -> StepSpeed:
    """moondream2's own loop answering ``job`` alone, per token: from its first ``_decode_one_tok`` call's start to
    its last one's end (the prefill left out, the loop's own work between calls in), median of ``repeats`` answers
    after one answer of warm-up."""
    inner, sync = backend.model.model, synchronizer(backend)
    per_token = []
    for _ in range(repeats + 1):
        with calls(inner, "_decode_one_tok", sync) as steps:
            backend.generate([job], Answers())
        per_token.append((steps[-1].ended - steps[0].started) / len(steps) * 1000)
    return StepSpeed("moondream2's own loop (`_decode_one_tok`)", 1, statistics.median(per_token[1:]))


def rows_step_speed(backend: MoondreamBackend, jobs: list[Job], rows: int, warmup: int, steps: int) -> StepSpeed:
    """``MoondreamRows.step()`` at ``rows`` rows, median of ``steps`` after ``warmup``: a row that ends is replaced by
    the next job before the next step (untimed), as in a busy server, so that every step has ``rows`` rows."""
    sync, batch = synchronizer(backend), MoondreamRows(backend, Answers())
    waiting, keys = itertools.cycle(jobs), itertools.count()
    times = []
    for _ in range(warmup + steps):
        while len(batch.rows()) < rows:
            batch.join({next(keys): next(waiting) for _ in range(rows - len(batch.rows()))})
        sync()
        started = time.perf_counter()
        batch.step()
        sync()
        times.append((time.perf_counter() - started) * 1000)
    batch.clear()
    return StepSpeed("`MoondreamRows.step()`", rows, statistics.median(times[warmup:]))


@dataclass(frozen=True)
class Answered:
    """Every job's answer one way, the logits of each of its decode steps, and the seconds all took."""

    results: dict[int, Result]
    logits: dict[int, list[torch.Tensor]]  # per job, step by step: (vocabulary,)
    seconds: float

    @property
    def tokens(self) -> int:
        return sum(result.tokens for result in self.results.values())

    @property
    def finish_reasons(self) -> str:
        reasons = Counter(result.finish_reason for result in self.results.values())
        return ", ".join(f"{count} × {reason}" for reason, count in sorted(reasons.items()))


def own_loop_answers(backend: MoondreamBackend, jobs: list[Job]) -> Answered:
    """Each job through moondream2's own loop, one after another, as ``--batching wave`` runs them."""
    inner, sync = backend.model.model, synchronizer(backend)
    results, logits = {}, {}
    started = time.perf_counter()
    for key, job in enumerate(jobs):
        answers = Answers()
        with calls(inner, "_decode_one_tok", sync) as steps:
            backend.generate([job], answers)
        results[key], logits[key] = answers.results[0], [step.logits[0] for step in steps]
    sync()
    return Answered(results, logits, time.perf_counter() - started)


def batched_answers(backend: MoondreamBackend, jobs: list[Job]) -> Answered:
    """All jobs joined to one ``MoondreamRows`` at once (each prefilled by moondream2's code), stepped to the end."""
    sync, answers = synchronizer(backend), Answers()
    batch = MoondreamRows(backend, answers)
    order = []  # each step's rows, by key
    with calls(moondream_rows, "decode_step", sync) as steps:
        started = time.perf_counter()
        batch.join(dict(enumerate(jobs)))
        while batch.rows():
            order.append([row.key for row in batch.batch])
            batch.step()
        sync()
        seconds = time.perf_counter() - started
    logits: dict[int, list[torch.Tensor]] = {}
    for keys, step in zip(order, steps, strict=True):
        for key, row in zip(keys, step.logits, strict=True):
            logits.setdefault(key, []).append(row)
    return Answered(answers.results, logits, seconds)


def lone_row_logits(backend: MoondreamBackend, job: Job) -> torch.Tensor:
    """The logits of the first step of ``MoondreamRows`` with ``job`` alone in it."""
    batch = MoondreamRows(backend, Answers())
    with calls(moondream_rows, "decode_step", synchronizer(backend)) as steps:
        batch.join({0: job})
        batch.step()
    batch.clear()
    return steps[0].logits[0]


@dataclass(frozen=True)
class Parting:
    """Where a batched greedy answer first chose another token than moondream2's own loop: the decode step, how far
    apart the own loop's two highest logits were there, and how far the row's logits were from its own."""

    key: int
    step: int
    own_margin: float
    difference: float


@dataclass(frozen=True)
class Identity:
    """The batch against moondream2's own loop: equal answers (text, token counts, finish reason), where the others
    part, and the largest logit difference of a first step, one row alone and every row of the full batch."""

    identical: int
    jobs: int
    finish_reasons: str
    partings: list[Parting]
    lone_row_diff: float
    full_batch_diff: float


def _difference(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max())


def _parting(key: int, own: list[torch.Tensor], batched: list[torch.Tensor]) -> Parting | None:
    # The own loop decodes once more after its last token (it stops on the count after that step).
    for step, (alone, together) in enumerate(zip(own, batched, strict=False)):
        if int(alone.argmax()) != int(together.argmax()):
            top = alone.float().topk(2).values
            return Parting(key, step, float(top[0] - top[1]), _difference(alone, together))
    return None


def identity(own: Answered, batched: Answered, lone_row: torch.Tensor, lone_key: int = 0) -> Identity:
    differing = [key for key, result in own.results.items() if batched.results.get(key) != result]
    partings = [_parting(key, own.logits[key], batched.logits.get(key, [])) for key in differing]
    return Identity(
        identical=len(own.results) - len(differing),
        jobs=len(own.results),
        finish_reasons=f"own loop {own.finish_reasons}, batch {batched.finish_reasons}",
        partings=[parting for parting in partings if parting is not None],
        lone_row_diff=_difference(lone_row, own.logits[lone_key][0]),
        full_batch_diff=max(_difference(batched.logits[key][0], own.logits[key][0]) for key in batched.logits),
    )


def report(heading: str, speeds: list[StepSpeed], own: Answered, batched: Answered, same: Identity) -> str:
    """The markdown section: ``heading`` (machine and setup), then per-step speed, end to end and identity."""
    own_rate = speeds[0].tokens_per_s
    steps = markdown(
        [
            [
                speed.label,
                str(speed.rows),
                f"{speed.ms:.1f}",
                f"{speed.tokens_per_s:.1f}",
                f"{speed.tokens_per_s / own_rate:.2f}×",
            ]
            for speed in speeds
        ],
        ["decode", "rows", "ms / step", "tokens / s", "÷ own loop"],
    )
    end_to_end = markdown(
        [
            [
                label,
                f"{answered.seconds:.1f}",
                f"{answered.tokens / answered.seconds:.1f}",
                f"{own.seconds / answered.seconds:.2f}×",
            ]
            for label, answered in (
                ("moondream2's own loop, one job after another", own),
                ("`MoondreamRows`, all joined at once", batched),
            )
        ],
        [f"{same.jobs} answers", "s", "tokens / s", "speed-up"],
    )
    return (
        f"{heading}\n\n"
        "Decode step, median after warm-up: the own loop's per token from its first `_decode_one_tok` call to its "
        "last (prefill left out), the running batch's `step()` whole (the step, choosing, streaming).\n\n"
        f"{steps}\n\n"
        "End to end, frames already encoded, prefills included, one run each:\n\n"
        f"{end_to_end}\n\n"
        f"Identity: {same.identical} of {same.jobs} greedy answers identical (text, token count, finish reason; "
        f"{same.finish_reasons}). Largest logit difference of a first decode step against moondream2's own "
        f"`_decode_one_tok`: {same.lone_row_diff:g} with the row alone, {same.full_batch_diff:g} among "
        f"{same.jobs} rows.{parting_text(same.partings)}\n"
    )


def parting_text(found: list[Parting]) -> str:
    """Why answers differ, where they do: a batch rounds otherwise than a row alone (other matrix shapes), which
    decides a greedy choice only between logits closer than that rounding."""
    if not found:
        return ""
    where = "; ".join(
        f"answer {parting.key} at decode step {parting.step + 1}: its own top two logits {parting.own_margin:g} apart, "
        f"the row's logits in the batch {parting.difference:g} from its own"
        for parting in found
    )
    return f" The answers that differ part where moondream2's own two highest logits were closer than that: {where}."


def heading(backend: MoondreamBackend, machine: str, load_at_start: float) -> str:
    """What ran where; the load average says whether other work shared the machine (it slows a CPU's numbers)."""
    inner = backend.model.model
    parameters = sum(parameter.numel() for parameter in inner.parameters()) / 1e9
    lengths = [len(inner.tokenizer.encode(question).ids) for question in QUESTIONS]
    return (
        f"Machine: {machine}; load average {load_at_start:.1f} at the start and {os.getloadavg()[0]:.1f} at the end, "
        f"on {os.cpu_count()} cores. moondream2's own code (github.com/vikhyat/moondream at 44146f1) at full size "
        f"({parameters:.2f} B parameters, random weights), {backend.info.dtype}, torch {torch.__version__}, "
        f"{datetime.date.today().isoformat()}; `python -m bench.moondream_batch`. {len(FRAMES) * len(QUESTIONS)} "
        f"greedy questions, {len(QUESTIONS)} about each of {len(FRAMES)} 320×240 frames encoded beforehand (max_crops "
        f"{MAX_CROPS}: one crop plus the whole-frame one), the questions {min(lengths)}–{max(lengths)} tokens, "
        f"{ANSWER_TOKENS}-token answers (random weights never end one on purpose). The tokenizer is a stand-in "
        "that names all of moondream2's token ids."
    )


def real_code_parser(description: str | None) -> argparse.ArgumentParser:
    """The arguments every benchmark of moondream2's real code takes: where the code is, device, dtype."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("code", type=Path, help="moondream's moondream/torch folder at commit 44146f1")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16"), default="auto")
    parser.add_argument("--no-readme", action="store_true")
    return parser


def built_backend(args: argparse.Namespace) -> tuple[MoondreamBackend, str, float]:
    """moondream2's real code built as ``args`` say: the backend, the machine's name, the load average before."""
    name = torch.cuda.get_device_name() if args.device == "cuda" else cpu_name()
    machine = f"{name}, {torch.get_num_threads()} torch threads"
    load_at_start = os.getloadavg()[0]
    print(f"{machine}, load average {load_at_start:.1f}", flush=True)
    dtype = moondream_dtype(args.dtype, args.device)
    backend = timed(f"build full size in {dtype} (random weights)", lambda: real_backend(args.code, args.device, dtype))
    return backend, machine, load_at_start


def publish(name: str, title: str, device: str, text: str) -> None:
    """The report into ``bench/<name>-<device>.md`` and into the README between that name's and device's markers."""
    (REPO / "bench" / f"{name}-{device}.md").write_text(f"# {title} ({device})\n\n{text}")
    markers = (f"<!-- bench-{name}-{device}:start -->", f"<!-- bench-{name}-{device}:end -->")
    write_between_markers(REPO / "README.md", markers, text)


def main(argv: list[str] | None = None) -> None:
    parser = real_code_parser(__doc__)
    parser.add_argument("--repeats", type=int, default=3, help="own-loop answers timed per token")
    parser.add_argument("--steps", type=int, default=5, help="batched steps timed at each batch size")
    args = parser.parse_args(argv)
    backend, machine, load_at_start = built_backend(args)
    jobs = make_jobs()
    for job in jobs[:: len(QUESTIONS)]:
        timed(f"encode_image {job.image_key} frame", lambda job=job: backend._encode(job))  # into the frame cache

    speeds = [own_token_speed(backend, jobs[0], args.repeats)]
    print(f"own loop: {speeds[0].ms:.1f} ms / token", flush=True)
    for rows in BATCHES:
        speeds.append(rows_step_speed(backend, jobs, rows, warmup=2, steps=args.steps))
        print(
            f"MoondreamRows.step() at {rows} rows: {speeds[-1].ms:.1f} ms, {speeds[-1].tokens_per_s:.1f} tokens/s",
            flush=True,
        )
    own = own_loop_answers(backend, jobs)
    print(f"own loop, {len(jobs)} answers one after another: {own.seconds:.1f} s", flush=True)
    batched = batched_answers(backend, jobs)
    print(f"MoondreamRows, {len(jobs)} answers joined at once: {batched.seconds:.1f} s", flush=True)
    same = identity(own, batched, lone_row_logits(backend, jobs[0]))
    print(same, flush=True)

    text = report(heading(backend, machine, load_at_start), speeds, own, batched, same)
    print(text, flush=True)
    if not args.no_readme:
        publish("moondream-batch", "moondream2's running batch against its own loop", args.device, text)


if __name__ == "__main__":
    main()
