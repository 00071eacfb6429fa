"""Server-side video sources for ``--source``: a video file, an RTSP or HTTP (MJPEG) stream, or a device.

Decoding is FFmpeg's, through PyAV, on one thread per source that keeps only the latest
frame (a frame is turned into a picture only if a watch or a viewer takes it). A file (a
path or a ``file://`` URL) plays once at its own frame rate, so a watch sees what a camera
would have shown; anything else is live: when it drops or cannot be opened, it is opened
again after a pause that doubles up to ``MAX_BACKOFF_S`` and starts over only once frames
have flowed for ``STEADY_S`` (a snapshot URL that gives one frame per connection, or a
recording served over HTTP, would otherwise be reopened twice a second for ever). A
recording with a known length is decoded at its own frame rate wherever it comes from.
What can never play fails at once and is not retried: a missing or unreadable file, a URL
scheme that is no video protocol, an input without a video stream. A frame that does not decode
(a JPEG cut short by a camera on flaky Wi-Fi) is skipped and counted; only a run of them
drops the connection.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

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
BAD_FRAMES_IN_A_ROW = 25  # undecodable frames in a row that count as a drop (the stream is not video)


# Schemes FFmpeg reads live video from. Any other (gopher://, ftp://, a typo) cannot be a camera: the
# source fails at once instead of being retried forever.
STREAM_SCHEMES = frozenset({"rtsp", "rtsps", "rtmp", "rtmps", "http", "https", "srt", "udp", "rtp", "tcp"})


class Unplayable(Exception):
    """The target can never play, however often it is opened again: the source fails, not retried."""


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


def open_options(target: str) -> dict[str, object]:
    """``av.open`` arguments: TCP for RTSP (UDP loses frames behind NAT), V4L2 for /dev/video*."""
    options: dict[str, object] = {"timeout": (OPEN_TIMEOUT_S, READ_TIMEOUT_S)}
    if target.startswith(("rtsp://", "rtsps://")):
        options["options"] = {"rtsp_transport": "tcp"}
    if target.startswith("/dev/video"):
        options["format"] = "v4l2"
    return options


def describe(error: Exception) -> str:
    """The error without its file name: FFmpeg's messages repeat the URL, credentials included."""
    return f"{type(error).__name__}: {getattr(error, 'strerror', None) or 'no detail'}"


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
                self._play()
                problem = "the stream ended"
            except Unplayable as error:
                self._fail(str(error))
                return
            except (av.FFmpegError, OSError) as error:
                problem = describe(error)
                if self.source.kind == "file":
                    self._fail(problem)
                    return
            if self.source.kind == "file":
                self.hub.set_state(self.source, "ended")
                log.info("source %s ended after %d frames", self.source.id, self.delivered)
                return
            steady = self.delivered and time.monotonic() - self.playing_since >= STEADY_S
            backoff = FIRST_BACKOFF_S if steady else min(MAX_BACKOFF_S, backoff * 2)
            self.hub.set_state(self.source, "reconnecting")
            log.warning("source %s dropped (%s); reconnecting in %.1f s", self.source.id, problem, backoff)
            self.stopped.wait(backoff)

    def _play(self) -> None:
        """Decode until the end or an error, counting the frames delivered in ``self.delivered``."""
        scheme = url_scheme(self.target)
        if scheme and scheme != "file" and scheme not in STREAM_SCHEMES:
            raise Unplayable(f"unsupported URL scheme {scheme}://")
        try:
            container = av.open(self.target, **open_options(self.target))
        except av.ProtocolNotFoundError:
            raise Unplayable(f"unsupported URL scheme {scheme}://") from None
        with container:
            if not container.streams.video:
                kinds = ", ".join(sorted({s.type for s in container.streams})) or "nothing"
                raise Unplayable(f"no video stream (it has: {kinds})")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            # A file, or a recording with a known length (an .mp4 over HTTP): at its own frame rate, not as
            # fast as FFmpeg decodes. A live stream has no length and arrives at its own pace anyway.
            paced = self.source.kind == "file" or container.duration is not None
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
                    self.playing_since = time.monotonic()
                    self.hub.set_state(self.source, "playing", started=time.time())
                    log.info("source %s playing (%dx%d)", self.source.id, decoded.width, decoded.height)
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
        self.hub.set_state(self.source, "failed")
        log.error("source %s could not be played: %s", self.source.id, problem)

    def _loader(self, decoded: av.VideoFrame) -> Callable[[], Image.Image]:
        """Scaled by FFmpeg to the model's input size on first use."""
        scale = min(1.0, self.frame_side / max(decoded.width, decoded.height))
        width, height = max(1, math.ceil(decoded.width * scale)), max(1, math.ceil(decoded.height * scale))
        return lambda: decoded.reformat(width=width, height=height, format="rgb24").to_image()
