"""OpenAI-compatible HTTP API: ``GET /v1/models``, ``POST /v1/chat/completions`` and ``POST /v1/responses``.

Any OpenAI client (the official library, another instance of this app with ``--backend
openai``) can ask about one frame per request. Requests pass the same checks as Socket.IO
ones (vlm/protocol.py) and wait in the same scheduler, each under its own client key so
that none supersedes another. The last user message is the question: its text parts, and its one
``image_url`` part, a ``data:`` URL, is the frame (without one, the newest image of an earlier user
message is: a follow-up asks about the conversation's frame); the server never
fetches remote URLs (that would let any caller make it open connections anywhere). Without
an image the question is text-only, for backends that can answer one. ``max_tokens`` can only
lower ``--max-new-tokens``; ``temperature`` goes to the backend (0, the default, is greedy), and
so do ``top_p``, ``seed`` and ``stop`` strings (up to four, as OpenAI allows; the answer ends before
the first to appear). A value the server cannot honour (``n`` > 1, a temperature out of range,
``tools``, a JSON ``response_format``, log-probabilities) is refused with a 400 naming the
``param``, as OpenAI does, rather than silently ignored; those options at their defaults
(``null``, ``[]``, ``"text"``) are accepted. Each API's own shapes are in vlm/openai_chat.py and
vlm/openai_responses.py; what both share, in vlm/openai_wire.py; this module serves them.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from functools import partial
from itertools import chain
from queue import Empty, SimpleQueue
from typing import Any, Protocol

from flask import Blueprint, Flask, Response, g, jsonify, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from .access import Access
from .config import Settings
from .errors import Code, VlmError, http_status
from .hangup import hung_up
from .metrics import Metrics
from .model_slot import ModelSlot
from .openai_chat import Completion, parse_chat
from .openai_responses import ResponseObject, parse_responses_request
from .openai_wire import FINAL, ApiRequest, SinkEvent, error_body
from .protocol import to_job
from .results import Answer
from .scheduler import Request

log = logging.getLogger(__name__)


# The routes that ask the model: a refusal there is a request refused (``vlm_refused_requests``).
MODEL_PATHS = frozenset({"/v1/chat/completions", "/v1/responses"})
HANGUP_CHECK_S = 0.2  # how often a view with nothing to write looks whether its client is still there
# Seconds a 503 asks a client to wait: a model loads in seconds; a restarting server (or the load balancer's
# next process) is back sooner.
RETRY_AFTER_S = {Code.LOADING: 5, Code.SHUTTING_DOWN: 1}
# A failure that asking again would only repeat: the same request runs past the time limit again, or fails
# the model again, and each retry costs the server a whole generation.
UNRETRIED = frozenset({Code.TIMEOUT, Code.MODEL_ERROR})


class WireShape(Protocol):
    """How one transport writes an answer: whole (``body``) or as server-sent events (``sse``)."""

    def body(self, answer: Answer) -> dict[str, Any]: ...

    def sse(self, events: Iterator[SinkEvent], *, on_close: Callable[[], None]) -> Iterator[str]: ...


class OpenResponses:
    """How many ``/v1`` responses are not yet written to the end, so that a drain on shutdown waits for them:
    an answer handed to its HTTP thread was still on its way out when the process could exit."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open = 0

    def __bool__(self) -> bool:
        return self._open > 0

    def opened(self) -> None:
        with self._lock:
            self._open += 1

    def closed(self) -> None:
        with self._lock:
            self._open -= 1


def install_openai_api(
    app: Flask,
    settings: Settings,
    slot: ModelSlot,
    *,
    access: Access,
    sleep: Callable[[float], object],
    open_responses: OpenResponses,
    metrics: Metrics,
) -> None:
    """Mount ``/v1`` on ``app``, after ``SocketIO(app)`` so that ``eventlet_environ`` wraps Socket.IO's middleware.

    ``access`` is the app's own token check, ``sleep`` its async mode's; ``open_responses`` counts what
    ``/v1`` has yet to finish writing; ``metrics`` counts its refusals.
    """
    app.register_blueprint(openai_blueprint(settings, slot, access=access, sleep=sleep, open_responses=open_responses))
    app.wsgi_app = eventlet_environ(app.wsgi_app)  # type: ignore[method-assign]

    @app.after_request
    def count_refusals(response: Response) -> Response:
        """A request for the model refused before its queue, wherever it was refused: the token check, the view,
        Flask itself (a wrong method, a body too large). One that was queued was counted by how it ended."""
        if request.path in MODEL_PATHS and response.status_code >= 400 and not g.get("vlm_queued"):
            body = response.get_json(silent=True) if response.is_json else None
            code = body.get("error", {}).get("code") if isinstance(body, dict) else None
            metrics.refused("http", str(code or response.status_code))
        return response

    @app.after_request
    def allow_listed_origins(response: Response) -> Response:
        """A page from a ``--cors-origin`` origin may call ``/v1`` from the browser (a chat UI, OpenAI's JS
        client), as it may connect over Socket.IO; the bearer token still guards every answer. Every answer
        under ``/v1``, an unknown path's too, names the origin, and shows the page the headers that say whether
        to ask again."""
        origin = request.headers.get("Origin")
        listed = origin is not None and ("*" in settings.cors_origins or origin in settings.cors_origins)
        if not listed or not under_v1(request.path):
            return response
        response.headers["Access-Control-Allow-Origin"] = "*" if "*" in settings.cors_origins else str(origin)
        response.headers["Access-Control-Expose-Headers"] = "x-should-retry, retry-after"
        response.vary.add("Origin")
        if request.method == "OPTIONS":
            response.headers["Access-Control-Allow-Methods"] = "GET, POST"
            response.headers["Access-Control-Allow-Headers"] = request.headers.get("Access-Control-Request-Headers", "")
            response.headers["Access-Control-Max-Age"] = "600"
        return response

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> HTTPException | tuple[Response, int]:
        """Under ``/v1`` every refusal (an unknown path, a wrong method, a body cut off at the transport)
        is an OpenAI error object, which clients parse; elsewhere Flask's own page."""
        if not under_v1(request.path):
            return error
        code = (error.name or "error").lower().replace(" ", "_")
        return error_response(code, error.description or code, status=error.code or 500)


def under_v1(path: str) -> bool:
    return path == "/v1" or path.startswith("/v1/")


def eventlet_environ(wsgi_app: Callable[..., Any]) -> Callable[..., Any]:
    """What eventlet.wsgi leaves out of the environ, set outside Flask-SocketIO's middleware (Flask only sees a
    copy of the environ there).

    It holds small writes back until 4 KiB, clumping a stream's events together: that is turned off. Its input
    stream ends a chunked body (no Content-Length) itself but does not say so with ``wsgi.input_terminated``,
    so Werkzeug read every chunked body as empty: it now says so, as gunicorn and gevent do.
    """

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        environ["eventlet.minimum_write_chunk_size"] = 0
        if "eventlet.input" in environ:
            environ.setdefault("wsgi.input_terminated", True)
        return wsgi_app(environ, start_response)

    return app


def openai_blueprint(
    settings: Settings,
    slot: ModelSlot,
    *,
    access: Access,
    sleep: Callable[[float], object],
    open_responses: OpenResponses,
) -> Blueprint:
    """The ``/v1`` routes, answered from ``slot``'s scheduler."""
    api = Blueprint("openai_api", __name__, url_prefix="/v1")
    started = int(time.time())
    green = settings.async_mode != "threading"

    @api.before_request
    def count_open() -> None:
        open_responses.opened()

    @api.after_request
    def uncount_once_written(response: Response) -> Response:
        response.call_on_close(open_responses.closed)
        return response

    @api.before_request
    def require_token() -> tuple[Response, int] | None:
        if request.method == "OPTIONS":  # a browser's preflight carries no credentials, and answers nothing
            return None
        if access.bearer_ok():
            return None
        refused = access.refusal("bearer token")
        return error_response(refused.code, refused.message)

    def model_name() -> str:
        """The served model's name; only asked once ``slot.loaded()`` let the request through."""
        backend, _ = slot.loaded()
        return settings.served_name(backend.info.model)

    def model_entry() -> dict[str, Any]:
        return {"id": model_name(), "object": "model", "created": started, "owned_by": "webcam-vlm"}

    @api.errorhandler(VlmError)
    def refusal(error: VlmError) -> tuple[Response, int]:
        """What a route refuses by raising (the model still loading, a body it cannot take), as OpenAI's error."""
        return error_response(error.code, error.message, param=error.param)

    @api.get("/models")
    def models() -> tuple[Response, int]:
        slot.loaded()  # 503 until the model is there to serve
        return jsonify(object="list", data=[model_entry()]), 200

    @api.get("/models/<path:model>")
    def model(model: str) -> tuple[Response, int]:
        slot.loaded()  # 503 until the model is there to serve
        if model != model_name():
            return error_response(
                Code.MODEL_NOT_FOUND,
                f"this server serves {model_name()!r}, not {model!r}",
                status=404,
                param="model",
            )
        return jsonify(model_entry()), 200

    def answered(
        parse: Callable[..., ApiRequest], where: str, shape: Callable[[ApiRequest, str], WireShape]
    ) -> Response | tuple[Response, int]:
        """The request's answer in ``shape``'s wire format; ``parse`` reads the body, ``where`` holds its frame.
        A refusal before the queue is raised (``refusal`` writes it), except the frame's, which names ``where``."""
        received = time.perf_counter()
        backend, scheduler = slot.loaded()
        asked = parse(
            json_body(), max_question_chars=settings.max_question_chars, text_only="text" in backend.info.capabilities
        )
        try:
            job, decode_ms = to_job(
                asked.incoming,
                settings,
                decode_size=backend.info.decode_size,
                max_new_tokens=asked.max_tokens,
                temperature=asked.temperature,
                top_p=asked.top_p,
                stop=asked.stop,
                seed=asked.seed,
            )
        except VlmError as error:  # the frame
            return error_response(error.code, error.message, param=where)
        sink = HttpSink(sleep if green else None, quiet_s=HANGUP_CHECK_S)
        work = Request(
            id=asked.incoming.id,
            client=f"http-{uuid.uuid4().hex}",
            job=job,
            sink=sink,
            door="http",
            received=received,
            decode_ms=decode_ms,
            returns=False,
        )
        log.info("query %s over HTTP (%d chars; frames are never stored)", work.id, len(job.text))
        g.vlm_queued = True  # how it ends is counted at its sink now, not as a refusal (``count_refusals``)
        scheduler.submit(work)
        cancel = partial(scheduler.cancel, work.client, work.id)
        events = watched(
            iter(sink), hung_up=partial(hung_up, request.environ), cancel=cancel, keepalive_s=settings.sse_keepalive_s
        )
        # Waiting for the first event lets a refusal (busy, timeout) still go out with its own HTTP status; a
        # request still queued after ``keepalive_s`` is answered 200, and a later refusal goes out in the stream.
        first = next(events)
        if first[0] == "error":
            return error_response(first[1].code, first[1].message)
        wire = shape(asked, work.id)
        if asked.streaming:
            # A client that hangs up mid-stream cancels its generation; after the answer this is a no-op.
            return Response(
                wire.sse(chain([first], events), on_close=cancel),
                mimetype="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        kind, value = next(event for event in chain([first], events) if event[0] in FINAL)
        if kind == "error":
            return error_response(value.code, value.message)
        return jsonify(wire.body(value)), 200

    @api.post("/chat/completions")
    def chat_completions() -> Response | tuple[Response, int]:
        return answered(
            parse_chat,
            "messages",
            lambda asked, rid: Completion(f"chatcmpl-{rid}", model_name(), asked.include_usage),
        )

    @api.post("/responses")
    def responses() -> Response | tuple[Response, int]:
        return answered(
            parse_responses_request,
            "input",
            lambda asked, rid: ResponseObject(f"resp_{rid}", model_name(), asked),
        )

    return api


def watched(
    events: Iterator[SinkEvent], *, hung_up: Callable[[], bool], cancel: Callable[[], object], keepalive_s: float
) -> Iterator[SinkEvent]:
    """A request's events as its view writes them, ``quiet`` ones consumed here.

    A client found gone, while its request waits in the queue or between tokens, has it cancelled: the queue
    slot and the generation were spent for nobody. After ``keepalive_s`` without an event comes one
    ``("waiting", None)``, which a stream writes as an SSE comment: a proxy or client that cuts a connection
    quiet for a minute (nginx's default ``proxy_read_timeout``) keeps it while the request waits its turn.
    """
    checked = written = time.monotonic()
    cancelled = False
    for event in events:
        now = time.monotonic()
        if not cancelled and now - checked >= HANGUP_CHECK_S:
            checked = now
            if hung_up():
                log.info("the HTTP client hung up; cancelling its request")
                cancel()
                cancelled = True
        if event[0] == "quiet":
            if now - written < keepalive_s:
                continue
            event = ("waiting", None)
        written = now
        yield event


def json_body() -> object:
    """The request's JSON, or None if it does not parse; a body not sent as JSON is refused saying so (curl's
    ``-d`` sends a form by default), and nesting deep enough to exhaust the parser's recursion is refused like
    any other unusable body rather than failing as a 500.

    A chunked body (no Content-Length) is cut at the transport limit by Werkzeug without a word, so one that
    reaches it is refused with 413 here, as one that declares a longer length is, not taken for bad JSON."""
    limit = request.max_content_length
    if limit is not None and len(request.get_data(cache=True)) >= limit:
        raise RequestEntityTooLarge()
    if not request.is_json:
        raise VlmError(Code.BAD_REQUEST, "send the body as JSON, with the header Content-Type: application/json")
    try:
        return request.get_json(silent=True)
    except RecursionError:
        raise VlmError(Code.BAD_REQUEST, "the JSON body is nested too deeply") from None


def error_response(
    code: str, message: str, *, status: int | None = None, param: str | None = None
) -> tuple[Response, int]:
    """OpenAI's clients retry 408, 409, 429 and any 5xx twice, unless told otherwise (``x-should-retry``)."""
    status = status or http_status(code)
    response = jsonify(error_body(code, message, status, param))
    if status == 429:  # busy or rate-limited: a second is about one answer's worth of the queue moving
        response.headers["Retry-After"] = "1"
    if code in RETRY_AFTER_S:
        response.headers["Retry-After"] = str(RETRY_AFTER_S[Code(code)])
    if code in UNRETRIED:
        response.headers["x-should-retry"] = "false"
    return response, status


class HttpSink:
    """One HTTP request's events, handed from the model worker to the view waiting for them.

    Under threading the view blocks on the queue. Under eventlet/gevent the view is a green
    thread and the worker a native one (the app does not monkey-patch), so a blocking get
    would stall the whole hub: the view polls instead, yielding between polls, as ``Outbox`` does.
    Every ``quiet_s`` without an event the view gets ``("quiet", None)``, its turn to look at its client.
    """

    POLL_S = 0.002

    def __init__(self, green_sleep: Callable[[float], object] | None, *, quiet_s: float) -> None:
        self.green_sleep = green_sleep
        self.quiet_s = quiet_s
        self.queue: SimpleQueue[SinkEvent] = SimpleQueue()

    def waiting(self, ahead: int) -> None:
        return None  # the view sees the wait for itself (``watched``)

    def stream(self, delta: str) -> None:
        self.queue.put(("stream", delta))

    def answered(self, answer: Answer) -> None:
        self.queue.put(("answer", answer))

    def failed(self, error: VlmError) -> None:
        self.queue.put(("error", error))

    def __iter__(self) -> Iterator[SinkEvent]:
        """Events in order, ending with the one final ``answer`` or ``error`` the scheduler guarantees."""
        while True:
            event = self._next()
            yield event
            if event[0] in FINAL:
                return

    def _next(self) -> SinkEvent:
        if self.green_sleep is None:
            try:
                return self.queue.get(timeout=self.quiet_s)
            except Empty:
                return ("quiet", None)
        deadline = time.monotonic() + self.quiet_s
        while self.queue.empty():
            if time.monotonic() >= deadline:
                return ("quiet", None)
            self.green_sleep(self.POLL_S)
        return self.queue.get_nowait()
