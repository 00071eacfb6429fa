"""Turn an untrusted image payload into a small RGB picture, or a clear refusal.

Frames arrive as Base64 text from any client, so every step is bounded before work is
spent on it: text length before decoding, pixel count before decompressing, and JPEG
frames are decoded straight at reduced scale (draft mode) because the model never needs
more than its own input size. Other formats are shrunk before any colour conversion, so a
big frame is copied at full size as few times as possible. At most ``DECODE_SLOTS`` frames
are decoded at once in the whole process (so concurrent big frames cannot multiply memory),
each on a native thread (so under eventlet or gevent the event loop keeps serving).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import math
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from .errors import Code, VlmError

ACCEPTED_FORMATS = frozenset({"JPEG", "PNG", "WEBP"})
SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I"})
DECODE_SLOTS = 2
DECODE_WAIT_S = 10.0
# What Base64 encoders add or change that carries no data: line breaks (`base64 FILE` wraps at 76 columns),
# the URL-safe alphabet's two letters (base64url), and missing padding (added back below).
_LINE_BREAKS = str.maketrans("", "", "\r\n")
_URL_SAFE = str.maketrans("-_", "+/")
_DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?:;[\w=.-]+)*?;base64,", re.IGNORECASE)


@dataclass(frozen=True)
class DecodedImage:
    image: Image.Image
    digest: str
    decode_ms: float


def decode_image(
    payload: object,
    *,
    max_bytes: int,
    max_pixels: int,
    target_size: int,
) -> DecodedImage:
    """Decode a data URL or bare Base64 image, downscaled so its longest side is ``target_size``."""
    if not isinstance(payload, str):
        raise VlmError(Code.BAD_IMAGE, "image must be a data URL or Base64 string")
    return _slots.run(_decode, payload, max_bytes, max_pixels, target_size)


def _decode(payload: str, max_bytes: int, max_pixels: int, target_size: int) -> DecodedImage:
    started = time.perf_counter()
    raw = _base64_bytes(payload, max_bytes)
    image = _open_bounded(raw, max_pixels, target_size)
    return DecodedImage(
        image=image,
        digest=hashlib.blake2b(raw, digest_size=16).hexdigest(),
        decode_ms=(time.perf_counter() - started) * 1000,
    )


def _base64_bytes(payload: str, max_bytes: int) -> bytes:
    text = payload.strip()
    match = _DATA_URL.match(text)
    if match:
        mime = (match.group("mime") or "").lower()
        if mime and not mime.startswith("image/"):
            raise VlmError(Code.BAD_IMAGE, f"data URL has type {mime}, not an image")
        text = text[match.end() :]
    text = text.translate(_LINE_BREAKS)
    if not text:
        raise VlmError(Code.BAD_IMAGE, "image is empty")
    if len(text) > (max_bytes * 4) // 3 + 4:
        raise VlmError(Code.IMAGE_TOO_LARGE, f"image is larger than {max_bytes // 1024} KiB")
    text = text.translate(_URL_SAFE) + "=" * (-len(text) % 4)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise VlmError(Code.BAD_IMAGE, "image is not valid Base64") from None


def _open_bounded(raw: bytes, max_pixels: int, target_size: int) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(raw))
    except Image.DecompressionBombError:
        raise VlmError(Code.IMAGE_TOO_LARGE, "image dimensions are far beyond any camera frame") from None
    except (UnidentifiedImageError, OSError):
        raise VlmError(Code.BAD_IMAGE, "data is not a JPEG, PNG or WebP image") from None
    if image.format not in ACCEPTED_FORMATS:
        raise VlmError(Code.BAD_IMAGE, f"{image.format} images are not accepted; send JPEG, PNG or WebP")
    width, height = image.size
    if width < 1 or height < 1 or width * height > max_pixels:
        raise VlmError(Code.IMAGE_TOO_LARGE, f"image is {width}x{height}; the limit is {max_pixels} pixels")
    if image.format == "JPEG":
        scale = min(1.0, target_size / max(width, height))
        image.draft("RGB", (math.ceil(width * scale), math.ceil(height * scale)))
    try:
        image.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        raise VlmError(Code.BAD_IMAGE, "image data is truncated or corrupt") from None
    orientation = image.getexif().get(ImageOps.ExifTags.Base.Orientation, 1)
    if image.mode in SIXTEEN_BIT_MODES:
        # Converting 16-bit grey straight to RGB clips every value above 255 to white.
        image = image.convert("I").point(lambda value: value / 257).convert("L")
    if image.mode not in ("RGB", "RGBA", "L", "LA"):
        image = _to_rgb(image)
    if max(image.size) > target_size:
        # reducing_gap: shrink by whole factors first (cheap, little memory), then resample.
        image.thumbnail((target_size, target_size), Image.Resampling.BILINEAR, reducing_gap=2.0)
    return _detached(_upright(_to_rgb(image), orientation))


def _detached(image: Image.Image) -> Image.Image:
    """The frame's own pixels, cut loose from the file object it was opened from.

    An opened file keeps its decoder for as long as the frame lives (Pillow's WebP file keeps
    libwebp's full-size canvases: 144 MiB for a 4096x4096 frame), and a job holds its frame while
    it waits and runs; eight queued big WebPs kept over 1 GB alive. Copying the shrunk frame is cheap.
    """
    return image.copy() if isinstance(image, ImageFile.ImageFile) else image


def _upright(image: Image.Image, orientation: int) -> Image.Image:
    """Apply the EXIF orientation a phone camera records instead of rotating its pixels."""
    method = ORIENTATIONS.get(orientation)
    return image.transpose(method) if method is not None else image


ORIENTATIONS = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _to_rgb(image: Image.Image) -> Image.Image:
    """Flatten transparency onto white, as a viewer would show it, then drop to plain RGB."""
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


Decoded = TypeVar("Decoded")


class _Semaphore(Protocol):
    def acquire(self, blocking: bool = ..., timeout: float | None = ...) -> bool: ...

    def release(self) -> None: ...


class DecodeSlots:
    """At most ``slots`` decodes at a time, each run by ``offload`` (a native thread under eventlet/gevent)."""

    def __init__(self, semaphore: _Semaphore, offload: Callable[..., Any]) -> None:
        self.semaphore = semaphore
        self.offload = offload

    def run(self, work: Callable[..., Decoded], *args: object) -> Decoded:
        if not self.semaphore.acquire(True, DECODE_WAIT_S):
            raise VlmError(Code.BUSY, "the server is decoding too many images; try again shortly")
        try:
            return self.offload(work, *args)
        finally:
            self.semaphore.release()


def _outcome(work: Callable[..., Decoded], *args: object) -> Decoded | VlmError:
    try:
        return work(*args)
    except VlmError as refusal:
        return refusal


def _inline(work: Callable[..., Decoded], *args: object) -> Decoded:
    return work(*args)


_slots = DecodeSlots(threading.BoundedSemaphore(DECODE_SLOTS), _inline)


def configure_decoding(async_mode: str) -> None:
    """Set once at start-up: ``DECODE_SLOTS`` decode threads of their own, waited on in the server's own way.

    Their own threads, not the connections': glibc gives each thread that allocates big buffers
    its own heap arena and keeps what was freed there, so decodes spread over every connection
    thread ratcheted memory up by a frame's size per thread (8 clients: +1.2 GiB), two threads do not.
    """
    global _slots
    if async_mode == "gevent":
        from gevent.lock import BoundedSemaphore  # imported here: gevent is only loaded when it is the server
        from gevent.threadpool import ThreadPool

        pool = ThreadPool(DECODE_SLOTS)

        def on_pool(work: Callable[..., Decoded], *args: object) -> Decoded:
            # gevent's pool prints a traceback for every exception a job raises; a refused frame is no error.
            outcome = pool.apply(_outcome, (work, *args))
            if isinstance(outcome, VlmError):
                raise outcome
            return outcome

        _slots = DecodeSlots(BoundedSemaphore(DECODE_SLOTS), on_pool)
    elif async_mode == "eventlet":
        import eventlet.semaphore
        import eventlet.tpool

        eventlet.tpool.set_num_threads(DECODE_SLOTS)
        _slots = DecodeSlots(eventlet.semaphore.BoundedSemaphore(DECODE_SLOTS), eventlet.tpool.execute)
    else:
        executor = ThreadPoolExecutor(DECODE_SLOTS, thread_name_prefix="vlm-decode")
        _slots = DecodeSlots(
            threading.BoundedSemaphore(DECODE_SLOTS), lambda work, *args: executor.submit(work, *args).result()
        )
