"""The scheduler's promises, checked against a scripted backend double (no model needed)."""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass, field

import pytest
import torch
from PIL import Image

from tests.doubles import (
    PreparingBackendDouble,
    RecordingSinkDouble,
    ScriptedBackendDouble,
    SteppingBackendDouble,
)
from vlm import scheduler as scheduling
from vlm.backends.base import Job
from vlm.errors import VlmError
from vlm.metrics import MeteredScheduler, Metrics
from vlm.request_queue import MAX_WAITING_PER_CLIENT
from vlm.results import Answer
from vlm.scheduler import Request, Scheduler

pytestmark = pytest.mark.unit

FRAME = Image.new("RGB", (8, 8))


def make_request(sink: RecordingSinkDouble, rid: str, client: str, text: str = "hi", ordered: bool = False) -> Request:
    return Request(
        id=rid,
        client=client,
        job=Job(task="query", image=FRAME, image_key="k", text=text),
        sink=sink.to(rid),
        door="socketio",
        ordered=ordered,
    )


def test_answers_stream_then_finish_once_per_request() -> None:
    sink = RecordingSinkDouble()
    scheduler = Scheduler(ScriptedBackendDouble())
    scheduler.submit(make_request(sink, "a", "alice", "red circle"))
    finals = sink.wait_finals(1)
    kind, payload = finals["a"]
    assert kind == "response" and payload.result.answer == "echo: red circle"
    deltas = "".join(value for kind, rid, value in sink.events if kind == "stream")
    assert deltas == "echo: red circle"
    assert set(asdict(payload.timing)) >= {"queue_ms", "decode_ms", "model_ms", "first_token_ms", "total_ms"}


def test_returning_clients_share_a_batch() -> None:
    sink = RecordingSinkDouble()
    backend = ScriptedBackendDouble(max_batch_size=8)
    scheduler = Scheduler(backend, batch_window_s=30)
    for round_ in range(2):
        for i in range(4):
            scheduler.submit(make_request(sink, f"r{round_}-{i}", f"client{i}", f"q{i}"))
        sink.wait_finals(4 * (round_ + 1))
    finals = sink.finals()
    assert {payload.result.answer for _, payload in finals.values()} == {f"echo: q{i}" for i in range(4)}
    assert sorted(backend.batches[-1]) == [f"q{i}" for i in range(4)], "the second round waited for all four"


def test_a_lone_client_does_not_wait_for_company() -> None:
    sink = RecordingSinkDouble()
    scheduler = Scheduler(ScriptedBackendDouble(max_batch_size=8), batch_window_s=30)
    for i in range(3):
        scheduler.submit(make_request(sink, f"r{i}", "alice"))
        assert sink.wait_finals(i + 1)[f"r{i}"][0] == "response", "answered without waiting out the 30 s window"


@pytest.mark.parametrize("gone", ["disconnected", "one-shot HTTP request"])
def test_clients_that_will_not_return_are_not_waited_for(gone: str) -> None:
    sink = RecordingSinkDouble()
    scheduler = Scheduler(ScriptedBackendDouble(max_batch_size=8), batch_window_s=30)
    first = make_request(sink, "first", "bob")
    first.returns = gone == "disconnected"
    scheduler.submit(first)
    sink.wait_finals(1)
    if gone == "disconnected":
        scheduler.forget_client("bob")
    scheduler.submit(make_request(sink, "a", "alice"))
    assert sink.wait_finals(2)["a"][0] == "response", "answered without waiting out the 30 s window"


def worker_held_by(client: str, rid: str) -> tuple[RecordingSinkDouble, ScriptedBackendDouble, Scheduler]:
    """A one-row scheduler whose worker is running ``client``'s request until ``backend.hang`` is cleared."""
    sink, backend = RecordingSinkDouble(), ScriptedBackendDouble(max_batch_size=1)
    backend.hang.set()
    scheduler = Scheduler(backend, batch_window_s=0)
    scheduler.submit(make_request(sink, rid, client))
    time.sleep(0.05)  # the request is now running and holding the worker
    return sink, backend, scheduler


def test_newer_request_supersedes_and_live_frame_keeps_its_place() -> None:
    sink, backend, scheduler = worker_held_by("bob", "busy")
    scheduler.submit(make_request(sink, "live1", "alice", "frame one"))
    scheduler.submit(make_request(sink, "carol1", "carol"))
    scheduler.submit(make_request(sink, "live2", "alice", "frame two"))
    backend.hang.clear()
    finals = sink.wait_finals(4)
    assert finals["live1"] == ("query_error", "cancelled")
    assert finals["live2"][1].result.answer == "echo: frame two"
    assert finals["carol1"][0] == "response"
    assert backend.batches[1:] == [["frame two"], ["hi"]], "alice's replacement kept alice's turn"


def test_ordered_requests_wait_their_turn_and_a_request_with_an_id_supersedes_them() -> None:
    sink, backend, scheduler = worker_held_by("seed", "first")
    scheduler.submit(make_request(sink, "second", "seed", "two", ordered=True))
    scheduler.submit(make_request(sink, "third", "seed", "three", ordered=True))
    scheduler.submit(make_request(sink, "other", "bob"))
    backend.hang.clear()
    finals = sink.wait_finals(4)
    seed_answers = [rid for kind, rid, _ in sink.events if kind == "response" and rid != "other"]
    assert seed_answers == ["first", "second", "third"]
    assert finals["third"][1].result.answer == "echo: three"
    assert scheduler.pending() == 0

    sink, backend, scheduler = worker_held_by("mixed", "running")
    scheduler.submit(make_request(sink, "waiting", "mixed", ordered=True))
    scheduler.submit(make_request(sink, "newest", "mixed"))
    backend.hang.clear()
    finals = sink.wait_finals(3)
    assert finals["running"] == finals["waiting"] == ("query_error", "cancelled")
    assert finals["newest"][0] == "response"


def test_ordered_requests_waiting_are_bounded() -> None:
    sink, backend, scheduler = worker_held_by("seed", "first")
    for i in range(MAX_WAITING_PER_CLIENT + 1):
        scheduler.submit(make_request(sink, f"w{i}", "seed", ordered=True))
    assert sink.wait_finals(1)[f"w{MAX_WAITING_PER_CLIENT}"] == ("query_error", "busy")
    assert scheduler.cancel("seed", "w0"), "a waiting request can be cancelled by its id"
    backend.hang.clear()
    finals = sink.wait_finals(MAX_WAITING_PER_CLIENT + 2)
    assert finals["w0"] == ("query_error", "cancelled") and finals["w1"][0] == "response"


def test_cancel_stops_a_running_generation() -> None:
    sink = RecordingSinkDouble()
    scheduler = Scheduler(ScriptedBackendDouble(word_delay_s=0.05))
    scheduler.submit(make_request(sink, "long", "alice", LONG))
    wait_streamed(sink, "long", 2)
    assert scheduler.cancel("alice", "long")
    finals = sink.wait_finals(1)
    assert finals["long"] == ("query_error", "cancelled")
    at_cancel = streamed(sink, "long")
    time.sleep(0.2)  # four more words, were it still generating
    assert streamed(sink, "long") <= at_cancel + 1, "no tokens are produced after the cancel (one may be under way)"


def test_a_request_that_waits_hears_how_many_go_before_it_until_it_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Told at the watchdog's next look once it has waited ``WAIT_TOLD_AFTER_S``, again only when the number
    changes, and never once it is running: the page shows "2 ahead" and must not show it over the answer."""
    monkeypatch.setattr(scheduling, "WAIT_TOLD_AFTER_S", 0.0)
    sink, backend = RecordingSinkDouble(), ScriptedBackendDouble(max_batch_size=1)
    backend.hang.set()
    scheduler = Scheduler(backend, batch_window_s=0, timeout_s=3.0)  # the watchdog looks every 0.75 s
    scheduler.submit(make_request(sink, "busy", "bob"))
    time.sleep(0.05)  # running, and holding the worker
    for rid, client in (("a1", "alice"), ("c1", "carol"), ("d1", "dave")):
        scheduler.submit(make_request(sink, rid, client))

    def told() -> list[tuple[str, int]]:
        return [(rid, ahead) for kind, rid, ahead in sink.events if kind == "queued"]

    with sink.finished:
        assert sink.finished.wait_for(lambda: len(told()) == 3, 2.0), told()
    assert told() == [("a1", 0), ("c1", 1), ("d1", 2)]
    assert scheduler.cancel("alice", "a1")
    with sink.finished:
        assert sink.finished.wait_for(lambda: len(told()) == 5, 2.0), told()
    assert told()[3:] == [("c1", 0), ("d1", 1)], "told again when the number changed"
    backend.hang.clear()
    assert sink.wait_finals(4)["d1"][0] == "response"
    time.sleep(1.0)  # a look of the watchdog after every request ran
    assert len(told()) == 5, "nothing more once running"
    for rid in ("c1", "d1"):
        kinds = [kind for kind, event_rid, _ in sink.events if event_rid == rid]
        assert kinds.index("stream") > max(i for i, kind in enumerate(kinds) if kind == "queued")


def test_full_queue_answers_busy() -> None:
    sink = RecordingSinkDouble()
    backend = ScriptedBackendDouble(max_batch_size=1)
    backend.hang.set()
    scheduler = Scheduler(backend, max_queue=2, batch_window_s=0)
    for i in range(4):
        scheduler.submit(make_request(sink, f"r{i}", f"c{i}"))
        time.sleep(0.02)
    assert sink.wait_finals(1)["r3"] == ("query_error", "busy")
    backend.hang.clear()
    finals = sink.wait_finals(4)
    assert [finals[f"r{i}"][0] for i in range(3)] == ["response"] * 3


def test_model_errors_and_oom_fail_only_that_batch() -> None:
    sink = RecordingSinkDouble()
    backend = ScriptedBackendDouble()
    scheduler = Scheduler(backend, batch_window_s=0)
    backend.fail_with = torch.OutOfMemoryError("CUDA out of memory")
    scheduler.submit(make_request(sink, "oom", "a"))
    assert sink.wait_finals(1)["oom"] == ("query_error", "model_error")
    backend.fail_with = RuntimeError("boom")
    scheduler.submit(make_request(sink, "boom", "a"))
    assert sink.wait_finals(2)["boom"] == ("query_error", "model_error")
    backend.fail_with = None
    scheduler.submit(make_request(sink, "fine", "a"))
    assert sink.wait_finals(3)["fine"][0] == "response"


def test_a_stuck_call_times_out_and_nothing_else_runs_on_the_backend_meanwhile() -> None:
    sink = RecordingSinkDouble()
    backend = ScriptedBackendDouble(max_batch_size=1)
    backend.hang_once = True
    scheduler = Scheduler(backend, batch_window_s=0, timeout_s=0.3)
    scheduler.submit(make_request(sink, "stuck", "a"))
    assert sink.wait_finals(1, timeout_s=3)["stuck"] == ("query_error", "timeout")
    scheduler.submit(make_request(sink, "after", "b"))
    time.sleep(0.8)  # well past 1.5x the timeout, where a fresh worker used to start on the same backend
    assert scheduler.stuck_s() > 0, "reported as stuck while the call has not come back"
    assert "after" not in sink.finals() and len(backend.batches) == 1, "nothing else entered the backend"
    backend.released.set()
    assert sink.wait_finals(2, timeout_s=3)["after"][0] == "response"
    assert backend.most_inside == 1
    assert scheduler.stuck_s() == 0


def test_an_overrunning_generation_is_stopped_at_its_next_token() -> None:
    sink = RecordingSinkDouble()
    backend = ScriptedBackendDouble(max_batch_size=1, word_delay_s=0.05)
    scheduler = Scheduler(backend, batch_window_s=0, timeout_s=0.3)
    scheduler.submit(make_request(sink, "long", "a", " ".join(["word"] * 60)))
    assert sink.wait_finals(1, timeout_s=3)["long"] == ("query_error", "timeout")
    time.sleep(0.3)
    assert scheduler.stuck_s() == 0, "the backend came back soon after the timeout"
    assert backend.words_emitted < 30, "it stopped at the next word, not at the end of the answer"
    scheduler.submit(make_request(sink, "next", "b"))
    assert sink.wait_finals(2, timeout_s=3)["next"][0] == "response"
    assert backend.most_inside == 1


def test_many_clients_never_overlap_on_the_backend() -> None:
    sink = RecordingSinkDouble()
    backend = ScriptedBackendDouble(max_batch_size=2, word_delay_s=0.002)
    scheduler = Scheduler(backend, batch_window_s=0.001, timeout_s=0.05)
    for i in range(40):
        scheduler.submit(make_request(sink, f"r{i}", f"c{i % 8}", "one two three four five"))
    deadline = time.monotonic() + 10
    while scheduler.pending() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert backend.most_inside == 1


def test_disconnected_client_work_is_dropped_silently() -> None:
    sink, backend, scheduler = worker_held_by("gone", "x")
    scheduler.forget_client("gone")
    backend.hang.clear()
    time.sleep(0.1)
    assert sink.finals() == {}
    assert scheduler.pending() == 0


@dataclass
class SlowToTellSinkDouble:
    """A sink whose delivery of the answer takes as long as the test says (a busy outbox, a slow thread)."""

    telling: threading.Event = field(default_factory=threading.Event)
    may_finish: threading.Event = field(default_factory=threading.Event)

    def waiting(self, ahead: int) -> None:
        pass

    def stream(self, delta: str) -> None:
        pass

    def answered(self, answer: Answer) -> None:
        self._tell()

    def failed(self, error: VlmError) -> None:
        self._tell()

    def _tell(self) -> None:
        self.telling.set()
        self.may_finish.wait(5)


def test_an_answer_still_being_told_counts_as_pending() -> None:
    """A drain on SIGTERM exits once ``pending()`` is 0: it was 0 from the moment the request finished,
    before its sink had the answer, and the process could exit with the answer unsent (seen in CI)."""
    sink = SlowToTellSinkDouble()
    scheduler = Scheduler(ScriptedBackendDouble(), batch_window_s=0)
    scheduler.submit(
        Request(
            id="a",
            client="alice",
            job=Job(task="query", image=FRAME, image_key="k", text="hi"),
            sink=sink,
            door="socketio",
        )
    )
    assert sink.telling.wait(5)
    assert scheduler.pending() == 1, "the answer is not yet with its sink"
    sink.may_finish.set()
    deadline = time.monotonic() + 5
    while scheduler.pending() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert scheduler.pending() == 0


LONG = " ".join(f"w{i}" for i in range(30))


def streamed(sink: RecordingSinkDouble, rid: str) -> int:
    return sum(1 for kind, request_id, _ in sink.events if kind == "stream" and request_id == rid)


def wait_streamed(sink: RecordingSinkDouble, rid: str, count: int) -> None:
    with sink.finished:
        assert sink.finished.wait_for(lambda: streamed(sink, rid) >= count, 5), f"{rid} streamed {count} words"


def test_a_newcomer_joins_the_running_batch_and_a_finished_row_leaves_at_once() -> None:
    sink, backend = RecordingSinkDouble(), SteppingBackendDouble(max_batch_size=8, word_delay_s=0.02)
    scheduler = Scheduler(backend, batch_window_s=0)
    scheduler.submit(make_request(sink, "long", "alice", LONG))
    wait_streamed(sink, "long", 3)
    scheduler.submit(make_request(sink, "short", "bob", "hi"))
    finals = sink.wait_finals(1)
    assert set(finals) == {"short"}, "the newcomer was answered while the long answer was still being generated"
    finals = sink.wait_finals(2)
    assert finals["long"][1].result.answer == f"echo: {LONG}" and finals["short"][1].result.answer == "echo: hi"
    together = [i for i, rows in enumerate(backend.steps) if sorted(rows) == sorted([LONG, "hi"])]
    assert len(together) == 1, "'echo: hi' joined with its first word and took one step in the running batch"
    assert backend.steps[together[-1] + 1] == [LONG], "the finished row left before the next step"


def test_a_joining_job_that_fails_alone_fails_only_itself() -> None:
    sink, backend = RecordingSinkDouble(), SteppingBackendDouble(max_batch_size=8, word_delay_s=0.02)
    backend.fails_alone = {"broken"}
    scheduler = Scheduler(backend, batch_window_s=0)
    scheduler.submit(make_request(sink, "long", "alice", LONG))
    wait_streamed(sink, "long", 2)
    scheduler.submit(make_request(sink, "bad", "bob", "broken"))
    finals = sink.wait_finals(2)
    assert finals["bad"] == ("query_error", "model_error")
    assert finals["long"][0] == "response" and finals["long"][1].result.answer == f"echo: {LONG}"
    assert streamed(sink, "bad") == 0


def test_a_join_that_breaks_part_way_fails_every_row_once_and_the_next_request_is_served() -> None:
    """Rows that had already streamed (the running one, and a newcomer that joined before the fault) end with one
    error each, never an answer too; the worker then serves the next request from an empty batch."""
    sink, backend = RecordingSinkDouble(), SteppingBackendDouble(max_batch_size=8, word_delay_s=0.05)
    backend.breaks_join = {"breaks"}
    scheduler = Scheduler(backend, batch_window_s=0)
    scheduler.submit(make_request(sink, "long", "alice", LONG))
    wait_streamed(sink, "long", 2)
    scheduler.submit(make_request(sink, "first", "bob", "fine words here"))
    scheduler.submit(make_request(sink, "fault", "carol", "breaks"))
    finals = sink.wait_finals(3)
    assert {rid: kind for rid, (kind, _) in finals.items()} == dict.fromkeys(["long", "first", "fault"], "query_error")
    ends = [(kind, rid) for kind, rid, _ in sink.events if kind != "stream"]
    assert sorted(ends) == sorted(set(ends)), "one end each"
    assert streamed(sink, "first") >= 1, "the newcomer before the fault had started"
    scheduler.submit(make_request(sink, "after", "dave", "hi"))
    assert sink.wait_finals(4)["after"][1].result.answer == "echo: hi"


def test_wave_batching_makes_a_newcomer_wait_for_the_whole_wave() -> None:
    sink = RecordingSinkDouble()
    scheduler = Scheduler(
        SteppingBackendDouble(max_batch_size=8, word_delay_s=0.01), batch_window_s=0, continuous=False
    )
    scheduler.submit(make_request(sink, "long", "alice", LONG))
    wait_streamed(sink, "long", 3)
    scheduler.submit(make_request(sink, "short", "bob", "hi"))
    assert list(sink.wait_finals(2)) == ["long", "short"]


def test_the_running_batch_never_exceeds_the_batch_size() -> None:
    sink, backend = RecordingSinkDouble(), SteppingBackendDouble(max_batch_size=2, word_delay_s=0.005)
    scheduler = Scheduler(backend, batch_window_s=0)
    for i in range(5):
        scheduler.submit(make_request(sink, f"r{i}", f"c{i}", f"q{i} a b"))
    finals = sink.wait_finals(5)
    assert all(finals[f"r{i}"][1].result.answer == f"echo: q{i} a b" for i in range(5))
    assert max(len(rows) for rows in backend.steps) == 2


def test_a_cancelled_row_leaves_the_running_batch() -> None:
    sink, backend = RecordingSinkDouble(), SteppingBackendDouble(max_batch_size=8, word_delay_s=0.02)
    scheduler = Scheduler(backend, batch_window_s=0)
    scheduler.submit(make_request(sink, "long", "alice", LONG))
    scheduler.submit(make_request(sink, "other", "bob", f"{LONG} more"))
    wait_streamed(sink, "long", 2)
    assert scheduler.cancel("alice", "long")
    assert sink.wait_finals(2, timeout_s=10)["other"][0] == "response"
    assert backend.steps[6:] == [[f"{LONG} more"]] * (len(backend.steps) - 6), "the cancelled row left"
    assert streamed(sink, "long") < 6


def test_a_newcomer_is_prepared_off_the_worker_while_the_running_batch_keeps_stepping() -> None:
    sink, backend = RecordingSinkDouble(), PreparingBackendDouble(max_batch_size=8, word_delay_s=0.02)
    backend.held = {"hi"}
    scheduler = Scheduler(backend, batch_window_s=0)
    scheduler.submit(make_request(sink, "long", "alice", LONG))
    wait_streamed(sink, "long", 3)
    scheduler.submit(make_request(sink, "short", "bob", "hi"))
    wait_streamed(sink, "long", 12)
    assert not any("hi" in rows for rows in backend.steps), "bob joins only once prepared"
    backend.release.set()
    finals = sink.wait_finals(2)
    assert finals["short"][1].result.answer == "echo: hi" and finals["long"][1].result.answer == f"echo: {LONG}"
    assert all(thread.startswith("vlm-prepare-") for _, thread in backend.prepared_by), "the worker prepared nothing"
    assert [job.prepared for job in backend.joined] == [f"inputs for {LONG}", "inputs for hi"]


def test_a_request_that_cannot_be_prepared_fails_alone() -> None:
    sink, backend = RecordingSinkDouble(), PreparingBackendDouble(max_batch_size=8)
    backend.unpreparable = {"bad"}
    scheduler = Scheduler(backend, batch_window_s=0)
    for rid, client in (("ok1", "alice"), ("bad", "bob"), ("ok2", "carol")):
        scheduler.submit(make_request(sink, rid, client, rid))
    finals = sink.wait_finals(3)
    assert finals["bad"] == ("query_error", "model_error")
    assert finals["ok1"][1].result.answer == "echo: ok1" and finals["ok2"][1].result.answer == "echo: ok2"


def test_work_ahead_is_told_to_stop_once_its_request_has_ended() -> None:
    """moondream2 runs a whole detect ahead: a cancel while it runs must be able to cut it short."""
    sink, backend = RecordingSinkDouble(), PreparingBackendDouble(max_batch_size=8)
    backend.held = {"slow"}
    scheduler = Scheduler(backend, batch_window_s=0)
    scheduler.submit(make_request(sink, "slow", "alice", "slow"))
    deadline = time.monotonic() + 5
    while "slow" not in backend.stop_checks and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not backend.stop_checks["slow"]()
    assert scheduler.cancel("alice", "slow")
    assert backend.stop_checks["slow"](), "the request ended while it was being prepared"
    backend.release.set()
    assert sink.wait_finals(1)["slow"] == ("query_error", "cancelled")


def test_several_requests_are_prepared_at_once_and_each_joins_when_ready() -> None:
    sink, backend = RecordingSinkDouble(), PreparingBackendDouble(max_batch_size=8, word_delay_s=0.02)
    backend.held = {"slow"}
    scheduler = Scheduler(backend, batch_window_s=0, prepare_threads=3)
    scheduler.submit(make_request(sink, "slow", "alice", "slow"))
    for rid, client in (("a", "bob"), ("b", "carol")):
        scheduler.submit(make_request(sink, rid, client, f"{LONG} {rid}"))
    wait_streamed(sink, "a", 3)
    wait_streamed(sink, "b", 3)
    assert "slow" not in sink.finals(), "a frame that is slow to prepare holds up nobody else's"
    backend.release.set()
    assert sink.wait_finals(3)["slow"][1].result.answer == "echo: slow"
    assert len({thread for _, thread in backend.prepared_by}) >= 2


@pytest.mark.parametrize("threads", [1, 4])
def test_only_as_many_requests_are_prepared_ahead_as_could_join(threads: int) -> None:
    sink, backend = RecordingSinkDouble(), PreparingBackendDouble(max_batch_size=1, word_delay_s=0.02)
    scheduler = Scheduler(backend, batch_window_s=0, prepare_threads=threads)
    scheduler.submit(make_request(sink, "long", "alice", LONG))
    wait_streamed(sink, "long", 2)
    for i in range(4):
        scheduler.submit(make_request(sink, f"r{i}", f"c{i}", f"q{i}"))
    wait_streamed(sink, "long", 10)
    assert [text for text, _ in backend.prepared_by] == [LONG, "q0"], "one prepared ahead of a full batch"
    finals = sink.wait_finals(5)
    assert all(finals[f"r{i}"][1].result.answer == f"echo: q{i}" for i in range(4))


@pytest.mark.parametrize("prepare_ahead", [False, True])
def test_prepare_runs_on_its_thread_for_every_request_or_for_none(prepare_ahead: bool) -> None:
    sink, backend = RecordingSinkDouble(), PreparingBackendDouble(max_batch_size=4)
    scheduler = Scheduler(backend, batch_window_s=0, prepare_ahead=prepare_ahead)
    for i in range(3):
        scheduler.submit(make_request(sink, f"r{i}", f"c{i}", f"q{i}"))
    assert all(kind == "response" for kind, _ in sink.wait_finals(3).values())
    assert len(backend.prepared_by) == (3 if prepare_ahead else 0)
    assert all((job.prepared is not None) == prepare_ahead for job in backend.joined)


def test_healthz_says_degraded_while_the_model_is_stuck() -> None:
    from vlm.config import Settings
    from vlm.web import create_app

    sink, backend = RecordingSinkDouble(), ScriptedBackendDouble(max_batch_size=1)
    backend.hang_once = True
    scheduler = Scheduler(backend, batch_window_s=0, timeout_s=0.2)
    web = create_app(Settings(secret_key="test"))
    web.slot.install(backend, scheduler)
    health = web.app.test_client()
    assert health.get("/healthz").json["status"] == "ok"
    scheduler.submit(make_request(sink, "stuck", "a"))
    assert sink.wait_finals(1, timeout_s=3)["stuck"] == ("query_error", "timeout")
    reply = health.get("/healthz")
    assert (reply.status_code, reply.json["status"]) == (503, "degraded") and reply.json["stuck_s"] >= 0
    backend.released.set()
    deadline = time.monotonic() + 5
    while health.get("/healthz").json["status"] != "ok" and time.monotonic() < deadline:
        time.sleep(0.02)
    assert health.get("/healthz").json["status"] == "ok"


def test_the_metered_scheduler_keeps_the_backends_running_batch_and_times_its_joins_and_steps() -> None:
    sink, backend, metrics = (
        RecordingSinkDouble(),
        SteppingBackendDouble(max_batch_size=8, word_delay_s=0.02),
        Metrics(),
    )
    scheduler = MeteredScheduler(backend, metrics=metrics, batch_window_s=0)
    scheduler.submit(make_request(sink, "long", "alice", LONG))
    wait_streamed(sink, "long", 3)
    scheduler.submit(make_request(sink, "short", "bob", "hi"))
    assert list(sink.wait_finals(1)) == ["short"], "the newcomer joined the running batch"
    sink.wait_finals(2)
    sample = metrics.registry.get_sample_value
    assert (sample("vlm_join_size_count"), sample("vlm_join_size_sum")) == (2, 2), "two joins of one request each"
    assert sample("vlm_decoder_call_seconds_count", {"call": "join"}) == 2
    steps = sample("vlm_decoder_call_seconds_count", {"call": "step"})
    assert steps == sample("vlm_batch_size_count") >= 30, "every step of the 30-word answer timed"
    assert sample("vlm_decoder_call_seconds_sum", {"call": "step"}) >= 0.02 * 30, "each step slept 20 ms"
