"""Where an alert goes: the log, the metrics, Socket.IO, the HTTP feed and the webhook.

Alerts are raised where a check's answer is delivered (the model worker thread, mostly), which
must go straight back to its work, so they wait in a queue for a thread of their own that encodes the frame's JPEGs and
hands the alert out. The HTTP feed keeps the last ``FEED_SIZE`` alerts with increasing
sequence numbers, so a consumer that long-polls ``after=<last seq>`` misses none.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from .jpeg import jpeg_base64, jpeg_data_url
from .watch import Alert, Notify

log = logging.getLogger(__name__)

THUMB_SIDE = 160
FEED_SIZE = 100


def alert_record(alert: Alert, seq: int) -> dict[str, Any]:
    """The alert as every consumer sees it (the webhook also gets the full frame)."""
    watch, frame, source = alert.watch, alert.frame, alert.watch.source
    record: dict[str, Any] = {
        "seq": seq,
        "watch": watch.id,
        "condition": watch.condition,
        "answer": alert.answer,
        "time": round(alert.time, 3),
        "time_iso": datetime.fromtimestamp(alert.time, UTC).isoformat(timespec="milliseconds"),
        "frame_time": round(frame.captured, 3),
        "source": {"id": source.public_id, "label": source.label, "kind": source.kind},
    }
    if frame.position_s is not None:
        record["position_s"] = round(frame.position_s, 3)
    return record


class AlertFeed:
    """The last alerts, for ``GET /v1/watch/alerts?after=SEQ`` long-polls."""

    POLL_S = 0.05

    def __init__(self, sleep: Callable[[float], object]) -> None:
        self.sleep = sleep
        self.lock = threading.Lock()
        self.records: deque[dict[str, Any]] = deque(maxlen=FEED_SIZE)
        self.last_seq = 0

    def append(self, record: dict[str, Any]) -> None:
        with self.lock:
            self.records.append(record)
            self.last_seq = record["seq"]

    def after(self, seq: int, wait_s: float) -> list[dict[str, Any]]:
        """Alerts newer than ``seq``, waiting up to ``wait_s`` for one. Polls, so it also works on a green thread."""
        deadline = time.monotonic() + wait_s
        while self.last_seq <= seq and time.monotonic() < deadline:
            self.sleep(self.POLL_S)
        with self.lock:
            return [record for record in self.records if record["seq"] > seq]


class AlertDispatcher:
    def __init__(
        self,
        *,
        notify: Notify,
        feed: AlertFeed,
        webhook: Callable[[dict[str, Any]], None] | None,
        webhook_image: bool,
        counted: Callable[[Alert], None],
    ) -> None:
        self.notify = notify
        self.feed = feed
        self.webhook = webhook
        self.webhook_image = webhook_image
        self.counted = counted
        self.seq = 0
        self.pending: queue.SimpleQueue[Alert] = queue.SimpleQueue()
        threading.Thread(target=self._run, name="vlm-alerts", daemon=True).start()

    def raise_alert(self, alert: Alert) -> None:
        """Called where a check's answer is delivered (the model worker, mostly): only a queue put."""
        self.pending.put(alert)

    def _run(self) -> None:
        while True:
            alert = self.pending.get()
            try:
                self._dispatch(alert)
            except Exception:
                log.exception("could not hand out an alert of watch %s", alert.watch.id)

    def _dispatch(self, alert: Alert) -> None:
        self.seq += 1
        record = alert_record(alert, self.seq)
        log.info(
            "ALERT %d: watch %s on %s turned true (condition %d chars, answer %d chars)",
            self.seq,
            alert.watch.id,
            record["source"]["id"],
            len(alert.watch.condition),
            len(alert.answer),
        )
        self.counted(alert)
        image = alert.frame.image
        shown = {**record, "thumbnail": jpeg_data_url(image, THUMB_SIDE, 70)}
        self.notify("watch_alert", shown, alert.watch.owner)
        if alert.watch.owner is not None:
            return  # a tab's watch, about its own camera, is its business only: not the feed's, nor the webhook's
        self.feed.append(shown)
        if self.webhook is not None:
            posted = dict(record)
            if self.webhook_image:
                posted["image"] = jpeg_base64(image)
            self.webhook(posted)
