"""Numeric flags refuse values that make no sense, at start and by name, instead of misbehaving later."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.server_process import REPO, free_port, serving
from vlm.config import parse_settings
from vlm.preflight import model_problem

NONSENSE = [
    ("--request-timeout", "-1"),  # once killed the timeout watchdog, so nothing ever timed out
    ("--request-timeout", "0"),
    ("--request-timeout", "nan"),
    ("--max-new-tokens", "0"),
    ("--max-new-tokens", "2.5"),
    ("--max-queue", "0"),
    ("--max-batch-size", "0"),
    ("--max-connections", "0"),
    ("--max-connections-per-ip", "-3"),
    ("--max-image-bytes", "0"),
    ("--max-question-chars", "0"),
    ("--rate-limit", "0"),
    ("--ip-rate-limit", "-1"),
    ("--rate-limit", "inf"),
    ("--watch-interval-ms", "0"),
    ("--watch-cooldown", "-1"),
    ("--batch-window-ms", "-5"),
    ("--temperature", "-0.1"),
    ("--max-crops", "-1"),
    ("--prepare-threads", "-2"),
    ("--port", "0"),
    ("--port", "70000"),
    ("--port", "http"),
    ("--max-queue", "1" + "0" * 400),  # too long for a float: OverflowError escaped as a traceback
]


@pytest.mark.unit
@pytest.mark.parametrize(("flag", "value"), NONSENSE)
def test_a_nonsense_number_is_refused_by_name(flag: str, value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        parse_settings([flag, value])
    assert stopped.value.code == 2
    said = capsys.readouterr().err
    assert f"argument {flag}: expected " in said and repr(value) in said, said


@pytest.mark.unit
def test_edge_values_that_mean_something_are_kept() -> None:
    settings = parse_settings(
        [
            *("--temperature", "0", "--batch-window-ms", "0", "--watch-cooldown", "0", "--max-crops", "0"),
            *("--prepare-threads", "0", "--request-timeout", "0.5", "--rate-limit", "0.5", "--port", "65535"),
            *("--max-new-tokens", "1", "--max-queue", "1", "--max-batch-size", "1"),
        ]
    )
    assert (settings.temperature, settings.batch_window_ms, settings.watch_cooldown_s) == (0, 0, 0)
    assert (settings.request_timeout_s, settings.rate_limit_per_s, settings.port) == (0.5, 0.5, 65535)
    assert (settings.max_new_tokens, settings.max_queue, settings.max_batch_size) == (1, 1, 1)


def test_the_app_exits_with_the_reason_before_loading_anything() -> None:
    done = subprocess.run(
        [sys.executable, "app.py", "--model", "demo", "--request-timeout", "-1"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert "argument --request-timeout: expected a number above 0, got '-1'" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.unit
@pytest.mark.parametrize(
    ("flags", "said"),
    [
        (["--source", "cam.mp4", "--watch", "   "], "--watch needs a condition"),
        (["--source", "cam.mp4", "--max-question-chars", "10", "--watch", "is there a person here?"], "longer"),
        (["--source", "a.mp4", "--source", "b.mp4", *["--watch", "q?"] * 33], "at most 64"),
        (["--webhook-url", "hooks.example.com/alert"], "--webhook-url must be an http:// or https:// URL"),
        (["--webhook-url", "ftp://hooks.example.com/alert"], "--webhook-url must be"),
        (["--source", "http://[bad/stream"], "is not a usable URL"),
        (["--webhook-url", "http://hooks.example.com:80a/alert"], "--webhook-url must be"),
        (["--webhook-url", "http://[bad/alert"], "--webhook-url must be"),
    ],
    ids=[
        "blank",
        "too long",
        "too many",
        "webhook without scheme",
        "webhook not http",
        "malformed source",
        "webhook port not a number",
        "webhook host malformed",
    ],
)
def test_watch_settings_the_server_would_refuse_stop_it_at_start(
    flags: list[str], said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """They once got past the command line and failed later, as a traceback in the model loader's thread, which
    left the server saying ok with no watches, no ready line and the later sources never started."""
    with pytest.raises(SystemExit) as stopped:
        parse_settings(flags)
    assert stopped.value.code == 2 and said in capsys.readouterr().err


@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("redis://:secret-pw@127.0.0.1:{port}/0", "redis://:***@127.0.0.1:{port}/0: Redis does not answer there"),
        ("127.0.0.1:6379", "is not a Redis URL: give redis://host:6379/0"),
    ],
    ids=["nothing listening", "not a URL"],
)
def test_a_message_queue_the_app_cannot_use_stops_it_at_start(url: str, said: str) -> None:
    """It once started and said ok, then logged an error per emit (or blamed a missing kombu for a bad URL)."""
    port = free_port()
    done = subprocess.run(
        [sys.executable, "app.py", "--model", "demo", "--message-queue", url.format(port=port)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert said.format(port=port) in done.stderr and "secret-pw" not in done.stderr
    assert "Traceback" not in done.stderr


def test_a_port_in_use_stops_the_app_with_advice() -> None:
    """gunicorn retried it for 5 s with an ERROR line a second, eventlet and gevent raised a traceback."""
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "app.py", "--model", "demo", "--port", str(port), "--async-mode", "gevent"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode == 2, done.stderr
    assert f"ERROR: Port {port} on 127.0.0.1 is in use by another program" in done.stderr and "--port" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_a_port_this_app_holds_already_is_named_so(scheme: str, tmp_path: Path) -> None:
    """A second start blamed "another program" (on a Mac, AirPlay) for the port the first one holds."""
    tls = ["--self-signed"] if scheme == "https" else []
    with serving("demo", *tls, env={"HOME": str(tmp_path)}) as running:
        done = subprocess.run(
            [sys.executable, "app.py", "--model", "demo", "--port", str(running.port)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode == 2, done.stderr
    assert f"ERROR: This app is already running at {scheme}://127.0.0.1:{running.port}/" in done.stderr


def test_a_model_path_that_names_no_model_is_said_so_before_anything_starts(tmp_path: Path) -> None:
    """Taken for hub ids, they failed in a library's words about repository names, with download advice."""
    (tmp_path / "model").mkdir()
    config = tmp_path / "model" / "config.json"
    config.write_text("{}")
    assert model_problem(str(config)) == (
        f"--model {config} is a file: --model takes a model folder (one holding config.json), a Hugging Face model "
        f"id or demo; for this one, --model {config.parent}"
    )
    assert "is a file" in str(model_problem(str(REPO / "README.md")))
    assert "no such folder" in str(model_problem(str(tmp_path / "gone" / "model")))
    for fine in ("demo", str(tmp_path / "model"), "HuggingFaceTB/SmolVLM-256M-Instruct", "vikhyatk/moondream2"):
        assert model_problem(fine) is None, fine
    done = subprocess.run(
        [sys.executable, "app.py", "--model", str(tmp_path / "gone" / "model"), "--port", str(free_port())],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and "there is no such folder" in done.stderr and "Traceback" not in done.stderr
