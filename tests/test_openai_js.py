"""``/v1`` through the official OpenAI JavaScript SDK (npm ``openai``) in Node, a client nobody here wrote, with an
SSE parser of its own: a streamed completion, a completion and a streamed Response (tests/js/openai_calls.mjs),
against the real app, and a stream that waits its turn behind others, carrying the server's SSE comments."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.calls_by_hand import hold_the_model, let_go
from tests.missing_tools import tool_missing
from tests.openai_client import ask, openai_client
from tests.server_process import AppProcess, serving

SDK = Path(__file__).parent / ".openai-js" / "node_modules"
SCRIPT = Path(__file__).parent / "js" / "openai_calls.mjs"
INSTALL = "npm install --no-save --no-package-lock --prefix tests/.openai-js openai@6.30.1"
OLDEST_NODE = 20  # the SDK's own requirement (its README: Node.js 20 LTS or later)

pytestmark = pytest.mark.app("demo")


@pytest.fixture(scope="module")
def node() -> str:
    found = shutil.which("node")
    if found is None or not (SDK / "openai").is_dir():
        tool_missing(
            "Node.js or the OpenAI JavaScript SDK", f"`apt-get install npm`, then `{INSTALL}`", "VLM_SKIP_OPENAI_JS"
        )
    version = subprocess.run([found, "--version"], capture_output=True, text=True, check=True).stdout.strip()
    if int(version.lstrip("v").split(".")[0]) < OLDEST_NODE:
        pytest.skip(f"the OpenAI JavaScript SDK needs Node.js {OLDEST_NODE} or later; this is {version}")
    return found


def run_sdk(node: str, url: str, frame_file: Path, question: str, max_tokens: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [node, str(SCRIPT), url, str(frame_file), question, str(max_tokens)],
        env={**os.environ, "NODE_PATH": str(SDK)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def results(sdk: subprocess.Popen[str]) -> dict[str, Any]:
    out, err = sdk.communicate(timeout=120)
    assert sdk.returncode == 0, err
    return json.loads(out)


@pytest.fixture
def frame_file(frame: str, tmp_path: Path) -> Path:
    path = tmp_path / "frame.txt"
    path.write_text(frame)
    return path


def test_the_javascript_sdk_reads_every_shape_as_the_python_one(
    app: AppProcess, node: str, frame: str, frame_file: Path
) -> None:
    said = results(run_sdk(node, app.url, frame_file, "what shape is this?", 12))
    expected = ask(openai_client(app.url), "what shape is this?", frame)
    assert expected in {"circle", "square", "triangle", "star"}
    assert said == {
        "streamed": expected,
        "completion": expected,
        "finish_reason": "stop",
        "response": expected,
        "response_status": "completed",
    }


def test_the_javascript_sdk_reads_a_stream_that_waited_its_turn(
    slow_model: Path, node: str, frame: str, frame_file: Path
) -> None:
    with serving(slow_model, "--max-batch-size", "1", "--sse-keepalive", "0.3", max_new_tokens=400) as app:
        holders = hold_the_model(app, frame)
        try:
            sdk = run_sdk(node, app.url, frame_file, "describe", 3)
            time.sleep(1.5)  # comments every 0.3 s meanwhile
            assert sdk.poll() is None, "the stream waits behind the holding calls"
        finally:
            let_go(holders)
        said = results(sdk)
        expected = ask(openai_client(app.url), "describe", frame, max_tokens=3)
        assert said["streamed"] == said["completion"] == said["response"] == expected
        # Cut at max_tokens. (The SDK's stream helper takes its final status from ``response.completed`` only, so
        # for an answer that ends ``response.incomplete`` it keeps the ``in_progress`` of the events before.)
        assert said["finish_reason"] == "length"
