"""What ``--backend openai`` knows of its upstream besides answers: whether it answers now (``/healthz``), and
which model to ask for (``--model``, or the one the upstream lists). The upstream is tests/upstream_double.py."""

from __future__ import annotations

import time
from contextlib import ExitStack

import pytest
import requests

from tests.server_process import AppProcess, free_port
from tests.socket_client import RecordingClient
from tests.upstream_double import MODEL, UpstreamDouble
from vlm.backends.openai_backend import only_model
from vlm.config import DEFAULT_MODEL, Settings, parse_settings
from vlm.errors import ModelLoadError
from vlm.queue_probe import INTERVAL_S, TIMEOUT_S

# The probe's period and timeout, and a margin for a loaded machine.
NOTICED_S = INTERVAL_S + TIMEOUT_S + 3


def forwarding(base_url: str, *flags: str) -> list[str]:
    return ["--backend", "openai", "--base-url", base_url, "--request-timeout", "5", *flags]


def health(app: AppProcess) -> tuple[int, dict[str, object]]:
    reply = requests.get(f"{app.url}/healthz", timeout=5)
    return reply.status_code, reply.json()


def wait_for_health(app: AppProcess, status: int, upstream: str, within_s: float) -> dict[str, object]:
    deadline = time.monotonic() + within_s
    while (seen := health(app))[0] != status or seen[1].get("upstream") != upstream:
        assert time.monotonic() < deadline, seen
        time.sleep(0.2)
    return seen[1]


def ask(app: AppProcess, frame: str, rid: str) -> tuple[str, dict[str, object]]:
    client = RecordingClient(app.url)
    try:
        return client.ask({"id": rid, "question": "what?", "image": frame}, timeout_s=15)
    finally:
        client.close()


def test_healthz_says_when_the_upstream_stops_answering_and_when_it_is_back(frame: str) -> None:
    """It said "ok" while every question failed (audit s24, F2). The page's own routes keep answering."""
    port = free_port()
    with ExitStack() as stack:
        with UpstreamDouble(port=port) as upstream:
            app = stack.enter_context(AppProcess(forwarding(f"{upstream.url}/v1", "--model", MODEL)))
            status, body = health(app)
            assert (status, body["status"], body["upstream"]) == (200, "ok", "ok")
        down = wait_for_health(app, 503, "unreachable", NOTICED_S)
        assert (down["status"], down["model"], down["backend"]) == ("degraded", MODEL, "openai")
        assert requests.get(f"{app.url}/api/info", timeout=5).status_code == 200
        kind, refused = ask(app, frame, "while-down")
        assert (kind, refused["code"], refused["message"]) == (
            "query_error",
            "upstream_error",
            "the model server could not be reached",
        )
        with UpstreamDouble(port=port):
            assert wait_for_health(app, 200, "ok", NOTICED_S)["status"] == "ok"
            assert ask(app, frame, "back")[1]["answer"] == "A red square."
        log = app.log()
    assert log.count("does not answer (APIConnectionError") == 1 and log.count("answers again") == 1, log[-2000:]
    assert all("WARNING" in line for line in log.splitlines() if "does not answer" in line or "answers again" in line)


def test_without_model_the_one_model_the_upstream_lists_is_asked_for(frame: str) -> None:
    """``--model`` once defaulted to moondream2's hub id here, which an engine serving one model refuses."""
    with UpstreamDouble("engine") as upstream, AppProcess(forwarding(f"{upstream.url}/v1")) as app:
        assert health(app)[1]["model"] == MODEL
        assert requests.get(f"{app.url}/v1/models", timeout=5).json()["data"][0]["id"] == MODEL
        assert ask(app, frame, "named")[1]["answer"] == "A red square."
        assert f"no --model given: asking for {MODEL!r}" in app.log()


def test_without_model_an_upstream_listing_several_stops_the_start_naming_them() -> None:
    with UpstreamDouble() as upstream:
        upstream.models = ["vision-a", "vision-b"]
        with pytest.raises(RuntimeError, match="exited with 2") as failed, AppProcess(forwarding(f"{upstream.url}/v1")):
            pass
    assert "lists several models ('vision-a', 'vision-b'); name one" in str(failed.value)


def test_a_model_the_upstream_does_not_list_starts_and_its_refusals_name_the_listed_ones(frame: str) -> None:
    """A router may list a subset, so the start goes on; each refusal's log line says what the upstream serves."""
    with UpstreamDouble("engine") as upstream, AppProcess(forwarding(f"{upstream.url}/v1", "--model", "demo")) as app:
        kind, refused = ask(app, frame, "unlisted")
        assert (kind, refused["message"]) == ("query_error", "the model server answered HTTP 400")
        time.sleep(0.5)
        failures = [line for line in app.log().splitlines() if "upstream request failed" in line]
    assert len(failures) == 1 and f"(the model server lists ['{MODEL}'], not 'demo')" in failures[0], failures


@pytest.mark.unit
def test_without_model_an_upstream_listing_none_is_a_sentence_at_start() -> None:
    with pytest.raises(ModelLoadError, match="lists no models"):
        only_model((), "http://gpu-box:8000/v1")


@pytest.mark.unit
def test_the_model_default_is_the_upstreams_only_with_backend_openai() -> None:
    assert parse_settings([]).model == DEFAULT_MODEL
    assert parse_settings(["--backend", "openai"]).model == ""
    assert parse_settings(["--backend", "openai", "--model", "m"]).model == "m"


@pytest.mark.unit
def test_clients_see_the_upstreams_model_by_its_last_part_when_it_is_a_path() -> None:
    """transformers serve names a model by the path on its command line, which would tell clients its disk."""
    upstreams = Settings(model="", backend="openai")
    assert upstreams.served_name("/srv/models/demo_model") == "demo_model"
    assert upstreams.served_name("Qwen/Qwen2-VL-2B-Instruct") == "Qwen/Qwen2-VL-2B-Instruct"
    assert Settings(model="demo").served_name("/anything") == "demo"
