"""Every Socket.IO event the app answers, as one ``flask_socketio.Namespace``: add an event by adding an ``on_<event>``.

Handlers never run the model: they check, decode, queue the work and return, so pings, other
clients and ``/healthz`` stay responsive during a generation. Every reply goes to the sender
(``request.sid``) only; answers and refusals alike leave through a ``SocketSink``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from functools import wraps
from typing import Any

from flask import request
from flask_socketio import Namespace
from socketio.exceptions import ConnectionRefusedError as RefusedConnection

from .access import Access
from .backends.base import Backend
from .config import Settings
from .errors import Code, VlmError
from .metrics import Metrics
from .model_slot import ModelSlot
from .outbox import Outbox
from .protocol import Incoming, decode_frame, parse_cancel, parse_query, parse_skill, request_id, to_job
from .ratelimit import EventGate, Verdict
from .request_queue import queue_full
from .scheduler import Request
from .socket_sink import SocketSink, is_seed
from .socket_transport import drop, emit, shut_websocket
from .watch import Frame
from .watch_web import WatchService

log = logging.getLogger(__name__)

Handler = Callable[["AppNamespace", object], Any]


def gated(*, replies: bool) -> Callable[[Handler], Callable[..., Any]]:
    """Every event is charged to its connection and its address before anything else is done.

    Handlers take any arguments, so a client sending the wrong number still gets a reply.
    ``replies=False``: a refusal is only acknowledged (a ``cancel``'s id names the query it
    targets, which must not read as failed; a watch event's acknowledgement is its answer).
    """

    def decorate(handler: Handler) -> Callable[..., Any]:
        @wraps(handler)
        def receive(self: AppNamespace, *args: object) -> Any:
            verdict = self.charge(request.sid, request.remote_addr or "")
            if verdict is None:
                return None
            payload = args[0] if args else None
            if not verdict.allowed:
                error = VlmError(Code.RATE_LIMITED, "too many requests; slow down")
            elif len(args) != 1:
                error = VlmError(Code.BAD_REQUEST, "send exactly one payload object")
            else:
                return handler(self, payload)
            return self.refuse(payload, error) if replies else self.refuse_in_ack(error)

        return receive

    return decorate


def watch_fields(payload: object) -> dict[str, Any]:
    if not isinstance(payload, dict):
        raise VlmError(Code.BAD_REQUEST, "payload must be a JSON object")
    return payload


class AppNamespace(Namespace):
    def __init__(
        self,
        settings: Settings,
        slot: ModelSlot,
        *,
        access: Access,
        gate: EventGate,
        outbox: Outbox,
        watch: WatchService,
        metrics: Metrics,
    ) -> None:
        super().__init__("/")
        self.settings = settings
        self.slot = slot
        self.access = access
        self.gate = gate
        self.outbox = outbox
        self.watch = watch
        self.metrics = metrics

    def trigger_event(self, event: str, *args: Any) -> Any:
        """An event with no handler is charged like any other (a flood of them was never cut), then not
        acknowledged, as python-socketio treats events nobody registered."""
        if not hasattr(self, f"on_{event}"):
            sid = str(args[0]) if args else ""
            environ = self.socketio.server.get_environ(sid, namespace=self.namespace) or {}
            self.charge(sid, environ.get("REMOTE_ADDR", ""))
            return self.server.not_handled
        return super().trigger_event(event, *args)

    def charge(self, sid: str, address: str) -> Verdict | None:
        """Every event costs its connection and its address; None where it cost the connection itself."""
        verdict = self.gate.check(sid, address)
        if verdict.drop:
            log.warning("dropping %s from %s: it kept flooding after being refused", sid, address)
            drop(self.socketio, sid)
            return None
        return verdict

    # -- the connection ------------------------------------------------------------

    def on_connect(self, auth: object = None) -> None:
        """The token from ``auth``, or the HttpOnly cookie the page set (a new tab has only that);
        a cross-site page cannot use the cookie: SameSite=Strict, and its Origin is refused."""
        token = auth.get("token") if isinstance(auth, dict) else None
        if not self.access.ok(token) and not self.access.cookie_ok():
            # python-socketio passes on the reason of its own exception only; Python's built-in one is reported
            # as a bare "Connection refused by server", which tells nobody that the token is what is wrong.
            refused = self.access.refusal("access token")
            raise RefusedConnection(refused.message, {"code": refused.code, "message": refused.message})

    def on_disconnect(self, reason: object = None) -> None:
        """A client gone silent (no pong within the ping timeout) may have stopped reading too: Engine.IO's close then
        queues its CLOSE behind a write blocked on the full socket, which held the session another 30 s (the write
        timeout), so its TCP connection is shut here."""
        if reason == self.socketio.server.reason.PING_TIMEOUT:
            shut_websocket(request.environ)
        self.gate.forget(request.sid)
        self.watch.forget_tab(request.sid)
        if self.slot.scheduler is not None:
            self.slot.scheduler.forget_client(request.sid)

    # -- questions to the model ------------------------------------------------------

    @gated(replies=True)
    def on_query(self, payload: object) -> dict[str, Any]:
        return self.accept(payload, lambda _: parse_query(payload, max_question_chars=self.settings.max_question_chars))

    @gated(replies=True)
    def on_skill(self, payload: object) -> dict[str, Any]:
        return self.accept(payload, lambda backend: parse_skill(payload, capabilities=backend.info.capabilities))

    @gated(replies=False)
    def on_cancel(self, payload: object) -> dict[str, Any]:
        """Acknowledged, so a client can tell whether its request was still running; a malformed cancel is
        refused in its acknowledgement alone (it is no request, and no page should read it as a failed one)."""
        try:
            rid = parse_cancel(payload)
        except VlmError as error:
            return self.refuse_in_ack(error)
        cancelled = self.slot.scheduler is not None and self.slot.scheduler.cancel(request.sid, rid)
        return {"id": rid, "cancelled": cancelled}

    def accept(self, payload: object, parse: Callable[[Backend], Incoming]) -> dict[str, Any]:
        """Shared path of ``query`` and ``skill``: every refusal goes to the sender only.

        The acknowledgement carries the request's id, so a client that sent none learns the
        one the server made up before any event about a queued request arrives.
        """
        received = time.perf_counter()
        seed = is_seed(payload)
        try:
            backend, scheduler = self.slot.loaded()
            if not scheduler.has_room(request.sid, ordered=seed):  # before the decode: refusing is free
                raise queue_full(scheduler.max_queue)
            incoming = parse(backend)
            job, decode_ms = to_job(incoming, self.settings, decode_size=backend.info.decode_size)
        except VlmError as error:
            return self.refuse(payload, error)
        log.log(
            logging.DEBUG if incoming.live else logging.INFO,
            "%s %s from %s (%d chars; frames are never stored)",
            incoming.task,
            incoming.id,
            request.sid,
            len(incoming.text),
        )
        sink = SocketSink(self.outbox.send, request.sid, incoming.id, seed=seed)
        scheduler.submit(
            Request(
                id=incoming.id,
                client=request.sid,
                job=job,
                sink=sink,
                door="socketio",
                ordered=seed,
                received=received,
                decode_ms=decode_ms,
            )
        )
        return {"id": incoming.id}

    def refuse(self, payload: object, error: VlmError) -> dict[str, Any]:
        """A refusal before the scheduler: counted, then sent as a failure, to the sender only; returns the
        acknowledgement, which carries it too: the event leaves from the handler, before the acknowledgement
        (python-socketio sends that once the handler returns), so a client that sent no id learns of it there."""
        rid = error.request_id
        if rid is None:
            try:
                rid = request_id(payload)
            except VlmError:
                rid = None
        SocketSink(self.emit_now, request.sid, rid, seed=is_seed(payload)).failed(error)
        return {"id": rid, **self.refuse_in_ack(error)}

    def refuse_in_ack(self, error: VlmError) -> dict[str, Any]:
        """A refusal before the scheduler told in the acknowledgement alone (a ``cancel``, a watch event): counted
        like every other."""
        self.metrics.refused("socketio", error.code)
        return error.as_object()

    def emit_now(self, event: str, payload: dict[str, Any], sid: str | None) -> None:
        """From a handler, which runs on the server's own loop, so it need not go through the ``Outbox``."""
        emit(self.socketio, event, payload, sid)

    # -- watch mode (docs/PROTOCOL.md) ----------------------------------------------------

    @gated(replies=False)
    def on_watch_add(self, payload: object) -> dict[str, Any]:
        try:
            given = watch_fields(payload)
            self.slot.loaded()  # refused while the model loads: nothing could check it
            watch = self.watch.hub.add(
                given.get("condition"), given.get("source", "tab"), owner=request.sid, address=request.remote_addr or ""
            )
        except VlmError as error:
            return self.refuse_in_ack(error)
        return {"watch": watch.describe()}

    @gated(replies=False)
    def on_watch_pause(self, payload: object) -> dict[str, Any]:
        try:
            given = watch_fields(payload)
            watch = self.watch.hub.owned(given.get("id"), request.sid)
            paused = given.get("paused", True)
            if not isinstance(paused, bool):
                raise VlmError(Code.BAD_REQUEST, "paused must be true or false")
        except VlmError as error:
            return self.refuse_in_ack(error)
        self.watch.hub.pause(watch, paused)
        return {"watch": watch.describe()}

    @gated(replies=False)
    def on_watch_remove(self, payload: object) -> dict[str, Any]:
        try:
            watch = self.watch.hub.owned(watch_fields(payload).get("id"), request.sid)
        except VlmError as error:
            return self.refuse_in_ack(error)
        self.watch.hub.remove(watch)
        return {"removed": watch.id}

    @gated(replies=False)
    def on_watch_frame(self, payload: object) -> dict[str, Any]:
        """A tab's frame for its watches; the tab sends the next one after ``watch_frame_done`` (backpressure)."""
        received = time.time()
        try:
            backend, _ = self.slot.loaded()
            frame = decode_frame(watch_fields(payload).get("image"), self.settings, backend.info.decode_size)
        except VlmError as error:
            return self.refuse_in_ack(error)
        hub = self.watch.hub
        source = hub.tab_source(request.sid)
        seq = (source.latest.seq if source.latest else 0) + 1
        image = frame.image
        checking = hub.offer(source, Frame(seq=seq, load=lambda: image, captured=received, decode_ms=frame.decode_ms))
        return {"frame": seq, "checking": checking}
