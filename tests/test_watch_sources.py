"""Server-side video sources on real media: ``VideoSource`` threads fed by files and local servers,
and their MJPEG previews on the real server.

Each test runs a real ``VideoSource`` (PyAV's FFmpeg) into a real ``WatchHub`` against media
made by FFmpeg: a clip written with PyAV, an audio-only WAV from Debian's ffmpeg, a Python HTTP
server serving those files, and a socket that serves one MJPEG frame per connection the way a
camera's snapshot URL does. What is checked is what an operator sees: the source's state, its
counters and its log lines. The preview tests run the real app with a camera that has ended,
one that failed and one that keeps reconnecting, and abandon previews of them as a viewer
who closes the tab does.
"""

from __future__ import annotations

import io
import logging
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests
from PIL import Image

from scripts.synthetic_scenes import draw_scene, single_object_scene
from tests.attack_tools import ATTACKER, assert_bystander_served, connect_from, usage, wait_for_recovery
from tests.browser.fake_camera import Shot
from tests.frames import data_url
from tests.server_process import AppProcess, free_port
from tests.video_clips import FPS, write_clip
from vlm.sources import BAD_FRAMES_IN_A_ROW, VideoSource, source_kind
from vlm.watch import Source, WatchHub

FFMPEG = shutil.which("ffmpeg") or "/usr/bin/ffmpeg"
CLIP_S = 2.0


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("media")
    write_clip(folder / "circle.mp4", (Shot("circle", "red", CLIP_S),))
    command = [FFMPEG, "-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i", "sine=duration=1"]
    subprocess.run([*command, str(folder / "tone.wav")], check=True, timeout=30)
    return folder


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def http_files(media: Path) -> Iterator[str]:
    """``media`` over plain HTTP, as a NAS or a web server would offer a recording."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Quiet, directory=str(media)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


class MjpegCamera:
    """An MJPEG camera: each connection gets ``part(i)`` as its i-th JPEG, 20 a second, ``frames`` of them, then
    a hang-up (one frame: a camera's snapshot URL). Counts connections."""

    def __init__(self, part: Callable[[int], bytes], frames: int = 10_000) -> None:
        self.part = part
        self.frames = frames
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}/video"
        self.connections = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._stream, args=(connection,), daemon=True).start()

    def _stream(self, connection: socket.socket) -> None:
        with connection:
            connection.settimeout(5)
            try:
                connection.recv(4096)
                connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: multipart/x-mixed-replace; boundary=f\r\n\r\n")
                for i in range(self.frames):
                    body = self.part(i)
                    head = b"--f\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(body)
                    connection.sendall(head + body + b"\r\n")
                    if i + 1 < self.frames:
                        time.sleep(0.05)
            except OSError:
                pass

    def close(self) -> None:
        self.listener.close()


def jpeg_of(shape: str, color: str) -> bytes:
    buffer = io.BytesIO()
    draw_scene(single_object_scene(shape, color), (320, 240)).save(buffer, "JPEG")
    return buffer.getvalue()


@pytest.fixture
def hub() -> WatchHub:
    return WatchHub(
        scheduler=lambda: None,
        notify=lambda *_: None,
        on_alert=lambda _: None,
        max_new_tokens=8,
        max_condition_chars=100,
    )


@pytest.fixture
def play(hub: WatchHub) -> Iterator[Callable[[str], VideoSource]]:
    """Start a source on ``target`` as the app does; every one started is stopped after the test."""
    started: list[VideoSource] = []

    def start(target: str) -> VideoSource:
        source = hub.add_source(Source(id=f"cam{len(started) + 1}", label="test", kind=source_kind(target)))
        started.append(VideoSource(hub, source, target, frame_side=64).start())
        return started[-1]

    yield start
    for player in started:
        player.stop()
    for player in started:
        player.thread.join(15)


def settle(player: VideoSource, timeout_s: float = 10.0) -> str:
    """The source's state once its thread has ended (it fails or ends); fails the test if it keeps going."""
    player.thread.join(timeout_s)
    assert not player.thread.is_alive(), f"still {player.source.state} after {timeout_s} s: it is being retried"
    return player.source.state


def errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "vlm.sources" and r.levelno >= logging.WARNING]


def test_a_file_without_video_fails_with_one_clear_error(
    play: Callable[[str], VideoSource], media: Path, caplog: pytest.LogCaptureFixture
) -> None:
    player = play(str(media / "tone.wav"))
    assert settle(player) == "failed"
    assert errors(caplog) == ["source cam1 could not be played: no video stream (it has: audio)"]


def test_a_url_without_video_fails_too(
    play: Callable[[str], VideoSource], http_files: str, caplog: pytest.LogCaptureFixture
) -> None:
    player = play(f"{http_files}/tone.wav")
    assert player.source.kind == "stream"
    assert settle(player) == "failed"
    assert errors(caplog) == ["source cam1 could not be played: no video stream (it has: audio)"]


def test_a_missing_file_fails_at_once(
    play: Callable[[str], VideoSource], media: Path, caplog: pytest.LogCaptureFixture
) -> None:
    player = play(str(media / "nowhere" / "door.mp4"))
    assert settle(player, 5) == "failed"
    assert player.source.reconnects == 0
    assert errors(caplog) == ["source cam1 could not be played: FileNotFoundError: No such file or directory"]
    assert "door.mp4" not in caplog.text


@pytest.mark.parametrize("target", ["gopher://127.0.0.1:1/cam", "nosuchproto://127.0.0.1/cam"])
def test_an_unsupported_url_scheme_fails_at_once(
    play: Callable[[str], VideoSource], target: str, caplog: pytest.LogCaptureFixture
) -> None:
    scheme = target.split(":")[0]
    player = play(target)
    assert settle(player, 5) == "failed"
    assert errors(caplog) == [f"source cam1 could not be played: unsupported URL scheme {scheme}://"]


def test_a_network_stream_that_cannot_be_reached_is_still_retried(
    play: Callable[[str], VideoSource], caplog: pytest.LogCaptureFixture
) -> None:
    player = play(f"http://127.0.0.1:{free_port()}/cam.mjpg")
    deadline = time.monotonic() + 5
    while len(errors(caplog)) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert player.thread.is_alive() and player.source.state == "reconnecting"
    assert player.source.reconnects == 0, "never played, so never reopened: failed attempts are not reconnects"
    assert errors(caplog)[:2] == [
        "source cam1 dropped (ConnectionRefusedError: Connection refused); reconnecting in 0.5 s",
        "source cam1 dropped (ConnectionRefusedError: Connection refused); reconnecting in 1.0 s",
    ]


def test_a_file_url_is_a_file(media: Path) -> None:
    assert source_kind(f"file://{media / 'circle.mp4'}") == "file"
    assert source_kind(str(media / "missing.mp4")) == "file"
    assert source_kind("rtsp://camera.local/stream") == "stream"
    assert source_kind("/dev/video0") == "stream"


def test_a_stream_that_keeps_dropping_right_after_it_connects_backs_off(
    play: Callable[[str], VideoSource], caplog: pytest.LogCaptureFixture
) -> None:
    camera = MjpegCamera(lambda _: jpeg_of("circle", "red"), frames=1)
    try:
        player = play(camera.url)
        time.sleep(6)
        connections = camera.connections
    finally:
        camera.close()
    assert player.source.frames == connections >= 3, "each connection delivers its one frame"
    pauses = [m.rsplit(" in ", 1)[1] for m in errors(caplog) if "reconnecting in" in m]
    assert pauses[:4] == ["0.5 s", "1.0 s", "2.0 s", "4.0 s"], pauses
    assert connections <= 5, f"{connections} connections in 6 s: the pause started over after every frame"
    assert player.source.reconnects == connections - 1, "every connection after the first reopened the stream"


def test_a_frame_that_does_not_decode_is_skipped_and_the_camera_plays_on(
    play: Callable[[str], VideoSource], caplog: pytest.LogCaptureFixture
) -> None:
    """One part in four is not a JPEG (noise, or a JPEG cut to its first 200 bytes, as a camera on flaky
    Wi-Fi sends): those are counted and skipped, and the connection stays up."""
    good = jpeg_of("circle", "red")
    noise = bytes((i * 97 + 13) % 256 for i in range(3000))
    camera = MjpegCamera(lambda i: good if i % 4 else (noise if i % 8 else good[:200]))
    try:
        player = play(camera.url)
        time.sleep(3)
    finally:
        camera.close()
    assert camera.connections == 1 and player.source.reconnects == 0, errors(caplog)
    assert player.source.state == "playing"
    assert player.source.bad_frames >= 5 and player.source.frames >= 20, player.source.describe()
    assert not errors(caplog)


def test_a_camera_that_goes_on_sending_only_undecodable_frames_is_dropped_and_reopened(
    play: Callable[[str], VideoSource], caplog: pytest.LogCaptureFixture
) -> None:
    good = jpeg_of("circle", "red")
    noise = bytes((i * 97 + 13) % 256 for i in range(3000))
    camera = MjpegCamera(lambda i: good if i < 5 else noise)
    try:
        player = play(camera.url)
        time.sleep(3)
    finally:
        camera.close()
    assert player.source.bad_frames >= BAD_FRAMES_IN_A_ROW, player.source.describe()
    assert any("InvalidDataError" in m and "reconnecting" in m for m in errors(caplog)), errors(caplog)


def test_a_recording_over_http_is_decoded_at_its_own_frame_rate(
    play: Callable[[str], VideoSource], http_files: str
) -> None:
    player = play(f"{http_files}/circle.mp4")
    assert player.source.kind == "stream"
    deadline = time.monotonic() + 5
    while player.source.state != "playing" and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(1.0)
    assert player.source.frames <= 1.0 * FPS + 4, f"{player.source.frames} frames in 1 s of a {FPS} fps recording"
    assert player.source.frames >= 0.5 * FPS


def test_a_file_url_plays_once_at_its_own_frame_rate(play: Callable[[str], VideoSource], media: Path) -> None:
    started = time.monotonic()
    player = play(f"file://{media / 'circle.mp4'}")
    assert player.source.kind == "file"
    assert settle(player) == "ended"
    assert time.monotonic() - started >= CLIP_S - 2 / FPS
    assert player.source.frames == CLIP_S * FPS and player.source.reconnects == 0


# --------------------------------------------------------------------------- previews on the real server

MAX_CONNECTIONS = 16
PREVIEWS_EACH = 8  # of each of the three cameras: 24 in all, more than the server's connections


@pytest.fixture(scope="module")
def previewed(media: Path) -> Iterator[AppProcess]:
    """cam1 a file that has ended, cam2 a file without video (failed), cam3 a camera not there (reconnecting)."""
    write_clip(media / "short.mp4", (Shot("circle", "red", 0.5),))
    sources = [str(media / "short.mp4"), str(media / "tone.wav"), f"http://127.0.0.1:{free_port()}/cam.mjpg"]
    args = ["--model", "demo", "--max-connections", str(MAX_CONNECTIONS)]
    with AppProcess([*args, *(flag for source in sources for flag in ("--source", source))]) as app:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            states = [s["state"] for s in requests.get(f"{app.url}/v1/watch", timeout=10).json()["sources"]]
            if states == ["ended", "failed", "reconnecting"]:
                break
            time.sleep(0.1)
        assert states == ["ended", "failed", "reconnecting"]
        yield app


def parts(body: bytes) -> list[Image.Image]:
    return [Image.open(io.BytesIO(part.split(b"\r\n\r\n", 1)[1])) for part in body.split(b"--frame\r\n")[1:]]


def test_a_preview_of_a_camera_that_ended_or_failed_shows_its_last_picture_and_ends(previewed: AppProcess) -> None:
    ended = requests.get(f"{previewed.url}/v1/watch/sources/cam1/mjpeg", timeout=10)
    assert ended.status_code == 200 and ended.headers["Content-Type"].startswith("multipart/x-mixed-replace")
    [last] = parts(ended.content)
    red, green, blue = last.convert("RGB").getpixel((last.width // 2, last.height // 2))
    assert red > 150 and green < 110 and blue < 110, "not the clip's last frame, a red circle"

    failed = requests.get(f"{previewed.url}/v1/watch/sources/cam2/mjpeg", timeout=10)
    assert failed.status_code == 200 and len(parts(failed.content)) == 1, "a failed camera without a picture"

    with requests.get(f"{previewed.url}/v1/watch/sources/cam3/mjpeg", timeout=10, stream=True) as waiting:
        body, started = b"", time.monotonic()
        for chunk in waiting.iter_content(None):
            body += chunk
            if time.monotonic() - started > 2.5:
                break
    assert len(parts(body)) >= 2, "a reconnecting camera's preview sends its picture again while it waits"


def test_abandoned_previews_of_dead_cameras_free_their_connections(previewed: AppProcess) -> None:
    bystander_frame = data_url(draw_scene(single_object_scene("star", "yellow"), (320, 240)))
    assert_bystander_served(previewed, bystander_frame, within_s=30)  # warm: the model answers once first
    time.sleep(6)  # idle request threads end
    baseline = usage(previewed)

    viewers = []
    for number in range(3 * PREVIEWS_EACH):
        viewer = connect_from(ATTACKER, previewed.port)
        path = f"/v1/watch/sources/cam{number % 3 + 1}/mjpeg"
        viewer.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        viewers.append(viewer)
    time.sleep(1.5)
    for viewer in viewers:  # the tab is closed: whatever arrived is read, then the connection is closed
        viewer.setblocking(False)
        try:
            while viewer.recv(65536):
                pass
        except OSError:
            pass
        viewer.close()

    assert_bystander_served(previewed, bystander_frame, within_s=10)
    assert requests.get(f"{previewed.url}/v1/watch", timeout=10).status_code == 200
    wait_for_recovery(previewed, baseline, within_s=15, fds=4, threads=4)
