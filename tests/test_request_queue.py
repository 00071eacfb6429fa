"""The queue policy on its own: one place per client, latest wins, ordered requests wait their turn."""

from __future__ import annotations

import pytest

from tests.doubles import RecordingSinkDouble, ScriptedBackendDouble
from tests.test_scheduler import make_request
from vlm.errors import Code, VlmError
from vlm.request_queue import MAX_WAITING_PER_CLIENT, ClientQueue, RequestStatus
from vlm.scheduler import Request, Scheduler

pytestmark = pytest.mark.unit

SINK = RecordingSinkDouble()


def request(rid: str, client: str, *, ordered: bool = False) -> Request:
    return make_request(SINK, rid, client, ordered=ordered)


def test_a_newer_request_takes_its_clients_place_in_line() -> None:
    queue: ClientQueue[Request] = ClientQueue(max_queue=8)
    first, other, newer = request("a1", "alice"), request("b1", "bob"), request("a2", "alice")
    assert queue.offer(first) == [] and queue.offer(other) == []
    assert queue.offer(newer) == [first], "the queued one is superseded"
    assert (newer.status, len(queue)) == (RequestStatus.QUEUED, 2)
    assert [queue.pop(), queue.pop()] == [newer, other], "alice kept her turn ahead of bob"
    assert newer.status is RequestStatus.RUNNING
    assert queue.active("alice") is newer, "a running request is still its client's unfinished one"


def test_ordered_requests_wait_behind_the_unfinished_one_and_follow_in_turn() -> None:
    queue: ClientQueue[Request] = ClientQueue(max_queue=8)
    running = request("r", "alice")
    queue.offer(running)
    queue.pop()
    waiters = [request(f"w{i}", "alice", ordered=True) for i in range(MAX_WAITING_PER_CLIENT)]
    assert all(queue.offer(waiter) == [] for waiter in waiters)
    assert {waiter.status for waiter in waiters} == {RequestStatus.WAITING}
    with pytest.raises(VlmError) as refused:
        queue.offer(request("one-too-many", "alice", ordered=True))
    assert refused.value.code == Code.BUSY
    assert queue.unfinished("alice") == [running, *waiters] and queue.pending() == MAX_WAITING_PER_CLIENT
    assert queue.remove(running) is waiters[0] and waiters[0].status is RequestStatus.QUEUED
    assert queue.remove(waiters[1]) is None, "a waiter that ends early leaves the line without promoting anyone"
    assert queue.pop() is waiters[0] and queue.remove(waiters[0]) is waiters[2]


def test_an_unordered_request_supersedes_the_unfinished_one_and_its_waiters() -> None:
    queue: ClientQueue[Request] = ClientQueue(max_queue=8)
    running, waiter, newer = request("r", "alice"), request("w", "alice", ordered=True), request("n", "alice")
    queue.offer(running)
    queue.pop()
    queue.offer(waiter)
    assert queue.offer(newer) == [waiter, running]
    assert queue.unfinished("alice") == [newer] and queue.drop_waiting("alice") == []


def test_a_full_queue_refuses_new_clients_only() -> None:
    queue: ClientQueue[Request] = ClientQueue(max_queue=2)
    queue.offer(request("a1", "alice"))
    queue.offer(request("b1", "bob"))
    assert not queue.has_room("carol")
    with pytest.raises(VlmError) as refused:
        queue.offer(request("c1", "carol"))
    assert refused.value.code == Code.BUSY and "2 requests queued" in refused.value.message
    assert queue.has_room("alice") and queue.has_room("alice", ordered=True)
    assert [r.id for r in queue.offer(request("a2", "alice"))] == ["a1"], "a queued client may replace its request"


def test_the_scheduler_leaves_every_request_finished() -> None:
    sink = RecordingSinkDouble()
    scheduler = Scheduler(ScriptedBackendDouble())
    answered, refused = make_request(sink, "a", "alice"), make_request(sink, "b", "bob")
    assert answered.status is RequestStatus.NEW
    scheduler.submit(answered)
    sink.wait_finals(1)
    scheduler.stop_accepting()
    scheduler.submit(refused)
    assert sink.wait_finals(2)["b"] == ("query_error", "shutting_down")
    assert answered.status is refused.status is RequestStatus.FINISHED
