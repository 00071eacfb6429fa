"""Watch mode on the web: the ``WatchService`` and the ``/v1/watch`` routes.

Wired into the app by ``install_watch`` from ``create_app``; the wire protocol is in
docs/PROTOCOL.md, and the Socket.IO events (``watch_*``) are in vlm/socket_events.py. A tab's
watches check the frames the tab sends with ``watch_frame``; the tab sends the next one only
after ``watch_frame_done`` (the live-mode backpressure: one frame in flight per tab, and each
check takes the newest). Everything here answers the sender only, except alerts of the
operator's ``--watch`` conditions, which go to every tab.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from flask import Flask, Response, jsonify, request
from flask_socketio import SocketIO
from PIL import Image

from .access import TOKEN_COOKIE, Access
from .alerts import AlertDispatcher, AlertFeed
from .backends.base import ModelInfo
from .config import Settings
from .errors import Code, VlmError
from .jpeg import jpeg_bytes
from .metrics import Metrics
from .sources import VideoSource, source_kind, source_label, with_password
from .watch import Source, WatchHub
from .webhook import WebhookSender

log = logging.getLogger(__name__)

MAX_WAIT_S = 30.0
PREVIEW_FPS = 5
PREVIEW_REPEAT_S = 1.0
WAITING_JPEG = jpeg_bytes(Image.new("RGB", (320, 240), (40, 40, 40)))  # a preview before the source's first frame


@dataclass
class WatchService:
    """What the app keeps of watch mode: started for real once the model is loaded."""

    settings: Settings
    hub: WatchHub

    def forget_tab(self, sid: str) -> None:
        """The tab closed: its watches stop."""
        self.hub.forget_owner(sid)

    def model_ready(self, info: ModelInfo) -> None:
        """Start the ``--source`` players and the ``--watch`` conditions on each of them."""
        for number, target in enumerate(self.settings.sources, start=1):
            source = self.hub.add_source(
                Source(
                    id=f"cam{number}",
                    label=source_label(target),
                    kind=source_kind(target),
                    interval_s=self.settings.watch_interval_ms / 1000,
                )
            )
            player = VideoSource(self.hub, source, with_password(target, source.id), frame_side=info.decode_size)
            player.start()  # plays until the process ends
            for condition in self.settings.watches:
                self.hub.add(condition, source.id, owner=None)


def install_watch(
    app: Flask,
    socketio: SocketIO,
    settings: Settings,
    *,
    scheduler: Callable[[], Any],
    send: Callable[[str, dict[str, Any], str | None], None],
    access: Access,
    metrics: Metrics,
) -> WatchService:
    """``send(event, payload, sid or None for all)`` emits from any thread; ``metrics`` counts alerts and webhooks."""
    feed = AlertFeed(socketio.sleep)
    webhook = WebhookSender(settings.webhook_url, on_result=metrics.webhook_result) if settings.webhook_url else None
    alerts = AlertDispatcher(
        notify=send,
        feed=feed,
        webhook=webhook.send if webhook else None,
        webhook_image=settings.webhook_image,
        counted=lambda alert: metrics.alerts.labels(alert.watch.source.kind).inc(),
    )
    hub = WatchHub(
        scheduler=scheduler,
        notify=send,
        on_alert=alerts.raise_alert,
        max_new_tokens=settings.max_new_tokens,
        max_condition_chars=settings.max_question_chars,
        cooldown_s=settings.watch_cooldown_s,
    )
    _install_routes(app, socketio, hub, feed, access)
    return WatchService(settings=settings, hub=hub)


def _install_routes(app: Flask, socketio: SocketIO, hub: WatchHub, feed: AlertFeed, access: Access) -> None:
    def authorized(cookie_ok: bool) -> bool:
        """The bearer token, or where ``cookie_ok`` the page's cookie: an <img> or <video> can present only that."""
        return access.ok(access.bearer() or (request.cookies.get(TOKEN_COOKIE) if cookie_ok else None))

    def unauthorized() -> tuple[Response, int]:
        refused = access.refusal("bearer token")
        return refusal(Code(refused.code), refused.message)

    @app.get("/v1/watch")
    def watch_overview() -> tuple[Response, int]:
        if not authorized(True):
            return unauthorized()
        if hub.scheduler() is None:  # the server's cameras start with the model: a list now would be wrongly empty
            return refusal(Code.LOADING, "the model is still loading; the server's cameras start with it")
        return jsonify(sources=hub.public_sources(), watches=hub.operator_watches(), last_alert=feed.last_seq), 200

    @app.get("/v1/watch/alerts")
    def watch_alerts() -> tuple[Response, int]:
        if not authorized(False):
            return unauthorized()
        try:
            after = int(request.args.get("after", "0"))
            wait = min(MAX_WAIT_S, max(0.0, float(request.args.get("wait", "0"))))
        except ValueError:
            return refusal(Code.BAD_REQUEST, "after and wait must be numbers")
        records = feed.after(after, wait)
        return jsonify(alerts=records, last=records[-1]["seq"] if records else max(after, 0)), 200

    @app.get("/v1/watch/sources/<source_id>/mjpeg")
    def watch_preview(source_id: str) -> Response | tuple[Response, int]:
        """What a server-side source shows, for the page (an <img> sends the page's cookie, not a header)."""
        if not authorized(True):
            return unauthorized()
        source = hub.sources.get(source_id)
        if source is None or source.kind == "tab":
            return refusal(Code.NOT_FOUND, "no such source")
        return Response(
            _mjpeg(source, socketio.sleep),
            mimetype="multipart/x-mixed-replace; boundary=frame",
            headers={"Cache-Control": "no-store"},
        )


def refusal(code: Code, message: str) -> tuple[Response, int]:
    """A watch route's refusal, with the code's own HTTP status."""
    return jsonify(VlmError(code, message).as_object()), code.status


def _mjpeg(source: Source, sleep: Callable[[float], object]) -> Iterator[bytes]:
    """New frames at up to ``PREVIEW_FPS``; the same picture again every ``PREVIEW_REPEAT_S`` while none comes
    (a dark one before the first), because only a write notices a viewer who left: a preview of a camera
    that stalled or is reconnecting would otherwise hold a server thread and a connection for ever. Once the
    source has ended or failed, its last picture is sent and the response ends (an <img> keeps showing it)."""
    shown = -1
    jpeg = WAITING_JPEG
    sent_at: float | None = None
    while True:
        over = source.state in ("ended", "failed")  # read before the frame, which then is the last one
        frame = source.latest
        fresh = frame is not None and frame.seq != shown
        if frame is not None and fresh:
            shown = frame.seq
            jpeg = jpeg_bytes(frame.image)
        if fresh or sent_at is None or time.monotonic() - sent_at >= PREVIEW_REPEAT_S:
            sent_at = time.monotonic()
            yield b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n%s\r\n" % (len(jpeg), jpeg)
        if over:
            return
        sleep(1 / PREVIEW_FPS)
