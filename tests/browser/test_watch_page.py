"""Watch mode in the page, in real Chromium against the real app and the demo model.

The fake camera shows a red circle for five seconds, then a blue triangle; a watch for
"is there a triangle?" must say no, then raise exactly one alert: the banner, the sound,
a notification and an alert-log entry whose thumbnail is the triangle. The app also plays
a video file as a server-side camera, which the page offers, previews and watches.
"""

from __future__ import annotations

import base64
import io
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image
from playwright.sync_api import Browser, Page, expect

from tests.browser.conftest import DESKTOP, TIMEOUT_MS, OpenApp
from tests.browser.fake_camera import Shot
from tests.browser.test_page import save_screenshot
from tests.server_process import AppProcess
from tests.video_clips import write_clip

CONDITION = "is there a triangle?"


@pytest.fixture(scope="module")
def source_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppProcess]:
    clip = write_clip(
        tmp_path_factory.mktemp("server-camera") / "yard.mp4", (Shot("circle", "red", 1), Shot("triangle", "blue", 60))
    )
    with AppProcess(["--model", "demo", "--source", str(clip)]) as app:
        yield app


def stats(page: Page) -> dict:
    return page.evaluate("() => ({...window.__vlmWatchStats})")


def thumbnail_centre(page: Page, selector: str) -> tuple[int, int, int]:
    src = page.locator(selector).get_attribute("src") or ""
    image = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).convert("RGB")
    return image.getpixel((image.width // 2, image.height // 2))


def test_a_watch_on_the_camera_alerts_once_when_the_triangle_appears(
    switch_browser: Browser, open_app: OpenApp, source_server: AppProcess
) -> None:
    page = open_app(browser=switch_browser, url=source_server.url)
    page.context.grant_permissions(["notifications"])
    page.fill("#watch-condition", CONDITION)
    page.click("#watch-add")
    watch = page.locator("#watch-list > li")
    expect(watch).to_have_count(1)
    expect(watch.locator(".watch-condition")).to_have_text(CONDITION)
    expect(watch).to_have_attribute("data-verdict", "no")
    # A frozen stage (Snapshot) keeps the frame before the triangle; the watch still watches the camera.
    page.click("#snapshot")
    expect(page.locator("#snapshot")).to_have_attribute("aria-pressed", "true")

    banner = page.locator("#alert-banner")
    expect(banner).to_be_visible(timeout=20_000)
    expect(banner).to_contain_text(CONDITION)
    page.click("#snapshot")  # back to the moving camera, which the alert was about
    expect(watch).to_have_attribute("data-on", "true")
    log = page.locator("#alert-log > li")
    expect(log).to_have_count(1)
    expect(log.first.locator(".alert-condition")).to_have_text(CONDITION)
    red, _, blue = thumbnail_centre(page, "#alert-log > li img.thumb")
    assert blue > 150 and red < 110, "the alert's thumbnail is not the triangle"
    page.locator("#watch-panel").scroll_into_view_if_needed()
    save_screenshot(page, "page-watch.png", docs_name="screenshot-watch.png")

    page.wait_for_function("() => window.__vlmWatchStats.verdicts.length >= 6")
    seen = stats(page)
    assert seen["verdicts"][0] == "no" and "yes" in seen["verdicts"]
    assert seen["alerts"] == 1 and seen["beeps"] == 1 and seen["notifications"] == 1, seen
    assert seen["maxInFlight"] == 1, "more than one frame in flight"

    watch.locator(".watch-pause").click()
    expect(watch).to_have_attribute("data-paused", "true")
    expect(watch.locator(".watch-verdict")).to_have_text("paused")
    page.wait_for_timeout(500)
    paused_at = stats(page)["framesSent"]
    page.wait_for_timeout(1000)
    assert stats(page)["framesSent"] == paused_at, "a paused watch kept the page sending frames"
    watch.locator(".watch-remove").click()
    expect(watch).to_have_count(0)
    page.locator("#alert-banner-close").click()
    expect(banner).to_be_hidden()


def test_the_page_offers_previews_and_watches_a_server_camera(open_app: OpenApp, source_server: AppProcess) -> None:
    page = open_app(url=source_server.url)
    option = page.locator("#watch-source option[value=cam1]")
    expect(option).to_have_text("Server: yard.mp4 (cam1)")
    page.select_option("#watch-source", "cam1")
    preview = page.locator("#watch-preview")
    expect(preview).to_be_visible()
    page.wait_for_function("() => document.getElementById('watch-preview').naturalWidth > 0")
    page.fill("#watch-condition", CONDITION)
    page.click("#watch-add")
    watch = page.locator("#watch-list > li")
    expect(watch.locator(".watch-source")).to_have_text("cam1")
    expect(page.locator("#alert-log > li")).to_have_count(1, timeout=20_000)
    expect(page.locator("#alert-log > li .alert-time")).to_contain_text("yard.mp4")
    assert stats(page)["framesSent"] == 0, "a server camera's watch needs no frames from the page"


def test_a_watch_on_a_server_camera_that_ended_says_so(open_app: OpenApp, tmp_path: Path) -> None:
    """It kept showing its last verdict, or 'checking…' for good, as if the camera were still there."""
    clip = write_clip(tmp_path / "short.mp4", (Shot("circle", "red", 2),))
    with AppProcess(["--model", "demo", "--source", str(clip)]) as app:
        page = open_app(url=app.url)
        page.select_option("#watch-source", "cam1")
        page.fill("#watch-condition", CONDITION)
        page.click("#watch-add")
        watch = page.locator("#watch-list > li")
        expect(watch.locator(".watch-verdict")).to_have_text("camera ended", timeout=30_000)
        expect(watch).to_have_attribute("data-source-state", "ended")


@contextmanager
def upstream_that_loads_slowly() -> Iterator[tuple[str, threading.Event]]:
    """An OpenAI-compatible upstream whose model list waits until released: the app, which lists it at start
    (``--backend openai``), stays loading until then, as it does while moondream2 downloads."""
    release = threading.Event()

    class Models(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            release.wait(60)
            body = json.dumps({"object": "list", "data": [{"id": "stand-in", "object": "model"}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Models)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1", release
    finally:
        release.set()
        server.shutdown()
        server.server_close()


def test_a_page_opened_while_the_model_loads_waits_for_it(browser: Browser, tmp_path: Path) -> None:
    """It once gave up at the first 503: 'Could not load the model info', the demo's guide and frame size
    never came, and the server cameras that start with the model were never offered."""
    clip = write_clip(tmp_path / "yard.mp4", (Shot("circle", "red", 30),))
    with upstream_that_loads_slowly() as (upstream, release):
        flags = ["--backend", "openai", "--base-url", upstream, "--model", "stand-in", "--source", str(clip)]
        with AppProcess(flags, loaded=False) as app:
            context = browser.new_context(viewport=DESKTOP)
            context.set_default_timeout(TIMEOUT_MS)
            try:
                page = context.new_page()
                page.goto(app.url)
                expect(page.locator("html")).to_have_attribute("data-info", "loading")
                release.set()
                expect(page.locator("html")).to_have_attribute("data-info", "loaded")
                expect(page.locator("#model-info")).to_contain_text("stand-in")
                expect(page.locator("#watch-source option[value=cam1]")).to_have_count(1)
                assert page.locator("#error").is_hidden(), page.locator("#error").inner_text()
            finally:
                context.close()


def test_a_watch_outlives_a_server_restart_that_loads_its_model_again(browser: Browser) -> None:
    """The reconnected page asked the server to take its watches back while the model was still loading, was
    refused, and dropped them for good. It now keeps each listed as waiting, asks again until the model is
    loaded, and keeps it paused if it was; one removed while it waits is asked for no more (it once was, and the
    server ran a watch the page no longer listed)."""
    context = browser.new_context(viewport=DESKTOP)  # by hand: refused reconnects log console errors
    context.set_default_timeout(TIMEOUT_MS)
    watch = "#watch-list > li"
    try:
        page = context.new_page()
        with AppProcess(["--model", "demo"]) as first:
            page.goto(first.url)
            expect(page.locator("html")).to_have_attribute("data-info", "loaded")
            page.fill("#watch-condition", CONDITION)
            page.click("#watch-add")
            expect(page.locator(watch)).to_have_count(1)
            old_id = page.locator(watch).get_attribute("data-id")
            page.click(f"{watch} .watch-pause")
            expect(page.locator(f"{watch} .watch-pause")).to_have_text("Resume")
            page.fill("#watch-condition", "is there a star?")
            page.click("#watch-add")
            expect(page.locator(watch)).to_have_count(2)
            page.evaluate("""() => {
                const socket = window.vlmPage.socket;
                const emit = socket.emit.bind(socket);
                window.watchAdds = [];
                socket.emit = (event, payload, ...rest) => {
                    if (event === 'watch_add') window.watchAdds.push(payload.condition);
                    return emit(event, payload, ...rest);
                };
            }""")
        with upstream_that_loads_slowly() as (upstream, release):
            flags = ["--backend", "openai", "--base-url", upstream, "--model", "stand-in"]
            with AppProcess(flags, port=first.port, loaded=False):
                expect(page.locator("#status")).to_have_attribute("data-state", "connected", timeout=30_000)
                expect(page.locator(f"{watch} .watch-verdict")).to_have_text(["waiting for the server…"] * 2)
                page.wait_for_timeout(2500)  # at least one refused try ("loading")
                page.click(f"{watch}:nth-child(2) .watch-remove")
                expect(page.locator(watch)).to_have_count(1)
                asked_before = page.evaluate("() => window.watchAdds.length")
                page.wait_for_timeout(2500)  # the removed one's next try would have come by now
                release.set()
                expect(page.locator(watch)).not_to_have_attribute("data-id", old_id or "", timeout=30_000)
                expect(page.locator(watch)).to_have_count(1)
                expect(page.locator(f"{watch} .watch-condition")).to_have_text(CONDITION)
                expect(page.locator(f"{watch} .watch-verdict")).to_have_text("paused")
                expect(page.locator(f"{watch} .watch-pause")).to_have_text("Resume")
                asked = page.evaluate("() => window.watchAdds")
                assert "is there a star?" not in asked[asked_before:], asked
    finally:
        context.close()


def test_a_watch_the_server_will_not_take_back_says_why_and_is_not_asked_for_again(open_app: OpenApp) -> None:
    """``busy`` is the server's word for its caps on watches (per tab, per address, in all), which waiting does not
    lift: a reconnected page that met one asked again every 2 s, for ever, showing nothing."""
    page = open_app()
    page.fill("#watch-condition", CONDITION)
    page.click("#watch-add")
    watch = page.locator("#watch-list > li")
    expect(watch).to_have_count(1)
    page.evaluate("""() => {
        const socket = window.vlmPage.socket;
        const emit = socket.emit.bind(socket);
        window.watchAdds = 0;
        socket.emit = (event, payload, ack) => {
            if (event !== 'watch_add') return emit(event, payload, ack);
            window.watchAdds += 1;  // refused as the server refuses a watch over its caps
            ack({ error: { code: 'busy', message: 'one address can keep at most 8 watches' } });
            return socket;
        };
        socket.disconnect();
        socket.connect();
    }""")
    expect(watch.locator(".watch-verdict")).to_have_text("stopped")
    expect(watch.locator(".watch-answer")).to_have_text("one address can keep at most 8 watches")
    expect(page.locator("#error")).to_contain_text("Could not restart the watch")
    page.wait_for_timeout(4500)
    assert page.evaluate("() => window.watchAdds") == 1
