"""Flask pages and Socket.IO handlers: validate, decode, hand to the scheduler, reply to the sender.

Handlers never run the model: they queue work and return, so pings, other clients and
``/healthz`` stay responsive during a generation. Replies go to ``request.sid`` only,
never broadcast.
"""

from __future__ import annotations

import hmac
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any

from flask import Flask, Response, jsonify, make_response, render_template, request
from flask_socketio import SocketIO
from werkzeug.middleware.proxy_fix import ProxyFix

from .backends.base import Backend
from .config import Settings
from .demo_guide import demo_guide
from .hosts import allowed_hosts, host_guard
from .images import ImageRejected
from .openai_api import install_openai_api
from .protocol import ProtocolError, parse_cancel, parse_query, parse_skill, request_id, to_job
from .ratelimit import EventGate, RateLimiter
from .scheduler import Request, Scheduler
from .sessions import SessionBounds, drop
from .watch_web import WatchService, install_watch

log = logging.getLogger(__name__)

TOKEN_COOKIE = "vlm_token"
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' data: blob:; media-src 'self' blob:; "
    "connect-src 'self' ws: wss:; style-src 'self'; script-src 'self'; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)


class ModelSlot:
    """The singleton model: empty while loading, then filled exactly once."""

    def __init__(self) -> None:
        self.backend: Backend | None = None
        self.scheduler: Scheduler | None = None
        self.ready = threading.Event()

    def install(self, backend: Backend, scheduler: Scheduler) -> None:
        self.backend, self.scheduler = backend, scheduler
        self.ready.set()


class Outbox:
    """Delivers worker-thread events on the server's own concurrency model.

    In threading mode any thread may emit. Under eventlet or gevent the worker is a
    native thread that must not touch the hub, so it drops events in a deque that a
    green task empties every couple of milliseconds.

    A client whose unsent packets pile up past ``MAX_BACKLOG`` is not reading (its socket's
    buffers are full): it is dropped rather than let the server's memory grow for it.
    """

    POLL_S = 0.002
    MAX_BACKLOG = 256

    def __init__(self, socketio: SocketIO, async_mode: str) -> None:
        self.socketio = socketio
        self.direct = async_mode == "threading"
        self.pending: deque[tuple[str, dict[str, Any], str | None]] = deque()
        if not self.direct:
            socketio.start_background_task(self._pump)

    def send(self, event: str, payload: dict[str, Any], sid: str | None) -> None:
        """To the client ``sid``, or to every client when it is None."""
        if self.direct:
            self._emit(event, payload, sid)
        else:
            self.pending.append((event, payload, sid))

    def _emit(self, event: str, payload: dict[str, Any], sid: str | None) -> None:
        if sid is not None and self.backlog(sid) > self.MAX_BACKLOG:
            log.warning("dropping %s: %d packets unread", sid, self.backlog(sid))
            drop(self.socketio, sid)
            return
        self.socketio.emit(event, payload, to=sid)

    def backlog(self, sid: str) -> int:
        """Packets queued for one client and not yet written to its socket (0 if it is gone or remote)."""
        server = self.socketio.server
        eio_sid = server.manager.eio_sid_from_sid(sid, "/")
        connection = server.eio.sockets.get(eio_sid) if eio_sid else None
        return connection.queue.qsize() if connection is not None else 0

    def _pump(self) -> None:
        while True:
            while self.pending:
                self._emit(*self.pending.popleft())
            self.socketio.sleep(self.POLL_S)


def error_event(rid: str | None, code: str, message: str, *, seed: bool) -> tuple[str, dict[str, Any]]:
    """A refusal as the client can read it.

    A client that sent an id listens for ``query_error``. One that sent none is written like the
    original page, which listens only for ``response`` and shows its ``answer``: it gets the
    error there, worded as the original server worded its errors, so it never waits forever.
    """
    if seed:
        return "response", {"id": rid, "answer": f"Sorry, an error occurred: {message}",
                            "error": {"code": code, "message": message}}
    return "query_error", {"id": rid, "code": code, "message": message}


class SocketSink:
    """Routes one request's events to the client that sent it; ``seed`` for clients that sent no id."""

    def __init__(self, outbox: Outbox, *, seed: bool = False) -> None:
        self.outbox = outbox
        self.seed = seed

    def stream(self, request: Request, delta: str) -> None:
        self.outbox.send("stream", {"id": request.id, "delta": delta}, request.client)

    def respond(self, request: Request, payload: dict[str, Any]) -> None:
        self.outbox.send("response", payload, request.client)

    def error(self, request: Request, code: str, message: str) -> None:
        self.outbox.send(*error_event(request.id, code, message, seed=self.seed), request.client)


def has_id(payload: object) -> bool:
    return isinstance(payload, dict) and payload.get("id") is not None


def socket_origins(extra: tuple[str, ...]) -> str | list[str] | Callable[[str, dict[str, Any]], bool] | None:
    """``--cors-origin`` widens the default same-origin rule: the app's own page must keep connecting.

    The own origin is the one the request came to (``Host``, or a proxy's ``X-Forwarded-*``),
    as Engine.IO checks it when given no list.
    """
    if not extra:
        return None
    if "*" in extra:
        return "*"

    def allowed(origin: str, environ: dict[str, Any]) -> bool:
        host = environ.get("HTTP_HOST", "")
        own = {f"{environ.get('wsgi.url_scheme', 'http')}://{host}"}
        if "HTTP_X_FORWARDED_PROTO" in environ or "HTTP_X_FORWARDED_HOST" in environ:
            scheme = environ.get("HTTP_X_FORWARDED_PROTO", environ.get("wsgi.url_scheme", "http"))
            forwarded_host = environ.get("HTTP_X_FORWARDED_HOST", host)
            own.add(f"{scheme.split(',')[0].strip()}://{forwarded_host.split(',')[0].strip()}")
        return origin in own or origin in extra

    return allowed


@dataclass(frozen=True)
class WebApp:
    app: Flask
    socketio: SocketIO
    slot: ModelSlot
    outbox: Outbox
    watch: WatchService

    def idle(self) -> bool:
        """Nothing accepted is still unanswered or undelivered (used to drain on shutdown)."""
        scheduler = self.slot.scheduler
        return (scheduler is None or scheduler.pending() == 0) and not self.outbox.pending


def create_app(settings: Settings, slot: ModelSlot | None = None) -> WebApp:
    slot = slot or ModelSlot()
    app = Flask(__name__, template_folder="../templates", static_folder="../static")
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
        # One client's events in the order sent: side by side, a newer question whose frame
        # decodes faster would be queued first and then superseded by the one it replaced.
        async_handlers=False,
    )
    outbox = Outbox(socketio, settings.async_mode)
    sinks = {False: SocketSink(outbox), True: SocketSink(outbox, seed=True)}
    gate = EventGate(RateLimiter(settings.rate_limit_per_s, settings.rate_burst),
                     RateLimiter(settings.ip_rate_limit_per_s, settings.ip_rate_limit_per_s * 2),
                     strikes=settings.rate_burst * 2 + 10)
    sessions = SessionBounds(socketio, per_address=settings.max_connections_per_ip, total=settings.max_connections)
    sessions.start()
    # Outermost first: the real client address (trusted proxy only), then the Host check, then session bounds.
    app.wsgi_app = sessions.wrap(app.wsgi_app)  # type: ignore[method-assign]
    app.wsgi_app = host_guard(app.wsgi_app, allowed_hosts(settings))  # type: ignore[method-assign]
    if settings.trusted_proxy:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=1, x_proto=1)  # type: ignore[method-assign]

    def token_ok(candidate: object) -> bool:
        if not settings.token:
            return True
        if not isinstance(candidate, str):
            return False
        # surrogatepass: a lone surrogate from a JSON string is a wrong token, not a traceback.
        return hmac.compare_digest(candidate.encode("utf-8", "surrogatepass"),
                                   settings.token.encode("utf-8", "surrogatepass"))

    def bearer() -> str | None:
        header = request.headers.get("Authorization", "")
        return header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") else None

    @app.after_request
    def security_headers(response: Response) -> Response:
        response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        response.headers.setdefault("X-Frame-Options", "DENY")
        return response

    @app.get("/")
    def index() -> Response:
        """The link with ``?token=`` works once; a cookie keeps reloads working after the page hides it."""
        token = request.args.get("token") or bearer() or request.cookies.get(TOKEN_COOKIE)
        if not token_ok(token):
            return make_response(render_template("unauthorized.html"), 401)
        response = make_response(render_template("index.html"))
        if settings.token:
            response.set_cookie(TOKEN_COOKIE, settings.token, httponly=True, samesite="Strict",
                                secure=request.is_secure)
        return response

    @app.get("/healthz")
    def healthz() -> tuple[Response, int]:
        if slot.backend is None:
            return jsonify(status="loading"), 503
        info = slot.backend.info
        stuck_s = slot.scheduler.stuck_s() if slot.scheduler is not None else 0.0
        if stuck_s:  # the model has not come back from an overdue call; nothing else can run meanwhile
            return jsonify(status="degraded", stuck_s=round(stuck_s, 1), model=settings.model_name,
                           backend=info.backend, device=info.device), 503
        return jsonify(status="ok", model=settings.model_name, backend=info.backend, device=info.device), 200

    @app.get("/api/info")
    def api_info() -> tuple[Response, int]:
        if not token_ok(bearer()):
            return jsonify(error="unauthorized"), 401
        if slot.backend is None:
            return jsonify(status="loading"), 503
        info = asdict(slot.backend.info)
        info["capabilities"] = sorted(info["capabilities"])
        # The page paces its live mode from the rate limit, so that it never trips it.
        info.update(model=settings.model_name, max_question_chars=settings.max_question_chars,
                    max_image_bytes=settings.max_image_bytes, rate_limit_per_s=settings.rate_limit_per_s,
                    rate_burst=settings.rate_burst)
        info.update(demo_guide(settings.model_path))
        return jsonify(info), 200

    install_openai_api(app, settings, slot, authorized=lambda: token_ok(bearer()), sleep=socketio.sleep)

    @socketio.on("connect")
    def on_connect(auth: object = None) -> None:
        """The token from ``auth``, or the HttpOnly cookie the page set (a new tab has only that);
        a cross-site page cannot use the cookie: SameSite=Strict, and its Origin is refused."""
        token = auth.get("token") if isinstance(auth, dict) else None
        if not token_ok(token) and not token_ok(request.cookies.get(TOKEN_COOKIE)):
            raise ConnectionRefusedError("unauthorized")

    @socketio.on("disconnect")
    def on_disconnect(reason: object = None) -> None:
        gate.forget(request.sid)
        watch.forget_tab(request.sid)
        if slot.scheduler is not None:
            slot.scheduler.forget_client(request.sid)

    def gated(handler: Any, *, replies: bool = True) -> Any:
        """Every event is charged to its connection and its address before anything else is done.

        Handlers take any arguments, so a client sending the wrong number still gets a reply.
        ``replies=False``: a refusal is only acknowledged (a ``cancel``'s id names the query it
        targets, which must not read as failed).
        """

        def receive(*args: object) -> object:
            verdict = gate.check(request.sid, request.remote_addr or "")
            if verdict.drop:
                log.warning("dropping %s from %s: it kept flooding after being refused", request.sid,
                            request.remote_addr)
                drop(socketio, request.sid)
                return None
            payload = args[0] if args else None
            if not verdict.allowed:
                if not replies:
                    return {"error": "rate_limited"}
                return {"id": reply_error(payload, "rate_limited", "too many requests; slow down")}
            if len(args) != 1:
                if not replies:
                    return {"error": "bad_request"}
                return {"id": reply_error(payload, "bad_request", "send exactly one payload object")}
            return handler(args[0])

        receive.__name__ = handler.__name__
        return receive

    watch = install_watch(app, socketio, settings, scheduler=lambda: slot.scheduler,
                          decode_size=lambda: slot.backend.info.decode_size if slot.backend else None,
                          send=outbox.send, token_ok=token_ok, bearer=bearer, cookie=TOKEN_COOKIE,
                          guard=partial(gated, replies=False))

    def reply_error(payload: object, code: str, message: str, rid: str | None = None) -> str | None:
        if rid is None:
            try:
                rid = request_id(payload)
            except ProtocolError:
                rid = None
        watch.metrics.refused("socketio", code)
        event, body = error_event(rid, code, message, seed=not has_id(payload))
        socketio.emit(event, body, to=request.sid)
        return rid

    def accept(payload: object, parse: Any) -> dict[str, str | None]:
        """Shared path of ``query`` and ``skill``: every refusal goes to the sender only.

        The acknowledgement carries the request's id, so a client that sent none learns the
        one the server made up before any event about it arrives.
        """
        received = time.perf_counter()
        backend, scheduler = slot.backend, slot.scheduler
        if backend is None or scheduler is None:
            return {"id": reply_error(payload, "loading", "the model is still loading; try again in a moment")}
        if not scheduler.has_room(request.sid, ordered=not has_id(payload)):  # before the decode: refusing is free
            return {"id": reply_error(payload, "busy", f"the server is busy ({scheduler.max_queue} requests "
                                                       "queued); try again shortly")}
        try:
            incoming = parse(payload, backend)
            job, decode_ms = to_job(incoming, settings, decode_size=backend.info.decode_size)
        except ProtocolError as error:
            return {"id": reply_error(payload, error.code, error.message, error.request_id)}
        except ImageRejected as error:
            return {"id": reply_error(payload, error.code, error.message, incoming.id)}
        log.info("%s %s from %s (%d chars; frames are never stored)", incoming.task, incoming.id,
                 request.sid, len(incoming.text))
        seed = not has_id(payload)
        scheduler.submit(Request(id=incoming.id, client=request.sid, job=job, sink=sinks[seed], ordered=seed,
                                 live=incoming.live, received=received, decode_ms=decode_ms))
        return {"id": incoming.id}

    @socketio.on("query")
    @gated
    def on_query(payload: object = None) -> dict[str, str | None]:
        return accept(payload, lambda p, _: parse_query(p, max_question_chars=settings.max_question_chars))

    @socketio.on("skill")
    @gated
    def on_skill(payload: object = None) -> dict[str, str | None]:
        return accept(payload, lambda p, backend: parse_skill(p, capabilities=backend.info.capabilities))

    @socketio.on("cancel")
    @partial(gated, replies=False)
    def on_cancel(payload: object = None) -> dict[str, object] | None:
        """Acknowledged, so a client can tell whether its request was still running."""
        try:
            rid = parse_cancel(payload)
        except ProtocolError as error:
            reply_error(payload, error.code, error.message, error.request_id)
            return None
        cancelled = slot.scheduler is not None and slot.scheduler.cancel(request.sid, rid)
        return {"id": rid, "cancelled": cancelled}

    return WebApp(app=app, socketio=socketio, slot=slot, outbox=outbox, watch=watch)
