"""Watches: a yes/no condition asked again and again about a source's latest frame.

A source is a browser tab's camera (the page sends frames) or a server-side video source
(vlm/sources.py). Each watch has at most one check in the scheduler at a time, under a
client key of its own, so it never supersedes a person's questions or another watch; when
a check ends, the next one takes the newest frame (older ones are simply skipped), which
paces every watch at the model's speed. A check's free-text answer is read as yes, no or
unclear by its first word (``read_verdict``), and an alert fires when the condition turns
true: ``HITS`` of the last ``WINDOW`` checks said yes, and the last alert of that watch is
more than ``COOLDOWN_S`` ago (``Trigger``).
"""

from __future__ import annotations

import logging
import re
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from PIL import Image

from .backends.base import Job
from .config import MAX_WATCHES
from .errors import Code, VlmError
from .results import Answer
from .scheduler import Request, Scheduler

log = logging.getLogger(__name__)

HITS, WINDOW = 2, 3
COOLDOWN_S = 30.0
# The verdict is in the first word; a short cap keeps a chatty model from spending seconds per check.
VERDICT_TOKENS = 24
FAILURE_PAUSE_S = 1.0
YES_WORDS = frozenset({"yes", "yeah", "yep", "true", "correct", "affirmative"})
NO_WORDS = frozenset({"no", "nope", "not", "false", "none", "never", "negative"})
_FIRST_WORD = re.compile(r"[^a-z]*([a-z]+)")

Verdict = Literal["yes", "no", "unclear"]
SourceKind = Literal["tab", "file", "stream"]


def read_verdict(answer: str) -> Verdict:
    """'Yes, a person is ...' -> yes; 'No.' -> no; anything else (a caption, an empty answer) -> unclear."""
    match = _FIRST_WORD.match(answer.lower())
    word = match.group(1) if match else ""
    return "yes" if word in YES_WORDS else "no" if word in NO_WORDS else "unclear"


class Trigger:
    """Debounce: the condition is on once ``HITS`` of the last ``WINDOW`` checks said yes.

    Only turning on alerts, and not again within ``cooldown_s`` of the last alert; it turns off
    (and re-arms) once fewer than ``HITS`` of the last ``WINDOW`` said yes. Unclear counts as no.
    """

    def __init__(self, cooldown_s: float = COOLDOWN_S) -> None:
        self.cooldown_s = cooldown_s
        self.recent: deque[bool] = deque(maxlen=WINDOW)
        self.on = False
        self.last_alert = float("-inf")

    def feed(self, verdict: Verdict, now: float) -> bool:
        """Record one check; True when this check raises an alert."""
        self.recent.append(verdict == "yes")
        was_on, self.on = self.on, sum(self.recent) >= HITS
        if self.on and not was_on and now - self.last_alert >= self.cooldown_s:
            self.last_alert = now
            return True
        return False

    def forget(self) -> None:
        """Start afresh (a watch resumed): what it saw before the pause says nothing of now. The cooldown stays."""
        self.recent.clear()
        self.on = False


@dataclass(eq=False)
class Frame:
    """One frame of a source. ``load`` makes the RGB picture on first use (most decoded frames are never checked),
    once, under the frame's lock: the watch, each preview viewer and the alerts may ask at the same moment, and
    PyAV converting one frame on two threads at once crashes the process. (``cached_property`` locked only
    until Python 3.12.)"""

    seq: int
    load: Callable[[], Image.Image]
    captured: float  # wall-clock time (time.time()) it was taken or received
    decode_ms: float = 0.0
    position_s: float | None = None  # where in a video file it is
    _loaded: Image.Image | None = field(default=None, init=False, repr=False)
    _loading: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    @property
    def image(self) -> Image.Image:
        with self._loading:
            if self._loaded is None:
                self._loaded = self.load()
            return self._loaded


@dataclass(eq=False)
class Source:
    """Where a watch gets frames: the latest one, and how playback is going."""

    id: str
    label: str
    kind: SourceKind
    owner: str | None = None  # the tab whose camera it is
    interval_s: float = 0.0  # least time between two checks of one watch (a tab paces itself)
    latest: Frame | None = None
    state: str = "starting"  # starting | playing | reconnecting | ended | failed
    started: float | None = None  # wall-clock time the current playback began
    reconnects: int = 0  # times it played again after a drop
    frames: int = 0
    bad_frames: int = 0  # frames that did not decode and were skipped
    problem: str | None = None  # why it is reconnecting or failed, as a sentence; None while it plays

    @property
    def public_id(self) -> str:
        """A tab's camera is just 'tab' to clients: its id holds the tab's Socket.IO session id."""
        return "tab" if self.kind == "tab" else self.id

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "label": self.label,
            "kind": self.kind,
            "state": self.state,
            "started": self.started,
            "reconnects": self.reconnects,
            "frames": self.frames,
            "bad_frames": self.bad_frames,
            "problem": self.problem,
        }


@dataclass(eq=False)
class Watch:
    id: str
    condition: str
    source: Source
    owner: str | None  # the tab that added it; None for the operator's --watch
    trigger: Trigger
    address: str = ""  # where its tab connects from; "" for the operator's
    paused: bool = False
    busy: bool = False
    last_seq: int = -1
    next_at: float = 0.0  # monotonic time before which it is not checked again
    checks: int = 0
    alerts: int = 0
    verdict: Verdict | None = None
    answer: str = ""
    checked: float | None = None
    error: str | None = None

    @property
    def client(self) -> str:
        """Its own scheduler client key: a watch's check supersedes only its own previous check."""
        return f"watch:{self.id}"

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "condition": self.condition,
            "source": self.source.public_id,
            # Not playing (reconnecting, ended, failed): the verdict and `on` are the last known, not the present.
            "source_state": self.source.state,
            "source_problem": self.source.problem,
            "paused": self.paused,
            "verdict": self.verdict,
            "on": self.trigger.on,
            "answer": self.answer,
            "checked": self.checked,
            "checks": self.checks,
            "alerts": self.alerts,
            "error": self.error,
        }


@dataclass(frozen=True)
class Alert:
    """A watch's condition turned true on ``frame``; vlm/alerts.py sends it everywhere it should go."""

    watch: Watch
    frame: Frame
    answer: str
    time: float


# (event, payload, tab sid or None for everyone)
Notify = Callable[[str, dict[str, Any], str | None], None]


class WatchHub:
    """All watches and sources of this process, and the thread that keeps them checking."""

    MAX_PER_TAB = 8
    MAX_PER_ADDRESS = 16
    MAX_TOTAL = MAX_WATCHES

    def __init__(
        self,
        *,
        scheduler: Callable[[], Scheduler | None],
        notify: Notify,
        on_alert: Callable[[Alert], None],
        max_new_tokens: int,
        max_condition_chars: int,
        cooldown_s: float = COOLDOWN_S,
    ) -> None:
        self.scheduler = scheduler
        self.notify = notify
        self.on_alert = on_alert
        self.max_new_tokens = min(max_new_tokens, VERDICT_TOKENS)
        self.max_condition_chars = max_condition_chars
        self.cooldown_s = cooldown_s
        self.watches: dict[str, Watch] = {}
        self.sources: dict[str, Source] = {}
        self._changed = threading.Condition()
        threading.Thread(target=self._run, name="vlm-watches", daemon=True).start()

    # -- sources --------------------------------------------------------------------

    def add_source(self, source: Source) -> Source:
        with self._changed:
            self.sources[source.id] = source
        return source

    def tab_source(self, sid: str) -> Source:
        with self._changed:
            source = self.sources.get(f"tab:{sid}")
            if source is None:
                source = self.sources[f"tab:{sid}"] = Source(
                    id=f"tab:{sid}", label="this tab's camera", kind="tab", owner=sid
                )
            return source

    def offer(self, source: Source, frame: Frame) -> int:
        """A new latest frame; returns how many watches will check it (tabs wait for ``watch_frame_done``)."""
        with self._changed:
            source.latest = frame
            source.frames += 1
            self._changed.notify_all()
            return sum(1 for w in self.watches.values() if w.source is source and not w.paused)

    def count_bad_frame(self, source: Source) -> None:
        with self._changed:
            source.bad_frames += 1

    def set_state(
        self, source: Source, state: str, *, started: float | None = None, problem: str | None = None
    ) -> None:
        """``started`` with ``playing``: playback (re)began; a source that had played before was reopened
        after a drop, which is what ``reconnects`` counts (not each failed attempt while it was down).
        ``problem``: why it is not playing, for the page (a tab hears when the reason changes too)."""
        with self._changed:
            changed = (source.state, source.problem) != (state, problem)
            source.state, source.problem = state, problem
            if started is not None:
                if source.started is not None:
                    source.reconnects += 1
                source.started = started
            told = [(w, w.describe()) for w in self.watches.values() if w.source is source] if changed else []
        for watch, described in told:  # a tab watching a camera that went down hears it, not 'checking…'
            self._tell_owner(watch, described)

    def public_sources(self) -> list[dict[str, Any]]:
        with self._changed:
            return [s.describe() for s in self.sources.values() if s.kind != "tab"]

    # -- watches ----------------------------------------------------------------------

    def add(self, condition: object, source_id: object, owner: str | None, address: str = "") -> Watch:
        """A tab's watch (``owner``, connecting from ``address``) or the operator's (None). One address may keep
        ``MAX_PER_ADDRESS``: the per-tab cap alone let eight connections from one take every watch there is.
        The door refuses a tab's watch while the model loads (``ModelSlot.loaded``); the operator's start with it."""
        if not isinstance(condition, str) or not condition.strip():
            raise VlmError(Code.EMPTY_QUESTION, "condition is empty")
        condition = condition.strip()
        if len(condition) > self.max_condition_chars:
            raise VlmError(Code.QUESTION_TOO_LONG, f"condition is longer than {self.max_condition_chars} characters")
        with self._changed:
            if source_id == "tab" and owner is not None:
                source = self.tab_source(owner)
            elif isinstance(source_id, str) and source_id in self.sources and self.sources[source_id].kind != "tab":
                source = self.sources[source_id]
            else:
                raise VlmError(Code.BAD_REQUEST, "source must be 'tab' or the id of a server source")
            if owner is not None and sum(w.owner == owner for w in self.watches.values()) >= self.MAX_PER_TAB:
                raise VlmError(Code.BUSY, f"a tab can keep at most {self.MAX_PER_TAB} watches")
            if owner is not None and sum(w.address == address for w in self.watches.values()) >= self.MAX_PER_ADDRESS:
                raise VlmError(Code.BUSY, f"one address can keep at most {self.MAX_PER_ADDRESS} watches")
            if len(self.watches) >= self.MAX_TOTAL:
                raise VlmError(Code.BUSY, f"the server keeps at most {self.MAX_TOTAL} watches")
            watch = Watch(
                id=uuid.uuid4().hex[:12],
                condition=condition,
                source=source,
                owner=owner,
                trigger=Trigger(cooldown_s=self.cooldown_s),
                address=address,
            )
            self.watches[watch.id] = watch
            self._changed.notify_all()
        log.info(
            "watch %s added on %s (%d chars)", watch.id, source.id if source.kind != "tab" else "a tab", len(condition)
        )
        return watch

    def owned(self, watch_id: object, owner: str) -> Watch:
        with self._changed:
            watch = self.watches.get(watch_id) if isinstance(watch_id, str) else None
        if watch is None or watch.owner != owner:
            raise VlmError(Code.BAD_REQUEST, "no such watch")
        return watch

    def pause(self, watch: Watch, paused: bool) -> None:
        with self._changed:
            watch.paused = paused
            if not paused:  # kept on, a watch resumed while its condition held again would never alert
                watch.trigger.forget()
            self._changed.notify_all()
        if paused:
            self._stop_check(watch)

    def remove(self, watch: Watch) -> None:
        with self._changed:
            self.watches.pop(watch.id, None)
        self._stop_check(watch)

    def forget_owner(self, sid: str) -> None:
        """A tab closed: its watches and its camera source go with it."""
        with self._changed:
            mine = [w for w in self.watches.values() if w.owner == sid]
            for watch in mine:
                del self.watches[watch.id]
            self.sources.pop(f"tab:{sid}", None)
        for watch in mine:
            self._stop_check(watch)

    def active_count(self) -> int:
        with self._changed:
            return sum(1 for w in self.watches.values() if not w.paused)

    def operator_watches(self) -> list[dict[str, Any]]:
        """The ``--watch`` conditions: a tab's own watches are its business only."""
        with self._changed:
            return [w.describe() for w in self.watches.values() if w.owner is None]

    def _stop_check(self, watch: Watch) -> None:
        """Its check in flight is dropped without an answer; a tab waiting on that frame may go on."""
        scheduler = self.scheduler()
        if scheduler is not None:
            scheduler.forget_client(watch.client)
        with self._changed:
            watch.busy = False
            self._changed.notify_all()
        self._frame_done_if_idle(watch.source)

    # -- checking ---------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._changed:
                due, wait = self._due_locked(time.monotonic())
                if not due:
                    self._changed.wait(wait)
                    continue
                for watch, _ in due:
                    watch.busy = True
            for watch, frame in due:
                self._check(watch, frame)

    def _due_locked(self, now: float) -> tuple[list[tuple[Watch, Frame]], float | None]:
        due: list[tuple[Watch, Frame]] = []
        wait: float | None = None
        for watch in self.watches.values():
            frame = watch.source.latest
            if watch.paused or watch.busy or frame is None or frame.seq <= watch.last_seq:
                continue
            if watch.next_at > now:
                wait = min(wait or watch.next_at - now, watch.next_at - now)
                continue
            due.append((watch, frame))
        return due, wait

    def _check(self, watch: Watch, frame: Frame) -> None:
        scheduler = self.scheduler()
        try:
            image = frame.image
        except Exception:
            log.exception("could not convert a frame of %s", watch.source.id)
            self._ended(watch, frame)
            return
        if scheduler is None:
            self._ended(watch, frame)
            return
        watch.checks += 1
        job = Job(
            task="query",
            image=image,
            image_key=f"{watch.source.id}#{frame.seq}",
            text=watch.condition,
            max_new_tokens=self.max_new_tokens,
        )
        scheduler.submit(
            Request(
                id=f"{watch.id}-{watch.checks}",
                client=watch.client,
                job=job,
                sink=_CheckSink(self, watch, frame),
                door="watch",
                decode_ms=frame.decode_ms,
            )
        )

    def _ended(self, watch: Watch, frame: Frame, pause_s: float = 0.0) -> None:
        with self._changed:
            watch.busy = False
            watch.last_seq = max(watch.last_seq, frame.seq)
            watch.next_at = time.monotonic() + max(pause_s, watch.source.interval_s)
            self._changed.notify_all()

    def checked(self, watch: Watch, frame: Frame, answer: str) -> None:
        verdict = read_verdict(answer)
        now = time.time()
        with self._changed:
            live = self.watches.get(watch.id) is watch and not watch.paused
            fired = live and watch.trigger.feed(verdict, now)
            watch.verdict, watch.answer, watch.checked, watch.error = verdict, answer, now, None
            if fired:
                watch.alerts += 1
            state = watch.describe()
        self._ended(watch, frame)
        if not live:
            return
        self._tell_owner(watch, state)
        if fired:
            self.on_alert(Alert(watch=watch, frame=frame, answer=answer, time=now))
        self._frame_done_if_idle(watch.source)

    def failed(self, watch: Watch, frame: Frame, error: VlmError) -> None:
        cancelled = error.code == Code.CANCELLED
        with self._changed:
            live = self.watches.get(watch.id) is watch
            watch.error = None if cancelled else f"{error.code}: {error.message}"
            state = watch.describe()
        # A busy or failing model is not asked again at once (a tab's own pace is kept by its frames).
        self._ended(watch, frame, 0.0 if cancelled else FAILURE_PAUSE_S)
        if live and not cancelled:  # a removed watch's tab has forgotten it
            self._tell_owner(watch, state)
        self._frame_done_if_idle(watch.source)

    def _tell_owner(self, watch: Watch, state: dict[str, Any]) -> None:
        """A tab hears about its own watches' checks; the operator's are in ``GET /v1/watch``, not pushed."""
        if watch.owner is not None:
            self.notify("watch_state", state, watch.owner)

    def _frame_done_if_idle(self, source: Source) -> None:
        """Backpressure for a tab: it sends its next frame only after every watch there has checked this one."""
        if source.kind != "tab" or source.latest is None or source.owner is None:
            return
        frame = source.latest
        with self._changed:
            waiting = [
                w
                for w in self.watches.values()
                if w.source is source and not w.paused and (w.busy or w.last_seq < frame.seq)
            ]
        if not waiting:
            self.notify("watch_frame_done", {"frame": frame.seq}, source.owner)


class _CheckSink:
    """One check's outcome, back to the hub: only bookkeeping here, since it runs on whichever thread ends the check
    (the model worker, a preparing thread, the timeout watchdog, the openai backend's pool, a shutdown's drain,
    or this hub's own thread when ``submit`` refuses it)."""

    def __init__(self, hub: WatchHub, watch: Watch, frame: Frame) -> None:
        self.hub, self.watch, self.frame = hub, watch, frame

    def waiting(self, ahead: int) -> None:
        return None

    def stream(self, delta: str) -> None:
        return None

    def answered(self, answer: Answer) -> None:
        self.hub.checked(self.watch, self.frame, answer.result.answer)

    def failed(self, error: VlmError) -> None:
        self.hub.failed(self.watch, self.frame, error)
