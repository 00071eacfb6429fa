"""Server-side video sources for ``--source``: a video file, an RTSP or HTTP (MJPEG) stream, or a device.

Decoding is FFmpeg's, through PyAV, on one thread per source that keeps only the latest
frame (a frame is turned into a picture only if a watch or a viewer takes it). A file (a
path or a ``file://`` URL) plays once at its own frame rate, so a watch sees what a camera
would have shown; anything else is live: when it drops or cannot be opened, it is opened
again after a pause that doubles up to ``MAX_BACKOFF_S`` and starts over only once frames
have flowed for ``STEADY_S`` (a recording served over HTTP would otherwise be reopened twice
a second for ever). A camera that refused the user name or password is asked again only
after ``REFUSED_LOGIN_BACKOFF_S``: cameras lock an account after a few failed logins. A
snapshot URL (an HTTP answer that is one picture) is no drop when it ends: it is polled
every ``POLL_S`` and stays ``playing``. A recording with a known, positive length is decoded
at its own frame rate wherever it comes from (a live RTMP stream says its length is 0).
RTSP asks for RTP over TCP, which survives packet loss and NAT, and falls back to UDP for
good when the server refuses TCP (VLC does). What can never play fails at once and is not
retried: a missing or unreadable file, a URL scheme that is no video protocol, an input
without a video stream. A frame that does not decode (a JPEG cut short by a camera on flaky
Wi-Fi) is skipped and counted; only a run of them drops the connection. Why a source is not
playing is a plain sentence (``reason``) in the log, in ``/v1/watch`` and on the page.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote, urlsplit

import av
from PIL import Image

from .logsafe import url_host
from .watch import Frame, Source, SourceKind, WatchHub

log = logging.getLogger(__name__)

OPEN_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 5.0
FIRST_BACKOFF_S = 0.5
MAX_BACKOFF_S = 10.0
STEADY_S = MAX_BACKOFF_S  # played this long before it dropped: the next pause is FIRST_BACKOFF_S again
REFUSED_LOGIN_BACKOFF_S = 300.0  # a few wrong logins a minute lock many cameras' accounts
POLL_S = 1.0  # between two pictures of a snapshot URL
BAD_FRAMES_IN_A_ROW = 25  # undecodable frames in a row that count as a drop (the stream is not video)
PASSWORD_ENV = "VLM_SOURCE_PASSWORD"  # a --source URL's password, kept out of the command line (and ps)

REFUSED_LOGIN = "the camera refused the user name or password"
NO_PICTURE_YET = "no picture yet (nothing decodable: a stream waiting for its next keyframe, or not video)"


# Schemes FFmpeg reads live video from. Any other (gopher://, ftp://, a typo) cannot be a camera: the
# source fails at once instead of being retried forever.
STREAM_SCHEMES = frozenset({"rtsp", "rtsps", "rtmp", "rtmps", "http", "https", "srt", "udp", "rtp", "tcp"})


class Unplayable(Exception):
    """The target can never play, however often it is opened again: the source fails, not retried."""


class NoAnswer(TimeoutError):
    """FFmpeg gave up waiting for the camera; its own error says so badly ("Immediate exit requested", or
    "Invalid data" from RTSP), so it is replaced by this, whose message is the sentence shown."""


def url_scheme(target: str) -> str:
    """``rtsp`` of ``rtsp://…``; empty for a path (a path may hold a colon)."""
    found = re.match(r"([A-Za-z][A-Za-z0-9+.-]*)://", target)
    return found.group(1).lower() if found else ""


def source_kind(target: str) -> SourceKind:
    """A local path or ``file://`` URL is a file (even a missing one, which then fails at once);
    a URL, a device under /dev or a pipe is a live stream, reopened when it drops."""
    scheme = url_scheme(target)
    if scheme:
        return "file" if scheme == "file" else "stream"
    path = Path(target)
    if target.startswith("/dev/") or (path.exists() and not path.is_file() and not path.is_dir()):
        return "stream"
    return "file"


def source_label(target: str) -> str:
    """What the page and the alerts may show: never credentials or a query string from the URL."""
    parts = urlsplit(target)
    if parts.scheme and parts.netloc:
        return f"{parts.scheme}://{url_host(target)}{parts.path}"
    return Path(target).name or target


def with_password(target: str, source_id: str) -> str:
    """``target`` with the password from ``$VLM_SOURCE_PASSWORD_CAM1`` (this source's own) or else
    ``$VLM_SOURCE_PASSWORD``, where its URL names a user but no password: ``--source`` is in the command line,
    which every local user can read (ps), and the environment is not."""
    parts = urlsplit(target)
    password = os.environ.get(f"{PASSWORD_ENV}_{source_id.upper()}", os.environ.get(PASSWORD_ENV))
    if not password or parts.username is None or parts.password is not None:
        return target
    user, host = parts.netloc.rsplit("@", 1)
    return parts._replace(netloc=f"{user}:{quote(password, safe='')}@{host}").geturl()


def open_options(target: str, rtsp_transport: str = "tcp") -> dict[str, object]:
    """``av.open`` arguments: RTP over ``rtsp_transport`` for RTSP, V4L2 for /dev/video*."""
    options: dict[str, object] = {"timeout": (OPEN_TIMEOUT_S, READ_TIMEOUT_S)}
    if url_scheme(target) in ("rtsp", "rtsps"):
        options["options"] = {"rtsp_transport": rtsp_transport}
    if target.startswith("/dev/video"):
        options["format"] = "v4l2"
    return options


def describe(error: Exception) -> str:
    """The error without its file name: FFmpeg's messages repeat the URL, credentials included."""
    return f"{type(error).__name__}: {getattr(error, 'strerror', None) or 'no detail'}"


def reason(error: Exception, *, before_picture: bool) -> str:
    """Why a stream is not playing, as a sentence for the log, ``/v1/watch`` and the page. ``before_picture``:
    no frame came on this connection, where bad data is a stream joined between keyframes (or whose codec
    FFmpeg could not make out yet), not a broken one."""
    if isinstance(error, NoAnswer):
        return str(error)
    if isinstance(error, av.HTTPUnauthorizedError | av.HTTPForbiddenError):
        return REFUSED_LOGIN
    if isinstance(error, av.HTTPNotFoundError):
        return "the camera has nothing at that path (404 Not Found)"
    if isinstance(error, ConnectionRefusedError):
        return "the camera refused the connection"
    if isinstance(error, OSError) and error.errno == errno.EPROTONOSUPPORT:
        return "the RTSP server refused RTP over both TCP and UDP"
    if isinstance(error, av.InvalidDataError) and before_picture:
        return NO_PICTURE_YET
    return describe(error)


def timed_out(error: Exception, waited_s: float, limit_s: float) -> bool:
    """PyAV's timeout interrupts FFmpeg (ExitError), which some demuxers report as bad data instead."""
    return isinstance(error, av.ExitError) or (isinstance(error, av.InvalidDataError) and waited_s >= limit_s)


def is_snapshot(target: str, format_name: str) -> bool:
    """An HTTP answer that FFmpeg read as a picture (``image2`` for a path ending in .jpg, else ``jpeg_pipe``,
    ``png_pipe``…): a snapshot URL, polled, rather than an MJPEG stream (``mpjpeg``) or a recording that ended."""
    return url_scheme(target) in ("http", "https") and (format_name == "image2" or format_name.endswith("_pipe"))


class VideoSource:
    """Feeds one ``Source`` of ``hub`` from ``target`` until ``stop``."""

    def __init__(self, hub: WatchHub, source: Source, target: str, *, frame_side: int) -> None:
        self.hub = hub
        self.source = source
        self.target = target
        self.frame_side = frame_side
        self.stopped = threading.Event()
        self.seq = 0
        self.delivered = 0
        self.playing_since = 0.0  # monotonic time of this connection's first frame
        self.polled = False  # the last connection was one picture of a snapshot URL: the source is still playing
        self.rtsp_transport = "tcp"  # "udp" for good once the server refused TCP
        self.thread = threading.Thread(target=self._run, name=f"vlm-source-{source.id}", daemon=True)

    def start(self) -> VideoSource:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stopped.set()

    def _run(self) -> None:
        backoff = FIRST_BACKOFF_S / 2
        while not self.stopped.is_set():
            self.delivered = 0
            try:
                snapshot = self._play()
                problem = "the stream ended"
            except Unplayable as error:
                self._fail(str(error))
                return
            except (av.FFmpegError, OSError) as error:
                if self.source.kind == "file":
                    self._fail(describe(error))
                    return
                snapshot, problem = False, reason(error, before_picture=not self.delivered)
            if self.source.kind == "file":
                self.hub.set_state(self.source, "ended")
                log.info("source %s ended after %d frames", self.source.id, self.delivered)
                return
            if snapshot:
                self.polled, backoff = True, FIRST_BACKOFF_S / 2
                self.stopped.wait(POLL_S)
                continue
            backoff = self._not_playing(problem, backoff)
            self.stopped.wait(backoff)

    def _not_playing(self, problem: str, backoff: float) -> float:
        """Say why the source is down and return the pause before the next try: after a refused login a long
        one; else doubled, unless it had played steadily, then short (a stream that ran for an hour is back
        at once, while one that hangs up right after each frame is not reopened twice a second)."""
        self.polled = False
        self.hub.set_state(self.source, "reconnecting", problem=problem)
        if problem == REFUSED_LOGIN:
            log.warning(
                "source %s: %s; trying again in %.0f min (cameras lock an account after a few failed logins)",
                self.source.id,
                problem,
                REFUSED_LOGIN_BACKOFF_S / 60,
            )
            return REFUSED_LOGIN_BACKOFF_S
        steady = self.delivered and time.monotonic() - self.playing_since >= STEADY_S
        backoff = FIRST_BACKOFF_S if steady else min(MAX_BACKOFF_S, backoff * 2)
        if self.delivered:
            log.warning("source %s dropped (%s); reconnecting in %.1f s", self.source.id, problem, backoff)
        else:
            log.warning("source %s not playing (%s); trying again in %.1f s", self.source.id, problem, backoff)
        return backoff

    def _open(self) -> av.container.InputContainer:
        """The container, or why not as an error of ``reason``'s. RTSP asks for TCP first; a server that refuses
        it (VLC answers SETUP with 461, which FFmpeg reports as EPROTONOSUPPORT) is asked for UDP, now and on
        every later reconnect."""
        opening = time.monotonic()
        try:
            try:
                return av.open(self.target, **open_options(self.target, self.rtsp_transport))
            except OSError as error:
                if error.errno != errno.EPROTONOSUPPORT or self.rtsp_transport != "tcp" or not self._rtsp():
                    raise
            log.warning("source %s: the RTSP server refused RTP over TCP; using UDP", self.source.id)
            self.rtsp_transport = "udp"
            return av.open(self.target, **open_options(self.target, self.rtsp_transport))
        except av.ProtocolNotFoundError:
            raise Unplayable(f"unsupported URL scheme {url_scheme(self.target)}://") from None
        except (av.FFmpegError, OSError) as error:
            if timed_out(error, time.monotonic() - opening, OPEN_TIMEOUT_S):
                raise NoAnswer(f"the camera did not answer within {OPEN_TIMEOUT_S:g} s") from None
            raise

    def _rtsp(self) -> bool:
        """Plain RTSP, whose RTP may go over UDP (RTSPS is TLS, over TCP only)."""
        return url_scheme(self.target) == "rtsp"

    def _play(self) -> bool:
        """Decode until the end or an error, counting the frames delivered in ``self.delivered``; True when it
        ended as a snapshot URL's answer does, after its one picture."""
        scheme = url_scheme(self.target)
        if scheme and scheme != "file" and scheme not in STREAM_SCHEMES:
            raise Unplayable(f"unsupported URL scheme {scheme}://")
        with self._open() as container:
            if not container.streams.video:
                kinds = ", ".join(sorted({s.type for s in container.streams})) or "nothing"
                raise Unplayable(f"no video stream (it has: {kinds})")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            # A file, or a recording with a known length (an .mp4 over HTTP): at its own frame rate, not as
            # fast as FFmpeg decodes. A live stream has no length (or 0, as RTMP says) and arrives at its own
            # pace anyway: paced, the backlog FFmpeg read while it probed would be replayed, and stay, as delay.
            paced = self.source.kind == "file" or (container.duration or 0) > 0
            try:
                self._deliver(container, stream, paced)
            except av.ExitError:
                raise NoAnswer(f"the camera sent nothing for {READ_TIMEOUT_S:g} s") from None
            return self.delivered == 1 and is_snapshot(self.target, container.format.name)

    def _deliver(self, container: av.container.InputContainer, stream: av.VideoStream, paced: bool) -> None:
        """Each decoded frame to the hub as the latest, ``paced`` at its own frame rate from the first one."""
        started = time.monotonic()
        first: float | None = None
        for decoded in self._decoded(container, stream):
            if self.stopped.is_set():
                break
            position = decoded.time
            if paced and position is not None:
                first = position if first is None else first
                if self.stopped.wait(max(0.0, started + (position - first) - time.monotonic())):
                    break
            if self.delivered == 0:
                self._playing(decoded)
            self.seq += 1
            self.hub.offer(
                self.source,
                Frame(
                    seq=self.seq,
                    load=self._loader(decoded),
                    captured=time.time(),
                    position_s=position if paced else None,
                ),
            )
            self.delivered += 1

    def _playing(self, decoded: av.VideoFrame) -> None:
        """This connection's first frame: the source plays (again), unless it is the next picture of a snapshot
        URL that has been playing all along."""
        self.playing_since = time.monotonic()
        if self.polled:
            return
        self.hub.set_state(self.source, "playing", started=time.time())
        log.info("source %s playing (%dx%d)", self.source.id, decoded.width, decoded.height)

    def _decoded(self, container: av.container.InputContainer, stream: av.VideoStream) -> Iterator[av.VideoFrame]:
        """The stream's frames, skipping one that does not decode: ``container.decode`` would end the
        connection at the first bad JPEG, and a camera that sends one now and then would never play steadily."""
        bad_in_a_row = 0
        for packet in container.demux(stream):
            try:
                frames = packet.decode()
            except av.InvalidDataError:
                self.hub.count_bad_frame(self.source)
                bad_in_a_row += 1
                if bad_in_a_row >= BAD_FRAMES_IN_A_ROW:
                    raise
                continue
            bad_in_a_row = 0
            yield from frames

    def _fail(self, problem: str) -> None:
        self.hub.set_state(self.source, "failed", problem=problem)
        log.error("source %s could not be played: %s", self.source.id, problem)

    def _loader(self, decoded: av.VideoFrame) -> Callable[[], Image.Image]:
        """Scaled by FFmpeg to the model's input size on first use."""
        scale = min(1.0, self.frame_side / max(decoded.width, decoded.height))
        width, height = max(1, math.ceil(decoded.width * scale)), max(1, math.ceil(decoded.height * scale))
        return lambda: decoded.reformat(width=width, height=height, format="rgb24").to_image()
