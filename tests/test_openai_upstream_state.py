"""What ``--backend openai`` knows of its upstream besides answers: whether it answers now (``/healthz``), and
which model to ask for (``--model``, or the one the upstream lists). The upstream is tests/upstream_double.py."""

from __future__ import annotations

import time
from contextlib import ExitStack

import openai
import pytest
import requests

from tests.server_process import AppProcess, free_port
from tests.socket_client import RecordingClient
from tests.upstream_double import MODEL, UpstreamDouble
from vlm.backends.openai_backend import OpenAIBackend, only_model
from vlm.config import DEFAULT_MODEL, Settings, parse_settings
from vlm.errors import ModelLoadError
from vlm.probes import FAILURES_TO_REPORT, INTERVAL_S, TIMEOUT_S, Probe

# The probe's period and timeout for each failed check it takes to report one, and a margin for a loaded machine.
NOTICED_S = FAILURES_TO_REPORT * (INTERVAL_S + TIMEOUT_S) + 3


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
    assert log.count("does not answer (ConnectError") == 1 and log.count("answers again") == 1, log[-2000:]
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
    paths = ["models/7B/llava.gguf", "./m", "../m/", "~/m/x.gguf", "C:\\models\\x.gguf", "/models/x/", "w.safetensors"]
    shown = [upstreams.served_name(path) for path in paths]
    assert shown == ["llava.gguf", "m", "m", "x.gguf", "x.gguf", "x", "w.safetensors"]
    assert upstreams.served_name("llava:13b") == "llava:13b"


@pytest.mark.unit
def test_the_model_name_without_a_model_is_empty_not_the_working_directorys() -> None:
    """``Path("")`` is the working directory: its name was the model's while the upstream's was not yet known."""
    assert Settings(model="", backend="openai").model_name == ""
    assert Settings(model="~/weights/llava.gguf").model_name == "llava.gguf"


@pytest.mark.unit
def test_the_probe_reports_our_model_gone_when_the_upstream_no_longer_lists_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An engine restarted with another model left /healthz at 200 while every question was refused."""
    with UpstreamDouble() as upstream:
        client = openai.OpenAI(base_url=f"{upstream.url}/v1", api_key="k", timeout=5, max_retries=0)
        probe = OpenAIBackend(client, model=MODEL, max_batch_size=1, listed=(MODEL,)).health()
        upstream.models = ["another"]
        states = []
        for _ in range(2):
            probe.check_once()
            states.append(probe.state)
        upstream.models = [MODEL]
        probe.check_once()
        states.append(probe.state)
    assert states == ["ok", "model_missing", "ok"]
    assert "answers without the model asked for (ModelMissing: it lists ['another'], no longer 'fake')" in caplog.text


@pytest.mark.unit
def test_a_model_the_upstream_never_listed_is_not_missing() -> None:
    """llama.cpp answers any name and lists only its file: its listing says nothing of what it answers to."""
    with UpstreamDouble() as upstream:
        client = openai.OpenAI(base_url=f"{upstream.url}/v1", api_key="k", timeout=5, max_retries=0)
        probe = OpenAIBackend(client, model="any", max_batch_size=1, listed=(MODEL,)).health()
        for _ in range(FAILURES_TO_REPORT):
            probe.check_once()
    assert probe.state == "ok"


@pytest.mark.unit
def test_one_failed_check_does_not_report_the_service_failing(caplog: pytest.LogCaptureFixture) -> None:
    """One model-list call slower than the probe's timeout took every process out of the load balancer."""
    answers = iter([False, True, False, True, False, False, True])

    def check() -> None:
        if not next(answers):
            raise TimeoutError("slow")

    probe = Probe("service", check, "nothing works", state="ok")
    states = []
    for _ in range(7):
        probe.check_once()
        states.append(probe.state)
    assert states == ["ok"] * 5 + ["unreachable", "ok"]
    assert caplog.text.count("does not answer (TimeoutError: slow)") == 1 and caplog.text.count("answers again") == 1


@pytest.mark.unit
def test_the_probes_warning_is_capped() -> None:
    """A proxy's HTML error page in front of the engine was logged whole, once per outage."""
    probe = Probe("service", lambda: None, "nothing works")
    assert probe.describe(RuntimeError("<html>" * 1000)).endswith("... (cut)")
