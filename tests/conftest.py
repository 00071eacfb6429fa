"""Shared fixtures: offline model folders built once per session, a frame to ask about, a client.

Tests are marked by what they need (see pyproject's markers): a module marks itself ``unit``;
everything else is marked ``process``, or ``browser`` under tests/browser, here. A module that
shares one app process among its tests says how to start it with ``pytest.mark.app`` (see ``app``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.frames import jpeg_data_url
from tests.in_process import IN_PROCESS_TOKEN
from tests.moondream_like import MoondreamLike
from tests.server_process import AppProcess, serving
from tests.socket_client import RecordingClient

if TYPE_CHECKING:
    from vlm.web import WebApp

# Every app process a test starts computes on one thread (a benchmark's keep torch's default). Two xdist workers'
# servers on a two-core machine otherwise spin their thread pools against each other: a drain test's 150 tokens
# of the slow model, 1.5 s alone, took 26 s and then more than 30.
os.environ.setdefault("OMP_NUM_THREADS", "1")


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


@pytest.fixture(scope="session")
def moondream_like(tmp_path_factory: pytest.TempPathFactory) -> MoondreamLike:
    from scripts.build_remote_code_fixture import build_remote_code_fixture

    hub_cache = tmp_path_factory.mktemp("hub-cache")
    return MoondreamLike(build_remote_code_fixture(tmp_path_factory.mktemp("moondream-like"), hub_cache), hub_cache)


@pytest.fixture(scope="session")
def frame() -> str:
    return jpeg_data_url()


MODEL_FIXTURES = {"tiny": "tiny_model", "slow": "slow_model"}


@pytest.fixture(scope="module")
def app(request: pytest.FixtureRequest) -> Iterator[AppProcess]:
    """The app process a module's tests share, started as the module's ``pytest.mark.app`` says.

    ``pytestmark = pytest.mark.app("tiny", "--rate-limit", "5", max_new_tokens=4, token=TOKEN)`` serves
    the ``tiny_model`` fixture's folder ("slow": ``slow_model``; any other name, e.g. "demo", as given)
    with those flags and ``serving``'s keywords, so one fixture starts every module's server.
    """
    marker = request.node.get_closest_marker("app")
    if marker is None or not marker.args:
        raise pytest.UsageError(f"{request.node.nodeid} uses the app fixture without pytest.mark.app(MODEL, ...)")
    name, *flags = marker.args
    model = request.getfixturevalue(MODEL_FIXTURES[name]) if name in MODEL_FIXTURES else name
    with serving(model, *flags, **marker.kwargs) as running:
        yield running


@pytest.fixture
def client(app: AppProcess) -> Iterator[RecordingClient]:
    """A connected Socket.IO client of the module's ``app`` fixture (the server under test there)."""
    connected = RecordingClient(app.url)
    yield connected
    connected.close()


@pytest.fixture
def unloaded_app() -> WebApp:
    """The app in process, as app.py creates it, while its model is still loading; ``IN_PROCESS_TOKEN`` opens it."""
    from vlm.config import Settings
    from vlm.web import create_app

    return create_app(Settings(token=IN_PROCESS_TOKEN, batch_window_ms=0))


@pytest.fixture
def served_app(unloaded_app: WebApp) -> WebApp:
    """The app in process with its model installed as app.py installs one (``WebApp.install_model``: metered,
    queued as the settings say), a ``ScriptedBackendDouble`` for the model."""
    from tests.doubles import ScriptedBackendDouble

    unloaded_app.install_model(ScriptedBackendDouble())
    return unloaded_app


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("unit") or item.get_closest_marker("process"):
            continue
        item.add_marker(pytest.mark.browser if "browser" in item.path.parent.parts else pytest.mark.process)


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """``-m unit`` skips importing the other test modules: several import transformers, about 12 s each time."""
    if config.getoption("markexpr") != "unit" or collection_path.suffix != ".py":
        return None
    if collection_path.name == "conftest.py":
        return None
    return "pytest.mark.unit" not in collection_path.read_text()
