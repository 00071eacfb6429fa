"""bench/moondream_batch.py's measurements, run on the moondream2 look-alike in a few steps.

The benchmark itself builds moondream2's real code at full size; its measuring functions take any
``MoondreamBackend``, so the look-alike (which lays out its decoder as moondream2 does) checks that
they measure what the report says, and that a lone row of the batch computes moondream2's own logits.
"""

from __future__ import annotations

import pytest
import torch

from bench.moondream_batch import (
    BATCHES,
    Answered,
    batched_answers,
    identity,
    lone_row_logits,
    make_jobs,
    own_loop_answers,
    own_token_speed,
    parting_text,
    report,
    rows_step_speed,
)
from tests.moondream_like import MoondreamLike
from tests.test_moondream_backend import load
from vlm.backends.base import Result
from vlm.backends.moondream import MoondreamBackend


@pytest.fixture(scope="module")
def md(moondream_like: MoondreamLike) -> MoondreamBackend:
    return load(moondream_like, max_crops=1)


def test_the_report_has_every_measurement_and_a_lone_row_is_exact(md: MoondreamBackend) -> None:
    jobs = make_jobs(max_new_tokens=4)
    speeds = [own_token_speed(md, jobs[0], repeats=1)]
    speeds += [rows_step_speed(md, jobs, rows, warmup=1, steps=2) for rows in BATCHES]
    own, batched = own_loop_answers(md, jobs), batched_answers(md, jobs)
    same = identity(own, batched, lone_row_logits(md, jobs[0]))

    assert same.lone_row_diff == 0
    assert [speed.rows for speed in speeds] == [1, *BATCHES]
    assert (same.jobs, len(batched.results), len(own.logits), len(batched.logits)) == (16, 16, 16, 16)
    text = report("Machine: test.", speeds, own, batched, same)
    assert "| moondream2's own loop (`_decode_one_tok`) | 1 |" in text
    for rows in BATCHES:
        assert f"| `MoondreamRows.step()` | {rows} |" in text
    assert "| moondream2's own loop, one job after another |" in text
    assert "| `MoondreamRows`, all joined at once |" in text
    assert f"{same.identical} of 16 greedy answers identical" in text


def test_an_answer_that_differs_is_traced_to_the_step_where_its_choice_parts() -> None:
    """Alone, tokens 1 and 2 tie at the second step (the first wins); in the batch token 2 comes out ahead."""
    alone = [torch.tensor([0.0, 3.0, 1.0]), torch.tensor([0.0, 2.0, 2.0]), torch.tensor([5.0, 0.0, 0.0])]
    together = [torch.tensor([0.0, 3.0, 1.0]), torch.tensor([0.0, 1.99, 2.01]), torch.tensor([0.0, 5.0, 0.0])]
    own = Answered({0: Result("t1 t1", tokens=2)}, {0: alone}, seconds=1.0)
    batched = Answered({0: Result("t1 t2", tokens=2)}, {0: together}, seconds=1.0)
    same = identity(own, batched, lone_row=alone[0])
    assert (same.identical, same.lone_row_diff) == (0, 0.0)
    (parting,) = same.partings
    assert (parting.key, parting.step, parting.own_margin) == (0, 1, 0.0)
    assert parting.difference == pytest.approx(0.01)
    assert "answer 0 at decode step 2: its own top two logits 0 apart" in parting_text(same.partings)
