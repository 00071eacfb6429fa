"""The benchmarks' measuring window: ramp-up and drain are left out, and bursts do not swing throughput."""

from __future__ import annotations

import pytest

from bench.common import Load, Window

pytestmark = pytest.mark.unit


def test_the_window_opens_when_every_client_has_finished_its_first_request() -> None:
    window = Window(clients=2, seconds=5.0)
    window.first_request_done(1.0)
    assert window.opened is None and not window.closed()
    window.first_request_done(None)  # not answered: the window does not wait for it forever
    assert window.opened is not None and not window.closed()


def test_the_window_lasts_at_least_three_answers_under_load() -> None:
    window = Window(clients=3, seconds=5.0)
    for latency in (2.0, 4.0, 9.0):
        window.first_request_done(latency)
    assert window.seconds == 12.0


def test_throughput_is_each_clients_rate_inside_the_window_and_latency_is_over_requests_sent_inside_it() -> None:
    window = Window(clients=1, seconds=10.0)
    window.first_request_done(0.1)
    assert window.opened is not None
    start = window.opened
    exchanges = [
        ("a", start - 4.0, start - 1.0),  # ramp-up: neither counted
        ("a", start - 1.0, start + 2.0),  # answered inside, asked before: throughput only
        ("a", start + 2.0, start + 6.0),  # both
        ("a", start + 6.0, start + 13.0),  # drained after the window: latency only
        ("b", start + 1.0, start + 9.0),  # one answer inside: counted over the window
    ]
    load = Load()
    window.tally(exchanges, load)
    assert (load.answers, load.seconds) == (3, 10.0)
    assert load.throughput == pytest.approx(1 / 4.0 + 1 / 10.0)
    assert load.latencies == pytest.approx([4.0, 7.0, 8.0])


def test_a_burst_of_answers_counts_the_same_wherever_the_window_edges_fall() -> None:
    """16 clients answered together every 10 s: 1.6 answers/s whether the window holds two bursts or three."""
    rates = []
    for phase in (0.5, 9.5):
        window = Window(clients=1, seconds=25.0)
        window.first_request_done(0.1)
        assert window.opened is not None
        bursts = [window.opened + phase + 10.0 * k for k in range(4)]
        exchanges = [(f"c{i}", t - 10.0, t) for i in range(16) for t in bursts]
        load = Load()
        window.tally(exchanges, load)
        rates.append(load.throughput)
    assert rates == pytest.approx([1.6, 1.6])
