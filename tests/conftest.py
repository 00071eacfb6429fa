"""Shared fixtures: offline model folders built once per session, a frame to ask about, a client."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from tests.server_process import AppProcess
from tests.socket_client import RecordingClient


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight LLaVA: real architecture, real processor, meaningless but deterministic answers."""
    from scripts.build_tiny_model import build_tiny_model  # torch + transformers: only when a test needs a model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-llava"), arch="llava", profile="tiny")


@pytest.fixture(scope="session")
def slow_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bigger random LLaVA that never emits EOS, so a generation lasts as long as its token budget."""
    from scripts.build_tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("slow-llava"), arch="llava", profile="slow")


def data_url(image: Image.Image, fmt: str = "JPEG") -> str:
    """A frame as the page sends it: the encoded image as a Base64 data URL."""
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(buffer.getvalue()).decode()


def jpeg_data_url(color: str = "red", size: tuple[int, int] = (640, 480)) -> str:
    return data_url(Image.new("RGB", size, color))


@pytest.fixture(scope="session")
def frame() -> str:
    return jpeg_data_url()


@pytest.fixture
def client(app: AppProcess) -> Iterator[RecordingClient]:
    """A connected Socket.IO client of the module's ``app`` fixture (the server under test there)."""
    connected = RecordingClient(app.url)
    yield connected
    connected.close()
