"""A live camera stream that drops and comes back: Debian's ffmpeg serving MJPEG over HTTP on loopback.

``ffmpeg -re ... -f mpjpeg -listen 1 http://...`` is a real single-client HTTP MJPEG server,
the kind of stream an IP camera or a Raspberry Pi serves. The first server shows only the
red circle and is killed mid-stream (the drop); the app must reconnect with backoff to a
second one on the same address, which plays the circle and then the blue triangle, and
alert exactly once.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.browser.fake_camera import Shot
from tests.server_process import AppProcess, free_port
from tests.video_clips import write_clip

FFMPEG = shutil.which("ffmpeg") or "/usr/bin/ffmpeg"
CONDITION = "is there a triangle?"
SWITCH_S = 3.0


class MjpegServer:
    """ffmpeg serving ``clip`` in real time as multipart JPEG to one HTTP client."""

    def __init__(self, clip: Path, port: int, *, loop: bool) -> None:
        self.url = f"http://127.0.0.1:{port}/cam.mjpg"
        command = [FFMPEG, "-hide_banner", "-loglevel", "error", "-re"]
        command += ["-stream_loop", "-1"] if loop else []
        command += ["-i", str(clip), "-an", "-c:v", "mjpeg", "-q:v", "5", "-f", "mpjpeg", "-listen", "1", self.url]
        self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL)

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()


@pytest.fixture
def clips(tmp_path: Path) -> dict[str, Path]:
    if not Path(FFMPEG).is_file():
        pytest.fail(f"{FFMPEG} is missing: install Debian's ffmpeg (apt-get install ffmpeg)", pytrace=False)
    return {
        "circle": write_clip(tmp_path / "circle.mp4", (Shot("circle", "red", 2.0),)),
        "switch": write_clip(tmp_path / "switch.mp4", (Shot("circle", "red", SWITCH_S), Shot("triangle", "blue", 5.0))),
    }


@pytest.fixture
def servers() -> Iterator[list[MjpegServer]]:
    started: list[MjpegServer] = []
    yield started
    for server in started:
        server.kill()


def overview(app: AppProcess) -> dict[str, Any]:
    return requests.get(f"{app.url}/v1/watch", timeout=10).json()


def wait_until(app: AppProcess, found: Any, what: str, timeout_s: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state = overview(app)
        if found(state):
            return state
        time.sleep(0.1)
    raise TimeoutError(f"{what}: {state}")


def test_a_dropped_stream_is_reopened_and_still_alerts_once(clips: dict[str, Path], servers: list[MjpegServer]) -> None:
    port = free_port()
    servers.append(MjpegServer(clips["circle"], port, loop=True))
    with AppProcess(["--model", "demo", "--source", servers[0].url, "--watch", CONDITION]) as app:
        wait_until(app, lambda s: s["watches"][0]["checks"] >= 3, "the first stream was never checked")
        assert overview(app)["watches"][0]["verdict"] == "no"

        servers[0].kill()
        wait_until(app, lambda s: s["sources"][0]["state"] == "reconnecting", "the drop went unnoticed", 20)
        servers.append(MjpegServer(clips["switch"], port, loop=False))
        back = wait_until(app, lambda s: s["sources"][0]["state"] == "playing", "never reconnected", 30)
        assert back["sources"][0]["reconnects"] == 1, "one drop, one reopening; failed attempts between are not counted"

        alerts = requests.get(f"{app.url}/v1/watch/alerts", params={"after": 0, "wait": 20}, timeout=30).json()
        assert len(alerts["alerts"]) == 1, alerts
        alert = alerts["alerts"][0]
        assert alert["source"]["kind"] == "stream" and alert["source"]["label"] == servers[0].url
        assert alert["frame_time"] > back["sources"][0]["started"], "alerted on a frame from before the drop"
        later = requests.get(f"{app.url}/v1/watch/alerts", params={"after": 1, "wait": 2}, timeout=30).json()
        assert later["alerts"] == [], "the triangle stayed: no second alert"
        assert "reconnecting in 0.5 s" in app.log(), "a stream that was playing is retried at once"
        assert "cam.mjpg" not in app.log().split("model ready")[1], "the stream's URL leaked into the log"
