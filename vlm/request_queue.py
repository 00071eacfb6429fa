"""Where a request stands, and the queue policy that decides who waits, who is refused and who goes next.

The policy is one slot per client: a newer request supersedes the client's unfinished one
(replacing a queued one in place, so latest wins without losing its turn), which alone makes
the queue fair across clients. Requests marked ``ordered`` wait behind the client's unfinished
one instead, a few at most, and take its place when it ends. The scheduler holds its lock
around every call and decides everything else (batching, timeouts, how a request ends).
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable
from enum import Enum
from typing import Generic, Protocol, TypeVar

from .errors import Code, VlmError

# Ordered requests one client may have waiting behind its unfinished one before it hears ``busy``.
MAX_WAITING_PER_CLIENT = 8


class RequestStatus(Enum):
    """A request's life: NEW -> (WAITING ->) QUEUED -> RUNNING -> FINISHED; FINISHED may come at any point, once."""

    NEW = "new"  # made, not yet submitted
    WAITING = "waiting"  # ordered: behind its client's unfinished request
    QUEUED = "queued"  # its client's one place in the queue
    RUNNING = "running"  # admitted into the running batch
    FINISHED = "finished"  # answered, failed, cancelled, timed out or dropped


class Queueable(Protocol):
    client: str
    ordered: bool
    status: RequestStatus


R = TypeVar("R", bound=Queueable)


def queue_full(max_queue: int) -> VlmError:
    """The refusal a new client hears when the queue is full (also before its frame is decoded)."""
    return VlmError(Code.BUSY, f"the server is busy ({max_queue} requests queued); try again shortly")


class ClientQueue(Generic[R]):
    """Queued requests in arrival order, at most one per client, plus each client's unfinished one and its waiters."""

    def __init__(self, max_queue: int) -> None:
        self.max_queue = max_queue
        self._queued: OrderedDict[str, R] = OrderedDict()
        self._active: dict[str, R] = {}  # each client's unfinished request: queued or running
        self._waiting: dict[str, deque[R]] = {}

    def offer(self, request: R) -> list[R]:
        """Queue ``request``, or put it behind its client's unfinished one if ordered; returns what it supersedes.

        Raises ``VlmError`` (busy) when there is no room for it.
        """
        if request.ordered and request.client in self._active:
            waiting = self._waiting.setdefault(request.client, deque())
            if len(waiting) >= MAX_WAITING_PER_CLIENT:
                raise VlmError(
                    Code.BUSY, f"{MAX_WAITING_PER_CLIENT} questions are already waiting; wait for their answers"
                )
            waiting.append(request)
            request.status = RequestStatus.WAITING
            return []
        if request.client not in self._queued and len(self._queued) >= self.max_queue:
            raise queue_full(self.max_queue)
        superseded = [*self._waiting.pop(request.client, ())]
        if request.client in self._active:
            superseded.append(self._active[request.client])
        self._place(request)
        return superseded

    def _place(self, request: R) -> None:
        self._queued[request.client] = request
        self._active[request.client] = request
        request.status = RequestStatus.QUEUED

    def has_room(self, client: str, *, ordered: bool = False) -> bool:
        """Whether ``offer`` would not refuse this client's request for a full queue."""
        return (ordered and client in self._active) or client in self._queued or len(self._queued) < self.max_queue

    def pop(self, ready: Callable[[R], bool] = lambda request: True) -> R | None:
        """The longest-queued request that is ``ready``, now running (it stays its client's unfinished one)."""
        for client, request in self._queued.items():
            if ready(request):
                del self._queued[client]
                request.status = RequestStatus.RUNNING
                return request
        return None

    def queued(self) -> list[R]:
        """The queued requests, longest-queued first."""
        return list(self._queued.values())

    def remove(self, request: R) -> R | None:
        """Forget an ended request; returns the client's next waiting request if it took the ended one's place."""
        client = request.client
        if self._queued.get(client) is request:
            del self._queued[client]
        waiting = self._waiting.get(client)
        if waiting and request in waiting:
            waiting.remove(request)
        promoted = None
        if self._active.get(client) is request:
            del self._active[client]
            if waiting:
                promoted = waiting.popleft()
                self._place(promoted)
        if not waiting:
            self._waiting.pop(client, None)
        return promoted

    def unfinished(self, client: str) -> list[R]:
        """The client's unfinished request, if any, then those waiting behind it."""
        active = self._active.get(client)
        return [*([active] if active is not None else []), *self._waiting.get(client, ())]

    def everyone_unfinished(self) -> list[R]:
        """Every client's unfinished request and those waiting behind it."""
        return [request for client in list(self._active) for request in self.unfinished(client)]

    def drop_waiting(self, client: str) -> list[R]:
        """Take the client's waiting requests out (the client has gone)."""
        return [*self._waiting.pop(client, ())]

    def active(self, client: str) -> R | None:
        return self._active.get(client)

    def queued_clients(self) -> set[str]:
        return set(self._queued)

    def __len__(self) -> int:
        """How many requests are queued (not counting those waiting behind a client's unfinished one)."""
        return len(self._queued)

    def pending(self) -> int:
        """Queued plus waiting requests."""
        return len(self._queued) + sum(map(len, self._waiting.values()))
