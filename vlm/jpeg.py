"""Pictures out as JPEG: alert thumbnails and webhooks, camera previews, frames sent to a model server."""

from __future__ import annotations

import base64
import io

from PIL import Image


def jpeg_bytes(image: Image.Image, max_side: int | None = None, quality: int = 80) -> bytes:
    if max_side is not None and max(image.size) > max_side:
        image = image.copy()
        image.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def jpeg_base64(image: Image.Image, max_side: int | None = None, quality: int = 80) -> str:
    return base64.b64encode(jpeg_bytes(image, max_side, quality)).decode("ascii")


def jpeg_data_url(image: Image.Image, max_side: int | None = None, quality: int = 80) -> str:
    return "data:image/jpeg;base64," + jpeg_base64(image, max_side, quality)
