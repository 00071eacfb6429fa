"""Turn an untrusted image payload into a small RGB picture, or a clear refusal.

Frames arrive as Base64 text from any client, so every step is bounded before work is
spent on it: text length before decoding, pixel count before decompressing, and JPEG
frames are decoded straight at reduced scale (draft mode) because the model never needs
more than its own input size.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import math
import re
import time
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

ACCEPTED_FORMATS = frozenset({"JPEG", "PNG", "WEBP"})
_DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?:;[\w=.-]+)*?;base64,", re.IGNORECASE)


class ImageRejected(ValueError):
    """A payload that is not an acceptable image; ``code`` goes on the wire."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


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
    started = time.perf_counter()
    raw = _base64_bytes(payload, max_bytes)
    image = _open_bounded(raw, max_pixels, target_size)
    return DecodedImage(
        image=image,
        digest=hashlib.blake2b(raw, digest_size=16).hexdigest(),
        decode_ms=(time.perf_counter() - started) * 1000,
    )


def _base64_bytes(payload: object, max_bytes: int) -> bytes:
    if not isinstance(payload, str):
        raise ImageRejected("bad_image", "image must be a data URL or Base64 string")
    text = payload.strip()
    match = _DATA_URL.match(text)
    if match:
        mime = (match.group("mime") or "").lower()
        if mime and not mime.startswith("image/"):
            raise ImageRejected("bad_image", f"data URL has type {mime}, not an image")
        text = text[match.end():]
    if not text:
        raise ImageRejected("bad_image", "image is empty")
    if len(text) > (max_bytes * 4) // 3 + 4:
        raise ImageRejected("image_too_large", f"image is larger than {max_bytes // 1024} KiB")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ImageRejected("bad_image", "image is not valid Base64") from None


def _open_bounded(raw: bytes, max_pixels: int, target_size: int) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(raw))
    except Image.DecompressionBombError:
        raise ImageRejected("image_too_large", "image dimensions are far beyond any camera frame") from None
    except (UnidentifiedImageError, OSError):
        raise ImageRejected("bad_image", "data is not a JPEG, PNG or WebP image") from None
    if image.format not in ACCEPTED_FORMATS:
        raise ImageRejected("bad_image", f"{image.format} images are not accepted; send JPEG, PNG or WebP")
    width, height = image.size
    if width < 1 or height < 1 or width * height > max_pixels:
        raise ImageRejected("image_too_large", f"image is {width}x{height}; the limit is {max_pixels} pixels")
    if image.format == "JPEG":
        scale = min(1.0, target_size / max(width, height))
        image.draft("RGB", (math.ceil(width * scale), math.ceil(height * scale)))
    try:
        image.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        raise ImageRejected("bad_image", "image data is truncated or corrupt") from None
    image = _to_rgb(image)
    if max(image.size) > target_size:
        image.thumbnail((target_size, target_size), Image.Resampling.BILINEAR)
    return image


def _to_rgb(image: Image.Image) -> Image.Image:
    """Flatten transparency onto white, as a viewer would show it, then drop to plain RGB."""
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")
