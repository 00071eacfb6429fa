"""One model worker off the event loop, a bounded fair queue, and continuous batching.

Each client has at most one unfinished request: a newer one supersedes it (a live frame
replaces the queued one in place, so latest wins without losing its turn). That rule alone
makes the queue fair, since arrival order across clients is one slot per client. Requests
marked ``ordered`` (from clients that send no ids, as the original page did) wait behind the
client's unfinished one instead, a few at most, and are answered one after another. That
policy is ``ClientQueue`` (vlm/request_queue.py); a request's ``status`` says where it stands.

The worker feeds the backend's ``Decoder``, a running batch: between decode steps it admits
queued requests into the batch (up to ``max_batch_size`` unfinished), so a newcomer starts at
the next token boundary instead of waiting for the batch to end, and the decoder drops rows
that are answered or cancelled at once. Backends that cannot do that run whole waves
(``WaveDecoder``), as ``continuous=False`` makes every backend do. An idle worker waits a
few milliseconds for company before starting, because a batched step costs little more
than a single one, but only for company it has reason to expect: clients seen in the last
half second that are not queued yet. A lone user never waits.

Where the backend ``prepares`` (a transformers model on a GPU; ``--prepare`` overrides that),
what needs no running batch (the processor resizing and normalising a frame, tokenising the prompt;
with ``--prepare encode`` the vision tower too, with ``--prepare prefill`` the prompt's whole prefill)
is done by threads of its own while the model decodes others, and the worker admits only prepared
requests, so a newcomer costs the running batch its prefill and nothing more (with ``prefill``, the
copy of its cache into the batch's). There are several (``prepare_threads``): a real SmolVLM processor cuts
a camera frame into 13 tiles in about 0.3 s of CPU, mostly in PIL and numpy, which let other
threads run, and one thread would make that the limit on answers per second. Together they
prepare no more requests than could join, so frames that a newer one supersedes in the queue
are seldom prepared for nothing.

Every request ends exactly once, through ``_finish_locked``: answered, failed, cancelled
or timed out, whichever comes first; later outcomes are dropped. That is what keeps a
superseded or timed-out generation from ever reaching the client twice. The outcome goes to
the request's ``Sink`` typed (vlm/results.py): the scheduler never builds a wire payload.

There is one worker, for good: a backend instance never runs two calls at once (moondream2
keeps a single KV cache in the model; two calls on it corrupt each other). A call that
overruns ``timeout_s`` is answered ``timeout`` at once and, being finished, is told to stop at
the backend's next token (``GenerationEvents.cancelled``); until it comes back the scheduler
reports itself ``stuck`` and queued work waits.
"""

from __future__ import annotations

import itertools
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Literal

from .backends.base import Backend, Decoder, Job, Result, WaveDecoder
from .errors import Code, VlmError
from .request_queue import ClientQueue, RequestStatus
from .results import Answer, Sink, Timing

log = logging.getLogger(__name__)

# A client that asked or was answered this recently is likely to ask again within a batch window
# (the page's live mode asks every 200 ms by default; a person typing takes seconds).
COMPANY_HORIZON_S = 0.5
# A request queued this long hears how many go before it, and again whenever that changes: one admitted at the next
# step (nearly all of them) costs its client no extra message.
WAIT_TOLD_AFTER_S = 1.0


class Preparation(Enum):
    """How far a queued request's work ahead of the batch (``Backend.prepare``) has come."""

    PENDING = "pending"
    UNDER_WAY = "under_way"  # a preparing thread has it
    READY = "ready"  # prepared, or nothing to prepare: the worker may admit it


Door = Literal["socketio", "http", "watch"]  # the transport a request came in by


@dataclass(eq=False)
class Request:
    """One unit of work from any door; ``client`` keys the fairness rules, ``sink`` hears how it ends, ``door``
    says which transport made it (each sets its own, for the metrics)."""

    id: str
    client: str
    job: Job
    sink: Sink
    door: Door
    # A Socket.IO client keeps asking, so the batch window may wait for it; an HTTP request is one-shot.
    returns: bool = True
    # Wait behind the client's unfinished request instead of superseding it.
    ordered: bool = False
    received: float = field(default_factory=time.perf_counter)
    decode_ms: float = 0.0
    enqueued: float = 0.0
    started: float = 0.0
    first_token: float = 0.0
    status: RequestStatus = RequestStatus.NEW
    row: int | None = None  # the key of its row in the running batch, once admitted
    told_ahead: int | None = None  # how many its sink was last told go before it (``Sink.waiting``)
    preparation: Preparation = Preparation.PENDING  # READY: the worker may admit it

    @property
    def finished(self) -> bool:
        return self.status is RequestStatus.FINISHED

    def timing(self, now: float) -> Timing:
        def ms(seconds: float) -> float:
            return round(seconds * 1000, 2)

        return Timing(
            queue_ms=ms(self.started - self.enqueued),
            decode_ms=round(self.decode_ms, 2),
            model_ms=ms(now - self.started),
            first_token_ms=ms((self.first_token or now) - self.started),
            total_ms=ms(now - self.received),
        )


class Scheduler:
    def __init__(
        self,
        backend: Backend,
        *,
        max_queue: int = 64,
        batch_window_s: float = 0.005,
        timeout_s: float = 60.0,
        continuous: bool = True,
        prepare_ahead: bool | None = None,
        prepare_threads: int | None = None,
    ) -> None:
        self.backend = backend
        self.max_batch_size = max(1, backend.info.max_batch_size)
        self.batch_window_s = batch_window_s
        self.timeout_s = timeout_s
        self.continuous = continuous
        self._lock = threading.Condition()
        self._queue: ClientQueue[Request] = ClientQueue(max_queue)
        # Admitted and not yet finished, by row key (the decoder's name for the request).
        self._rows: dict[int, Request] = {}
        self._row_keys = itertools.count()
        self._busy_since: float | None = None  # when the worker's current backend call began
        self._last_seen: dict[str, float] = {}
        self._accepting = True
        # Finished requests whose sink is still being told: a drain on shutdown waits for them too.
        self._telling = 0
        # Every request goes through the preparing threads, or none does (None: as the backend advises).
        self.prepare_ahead = backend.prepares if prepare_ahead is None else prepare_ahead
        threading.Thread(target=self._work, name="vlm-worker", daemon=True).start()
        for number in range((prepare_threads or default_prepare_threads()) if self.prepare_ahead else 0):
            threading.Thread(target=self._prepare_ahead, name=f"vlm-prepare-{number}", daemon=True).start()
        threading.Thread(target=self._watch, name="vlm-watchdog", daemon=True).start()

    @property
    def max_queue(self) -> int:
        return self._queue.max_queue

    # -- called from the web layer -------------------------------------------------

    def submit(self, request: Request) -> None:
        previous: list[Request] = []
        rejection: VlmError | None = None
        with self._lock:
            try:
                if not self._accepting:
                    raise VlmError(Code.SHUTTING_DOWN, "the server is shutting down")
                previous = self._queue.offer(request)
            except VlmError as error:
                rejection = error
            else:
                if request.status is RequestStatus.QUEUED:
                    self._enqueued_locked(request)
        if rejection:
            self._fail(request, rejection)
        for superseded in previous:
            self._fail(superseded, VlmError(Code.CANCELLED, "superseded by a newer request"))

    def _enqueued_locked(self, request: Request) -> None:
        """A request just took its client's place in the queue: note when, and wake the worker."""
        request.enqueued = time.perf_counter()
        if not self.prepare_ahead:
            request.preparation = Preparation.READY
        if request.returns:
            self._last_seen[request.client] = request.enqueued
        self._lock.notify_all()

    def cancel(self, client: str, request_id: str) -> bool:
        with self._lock:
            candidates = self._queue.unfinished(client)
        request = next((r for r in candidates if r.id == request_id), None)
        if request is None:
            return False
        return self._fail(request, VlmError(Code.CANCELLED, "cancelled by the client"))

    def forget_client(self, client: str) -> None:
        """A disconnected client's work is dropped silently: there is nobody left to tell."""
        with self._lock:
            self._last_seen.pop(client, None)
            for waiting in self._queue.drop_waiting(client):
                waiting.status = RequestStatus.FINISHED
            request = self._queue.active(client)
            if request is not None:
                self._finish_locked(request)

    def has_room(self, client: str, *, ordered: bool = False) -> bool:
        """Whether ``submit`` would not refuse this client's request as ``busy`` (checked before a decode)."""
        with self._lock:
            return self._queue.has_room(client, ordered=ordered)

    def pending(self) -> int:
        with self._lock:
            return self._queue.pending() + len(self._rows) + self._telling

    def stuck_s(self) -> float:
        """How long the model has been running past ``timeout_s`` on a call it has not given back (0: it is not)."""
        with self._lock:
            if self._busy_since is None:
                return 0.0
            overrun = time.perf_counter() - self._busy_since - self.timeout_s
        return max(0.0, overrun)

    def stop_accepting(self) -> None:
        """New work is refused from now on (the server is draining for shutdown)."""
        with self._lock:
            self._accepting = False

    @property
    def accepting(self) -> bool:
        with self._lock:
            return self._accepting

    def abandon(self, error: VlmError) -> int:
        """End every unfinished request with ``error`` (a shutdown out of time); how many it ended."""
        with self._lock:
            unfinished = self._queue.everyone_unfinished()
        return sum(self._fail(request, error) for request in unfinished)

    # -- resolution: every request ends here exactly once ---------------------------

    def _finish_locked(self, request: Request) -> bool:
        if request.finished:
            return False
        request.status = RequestStatus.FINISHED
        if (promoted := self._queue.remove(request)) is not None:
            self._enqueued_locked(promoted)
        if request.row is not None:
            self._rows.pop(request.row, None)
        if request.client in self._last_seen:
            self._last_seen[request.client] = time.perf_counter()
        self._lock.notify_all()
        return True

    @contextmanager
    def _resolving(self, request: Request) -> Iterator[bool]:
        """Finish ``request``; whether this call won. Until the block has told its sink, it still counts as
        ``pending``: a drain that saw it neither running nor told would exit with its answer unsent."""
        with self._lock:
            won = self._finish_locked(request)
            self._telling += won
        try:
            yield won
        finally:
            if won:
                with self._lock:
                    self._telling -= 1

    def _fail(self, request: Request, error: VlmError) -> bool:
        with self._resolving(request) as won:
            if won:
                request.sink.failed(error)
        return won

    def _answer(self, request: Request, result: Result) -> None:
        with self._resolving(request) as won:
            if won:
                request.sink.answered(Answer(request.id, request.job.task, result, request.timing(time.perf_counter())))

    # -- the worker ------------------------------------------------------------------

    def _work(self) -> None:
        events = _RowEvents(self)
        decoder = self.backend.decoder(events) if self.continuous else WaveDecoder(self.backend, events)
        while True:
            self._advance(decoder, self._admit(decoder))

    def _admit(self, decoder: Decoder) -> dict[int, Request]:
        """Wait for work, then take from the queue what fits in the running batch.

        Newcomers join a running batch at once; only an idle worker waits a few milliseconds
        for company it has reason to expect.
        """
        stepping = not decoder.advances_itself
        with self._lock:
            while not (stepping and decoder.rows()) and not self._admissible_locked():
                self._lock.wait()
            if stepping and not decoder.rows() and self.batch_window_s > 0:
                deadline = time.perf_counter() + self.batch_window_s
                while self._prepared_locked() < min(
                    self.max_batch_size - len(self._rows), self._expected_company_locked()
                ):
                    remaining = deadline - time.perf_counter()
                    if remaining <= 0:
                        break
                    self._lock.wait(remaining)
            started = time.perf_counter()
            joining: dict[int, Request] = {}
            while len(self._rows) < self.max_batch_size and (request := self._queue.pop(_is_prepared)) is not None:
                request.started = started
                request.row = next(self._row_keys)
                self._rows[request.row] = joining[request.row] = request
            self._busy_since = started
            self._lock.notify_all()  # the preparing threads may prepare the next ones now
            return joining

    def _admissible_locked(self) -> bool:
        return len(self._rows) < self.max_batch_size and self._prepared_locked() > 0

    def _prepared_locked(self) -> int:
        """How many queued requests are prepared, ready to join."""
        return sum(_is_prepared(request) for request in self._queue.queued())

    def _expected_company_locked(self) -> int:
        """How many clients could be in the next batch: the queued ones and the recently seen ones."""
        horizon = time.perf_counter() - COMPANY_HORIZON_S
        queued = self._queue.queued_clients()
        for client in [c for c, seen in self._last_seen.items() if seen < horizon and c not in queued]:
            del self._last_seen[client]
        return len(self._last_seen.keys() | queued)

    def _advance(self, decoder: Decoder, joining: dict[int, Request]) -> None:
        """Newcomers join, then every running row moves one step; a failure fails the rows it touched."""
        try:
            if joining:
                decoder.join({row: request.job for row, request in joining.items()})
                for request in joining.values():  # the decoder holds what it still needs of them
                    request.job = replace(request.job, prepared=None)
            if not decoder.advances_itself and decoder.rows():
                decoder.step()
        except VlmError as error:
            log.warning(
                "backend failed on a batch of %d: %s %s",
                len(decoder.rows() | joining.keys()),
                error.code,
                error.message,
            )
            self._fail_rows(decoder, joining, error)
        except Exception as error:
            if out_of_memory(error):
                log.warning("out of memory on a batch of %d", len(decoder.rows() | joining.keys()))
                release_cached_memory()
                self._fail_rows(
                    decoder,
                    joining,
                    VlmError(Code.MODEL_ERROR, "the model ran out of memory; try a smaller image or fewer users"),
                )
            else:
                log.exception("model failed on a batch of %d", len(decoder.rows() | joining.keys()))
                self._fail_rows(decoder, joining, VlmError(Code.MODEL_ERROR, "the model failed on this request"))
        with self._lock:
            self._busy_since = None
            running = decoder.rows()
            lost = [request for row, request in self._rows.items() if row not in running]
        for request in lost:
            self._fail(request, VlmError(Code.MODEL_ERROR, "the model returned no answer"))

    def _fail_rows(self, decoder: Decoder, joining: dict[int, Request], error: VlmError) -> None:
        with self._lock:
            failed = [self._rows[row] for row in decoder.rows() | joining.keys() if row in self._rows]
        decoder.clear()
        for request in failed:
            self._fail(request, error)

    def _prepare_ahead(self) -> None:
        """One preparing thread: takes the oldest queued request nobody prepares, prepares it for the worker to
        admit; a failure fails only that request."""
        while True:
            with self._lock:
                while (request := self._claim_locked()) is None:
                    self._lock.wait()
                request.preparation = Preparation.UNDER_WAY
            try:
                job = self.backend.prepare(request.job, lambda: request.finished)
            except VlmError as error:
                self._fail(request, error)
            except Exception:
                log.exception("could not prepare request %s", request.id)
                self._fail(request, VlmError(Code.MODEL_ERROR, "the model could not take this request"))
            else:
                with self._lock:
                    request.job, request.preparation = job, Preparation.READY
                    self._lock.notify_all()

    def _claim_locked(self) -> Request | None:
        """The oldest queued request nobody prepares, while fewer are prepared or under way than could join the
        batch now (one when it is full); None: nothing to take."""
        room = max(1, self.max_batch_size - len(self._rows))
        queued = self._queue.queued()
        if sum(request.preparation is not Preparation.PENDING for request in queued) >= room:
            return None
        return next((request for request in queued if request.preparation is Preparation.PENDING), None)

    def _watch(self) -> None:
        """Answer ``timeout`` for generations that run too long (the backend sees them cancelled and stops), and
        tell requests that have waited a while in the queue how many go before them."""
        while True:
            time.sleep(min(1.0, self.timeout_s / 4))
            now = time.perf_counter()
            with self._lock:
                self._tell_waits_locked(now)
                overdue = [r for r in self._rows.values() if not r.finished and now - r.started > self.timeout_s]
            for request in overdue:
                if self._fail(request, VlmError(Code.TIMEOUT, f"no answer within {self.timeout_s:g} s")):
                    log.warning("request %s overran %g s; the model was asked to stop", request.id, self.timeout_s)

    def _tell_waits_locked(self, now: float) -> None:
        """Under the lock, so that a sink hears of a wait only while the request is queued: before its first token
        or its end, which are told after the lock has seen it admitted or finished."""
        for ahead, request in enumerate(self._queue.queued()):
            if now - request.enqueued >= WAIT_TOLD_AFTER_S and request.told_ahead != ahead:
                request.told_ahead = ahead
                request.sink.waiting(ahead)


class _RowEvents:
    """Routes a decoder's reports, by row key, to the request that row belongs to; ended rows are ignored."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler

    def delta(self, row: int, text: str) -> None:
        request = self.scheduler._rows.get(row)
        if request is None or request.finished:
            return
        if not request.first_token:
            request.first_token = time.perf_counter()
        request.sink.stream(text)

    def done(self, row: int, result: Result) -> None:
        if (request := self.scheduler._rows.get(row)) is not None:
            self.scheduler._answer(request, result)

    def failed(self, row: int, error: VlmError) -> None:
        if (request := self.scheduler._rows.get(row)) is not None:
            self.scheduler._fail(request, error)

    def cancelled(self, row: int) -> bool:
        request = self.scheduler._rows.get(row)
        return request is None or request.finished


def default_prepare_threads() -> int:
    """Half the CPU's cores, one to four: enough that preparing frames keeps ahead of a GPU, while the
    worker, the web server and the processor's own calls keep cores of their own."""
    return min(4, max(1, (os.cpu_count() or 2) // 2))


def _is_prepared(request: Request) -> bool:
    return request.preparation is Preparation.READY


def out_of_memory(error: BaseException) -> bool:
    """torch's out-of-memory error, told apart without importing torch: a backend that never loaded it
    (``--backend openai``, the light web tier) cannot raise it."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(error, torch.OutOfMemoryError)


def release_cached_memory() -> None:
    """Give the CUDA blocks of a failed batch back before the next one."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
