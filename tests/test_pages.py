"""The pages Blueprint in process, through Flask's test client: the page, ``/healthz`` and ``/api/info``."""

from __future__ import annotations

import pytest
from flask import Flask

from tests.doubles import ScriptedBackendDouble
from vlm.access import TOKEN_COOKIE, Access
from vlm.config import Settings
from vlm.model_slot import ModelSlot
from vlm.pages import CONTENT_SECURITY_POLICY, pages_blueprint
from vlm.probes import Probe, ProbeState
from vlm.scheduler import Scheduler

pytestmark = pytest.mark.unit

TOKEN = "page-token"


def pages_app(slot: ModelSlot, token: str | None = TOKEN) -> Flask:
    """The Blueprint alone on a bare Flask app, as create_app mounts it."""
    app = Flask(__name__, template_folder="../templates")
    settings = Settings(token=token, model="demo")
    app.register_blueprint(pages_blueprint(settings, slot, Access(settings.token), None))
    return app


def loaded_slot() -> ModelSlot:
    slot, backend = ModelSlot(), ScriptedBackendDouble()
    slot.install(backend, Scheduler(backend))
    return slot


def test_health_says_loading_until_the_slot_is_filled() -> None:
    slot = ModelSlot()
    client = pages_app(slot).test_client()
    loading = client.get("/healthz")
    assert (loading.status_code, loading.json) == (503, {"status": "loading"})
    backend = ScriptedBackendDouble()
    slot.install(backend, Scheduler(backend))
    ready = client.get("/healthz")
    assert (ready.status_code, ready.json) == (
        200,
        {"status": "ok", "model": "demo", "backend": "double", "device": "cpu"},
    )


def test_info_needs_the_bearer_token_and_lists_the_limits() -> None:
    client = pages_app(loaded_slot()).test_client()
    refused = client.get("/api/info")
    assert (refused.status_code, refused.json) == (
        401,
        {"error": {"code": "unauthorized", "message": "missing or wrong token"}},
    ), "in the shape of every other refusal"
    info = client.get("/api/info", headers={"Authorization": f"Bearer {TOKEN}"}).json
    assert info["capabilities"] == ["caption", "query", "stream"]
    assert (info["model"], info["max_question_chars"], info["rate_burst"]) == ("demo", 1000, 20)


def test_the_page_link_sets_the_cookie_and_every_response_has_the_security_headers() -> None:
    client = pages_app(loaded_slot()).test_client()
    refused = client.get("/")
    assert refused.status_code == 401
    assert refused.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    page = client.get(f"/?token={TOKEN}")
    assert page.status_code == 200 and page.headers["X-Frame-Options"] == "DENY"
    assert f"{TOKEN_COOKIE}={TOKEN}" in page.headers["Set-Cookie"] and "HttpOnly" in page.headers["Set-Cookie"]
    assert client.get("/").status_code == 200, "the cookie keeps a reload working"


def test_without_a_token_the_page_is_open() -> None:
    assert pages_app(loaded_slot(), token=None).test_client().get("/").status_code == 200


class ForwardingDouble(ScriptedBackendDouble):
    """A backend whose model server is probed, in the state the test sets."""

    def __init__(self, state: ProbeState) -> None:
        super().__init__()
        self.probe = Probe("model server", lambda: None, "every question fails", state=state)

    def health(self) -> Probe:
        return self.probe


@pytest.mark.parametrize(("state", "status"), [("ok", 200), ("unreachable", 503), ("model_missing", 503)])
def test_health_is_degraded_while_the_model_server_fails_its_probe(state: ProbeState, status: int) -> None:
    """A model server that no longer lists the model asked for fails every question, as one that is down does."""
    slot, backend = ModelSlot(), ForwardingDouble(state)
    slot.install(backend, Scheduler(backend))
    reply = pages_app(slot).test_client().get("/healthz")
    assert (reply.status_code, reply.json["upstream"]) == (status, state)
    assert reply.json["status"] == ("ok" if status == 200 else "degraded")
