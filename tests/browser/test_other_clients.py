"""Pages nobody on this project wrote, in real Chromium: one written like the original project's.

``pages/seed_page.html`` behaves as the original page did (no ids, listens only for
``response``). It is served from the app's own origin by intercepting that one URL, and from
a second loopback web server, an extra origin allowed with ``--cors-origin``.

A page fulfilled by interception has no server address, so Chromium's Local Network Access
check counts it as public and blocks its WebSocket to loopback (Socket.IO then stays on
polling and logs an error). A page the app really served is loopback itself, so the browser
for the intercepted page runs with that check off; the second server needs no such help.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, Playwright, expect

from tests.browser.conftest import CHROMIUM, TIMEOUT_MS, OpenApp, PageProblems, chromium_args
from tests.server_process import AppProcess, free_port

SEED_PAGE = Path(__file__).parent / "pages" / "seed_page.html"
MAX_QUESTION = 60

OpenSeedPage = Callable[[str], Page]


@pytest.fixture(scope="module")
def other_origin_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def seed_html(widened_server: AppProcess) -> str:
    return SEED_PAGE.read_text().replace("__SERVER__", widened_server.url)


@pytest.fixture(scope="module")
def loopback_browser(playwright: Playwright, clips: dict[str, Path]) -> Iterator[Browser]:
    """Treats an intercepted page as the loopback page it stands in for (see the module docstring)."""
    args = [*chromium_args(clips["cycle"]), "--disable-features=LocalNetworkAccessChecks"]
    launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=args)
    yield launched
    launched.close()


@pytest.fixture(scope="module")
def other_origin(seed_html: str, other_origin_port: int) -> Iterator[str]:
    """A second web server on loopback that serves the seed-style page, as a site embedding the app would."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = seed_html.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    with ThreadingHTTPServer(("127.0.0.1", other_origin_port), Handler) as httpd:
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        yield f"http://127.0.0.1:{httpd.server_port}"
        httpd.shutdown()


@pytest.fixture(scope="module")
def widened_server(other_origin_port: int) -> Iterator[AppProcess]:
    args = [
        "--model",
        "demo",
        "--max-question-chars",
        str(MAX_QUESTION),
        "--cors-origin",
        f"http://127.0.0.1:{other_origin_port}",
    ]
    with AppProcess(args) as app:
        yield app


@pytest.fixture
def open_seed_page(
    request: pytest.FixtureRequest,
    browser: Browser,
    loopback_browser: Browser,
    seed_html: str,
    widened_server: AppProcess,
) -> Iterator[OpenSeedPage]:
    """Opens the seed-style page at ``origin`` + /seed.html, talking to the widened server, once its camera runs;
    its errors fail the test."""
    opened: list[Page] = []

    def open_(origin: str) -> Page:
        own = origin == widened_server.url
        context = (loopback_browser if own else browser).new_context()
        context.set_default_timeout(TIMEOUT_MS)
        if own:
            context.route(f"{origin}/seed.html", lambda route: route.fulfill(body=seed_html, content_type="text/html"))
        tab = context.new_page()
        PageProblems(request.node, tab)
        opened.append(tab)
        tab.goto(f"{origin}/seed.html")
        expect(tab.locator("#status")).to_have_text("Connected")
        # Until the camera's metadata arrives the page grabs its blank 300x150 canvas, as the original did.
        tab.wait_for_function("document.getElementById('cam').videoWidth > 0")
        return tab

    yield open_
    for tab in opened:
        tab.context.close()


def ask_like_the_original(page: Page, question: str) -> str:
    """Types, clicks Ask, and returns the answer once the page has put its button back."""
    page.fill("#question", question)
    page.click("#ask")
    expect(page.locator("#answer")).not_to_contain_text("Working on it")
    expect(page.locator("#ask")).to_be_enabled()
    expect(page.locator("#ask")).to_have_text("Ask")
    return page.locator("#answer").inner_text()


def test_a_page_written_like_the_original_gets_answers_and_errors(
    open_seed_page: OpenSeedPage, widened_server: AppProcess
) -> None:
    page = open_seed_page(widened_server.url)
    first = ask_like_the_original(page, "what shape is this?")
    assert first and not first.startswith("Sorry"), first
    refused = ask_like_the_original(page, "x" * (MAX_QUESTION + 1))
    assert refused.startswith("Sorry, an error occurred: question is longer than"), refused
    after = ask_like_the_original(page, "what color is this?")
    assert after and not after.startswith("Sorry"), after


def test_cors_origin_lets_the_extra_origin_in_and_keeps_the_own_page_working(
    open_app: OpenApp, open_seed_page: OpenSeedPage, widened_server: AppProcess, other_origin: str
) -> None:
    own = open_app(url=widened_server.url)
    own.fill("#question", "what shape is this?")
    own.press("#question", "Enter")
    expect(own.locator("#history > li").first).to_have_attribute("data-state", "done")
    elsewhere = open_seed_page(other_origin)
    answer = ask_like_the_original(elsewhere, "what is this?")
    assert answer and not answer.startswith("Sorry"), answer
    fetched = elsewhere.evaluate(
        """async (url) => {
            const reply = await fetch(`${url}/v1/chat/completions`, {
                method: 'POST',
                headers: {'Content-Type': 'application/json', 'Authorization': 'Bearer any'},
                body: JSON.stringify({messages: [{role: 'user', content: 'hello'}], max_tokens: 2}),
            });
            return [reply.status, (await reply.json()).object];
        }""",
        widened_server.url,
    )
    assert fetched == [200, "chat.completion"], "its page may call /v1 too, through the browser's preflight"
