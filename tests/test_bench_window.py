"""The benchmarks' measuring window: ramp-up and drain are left out of throughput and latency."""

from __future__ import annotations

import pytest

from bench.common import Load, Window

pytestmark = pytest.mark.unit


def test_the_window_opens_when_every_client_has_finished_its_first_request() -> None:
    window = Window(clients=2, seconds=5.0)
    window.first_request_done()
    assert window.opened is None and not window.closed()
    window.first_request_done()
    assert window.opened is not None and not window.closed()


def test_throughput_counts_answers_inside_the_window_and_latency_requests_sent_inside_it() -> None:
    window = Window(clients=1, seconds=10.0)
    window.first_request_done()
    assert window.opened is not None
    start = window.opened
    exchanges = [
        (start - 4.0, start - 1.0),  # ramp-up: neither counted
        (start - 1.0, start + 2.0),  # answered inside, asked before: throughput only
        (start + 2.0, start + 6.0),  # both
        (start + 6.0, start + 13.0),  # drained after the window: latency only
    ]
    load = Load()
    window.tally(exchanges, load)
    assert (load.answers, load.seconds, load.throughput) == (2, 10.0, 0.2)
    assert load.latencies == pytest.approx([4.0, 7.0])
