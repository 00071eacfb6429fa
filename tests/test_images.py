"""Safe decoding of untrusted frames: every bad payload is refused with a code, good ones shrink."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image, ImageFile

from tests.frames import data_url
from vlm.errors import VlmError
from vlm.images import decode_image

pytestmark = pytest.mark.unit

LIMITS = {"max_bytes": 1024 * 1024, "max_pixels": 4096 * 4096, "target_size": 256}


def test_jpeg_data_url_is_decoded_and_downscaled() -> None:
    decoded = decode_image(data_url(Image.new("RGB", (640, 480), "red")), **LIMITS)
    assert decoded.image.mode == "RGB"
    assert max(decoded.image.size) <= 256
    assert decoded.image.getpixel((10, 10))[0] > 200


def test_bare_base64_is_accepted_as_in_the_seed() -> None:
    decoded = decode_image(data_url(Image.new("RGB", (64, 48), "blue")).split(",", 1)[1], **LIMITS)
    assert decoded.image.size == (64, 48)


def test_base64_as_common_encoders_write_it_is_accepted() -> None:
    """``base64 FILE`` wraps at 76 columns with newlines; base64url and unpadded output are common too."""
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), "blue").save(buffer, format="JPEG")
    raw = buffer.getvalue()
    wrapped = base64.encodebytes(raw).decode()  # 76 columns, a newline after each line
    url_safe = base64.urlsafe_b64encode(raw).decode()
    assert "\n" in wrapped and ("-" in url_safe or "_" in url_safe)
    for payload in (wrapped, f"data:image/jpeg;base64,{wrapped}", url_safe, url_safe.rstrip("=")):
        decoded = decode_image(payload, **LIMITS)
        assert decoded.image.size == (64, 48) and decoded.digest == decode_image(data_url_of(raw), **LIMITS).digest


def data_url_of(raw: bytes) -> str:
    return f"data:image/jpeg;base64,{base64.b64encode(raw).decode()}"


def test_same_bytes_give_the_same_digest() -> None:
    payload = data_url(Image.new("RGB", (32, 32), "green"))
    assert decode_image(payload, **LIMITS).digest == decode_image(payload, **LIMITS).digest


@pytest.mark.parametrize(
    ("image", "fmt"),
    [
        (Image.new("RGBA", (40, 30), (255, 0, 0, 0)), "PNG"),
        (Image.new("L", (40, 30), 128), "PNG"),
        (Image.new("RGB", (40, 30), "yellow"), "WEBP"),
        (Image.new("P", (40, 30)), "PNG"),
    ],
)
def test_other_formats_and_modes_become_rgb(image: Image.Image, fmt: str) -> None:
    assert decode_image(data_url(image, fmt), **LIMITS).image.mode == "RGB"


def test_transparent_pixels_become_white() -> None:
    decoded = decode_image(data_url(Image.new("RGBA", (8, 8), (255, 0, 0, 0)), "PNG"), **LIMITS)
    assert decoded.image.getpixel((0, 0)) == (255, 255, 255)


def truncated_jpeg() -> str:
    raw = base64.b64decode(data_url(Image.effect_noise((256, 256), 64).convert("RGB")).split(",", 1)[1])
    return base64.b64encode(raw[: len(raw) // 2]).decode()


def bomb_png() -> str:
    image = Image.new("1", (20000, 20000))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        ("not base64 at all!!", "bad_image"),
        (base64.b64encode(b"hello, I am text").decode(), "bad_image"),
        ("data:text/plain;base64,aGVsbG8=", "bad_image"),
        ("", "bad_image"),
        (12345, "bad_image"),
        (None, "bad_image"),
        (truncated_jpeg(), "bad_image"),
        (bomb_png(), "image_too_large"),
        (data_url(Image.new("RGB", (8, 8)), "GIF"), "bad_image"),
        ("A" * (2 * 1024 * 1024), "image_too_large"),
    ],
    ids=[
        "not-base64",
        "not-an-image",
        "text-data-url",
        "empty",
        "number",
        "none",
        "truncated",
        "bomb",
        "gif",
        "oversized",
    ],
)
def test_bad_payloads_are_refused_with_a_code(payload: object, code: str) -> None:
    with pytest.raises(VlmError) as refused:
        decode_image(payload, **LIMITS)
    assert refused.value.code == code
    assert refused.value.message


def test_exif_orientation_is_applied() -> None:
    """A phone stores a portrait photo as landscape pixels plus an orientation tag; it must arrive upright."""
    landscape = Image.new("RGB", (64, 32), "red")
    exif = landscape.getexif()
    exif[0x0112] = 6  # rotate 90° clockwise to view
    buffer = io.BytesIO()
    landscape.save(buffer, format="JPEG", exif=exif.tobytes())
    decoded = decode_image("data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode(), **LIMITS)
    assert decoded.image.size == (32, 64)


def test_sixteen_bit_grey_keeps_its_level() -> None:
    """46 % grey in a 16-bit PNG is 46 % grey, not white (a plain convert clips every value above 255)."""
    import numpy

    grey = Image.fromarray(numpy.full((30, 40), 30147, dtype=numpy.uint16))
    assert grey.mode.startswith("I")
    red, green, blue = decode_image(data_url(grey, "PNG"), **LIMITS).image.getpixel((5, 5))
    assert red == green == blue and abs(red - 117) <= 1


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_a_decoded_frame_holds_only_its_own_pixels(fmt: str) -> None:
    """A queued job keeps its frame; a frame still tied to its opened file would keep the decoder too."""
    decoded = decode_image(
        data_url(Image.new("RGB", (2048, 1536), "blue"), fmt),
        max_bytes=10_000_000,
        max_pixels=50_000_000,
        target_size=512,
    )
    assert not isinstance(decoded.image, ImageFile.ImageFile)
    assert decoded.image.size == (512, 384)
