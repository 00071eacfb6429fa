"""``GET /metrics``: the app's one ``Metrics`` registry for Prometheus, and the gauges it reads at each scrape.

The counters are fed by the doors and the scheduler (vlm/metrics.py); this module only serves them,
behind the bearer token, and tells the gauges where to read what is true now.
"""

from __future__ import annotations

from flask import Flask, Response, jsonify
from flask_socketio import SocketIO
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .access import Access
from .errors import http_status
from .metrics import Metrics
from .model_slot import ModelSlot
from .watch import WatchHub


def install_metrics(
    app: Flask, socketio: SocketIO, metrics: Metrics, *, access: Access, slot: ModelSlot, hub: WatchHub
) -> None:
    """``GET /metrics`` on ``app``; its gauges read ``slot``'s queue, ``socketio``'s clients and ``hub``'s watches."""
    metrics.track(
        queue_depth=lambda: slot.scheduler.pending() if slot.scheduler is not None else 0,
        clients=lambda: connected_clients(socketio),
        watches=hub.active_count,
        sources=hub.public_sources,
    )

    @app.get("/metrics")
    def prometheus() -> Response | tuple[Response, int]:
        if not access.bearer_ok():
            refused = access.refusal("bearer token")
            return jsonify(refused.as_object()), http_status(refused.code)
        return Response(generate_latest(metrics.registry), mimetype=CONTENT_TYPE_LATEST)


def connected_clients(socketio: SocketIO) -> int:
    # python-socketio's manager keeps every connected sid of a namespace in its room None.
    return len(socketio.server.manager.rooms.get("/", {}).get(None, {}))
