"""The page, ``/healthz`` and ``/api/info``: what a browser or a load balancer asks over plain HTTP."""

from __future__ import annotations

from dataclasses import asdict

from flask import Blueprint, Response, jsonify, make_response, render_template, request

from .access import TOKEN_COOKIE, Access
from .backends.base import Backend
from .config import Settings
from .demo_guide import demo_guide
from .errors import Code, http_status
from .model_slot import ModelSlot
from .probes import FAILING, Probe, Probed

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' data: blob:; media-src 'self' blob:; "
    "connect-src 'self' ws: wss:; style-src 'self'; script-src 'self'; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)


def pages_blueprint(settings: Settings, slot: ModelSlot, access: Access, message_queue: Probe | None) -> Blueprint:
    pages = Blueprint("pages", __name__)

    @pages.after_app_request
    def security_headers(response: Response) -> Response:
        """On every response of the app, ``/v1`` and Socket.IO polling included."""
        response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        response.headers.setdefault("X-Frame-Options", "DENY")
        return response

    @pages.get("/")
    def index() -> Response:
        """The link with ``?token=`` works once; a cookie keeps reloads working after the page hides it."""
        token = request.args.get("token") or access.bearer() or request.cookies.get(TOKEN_COOKIE)
        if not access.ok(token):
            if (refused := access.refusal("token")).code == Code.RATE_LIMITED:
                return make_response(refused.message, http_status(refused.code), {"Content-Type": "text/plain"})
            # A link whose token is wrong (mistyped, or from before a restart with a new one) is told so.
            return make_response(render_template("unauthorized.html", wrong=token is not None), 401)
        response = make_response(render_template("index.html"))
        # The page names its URLs from the path it is served under, which a proxy's header may say: a shared cache
        # must not hand one client's to another.
        response.headers["Cache-Control"] = "no-store"
        if settings.token:
            response.set_cookie(  # for this app's path only (/vlm matches /vlm/… too): other apps get no token
                TOKEN_COOKIE,
                settings.token,
                path=request.script_root or "/",
                httponly=True,
                samesite="Strict",
                secure=request.is_secure,
            )
        return response

    @pages.get("/healthz")
    def healthz() -> tuple[Response, int]:
        if slot.backend is None:
            return jsonify(status="loading"), 503
        info = slot.backend.info
        model = settings.served_name(info.model)
        if slot.scheduler is not None and not slot.scheduler.accepting:  # a load balancer should send no more
            return jsonify(status="draining", model=model), 503
        upstream = upstream_probe(slot.backend)
        stuck_s = slot.scheduler.stuck_s() if slot.scheduler is not None else 0.0
        if stuck_s:  # the model has not come back from an overdue call; nothing else can run meanwhile
            return jsonify(
                status="degraded", stuck_s=round(stuck_s, 1), model=model, backend=info.backend, device=info.device
            ), 503
        states = {} if message_queue is None else {"message_queue": message_queue.state}
        states |= {} if upstream is None else {"upstream": upstream.state}
        if upstream is not None and upstream.state in FAILING:  # every question would fail (DEPLOYMENT.md)
            return jsonify(status="degraded", model=model, backend=info.backend, device=info.device, **states), 503
        return jsonify(status="ok", model=model, backend=info.backend, device=info.device, **states), 200

    @pages.get("/api/info")
    def api_info() -> tuple[Response, int]:
        # The cookie too: a second tab opened at / has only the cookie (SameSite=Strict, so no other site's).
        if not access.bearer_ok() and not access.cookie_ok():
            refused = access.refusal("token")
            return jsonify(refused.as_object()), http_status(refused.code)
        if slot.backend is None:
            return jsonify(status="loading"), 503
        info = asdict(slot.backend.info)
        info["capabilities"] = sorted(info["capabilities"])
        # The page paces its live mode from the rate limit, so that it never trips it.
        info.update(
            model=settings.served_name(slot.backend.info.model),
            max_question_chars=settings.max_question_chars,
            max_image_bytes=settings.max_image_bytes,
            rate_limit_per_s=settings.rate_limit_per_s,
            rate_burst=settings.rate_burst,
        )
        info.update(demo_guide(settings.model_path))
        return jsonify(info), 200

    return pages


def upstream_probe(backend: Backend) -> Probe | None:
    """The probe of a forwarding backend's model server (``--backend openai``); None for a local model."""
    return backend.health() if isinstance(backend, Probed) else None
