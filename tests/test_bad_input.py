"""The README's bad-input table, row by row, against the running server.

Every row gets a ``query_error`` (on ``response`` for a payload without an id) to the sender
only, with a clear code, and the server then answers a normal query. A bystander client stays
connected throughout and hears nothing.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator

import pytest
from PIL import Image

from tests.frames import data_url
from tests.server_process import AppProcess
from tests.socket_client import RecordingClient

MAX_IMAGE_BYTES = 256 * 1024


def truncated_jpeg() -> str:
    raw = base64.b64decode(data_url(Image.effect_noise((320, 240), 50).convert("RGB"), "JPEG").split(",")[1])
    return "data:image/jpeg;base64," + base64.b64encode(raw[: len(raw) // 3]).decode()


def bomb() -> str:
    return data_url(Image.new("1", (30000, 30000)), "PNG", optimize=True)


GOOD = data_url(Image.new("RGB", (320, 240), "red"), "JPEG")

REFUSED = {
    "not base64": ({"question": "q", "image": "data:image/jpeg;base64,%%%%"}, "bad_image"),
    "base64 of text": ({"question": "q", "image": base64.b64encode(b"plain text").decode()}, "bad_image"),
    "truncated jpeg": ({"question": "q", "image": truncated_jpeg()}, "bad_image"),
    "gif": ({"question": "q", "image": data_url(Image.new("RGB", (8, 8)), "GIF")}, "bad_image"),
    "decompression bomb": ({"question": "q", "image": bomb()}, "image_too_large"),
    "over size limit": (
        {"question": "q", "image": "data:image/jpeg;base64," + "A" * (MAX_IMAGE_BYTES * 3 // 2)},
        "image_too_large",
    ),
    "empty question": ({"question": "", "image": GOOD}, "empty_question"),
    "whitespace question": ({"question": " \n\t ", "image": GOOD}, "empty_question"),
    "over-long question": ({"question": "why " * 300, "image": GOOD}, "question_too_long"),
    "image is a number": ({"question": "q", "image": 42}, "bad_image"),
    "missing image": ({"question": "q"}, "bad_request"),
    "missing question": ({"image": GOOD}, "bad_request"),
    "question is a list": ({"question": ["q"], "image": GOOD}, "bad_request"),
    "non-UTF-8 text": ({"question": "caf\udce9", "image": GOOD}, "bad_request"),
    "payload is a string": ("what is this?", "bad_request"),
    "payload is a list": (["q", GOOD], "bad_request"),
}

ACCEPTED = {
    "png": data_url(Image.new("RGB", (64, 48), "blue"), "PNG"),
    "webp": data_url(Image.new("RGB", (64, 48), "green"), "WEBP"),
    "grey": data_url(Image.new("L", (64, 48), 100), "PNG"),
    "alpha": data_url(Image.new("RGBA", (64, 48), (255, 0, 0, 128)), "PNG"),
    # Base64 as `base64 FILE` prints it (76 columns, newlines), and as base64url without padding.
    "wrapped base64": base64.encodebytes(base64.b64decode(GOOD.split(",", 1)[1])).decode(),
    "base64url": base64.urlsafe_b64encode(base64.b64decode(GOOD.split(",", 1)[1])).decode().rstrip("="),
}


LIMITS = ("--max-image-bytes", str(MAX_IMAGE_BYTES), "--max-question-chars", "500", "--rate-limit", "5")
pytestmark = pytest.mark.app("tiny", *LIMITS, max_new_tokens=4)


@pytest.fixture(scope="module")
def bystander(app: AppProcess) -> Iterator[RecordingClient]:
    """A client connected through every test here; each test checks that nothing of its reached it."""
    client = RecordingClient(app.url)
    yield client
    client.close()


@pytest.mark.parametrize("case", list(REFUSED))
def test_refused_with_code_then_served(app: AppProcess, bystander: RecordingClient, case: str) -> None:
    payload, code = REFUSED[case]
    client = RecordingClient(app.url)
    try:
        # A payload that can carry an id carries one; a string or list cannot, so its error comes on `response`
        # the way clients that send no id hear every outcome (tests/test_clients.py).
        client.sio.emit("query", {"id": case, **payload} if isinstance(payload, dict) else payload)
        kind, reply = client.final(None, timeout_s=20)
        error = reply if isinstance(payload, dict) else reply["error"]
        assert (kind, error["code"]) == ("query_error" if isinstance(payload, dict) else "response", code)
        assert error["message"]
        assert client.ask({"id": "after", "question": "what is this?", "image": GOOD})[0] == "response"
    finally:
        client.close()
    assert bystander.received == [], "nothing leaked to another client"


@pytest.mark.parametrize("case", list(ACCEPTED))
def test_other_formats_are_converted(app: AppProcess, bystander: RecordingClient, case: str) -> None:
    client = RecordingClient(app.url)
    try:
        assert client.ask({"id": case, "question": "what?", "image": ACCEPTED[case], "extra": True})[0] == "response"
    finally:
        client.close()
    assert bystander.received == [], "nothing leaked to another client"


def test_transport_limit_disconnects_only_the_offender(app: AppProcess, bystander: RecordingClient) -> None:
    offender = RecordingClient(app.url)
    offender.sio.emit("query", {"question": "q", "image": "A" * (MAX_IMAGE_BYTES * 4)})
    time.sleep(1.0)
    assert not offender.sio.connected
    survivor = RecordingClient(app.url)
    try:
        assert survivor.ask({"id": "still", "question": "q", "image": GOOD})[0] == "response"
    finally:
        survivor.close()
    assert bystander.received == [], "nothing leaked to another client"


def test_flood_is_rate_limited_per_client(app: AppProcess, bystander: RecordingClient) -> None:
    flooder, other = RecordingClient(app.url), RecordingClient(app.url)
    try:
        for index in range(60):
            flooder.sio.emit("query", {"id": f"f{index}", "question": "q", "image": GOOD})
        codes = [flooder.final(f"f{index}")[1].get("code") for index in range(60)]
        assert codes.count("rate_limited") >= 30
        assert other.ask({"id": "calm", "question": "q", "image": GOOD})[0] == "response"
    finally:
        flooder.close()
        other.close()
    assert bystander.received == [], "nothing leaked to another client"
