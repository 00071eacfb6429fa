"""Backends by name: one mapping for ``--backend``, ``auto`` and tests; torch only where a backend needs it."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from tests.doubles import ScriptedBackendDouble
from tests.server_process import REPO
from vlm.backends import registry
from vlm.backends.base import Backend
from vlm.config import Settings, parse_settings
from vlm.errors import ModelLoadError


@pytest.fixture
def isolated(monkeypatch: pytest.MonkeyPatch) -> None:
    """Names registered in a test are gone after it."""
    monkeypatch.setattr(registry, "LOADERS", dict(registry.LOADERS))


@pytest.mark.unit
def test_the_built_in_backends_are_the_cli_choices() -> None:
    assert registry.backend_names() == ["auto", "moondream", "transformers", "openai"]


@pytest.mark.unit
def test_a_named_double_registers_like_a_backend(isolated: None) -> None:
    @registry.register("scripted-double")
    def load(settings: Settings) -> Backend:
        return ScriptedBackendDouble(max_batch_size=settings.max_batch_size)

    settings = parse_settings(["--backend", "scripted-double", "--max-batch-size", "3"])
    backend = registry.load_backend(settings)
    assert isinstance(backend, ScriptedBackendDouble) and backend.info.max_batch_size == 3


@pytest.mark.unit
def test_an_unregistered_name_is_explained() -> None:
    with pytest.raises(ModelLoadError, match="no backend is registered as 'nothing'"):
        registry.load_backend(Settings(backend="nothing"))


LIGHT_TIER = textwrap.dedent(
    """
    import json, sys, threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Upstream(BaseHTTPRequestHandler):
        # GET /v1/models as OpenAI's API answers it: the one request OpenAIBackend.load makes.
        def do_GET(self):
            body = json.dumps({"object": "list", "data": [
                {"id": "upstream-model", "object": "model", "created": 0, "owned_by": "test"}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
    threading.Thread(target=server.serve_forever, daemon=True).start()

    import app
    from vlm.config import parse_settings
    from vlm.web import create_app

    settings = parse_settings(["--backend", "openai", "--model", "upstream-model",
                               "--base-url", f"http://127.0.0.1:{server.server_address[1]}/v1"])
    web = create_app(settings)
    app.load_model(settings, web)
    health = web.app.test_client().get("/healthz").json
    print(json.dumps({"health": health, "heavy": sorted({"torch", "transformers"} & sys.modules.keys())}))
    """
)


@pytest.mark.process
def test_backend_openai_is_a_light_web_tier() -> None:
    """The app, its scheduler and the forwarding backend, loaded for real, without torch or transformers."""
    done = subprocess.run([sys.executable, "-c", LIGHT_TIER], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    health = {"status": "ok", "model": "upstream-model", "backend": "openai", "device": "remote", "upstream": "ok"}
    assert outcome["health"] == health
    assert outcome["heavy"] == [], f"--backend openai imported {outcome['heavy']}"
