"""Real-browser tests: headless Debian Chromium with a fake camera, against the real app.

The app runs as a subprocess with the bundled demo model; for the skills the demo model lacks
(detect, point), a second one serves the tiny moondream2 stand-in of
scripts/build_remote_code_fixture.py through the moondream backend. Chromium's fake capture
device plays a y4m clip written here, so the page gets a genuine MediaStream. Failing tests
leave a screenshot in ``artifacts/``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, Playwright, sync_playwright

from tests.browser.fake_camera import Shot, write_y4m
from tests.moondream_like import MoondreamLike
from tests.server_process import REPO, AppProcess

CHROMIUM = Path(os.environ.get("VLM_CHROMIUM", "/usr/bin/chromium"))
ARTIFACTS = REPO / "artifacts"
TIMEOUT_MS = 15_000
DESKTOP = {"width": 1280, "height": 800}

# A red circle drawn on paper held up to the camera for the first seconds, then a blue triangle
# on a dark background for long enough.
SWITCH_CLIP = (Shot("circle", "red", 8, paper=True), Shot("triangle", "blue", 40))
# Everything else: a scene that changes every second, so a frozen frame is told apart from live.
CYCLE_CLIP = (
    Shot("square", "green", 1, paper=True),
    Shot("star", "yellow", 1),
    Shot("circle", "white", 1),
    Shot("triangle", "red", 1, paper=True),
)


FAILED = pytest.StashKey[bool]()


def chromium_args(clip: Path) -> list[str]:
    return [
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-video-capture={clip}",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
    ]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    """Every tab a test opened must have logged no errors: checked as part of the test, after its body ran."""
    result = yield
    messages = [message for problems in item.stash.get(PAGES, []) for message in problems.messages]
    assert not messages, "the page logged errors:\n" + "\n".join(messages)
    return result


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[pytest.TestReport]:
    report = yield
    if report.when == "call":
        item.stash[FAILED] = report.failed
    return report


@pytest.fixture(scope="session")
def playwright() -> Iterator[Playwright]:
    if os.environ.get("VLM_SKIP_BROWSER") == "1":
        pytest.skip("browser tests skipped because VLM_SKIP_BROWSER=1")
    if not CHROMIUM.is_file():
        pytest.fail(
            f"{CHROMIUM} is missing, so the browser tests cannot run. Install Debian's Chromium "
            "(`apt-get install chromium`), point VLM_CHROMIUM at a Chromium binary, or set "
            "VLM_SKIP_BROWSER=1 to skip them on purpose.",
            pytrace=False,
        )
    with sync_playwright() as instance:
        yield instance


@pytest.fixture(scope="session")
def server() -> Iterator[AppProcess]:
    with AppProcess(["--model", "demo"]) as app:
        yield app


@pytest.fixture(scope="session")
def moondream_server(moondream_like: MoondreamLike) -> Iterator[AppProcess]:
    """The app on a model with moondream2's API and skills, built here because moondream2 cannot be downloaded."""
    with AppProcess(
        ["--model", str(moondream_like.folder), "--backend", "moondream", "--max-new-tokens", "16"],
        env={"HF_HUB_CACHE": str(moondream_like.hub_cache)},
    ) as app:
        yield app


@pytest.fixture(scope="session")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("camera")
    return {
        "switch": write_y4m(folder / "switch.y4m", SWITCH_CLIP),
        "cycle": write_y4m(folder / "cycle.y4m", CYCLE_CLIP),
    }


def launch(playwright: Playwright, clip: Path) -> Browser:
    return playwright.chromium.launch(executable_path=str(CHROMIUM), args=chromium_args(clip))


@pytest.fixture(scope="session")
def browser(playwright: Playwright, clips: dict[str, Path]) -> Iterator[Browser]:
    shared = launch(playwright, clips["cycle"])
    yield shared
    shared.close()


@pytest.fixture
def switch_browser(playwright: Playwright, clips: dict[str, Path]) -> Iterator[Browser]:
    """A browser of its own, so the clip starts from its first frame when the page opens the camera."""
    fresh = launch(playwright, clips["switch"])
    yield fresh
    fresh.close()


class PageProblems:
    """Uncaught exceptions and console errors (CSP violations and failed loads log there) of a tab that ``item``
    opened; ``pytest_runtest_call`` fails the test if there are any."""

    def __init__(self, item: pytest.Item, page: Page) -> None:
        self.messages: list[str] = []
        page.on("pageerror", lambda error: self.messages.append(f"uncaught: {error}"))
        page.on("console", lambda msg: msg.type == "error" and self.messages.append(f"console: {msg.text}"))
        item.stash.setdefault(PAGES, []).append(self)


PAGES = pytest.StashKey[list[PageProblems]]()


def wait_until_ready(page: Page) -> None:
    """Camera streaming, model info loaded and Socket.IO connected."""
    page.wait_for_selector("html[data-camera=ready][data-info=loaded] #status[data-state=connected]", state="attached")


OpenApp = Callable[..., Page]


@pytest.fixture
def open_app(request: pytest.FixtureRequest, browser: Browser, server: AppProcess) -> Iterator[OpenApp]:
    """Opens the app in a fresh tab (its own browser context), whose errors fail the test (``PageProblems``).

    ``open_app(path="/", ready=True, url=server.url, browser=shared, init_script=None, **context_options)``
    """
    opened: list[Page] = []

    def open_(
        path: str = "/",
        *,
        ready: bool = True,
        url: str | None = None,
        browser: Browser = browser,
        init_script: str | None = None,
        **context_options: object,
    ) -> Page:
        context = browser.new_context(**{"viewport": DESKTOP, **context_options})
        context.set_default_timeout(TIMEOUT_MS)
        context.grant_permissions(["clipboard-read", "clipboard-write"])
        if init_script:
            context.add_init_script(init_script)
        tab = context.new_page()
        PageProblems(request.node, tab)
        opened.append(tab)
        tab.goto((url or server.url) + path)
        if ready:
            wait_until_ready(tab)
        return tab

    yield open_
    failed = request.node.stash.get(FAILED, False)
    for number, tab in enumerate(opened):
        if failed and not tab.is_closed():  # a test may close a tab itself
            ARTIFACTS.mkdir(exist_ok=True)
            tab.screenshot(path=ARTIFACTS / f"failed-{request.node.name}-{number}.png")
        tab.context.close()


@pytest.fixture
def page(open_app: OpenApp) -> Page:
    """A fresh tab on the app, ready to ask."""
    return open_app()
