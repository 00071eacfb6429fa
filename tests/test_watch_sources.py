"""Server-side video sources on real media: ``VideoSource`` threads fed by files and local servers,
and their MJPEG previews on the real server.

Each test runs a real ``VideoSource`` (PyAV's FFmpeg) into a real ``WatchHub`` against media
made by FFmpeg: a clip written with PyAV, an audio-only WAV from Debian's ffmpeg, a Python HTTP
server serving those files, a socket that serves MJPEG that hangs up or stalls, a camera's
snapshot URL (one JPEG per request, with Basic auth or refusing it), a socket that never
answers, Debian's ffmpeg as a live RTMP server, and an RTSP server written here that refuses
RTP over TCP (as VLC does) and has ffmpeg send RTP over UDP. What is checked is what an
operator sees: the source's state and why it is down, its counters and its log lines. The
preview tests run the real app with a camera that has ended, one that failed, one that keeps
reconnecting and a snapshot URL whose password comes from the environment, and abandon
previews of them as a viewer who closes the tab does.
"""

from __future__ import annotations

import base64
import contextlib
import io
import logging
import re
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import av
import pytest
import requests
from PIL import Image

from scripts.synthetic_scenes import draw_scene, single_object_scene
from tests.attack_tools import ATTACKER, assert_bystander_served, connect_from, usage, wait_for_recovery
from tests.browser.fake_camera import Shot
from tests.frames import data_url
from tests.server_process import AppProcess, free_port
from tests.video_clips import FPS, write_clip
from vlm import sources
from vlm.sources import (
    BAD_FRAMES_IN_A_ROW,
    NO_PICTURE_YET,
    REFUSED_LOGIN,
    VideoSource,
    reason,
    source_kind,
    with_password,
)
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


def accept_each(listener: socket.socket, handle: Callable[[socket.socket], None]) -> None:
    """Each connection ``listener`` accepts, handled on a thread of its own, until the listener is closed."""
    while True:
        try:
            connection, _ = listener.accept()
        except OSError:
            return
        threading.Thread(target=handle, args=(connection,), daemon=True).start()


class MjpegCamera:
    """An MJPEG camera: each connection gets ``part(i)`` as its i-th JPEG, 20 a second, ``frames`` of them, then
    a hang-up. Counts connections."""

    def __init__(self, part: Callable[[int], bytes], frames: int = 10_000) -> None:
        self.part = part
        self.frames = frames
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}/video"
        self.connections = 0
        threading.Thread(target=accept_each, args=(self.listener, self._stream), daemon=True).start()

    def _stream(self, connection: socket.socket) -> None:
        self.connections += 1
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


class SnapshotCamera:
    """A camera's snapshot URL: every GET is answered with one JPEG (``image/jpeg``), after Basic auth as
    ``login`` (user, password) where given, as cameras ask for it; with ``status`` (401, 403) every request is
    refused with it instead. Counts requests and pictures served."""

    def __init__(self, *, login: tuple[str, str] | None = None, status: int | None = None) -> None:
        self.requests = 0
        self.pictures = 0
        camera, picture = self, jpeg_of("circle", "red")
        expected = "Basic " + base64.b64encode(":".join(login).encode()).decode() if login else None

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                camera.requests += 1
                refused = status or (401 if expected and self.headers.get("Authorization") != expected else None)
                if refused:
                    self.send_response(refused)
                    self.send_header("WWW-Authenticate", 'Basic realm="camera"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                camera.pictures += 1
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Content-Length", str(len(picture)))
                self.end_headers()
                self.wfile.write(picture)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/snapshot.jpg"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class SilentServer:
    """Accepts connections and never says a word, like a camera that hangs."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                self.held.append(self.listener.accept()[0])
            except OSError:
                return

    def close(self) -> None:
        self.listener.close()
        for connection in self.held:
            connection.close()


def rtsp_request(stream: io.BufferedReader) -> list[str]:
    """One RTSP request's lines (none of a player's requests has a body); none once the client hung up."""
    lines = []
    while (line := stream.readline()) not in (b"\r\n", b""):
        lines.append(line.decode().strip())
    return lines


MJPEG_SDP = (
    "\r\n".join(  # payload type 26: Motion JPEG
        ("v=0", "o=- 0 0 IN IP4 127.0.0.1", "s=cam", "c=IN IP4 127.0.0.1", "t=0 0", "m=video 0 RTP/AVP 26")
    )
    + "\r\na=control:track1\r\n"
)


class UdpOnlyRtspServer:
    """An RTSP server that refuses RTP over TCP with 461 Unsupported Transport, as VLC's does, and on PLAY has
    Debian's ffmpeg send two seconds of Motion JPEG (RFC 2435) as RTP over UDP to the client's port. Counts the
    SETUPs asking for each transport."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"rtsp://127.0.0.1:{self.listener.getsockname()[1]}/cam"
        self.setups = {"tcp": 0, "udp": 0}
        self.senders: list[subprocess.Popen[bytes]] = []
        threading.Thread(target=accept_each, args=(self.listener, self._session), daemon=True).start()

    def _session(self, connection: socket.socket) -> None:
        # A player that is stopped resets its connection.
        with connection, connection.makefile("rb") as requests_in, contextlib.suppress(ConnectionResetError):
            client_port = 0
            while lines := rtsp_request(requests_in):
                method = lines[0].split()[0]
                headers = {name.lower(): value.strip() for name, _, value in (h.partition(":") for h in lines[1:])}
                status, extra, body = "200 OK", "", ""
                if method == "DESCRIBE":
                    extra, body = f"Content-Base: {self.url}/\r\nContent-Type: application/sdp\r\n", MJPEG_SDP
                elif method == "SETUP" and "TCP" in headers["transport"]:
                    self.setups["tcp"] += 1
                    status = "461 Unsupported Transport"
                elif method == "SETUP":
                    self.setups["udp"] += 1
                    client_port = int(re.search(r"client_port=(\d+)", headers["transport"]).group(1))
                    ports = f"client_port={client_port}-{client_port + 1};server_port=9-10"
                    extra = f"Transport: RTP/AVP;unicast;{ports}\r\nSession: 1\r\n"
                elif method == "PLAY":
                    extra = "Session: 1\r\n"
                    self._send(client_port)
                else:
                    extra = "Public: OPTIONS, DESCRIBE, SETUP, PLAY, TEARDOWN\r\n"
                head = f"RTSP/1.0 {status}\r\nCSeq: {headers.get('cseq')}\r\n{extra}Content-Length: {len(body)}\r\n\r\n"
                connection.sendall((head + body).encode())

    def _send(self, port: int) -> None:
        command = [FFMPEG, "-hide_banner", "-loglevel", "error", "-re", "-f", "lavfi"]
        command += ["-i", "testsrc=size=160x120:rate=20", "-frames:v", "40", "-c:v", "mjpeg", "-pix_fmt", "yuvj420p"]
        command += ["-huffman", "default", "-force_duplicated_matrix", "1", "-f", "rtp", f"rtp://127.0.0.1:{port}"]
        self.senders.append(subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL))

    def close(self) -> None:
        self.listener.close()
        for sender in self.senders:
            sender.kill()
            sender.wait()


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
        "source cam1 not playing (the camera refused the connection); trying again in 0.5 s",
        "source cam1 not playing (the camera refused the connection); trying again in 1.0 s",
    ]
    assert player.source.describe()["problem"] == "the camera refused the connection"


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


def test_a_live_rtmp_stream_is_not_held_back_as_if_it_were_a_recording(play: Callable[[str], VideoSource]) -> None:
    """FFmpeg says a live RTMP stream is 0 s long. Taken for a recording, it was paced from its first frame, so
    what arrived before that (here 10 s, sent at once, as a server's backlog) came out in real time and stayed
    as delay; live, it is decoded as it arrives."""
    url = f"rtmp://127.0.0.1:{free_port()}/live/cam"
    command = [FFMPEG, "-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i", "testsrc=size=160x120:rate=10"]
    server = subprocess.Popen([*command, "-frames:v", "100", "-c:v", "flv1", "-f", "flv", "-listen", "1", url])
    try:
        time.sleep(0.3)  # listening (a probe connection would be its one client)
        player = play(url)
        deadline = time.monotonic() + 10
        while player.source.state != "playing" and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(1.0)
        latest = player.source.latest
    finally:
        server.kill()
        server.wait()
    assert player.source.frames >= 90, f"{player.source.frames} of 100 frames 1 s after it played: held back"
    assert latest is not None and latest.position_s is None, "a live stream has no position"


def test_an_rtsp_server_that_refuses_tcp_is_played_over_udp_from_then_on(
    play: Callable[[str], VideoSource], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The server refuses RTP over TCP (461, which FFmpeg reports as "Protocol not supported"): UDP is asked for
    at once, and again when the stream is reopened after it went silent (it sends two seconds a session)."""
    monkeypatch.setattr(sources, "READ_TIMEOUT_S", 1.0)
    server = UdpOnlyRtspServer()
    try:
        player = play(server.url)
        deadline = time.monotonic() + 10
        while player.source.reconnects < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        server.close()
    assert player.source.reconnects == 1, (player.source.describe(), errors(caplog))
    assert server.setups == {"tcp": 1, "udp": 2}, "TCP once; the reconnect remembered that UDP works"
    assert errors(caplog) == [
        "source cam1: the RTSP server refused RTP over TCP; using UDP",
        "source cam1 dropped (the camera sent nothing for 1 s); reconnecting in 0.5 s",
    ]


def test_a_snapshot_url_is_polled_every_second_and_stays_playing(
    play: Callable[[str], VideoSource], caplog: pytest.LogCaptureFixture
) -> None:
    """One picture per request is how a snapshot URL works, not a drop: no warning, no reconnect, and a picture a
    second (it was one per 10 s, and the page said "camera reconnecting" all along)."""
    caplog.set_level(logging.INFO, logger="vlm.sources")
    camera = SnapshotCamera()
    try:
        player = play(camera.url)
        deadline = time.monotonic() + 5
        while player.source.state != "playing" and time.monotonic() < deadline:
            time.sleep(0.02)
        states = set()
        for _ in range(70):  # 3.5 s
            states.add(player.source.state)
            time.sleep(0.05)
        # Read before the camera closes: the next poll then finds it gone, rightly.
        frames, pictures = player.source.frames, camera.pictures
        reconnects, problem = player.source.reconnects, player.source.problem
    finally:
        camera.close()
    assert states == {"playing"}
    assert 3 <= pictures <= 5 and frames in (pictures, pictures - 1), (frames, pictures)
    assert reconnects == 0 and problem is None
    assert [r.getMessage() for r in caplog.records if r.name == "vlm.sources"] == ["source cam1 playing (320x240)"]


@pytest.mark.parametrize("status", [401, 403])
def test_a_camera_that_refuses_the_login_is_asked_again_only_after_minutes(
    play: Callable[[str], VideoSource], status: int, caplog: pytest.LogCaptureFixture
) -> None:
    """Cameras lock an account after a few failed logins: asking again every 10 s would lock its owner out."""
    camera = SnapshotCamera(status=status)
    try:
        player = play(camera.url.replace("//", "//admin:wrong@"))
        deadline = time.monotonic() + 5
        while not errors(caplog) and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(2.0)
        asked = camera.requests
    finally:
        camera.close()
    assert asked <= 2, f"{asked} requests in 2 s (FFmpeg sends the password once challenged)"
    assert player.source.state == "reconnecting" and player.source.problem == REFUSED_LOGIN
    assert errors(caplog) == [
        f"source cam1: {REFUSED_LOGIN}; trying again in 5 min (cameras lock an account after a few failed logins)"
    ]


@pytest.mark.parametrize("scheme", ["http", "rtsp"])
def test_a_camera_that_never_answers_is_said_to_time_out(
    play: Callable[[str], VideoSource], scheme: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """FFmpeg said "Immediate exit requested" (HTTP) or "Invalid data found" (RTSP) of a camera that sent nothing."""
    monkeypatch.setattr(sources, "OPEN_TIMEOUT_S", 1.0)
    server = SilentServer()
    try:
        player = play(f"{scheme}://127.0.0.1:{server.port}/cam")
        deadline = time.monotonic() + 5
        while not errors(caplog) and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        server.close()
    assert player.source.problem == "the camera did not answer within 1 s"
    assert errors(caplog)[0] == "source cam1 not playing (the camera did not answer within 1 s); trying again in 0.5 s"


def test_a_password_from_the_environment_logs_in(
    play: Callable[[str], VideoSource], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Characters that mean something in a URL are sent as typed."""
    monkeypatch.setenv("VLM_SOURCE_PASSWORD", "p@ss:w/rd%?#é")
    camera = SnapshotCamera(login=("admin", "p@ss:w/rd%?#é"))
    try:
        player = play(with_password(camera.url.replace("//", "//admin@"), "cam1"))
        deadline = time.monotonic() + 5
        while not camera.pictures and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        camera.close()
    assert camera.pictures >= 1 and player.source.state == "playing", player.source.describe()


@pytest.mark.unit
def test_a_password_comes_from_the_environment_only_for_a_user_without_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLM_SOURCE_PASSWORD", "shared")
    monkeypatch.setenv("VLM_SOURCE_PASSWORD_CAM2", "own")
    assert with_password("rtsp://admin@cam.lan:554/live", "cam1") == "rtsp://admin:shared@cam.lan:554/live"
    assert with_password("rtsp://admin@cam.lan/live", "cam2") == "rtsp://admin:own@cam.lan/live"
    assert with_password("rtsp://admin:typed@cam.lan/live", "cam1") == "rtsp://admin:typed@cam.lan/live"
    assert with_password("rtsp://cam.lan/live", "cam1") == "rtsp://cam.lan/live"
    assert with_password("door.mp4", "cam1") == "door.mp4"
    monkeypatch.delenv("VLM_SOURCE_PASSWORD")
    assert with_password("rtsp://admin@cam.lan/live", "cam1") == "rtsp://admin@cam.lan/live"


@pytest.mark.unit
def test_bad_data_before_the_first_picture_is_a_stream_waiting_for_a_keyframe() -> None:
    """A stream joined between keyframes (or whose codec FFmpeg could not make out yet) gives bad data at first."""
    bad = av.InvalidDataError(-1094995529, "Invalid data found when processing input")
    assert reason(bad, before_picture=True) == NO_PICTURE_YET
    assert reason(bad, before_picture=False) == "InvalidDataError: Invalid data found when processing input"


@pytest.mark.unit
def test_a_tab_hears_why_the_server_camera_it_watches_is_down(hub: WatchHub) -> None:
    """In ``watch_state``, when the reason changes too (it timed out, then refused the password)."""
    told: list[dict[str, object]] = []
    hub.notify = lambda event, payload, sid: told.append(payload) if event == "watch_state" else None
    source = hub.add_source(Source(id="cam1", label="test", kind="stream"))
    hub.add("is the door open?", "cam1", owner="tab-sid")
    hub.set_state(source, "reconnecting", problem="the camera did not answer within 10 s")
    hub.set_state(source, "reconnecting", problem=REFUSED_LOGIN)
    assert [(w["source_state"], w["source_problem"]) for w in told] == [
        ("reconnecting", "the camera did not answer within 10 s"),
        ("reconnecting", REFUSED_LOGIN),
    ]


# --------------------------------------------------------------------------- previews on the real server

MAX_CONNECTIONS = 16
PREVIEWS_EACH = 8  # of each of the three cameras: 24 in all, more than the server's connections


CAMERA_PASSWORD = "s3cret:pass"


@pytest.fixture(scope="module")
def previewed(media: Path) -> Iterator[AppProcess]:
    """cam1 a file that has ended, cam2 a file without video (failed), cam3 a camera not there (reconnecting),
    cam4 a snapshot URL (playing) whose password is in the environment, not in ``--source``."""
    write_clip(media / "short.mp4", (Shot("circle", "red", 0.5),))
    camera = SnapshotCamera(login=("viewer", CAMERA_PASSWORD))
    sources = [str(media / "short.mp4"), str(media / "tone.wav"), f"http://127.0.0.1:{free_port()}/cam.mjpg"]
    sources.append(camera.url.replace("//", "//viewer@"))
    args = ["--model", "demo", "--max-connections", str(MAX_CONNECTIONS)]
    args += [flag for source in sources for flag in ("--source", source)]
    with AppProcess(args, env={"VLM_SOURCE_PASSWORD_CAM4": CAMERA_PASSWORD}) as app:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            states = [s["state"] for s in requests.get(f"{app.url}/v1/watch", timeout=10).json()["sources"]]
            if states == ["ended", "failed", "reconnecting", "playing"]:
                break
            time.sleep(0.1)
        assert states == ["ended", "failed", "reconnecting", "playing"]
        yield app
    camera.close()


def test_the_server_says_why_each_camera_is_not_playing(previewed: AppProcess) -> None:
    listed = requests.get(f"{previewed.url}/v1/watch", timeout=10).json()["sources"]
    assert [source["problem"] for source in listed] == [
        None,
        "no video stream (it has: audio)",
        "the camera refused the connection",
        None,
    ]
    assert previewed.process is not None
    assert CAMERA_PASSWORD not in Path(f"/proc/{previewed.process.pid}/cmdline").read_text()


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
