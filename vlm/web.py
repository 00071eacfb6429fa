"""``create_app``: the Flask app, its Socket.IO server and every door to the model, assembled.

Each part lives in its own module; this one only wires them together, outermost first:
pages (vlm/pages.py), Socket.IO events (vlm/socket_events.py), the OpenAI-compatible API
(vlm/openai_api.py), watch mode (vlm/watch_web.py) and ``GET /metrics`` (vlm/metrics_web.py),
all counting into one ``Metrics``. The model is not loaded here: app.py hands it to
``WebApp.install_model`` once it is, while the server already answers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flask import Flask
from flask_socketio import SocketIO
from werkzeug.middleware.proxy_fix import ProxyFix
from werkzeug.routing import Map

from .access import Access
from .backends.base import Backend
from .config import Settings
from .hosts import allowed_hosts, host_guard
from .message_queue import RedisQueue
from .metrics import MeteredScheduler, Metrics
from .metrics_web import install_metrics
from .model_slot import ModelSlot
from .mount import mounted_at, prefixed_by_proxy
from .openai_api import OpenResponses, install_openai_api
from .origins import socket_origins
from .outbox import Coalescing, Outbox
from .pages import pages_blueprint
from .probes import MessageQueueProbe
from .ratelimit import EventGate, RateLimiter
from .servers.body_rate import BodyDeadlines
from .sessions import SessionBounds
from .socket_events import AppNamespace
from .socket_sink import STREAM_EVENT, STREAM_INTERVAL_S, merged_deltas
from .watch_web import WatchService, install_watch


@dataclass(frozen=True)
class WebApp:
    settings: Settings
    app: Flask
    socketio: SocketIO
    slot: ModelSlot
    metrics: Metrics
    outbox: Outbox
    watch: WatchService
    open_responses: OpenResponses

    def install_model(self, backend: Backend) -> None:
        """Serve the loaded ``backend`` at every door: its calls and requests metered, queued as the settings say;
        then the server's cameras and their ``--watch`` conditions start."""
        settings = self.settings
        scheduler = MeteredScheduler(
            backend,
            metrics=self.metrics,
            max_queue=settings.max_queue,
            batch_window_s=settings.batch_window_ms / 1000,
            timeout_s=settings.request_timeout_s,
            continuous=settings.batching == "continuous",
            prepare_ahead=None if settings.prepare == "auto" else settings.prepare != "worker",
            prepare_threads=settings.prepare_threads or None,
        )
        self.slot.install(backend, scheduler)
        self.metrics.model_loaded(backend.info)
        self.watch.model_ready(backend.info)

    def idle(self) -> bool:
        """Nothing accepted is still unanswered, or waiting in this process to be written to its client
        (used to drain on shutdown)."""
        scheduler = self.slot.scheduler
        unanswered = scheduler is not None and scheduler.pending() > 0
        return not (unanswered or self.outbox.undelivered or self.outbox.unwritten or self.open_responses)


class ExactPaths(Map):
    """Routes that never redirect a doubled slash to the merged path: Werkzeug writes that redirect's Location from
    the Host header, a redirect a caching proxy in front (with ``--allowed-host '*'``) would keep for everyone."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **{**kwargs, "merge_slashes": False})


class VlmFlask(Flask):
    url_map_class = ExactPaths


def create_app(settings: Settings) -> WebApp:
    slot = ModelSlot()
    app = VlmFlask(__name__, template_folder="../templates", static_folder="../static")
    # Base64 inflates by 4/3; above 1.5 times that, a message is not a mistake worth answering but
    # something to cut off at the transport, before it is buffered.
    transport_limit = settings.max_image_bytes * 2
    app.config.update(SECRET_KEY=settings.secret_key, MAX_CONTENT_LENGTH=transport_limit)
    socketio = SocketIO(
        app,
        async_mode=settings.async_mode,
        cors_allowed_origins=socket_origins(settings.cors_origins),
        max_http_buffer_size=transport_limit,
        ping_interval=10,
        message_queue=settings.message_queue,
        **({"client_manager": RedisQueue(settings.message_queue)} if settings.message_queue else {}),
        # One client's events in the order sent: side by side, a newer question whose frame
        # decodes faster would be queued first and then superseded by the one it replaced.
        async_handlers=False,
    )
    sessions = SessionBounds(socketio, per_address=settings.max_connections_per_ip, total=settings.max_connections)
    sessions.start()
    # Outermost first: a body's rate, the real client address, scheme and path (trusted proxy only), the path the
    # app is served under, the Host check, session bounds.
    app.wsgi_app = sessions.wrap(app.wsgi_app)  # type: ignore[method-assign]
    app.wsgi_app = host_guard(app.wsgi_app, allowed_hosts(settings))  # type: ignore[method-assign]
    if settings.root_path:
        app.wsgi_app = mounted_at(app.wsgi_app, settings.root_path)  # type: ignore[method-assign]
    if settings.trusted_proxy:
        app.wsgi_app = prefixed_by_proxy(app.wsgi_app)  # type: ignore[method-assign]
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=1, x_proto=1)  # type: ignore[method-assign]
    app.wsgi_app = BodyDeadlines(app.wsgi_app)  # type: ignore[method-assign]

    access = Access(settings.token)
    outbox = Outbox(socketio, settings.async_mode, Coalescing(STREAM_EVENT, merged_deltas, STREAM_INTERVAL_S))
    probe = MessageQueueProbe(settings.message_queue).start() if settings.message_queue else None
    app.register_blueprint(pages_blueprint(settings, slot, access, probe))
    metrics = Metrics()
    open_responses = OpenResponses()
    install_openai_api(
        app, settings, slot, access=access, sleep=socketio.sleep, open_responses=open_responses, metrics=metrics
    )
    watch = install_watch(
        app, socketio, settings, scheduler=lambda: slot.scheduler, send=outbox.send, access=access, metrics=metrics
    )
    install_metrics(app, socketio, metrics, access=access, slot=slot, hub=watch.hub)
    gate = EventGate(
        RateLimiter(settings.rate_limit_per_s, settings.rate_burst),
        RateLimiter(settings.ip_rate_limit_per_s, settings.ip_rate_limit_per_s * 2),
        strikes=settings.rate_burst * 2 + 10,
    )
    socketio.on_namespace(
        AppNamespace(settings, slot, access=access, gate=gate, outbox=outbox, watch=watch, metrics=metrics)
    )
    return WebApp(
        settings=settings,
        app=app,
        socketio=socketio,
        slot=slot,
        metrics=metrics,
        outbox=outbox,
        watch=watch,
        open_responses=open_responses,
    )
