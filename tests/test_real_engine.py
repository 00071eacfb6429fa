"""``--backend openai`` in front of a real engine: ``transformers serve`` (transformers[serving]) with the demo model.

tests/upstream_double.py imitates what the audit of s24 saw this engine do; this checks the engine itself: the
same answers as the demo model served by the app, a ``/v1`` request with ``stop`` answered (the engine fails
every one for a VLM), and ``/healthz`` following the engine as it is killed and started again.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import requests

from scripts.synthetic_scenes import draw_scene, held_drawing_scene, single_object_scene
from tests.frames import data_url
from tests.missing_tools import tool_missing
from tests.openai_client import frame_question, openai_client
from tests.server_process import REPO, AppProcess, free_port
from tests.socket_client import RecordingClient
from vlm.config import DEMO_MODEL_DIR
from vlm.probes import FAILURES_TO_REPORT, INTERVAL_S, TIMEOUT_S

# What transformers serve needs besides transformers (its `serving` extra).
ENGINE_PACKAGES = ("fastapi", "uvicorn", "starlette", "accelerate")
PIP = f"pip install {' '.join(ENGINE_PACKAGES)}"
ENGINE_START_S = 60.0
# The probe's period and timeout for each failed check it takes to report one, and a margin for a loaded machine.
NOTICED_S = FAILURES_TO_REPORT * (INTERVAL_S + TIMEOUT_S) + 3
SCENES = [
    held_drawing_scene("circle", "red"),
    single_object_scene("triangle", "green"),
    held_drawing_scene("star", "blue"),
]
QUESTIONS = ["what shape is this?", "what color is the shape?", "describe the image."]


@pytest.fixture(scope="module", autouse=True)
def engine_packages() -> None:
    missing = [name for name in ENGINE_PACKAGES if importlib.util.find_spec(name) is None]
    if not missing:
        return
    tool_missing(f"transformers serve's {', '.join(missing)}", f"`{PIP}`", "VLM_SKIP_ENGINE")


@contextmanager
def engine(port: int) -> Iterator[subprocess.Popen[bytes]]:
    """``transformers serve`` pinned to the demo model on ``port``, in a process group of its own; killed at the
    end if it still runs."""
    log = (REPO / "artifacts" / f"engine-{port}.log").open("ab")
    command = [sys.executable, "-m", "transformers.cli.transformers", "serve", str(DEMO_MODEL_DIR)]
    command += ["--host", "127.0.0.1", "--port", str(port), "--device", "cpu"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_engine(process, port)
        yield process
    finally:
        kill(process)
        log.close()


def wait_for_engine(process: subprocess.Popen[bytes], port: int) -> None:
    deadline = time.monotonic() + ENGINE_START_S
    while time.monotonic() < deadline:
        assert process.poll() is None, f"transformers serve exited with {process.returncode}; see artifacts/"
        try:
            if requests.get(f"http://127.0.0.1:{port}/v1/models", timeout=1).status_code == 200:
                return
        except requests.RequestException:  # not listening yet
            pass
        time.sleep(0.2)
    raise TimeoutError(f"transformers serve not listening after {ENGINE_START_S} s")


def kill(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL, as a crashed engine ends: no drain of the answers in flight."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)


def answers(app: AppProcess, frames: list[str]) -> list[str]:
    """Each question about each frame over Socket.IO, one at a time."""
    client = RecordingClient(app.url)
    try:
        said = []
        for number, frame in enumerate(frames):
            for question in QUESTIONS:
                rid = f"{number}-{question}"
                kind, payload = client.ask({"id": rid, "question": question, "image": frame}, timeout_s=30)
                said.append(payload["answer"] if kind == "response" else f"{kind}: {payload}")
        return said
    finally:
        client.close()


def health(app: AppProcess, status: int, upstream: str) -> dict[str, object]:
    """``/healthz`` once it answers ``status`` with ``upstream``, within the probe's period."""
    deadline = time.monotonic() + NOTICED_S
    while True:
        reply = requests.get(f"{app.url}/healthz", timeout=5)
        if (reply.status_code, reply.json().get("upstream")) == (status, upstream):
            return reply.json()
        assert time.monotonic() < deadline, (reply.status_code, reply.json())
        time.sleep(0.2)


def stopped_at(app: AppProcess, frame: str, stop: str) -> str:
    completion = openai_client(app.url).chat.completions.create(
        model="any", messages=frame_question("describe the image.", frame), stop=[stop]
    )
    return completion.choices[0].message.content or ""


def test_transformers_serve_answers_as_the_demo_model_does_and_healthz_follows_it() -> None:
    frames = [data_url(draw_scene(spec, (640, 480))) for spec in SCENES]
    port = free_port()
    forwarding = ["--backend", "openai", "--base-url", f"http://127.0.0.1:{port}/v1", "--request-timeout", "30"]
    # No --model for the forwarding app: it asks for the engine's one model (which refuses any other name).
    with AppProcess(["--model", "demo"]) as direct, engine(port) as running, AppProcess(forwarding) as app:
        expected = answers(direct, frames)
        assert expected[:3] == ["circle", "red", "a red circle"], expected
        assert answers(app, frames) == expected
        assert health(app, 200, "ok")["model"] == DEMO_MODEL_DIR.name
        # The engine fails every request with stop strings for a VLM; the app asks again and cuts itself.
        assert stopped_at(app, frames[0], "circle") == stopped_at(direct, frames[0], "circle") == "a red"

        kill(running)
        assert health(app, 503, "unreachable")["status"] == "degraded"
        client = RecordingClient(app.url)
        try:
            question = {"id": "down", "question": QUESTIONS[0], "image": frames[0]}
            kind, refused = client.ask(question, timeout_s=30)
        finally:
            client.close()
        assert (kind, refused["message"]) == ("query_error", "the model server could not be reached"), refused
        assert requests.get(f"{app.url}/api/info", timeout=5).status_code == 200, "the page keeps working"

        with engine(port):
            health(app, 200, "ok")
            assert answers(app, frames[:1]) == expected[:3]
