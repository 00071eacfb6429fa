"""bench/moondream_arrivals.py's measurements, run on the moondream2 look-alike with questions arriving at once.

The benchmark builds moondream2's real code at full size; its measuring function takes any ``MoondreamBackend``,
so the look-alike checks that both modes answer every question through the app's scheduler and that the report
has what it says.
"""

from __future__ import annotations

import pytest

from bench.moondream_arrivals import ASKED, MODES, arrivals, report
from tests.moondream_like import MoondreamLike
from tests.test_moondream_backend import load
from vlm.backends.moondream import MoondreamBackend


@pytest.fixture(scope="module")
def md(moondream_like: MoondreamLike) -> MoondreamBackend:
    return load(moondream_like, max_crops=1)


def test_both_modes_answer_every_arrival_and_the_report_shows_them(md: MoondreamBackend) -> None:
    runs = [arrivals(md, mode, gap_s=0.05) for mode in MODES]
    for run in runs:
        assert len(run.timelines) == ASKED
        assert all(timeline.tokens > 0 and timeline.latency > 0 for timeline in run.timelines)
        assert all(timeline.longest_gap <= timeline.latency for timeline in run.timelines)
    text = report("Machine: test.", runs)
    assert "| `--prepare worker` |" in text and "| `--prepare prefill` |" in text
