"""Entry point: ``python app.py --help``."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading

from vlm.backends.registry import explain_load_failure, load_backend
from vlm.config import Settings, parse_settings
from vlm.scheduler import Scheduler
from vlm.servers import server_options
from vlm.web import WebApp, create_app

log = logging.getLogger("vlm")
DRAIN_TIMEOUT_S = 30.0


def load_model(settings: Settings, web: WebApp) -> None:
    """Load the singleton model while the server already answers /healthz with 503."""
    try:
        backend = load_backend(settings)
    except Exception as error:  # any failure here is fatal and must read as a sentence
        print(f"\nERROR: {explain_load_failure(settings, error)}\n", file=sys.stderr, flush=True)
        os._exit(2)
    scheduler = Scheduler(
        backend,
        max_queue=settings.max_queue,
        batch_window_s=settings.batch_window_ms / 1000,
        timeout_s=settings.request_timeout_s,
        continuous=settings.batching == "continuous",
    )
    web.slot.install(backend, scheduler)
    info = backend.info
    log.info("model ready: %s via %s on %s (%s)", info.model, info.backend, info.device, info.dtype)


def drain_on_sigterm(web: WebApp) -> None:
    """SIGTERM finishes accepted requests (up to a bound), delivers their answers, then exits."""

    def drain() -> None:
        if web.slot.scheduler is not None:
            web.slot.scheduler.stop_accepting()
        waited = 0.0
        while not web.idle() and waited < DRAIN_TIMEOUT_S:
            web.socketio.sleep(0.05)
            waited += 0.05
        log.info("drained; exiting")
        logging.shutdown()
        os._exit(0)

    signal.signal(signal.SIGTERM, lambda *_: web.socketio.start_background_task(drain))


def main(argv: list[str] | None = None) -> None:
    settings = parse_settings(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    web = create_app(settings)
    threading.Thread(target=load_model, args=(settings, web), name="vlm-loader", daemon=True).start()
    drain_on_sigterm(web)
    options = server_options(settings)
    query = f"/?token={settings.token}" if settings.token else "/"
    scheme = "https" if settings.https else "http"
    log.info("serving on %s://%s:%d%s (%s mode)", scheme, settings.host, settings.port, query, settings.async_mode)
    if settings.host not in ("127.0.0.1", "localhost", "::1") and not settings.token:
        log.warning("listening on %s without --token: anyone on your network can use the model", settings.host)
    web.socketio.run(web.app, host=settings.host, port=settings.port, allow_unsafe_werkzeug=True, **options)


if __name__ == "__main__":
    main()
