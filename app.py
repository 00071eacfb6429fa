"""Entry point: ``python app.py --help``."""

from __future__ import annotations

import logging
import os
import resource
import sys
import threading
from collections.abc import Callable
from urllib.parse import quote

from vlm.backends.load_failure import explain_load_failure
from vlm.backends.registry import load_backend
from vlm.config import Settings, parse_settings
from vlm.errors import Code, VlmError
from vlm.heap import unmap_big_buffers_when_freed
from vlm.images import configure_decoding
from vlm.logformat import use_log_format
from vlm.logsafe import MASK, configure_logging, masked, route_library_loggers
from vlm.network import in_url, is_loopback, is_wildcard, lan_address
from vlm.preflight import start_problem
from vlm.servers import serve
from vlm.web import WebApp, create_app

log = logging.getLogger("vlm")
# After the drain's time is up, how long the errors it sends to what is still unfinished have to go out.
LAST_WORDS_S = 2.0
# Once idle, a websocket's writer thread may still be writing the last packets it took from its queue.
LAST_WRITE_S = 0.5


def load_model(settings: Settings, web: WebApp) -> None:
    """Load the singleton model while the server already answers /healthz with 503."""
    try:
        backend = load_backend(settings)
    except Exception as error:  # any failure here is fatal and must read as a sentence
        print(f"\nERROR: {masked(explain_load_failure(settings, error))}\n", file=sys.stderr, flush=True)
        os._exit(2)
    web.install_model(backend)
    info = backend.info
    log.info("model ready: %s via %s on %s (%s)", info.model, info.backend, info.device, info.dtype)
    announce_ready(settings)


def page_urls(settings: Settings, token: str | None) -> list[str]:
    """The page's address: for a wildcard --host (0.0.0.0, ::), which no browser can open, the LAN address
    (what a phone uses; --self-signed puts it in the certificate) and then localhost (this machine). The token
    is URL-encoded: a base64 one's ``+`` would arrive as a space; the log's mask is shown as it is."""
    path = f"{settings.root_path}/"
    query = f"{path}?token={token if token == MASK else quote(token, safe='')}" if token else path
    scheme = "https" if settings.https else "http"
    hosts = [lan_address(), "localhost"] if is_wildcard(settings.host) else [settings.host]
    return [f"{scheme}://{in_url(host)}:{settings.port}{query}" for host in hosts if host]


def announce_ready(settings: Settings) -> None:
    """One "ready" line with the page's address, once the model can answer.

    The log shows the token masked; the full link goes to the terminal only, when there is one.
    """
    masked = page_urls(settings, settings.token and MASK)
    log.info("ready: open %s%s", masked[0], f" (this machine: {masked[1]})" if len(masked) > 1 else "")
    if not settings.https and not is_loopback(settings.host):
        # Browsers give the camera only to https pages and to localhost: a phone on plain http gets no camera.
        log.warning("other devices get no camera over http: restart with --self-signed (or --ssl-cert/--ssl-key)")
    if settings.token and sys.stdout.isatty():
        full = page_urls(settings, settings.token)
        here = f"\n  (this machine: {full[1]})" if len(full) > 1 else ""
        print(f"\n  Open {full[0]}{here}\n", flush=True)


def drainer(web: WebApp, timeout_s: float, why: str, stopping: threading.Event) -> Callable[[], None]:
    """What a stop signal runs: finish accepted requests (for up to ``timeout_s``), deliver their answers, tell the
    rest the server shut down (``why`` says so in the log), then exit. The exit skips the interpreter's teardown,
    which with the model's thread inside torch aborts the process. A stop signal while ``stopping`` exits at
    once."""

    def drain() -> None:
        scheduler = web.slot.scheduler
        if scheduler is not None:
            scheduler.stop_accepting()
        wait_until_idle(web, timeout_s)
        if not web.idle() and scheduler is not None:
            # Every request ends with exactly one final event, even this way: the client can ask elsewhere.
            cut = scheduler.abandon(
                VlmError(Code.SHUTTING_DOWN, "the server shut down before this answer was done; ask again")
            )
            log.warning("%s: %d unfinished requests were told the server shut down", why, cut)
            wait_until_idle(web, LAST_WORDS_S)
        web.socketio.sleep(LAST_WRITE_S)
        log.info("drained; exiting")
        logging.shutdown()
        os._exit(0)

    def stop() -> None:
        if stopping.is_set():
            os._exit(1)
        stopping.set()
        web.socketio.start_background_task(drain)

    return stop


def wait_until_idle(web: WebApp, seconds: float) -> None:
    waited = 0.0
    while not web.idle() and waited < seconds:
        web.socketio.sleep(0.05)
        waited += 0.05


def raise_open_file_limit(wanted: int) -> None:
    """Each connection is one file descriptor; the common soft limit of 1024 is below what the bounds allow."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def main(argv: list[str] | None = None) -> None:
    settings = parse_settings(argv)
    configure_logging(*settings.log_secrets, level=settings.log_level)
    use_log_format(settings.log_format, *settings.log_secrets)
    if problem := start_problem(settings):
        print(f"\nERROR: {problem[0].upper()}{problem[1:]}.\n", file=sys.stderr, flush=True)
        sys.exit(2)
    raise_open_file_limit(4 * settings.max_connections + 256)
    unmap_big_buffers_when_freed()
    configure_decoding(settings.async_mode)
    web = create_app(settings)
    route_library_loggers()
    threading.Thread(target=load_model, args=(settings, web), name="vlm-loader", daemon=True).start()
    server = "gunicorn gthread" if settings.async_mode == "threading" else settings.async_mode
    log.info(
        "listening on %s port %d (%s, %s mode); loading %s",
        settings.host,
        settings.port,
        server,
        settings.async_mode,
        settings.model or "the one model --base-url lists",
    )
    if not is_loopback(settings.host) and not settings.token:
        log.warning("listening on %s without --token: anyone on your network can use the model", settings.host)
    drain_s, stopping = settings.drain_timeout_s, threading.Event()
    serve(
        settings,
        web.app,
        socketio=web.socketio,
        on_sigterm=drainer(web, drain_s, f"still busy after --drain-timeout {drain_s:g} s", stopping),
        on_sigint=drainer(web, 0, "interrupted", stopping),
    )


if __name__ == "__main__":
    main()
