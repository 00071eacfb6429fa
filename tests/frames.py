"""Frames as the page sends them, for tests and benchmarks alike."""

from __future__ import annotations

import base64
import io

from PIL import Image


def data_url(image: Image.Image, fmt: str = "JPEG", **save_options: object) -> str:
    """A frame as the page sends it: the encoded image as a Base64 data URL (``save_options`` go to Pillow)."""
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save_options)
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(buffer.getvalue()).decode()


def jpeg_data_url(color: str = "red", size: tuple[int, int] = (640, 480)) -> str:
    return data_url(Image.new("RGB", size, color))
