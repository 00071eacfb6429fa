"""The page at its edges, in real Chromium: live mode at full speed against the server's rate limit,
Stop with half an answer, tiny answers, the token page, a server that goes away, and an accessibility scan.

The scan uses axe-core (MPL-2.0), a test-only tool that `.ci/run` and the README fetch with npm
into the git-ignored ``tests/browser/.axe``; it is never served by the app.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from playwright.sync_api import Browser, Page, Route, expect

from tests.browser.conftest import DESKTOP, TIMEOUT_MS, OpenApp, wait_until_ready
from tests.calls_by_hand import hold_the_model, let_go
from tests.frames import jpeg_data_url
from tests.missing_tools import tool_missing
from tests.server_process import AppProcess

AXE = Path(__file__).parent / ".axe" / "node_modules" / "axe-core" / "axe.min.js"
RATE_LIMIT = 4
TOKEN = "edge-token"


@pytest.fixture(scope="module")
def axe_source() -> str:
    if not AXE.is_file():
        tool_missing(
            f"axe-core ({AXE}), which the accessibility scan runs,",
            "fetch it with `npm install --no-save --no-package-lock --prefix tests/browser/.axe axe-core@4.14.1` "
            "(npm: `apt-get install npm`)",
            "VLM_SKIP_AXE",
        )
    return AXE.read_text()


def axe_violations(page: Page, axe_source: str) -> list[str]:
    """axe-core's WCAG 2.x A/AA and best-practice rules over the whole page, one line per violation."""
    page.evaluate(axe_source)  # through DevTools, so the page's CSP (no inline script) stays as it is
    found = page.evaluate("""async () => (await axe.run(document)).violations
        .map((v) => `${v.id} (${v.impact}): ${v.help} @ ${v.nodes.map((n) => n.target.join(' ')).join(', ')}`)""")
    return list(found)


def test_page_has_no_accessibility_violations(open_app: OpenApp, axe_source: str) -> None:
    page = open_app()
    assert axe_violations(page, axe_source) == []
    page.fill("#question", "what shape is this?")
    page.press("#question", "Enter")
    expect(page.locator("#history > li").first).to_have_attribute("data-state", "done")
    page.click("#live-toggle")
    expect(page.locator("#live-panel")).to_be_visible()
    page.click("#live-toggle")
    assert axe_violations(page, axe_source) == [], "with an answer, history and the live panel showing"
    assert page.locator("#video").get_attribute("aria-label")


@pytest.fixture(scope="module")
def token_server() -> Iterator[AppProcess]:
    with AppProcess(["--model", "demo", "--token", TOKEN]) as app:
        yield app


def test_the_two_clear_buttons_say_what_they_clear(open_app: OpenApp) -> None:
    page = open_app()
    page.fill("#question", "what shape is this?")
    page.press("#question", "Enter")
    expect(page.locator("#history > li")).to_have_count(1)
    expect(page.get_by_role("button", name="Clear alerts", exact=True)).to_be_visible()
    page.get_by_role("button", name="Clear history", exact=True).click()
    expect(page.locator("#history > li")).to_have_count(0)


def test_a_page_left_open_keeps_its_lists_bounded(open_app: OpenApp) -> None:
    """A bench camera's tab stays open for days: its history keeps the newest 200 questions and its alert log the
    newest 100 alerts (as the server's feed does), where both once grew by a thumbnail each for good."""
    page = open_app()
    page.evaluate("""() => {
        const form = document.getElementById('ask-form');
        const question = document.getElementById('question');
        for (let i = 0; i < 205; i += 1) {
            question.value = `question ${i}`;
            form.requestSubmit();
        }
    }""")
    expect(page.locator("#history > li")).to_have_count(200)
    expect(page.locator("#history > li").first.locator(".question")).to_have_text("question 204")
    expect(page.locator("#history > li").last.locator(".question")).to_have_text("question 5")
    page.evaluate("""() => {
        const deliver = window.vlmPage.socket.listeners('watch_alert')[0];
        for (let i = 0; i < 130; i += 1) {
            deliver({ condition: `alert ${i}`, answer: 'yes', time: Date.now() / 1000, watch: 'w1',
                      source: { id: 'tab', label: 'this camera' },
                      thumbnail: 'data:image/gif;base64,R0lGODlhAQABAAAAACw=' });
        }
    }""")
    expect(page.locator("#alert-log > li")).to_have_count(100)
    expect(page.locator("#alert-log > li").first.locator(".alert-condition")).to_have_text("alert 129")
    expect(page.locator("#alert-log > li").last.locator(".alert-condition")).to_have_text("alert 30")


def test_without_the_token_the_page_says_how_to_get_the_link(
    browser: Browser, token_server: AppProcess, axe_source: str
) -> None:
    context = browser.new_context(viewport=DESKTOP)
    try:
        page = context.new_page()
        response = page.goto(token_server.url)
        assert response is not None and response.status == 401
        notice = page.locator("[data-testid=unauthorized]")
        expect(notice).to_contain_text("?token=")
        expect(notice).to_contain_text("console")
        assert page.evaluate("getComputedStyle(document.body).backgroundColor") != "rgba(0, 0, 0, 0)", "styled"
        assert axe_violations(page, axe_source) == []
    finally:
        context.close()


def test_a_page_whose_origin_the_server_refuses_says_why(browser: Browser, server: AppProcess) -> None:
    """Behind Apache, which sends no X-Forwarded-Proto, the real https page was refused as another site's, and the
    page only ever said "Reconnecting…". Here its Socket.IO requests reach the server with another Origin, as the
    server sees them behind such a proxy (sent by Playwright's own client: a browser keeps its Origin)."""
    context = browser.new_context(viewport=DESKTOP)  # by hand: refused connections log console errors
    context.set_default_timeout(TIMEOUT_MS)
    try:
        page = context.new_page()

        def through_a_misconfigured_proxy(route: Route) -> None:
            route.fulfill(response=route.fetch(headers={**route.request.headers, "origin": "https://homelab.lan"}))

        page.route("**/socket.io/?*", through_a_misconfigured_proxy)
        page.goto(server.url)
        expect(page.locator("#error")).to_contain_text(f"refused this page's address, {server.url}, as another site's")
        expect(page.locator("#error")).to_contain_text("X-Forwarded-Proto")
        expect(page.locator("#status")).to_have_attribute("data-state", "reconnecting")
        assert "refused a Socket.IO connection from a page at 'https://homelab.lan'" in server.log()
    finally:
        context.close()


def test_a_page_whose_token_the_restarted_server_refuses_says_why(browser: Browser) -> None:
    """The server comes back with a new token (the README's recipe makes one per start): the page's reconnect is
    refused, and the page says it is the token, not just that the server refused."""
    context = browser.new_context(viewport=DESKTOP)
    context.set_default_timeout(TIMEOUT_MS)
    try:
        page = context.new_page()
        with AppProcess(["--model", "demo", "--token", TOKEN]) as first:
            page.goto(f"{first.url}/?token={TOKEN}")
            wait_until_ready(page)
        with AppProcess(["--model", "demo", "--token", "a-new-token"], port=first.port):
            expect(page.locator("#error")).to_contain_text("Not authorised: open the link that includes ?token=")
            expect(page.locator("#error")).to_contain_text("missing or wrong access token")
            expect(page.locator("#status")).to_have_attribute("data-state", "disconnected")
    finally:
        context.close()


def test_a_reconnect_to_a_server_restarted_with_another_model_shows_that_model(
    browser: Browser, tiny_model: Path
) -> None:
    """The demo model's server is restarted on the same port with another model: after the reconnect the page
    names the new model and offers only its skills, no demo guide, and its frame size (the two models' frame
    sizes and skills happen to be the same; their names and guides are not)."""
    context = browser.new_context(viewport=DESKTOP)  # by hand: refused reconnects log console errors
    context.set_default_timeout(TIMEOUT_MS)
    try:
        page = context.new_page()
        with AppProcess(["--model", "demo"]) as first:
            page.goto(first.url)
            wait_until_ready(page)
            expect(page.locator("#guide")).to_be_visible()
        expect(page.locator("#status")).not_to_have_attribute("data-state", "connected")
        with AppProcess(["--model", str(tiny_model)], port=first.port) as second:
            served = requests.get(f"{second.url}/api/info", timeout=5).json()
            assert "hint" not in served, served
            expect(page.locator("#status")).to_have_attribute("data-state", "connected", timeout=30_000)
            expect(page.locator("#model-info")).to_contain_text(served["model"])
            expect(page.locator("#guide")).to_be_hidden()
            expect(page.locator("#live-size")).to_have_value(str(served["image_size"]))
            for control, needs in {"caption-short": "caption", "detect": "detect", "point": "point"}.items():
                if needs in served["capabilities"]:
                    expect(page.locator(f"#{control}")).to_be_visible()
                else:
                    expect(page.locator(f"#{control}")).to_be_hidden()
    finally:
        context.close()


def test_live_mode_pauses_while_the_server_is_away_and_resumes(browser: Browser) -> None:
    """The live card kept its green 'running' dot and its answer about a frame from before the server went away.
    While disconnected it says it is paused and dims that answer; once reconnected it runs on."""
    context = browser.new_context(viewport=DESKTOP)  # by hand: refused reconnects log console errors
    context.set_default_timeout(TIMEOUT_MS)
    panel, paused, count = "#live-panel", "#live-paused", "#live-count"
    try:
        page = context.new_page()
        with AppProcess(["--model", "demo"]) as first:
            page.goto(first.url)
            wait_until_ready(page)
            page.fill("#question", "what color is this?")
            page.click("#live-toggle")
            page.wait_for_function("() => Number(document.getElementById('live-count').textContent) >= 2")
            expect(page.locator(panel)).to_have_class(re.compile(r"\brunning\b"))
            expect(page.locator(paused)).to_be_hidden()
        expect(page.locator(paused)).to_be_visible()
        expect(page.locator(paused)).to_have_text("Paused until reconnected")
        expect(page.locator(panel)).not_to_have_class(re.compile(r"\brunning\b"))
        muted = page.evaluate("getComputedStyle(document.documentElement).getPropertyValue('--muted').trim()")
        assert page.evaluate("getComputedStyle(document.getElementById('live-answer')).color") == hex_to_rgb(muted)
        before = int(page.locator(count).inner_text())
        with AppProcess(["--model", "demo"], port=first.port):
            expect(page.locator(paused)).to_be_hidden(timeout=30_000)
            expect(page.locator(panel)).to_have_class(re.compile(r"\brunning\b"))
            page.wait_for_function(f"() => Number(document.getElementById('live-count').textContent) > {before}")
            page.click("#live-toggle")
            page.wait_for_function("() => window.__vlmStats.outstanding === 0")
    finally:
        context.close()


def hex_to_rgb(colour: str) -> str:
    """'#93a0ae' as getComputedStyle words it: 'rgb(147, 160, 174)'."""
    red, green, blue = (int(colour[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgb({red}, {green}, {blue})"


@pytest.fixture(scope="module")
def slow_server(slow_model: Path) -> Iterator[AppProcess]:
    with AppProcess(["--model", str(slow_model), "--max-new-tokens", "300"]) as app:
        yield app


# Every non-empty text the announcer (the page's one polite live region for answers) is given, in order.
RECORD_ANNOUNCEMENTS = """() => {
  window.__said = [];
  const announcer = document.getElementById('announcer');
  new MutationObserver(() => announcer.textContent && window.__said.push(announcer.textContent))
    .observe(announcer, {subtree: true, childList: true, characterData: true});
}"""


def test_stop_keeps_the_partial_answer_marked_as_stopped(open_app: OpenApp, slow_server: AppProcess) -> None:
    """And a screen reader hears nothing while it streams (it heard the answer so far again with every token),
    then once that it was stopped, with what had streamed."""
    page = open_app(url=slow_server.url)
    page.evaluate(RECORD_ANNOUNCEMENTS)
    page.fill("#question", "describe")
    page.press("#question", "Enter")
    entry = page.locator("#history > li").first
    # A first generation on a busy CPU can take a while to start.
    expect(entry).to_have_attribute("data-state", "streaming", timeout=60_000)
    page.wait_for_function(
        "() => document.querySelector('#history > li .answer').textContent.length > 10", timeout=60_000
    )
    assert int(entry.get_attribute("data-deltas") or 0) >= 3
    assert page.evaluate("window.__said") == [], "said while it streamed"
    page.click("#cancel")
    expect(entry).to_have_attribute("data-state", "cancelled")
    expect(entry).to_have_attribute("data-stopped", "true")
    kept = entry.locator(".answer").inner_text()
    page.wait_for_function("() => window.__said.length > 0")
    assert page.evaluate("window.__said") == [f"Stopped: {kept}"]
    assert len(kept) > 10 and kept != "Cancelled.", kept
    expect(entry.locator(".meta")).to_contain_text("Stopped")
    expect(page.locator("#answer")).to_have_text(kept)
    page.wait_for_timeout(500)
    assert entry.locator(".answer").inner_text() == kept, "nothing streamed after Stop is added"


def test_a_superseded_answer_keeps_what_had_streamed(open_app: OpenApp, slow_server: AppProcess) -> None:
    """It was replaced by 'Superseded by a newer request.', though Stop keeps the text."""
    page = open_app(url=slow_server.url)
    page.fill("#question", "describe")
    page.press("#question", "Enter")
    page.wait_for_function(
        "() => document.querySelector('#history > li .answer').textContent.length > 10", timeout=60_000
    )
    page.fill("#question", "describe again")
    page.press("#question", "Enter")
    first = page.locator("#history > li").nth(1)
    expect(first).to_have_attribute("data-state", "cancelled")
    kept, reason = first.locator(".answer").inner_text(), " … (Superseded by a newer request.)"
    assert kept.endswith(reason) and len(kept) > len(reason) + 10, kept  # over 10 characters had streamed
    page.click("#cancel")


def test_live_settings_typed_out_of_bounds_are_put_within_them(open_app: OpenApp) -> None:
    """-5 ms showed as typed and ran as 0; 100000 ms showed above the field's own maximum of 60000."""
    page = open_app()
    page.click("#live-toggle")
    for field, typed, shown in [
        ("#live-interval", "-5", "0"),
        ("#live-interval", "100000", "60000"),
        ("#live-size", "10", "64"),
    ]:
        page.fill(field, typed)
        page.dispatch_event(field, "change")
        expect(page.locator(field)).to_have_value(shown)
    page.click("#live-toggle")


def ask_slowly(page: Page, question: str = "describe") -> None:
    """Asks with the keyboard and returns while the slow model's answer is in progress."""
    page.fill("#question", question)
    page.press("#question", "Enter")
    expect(page.locator("#cancel")).to_be_enabled()


def test_escape_stops_the_answer_anywhere_but_in_another_field(open_app: OpenApp, slow_server: AppProcess) -> None:
    page = open_app(url=slow_server.url)
    entry = page.locator("#history > li").first
    ask_slowly(page)
    page.focus("#live-interval")  # a field of its own: Esc there is the field's
    page.keyboard.press("Escape")
    page.wait_for_timeout(300)
    expect(entry).not_to_have_attribute("data-state", "cancelled")
    page.evaluate("() => document.activeElement.blur()")  # focus on the page itself
    page.keyboard.press("Escape")
    expect(entry).to_have_attribute("data-state", "cancelled")
    ask_slowly(page)
    page.click("#ask")  # a new question asked with the mouse (it supersedes the first): focus on the Ask button
    expect(page.locator("#history > li")).to_have_count(3)
    page.keyboard.press("Escape")
    expect(entry).to_have_attribute("data-state", "cancelled")
    expect(page.locator("#cancel")).to_be_disabled()


def test_stop_pressed_with_the_keyboard_leaves_focus_on_the_question(
    open_app: OpenApp, slow_server: AppProcess
) -> None:
    page = open_app(url=slow_server.url)
    page.focus("#question")
    page.keyboard.type("describe")
    page.keyboard.press("Enter")
    expect(page.locator("#cancel")).to_be_enabled()
    page.keyboard.press("Tab")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "cancel"
    page.keyboard.press("Enter")
    expect(page.locator("#history > li").first).to_have_attribute("data-state", "cancelled")
    expect(page.locator("#question")).to_be_focused()


def test_switching_live_off_stops_its_answer_like_stop(open_app: OpenApp, slow_server: AppProcess) -> None:
    page = open_app(url=slow_server.url)
    panel = page.locator("#live-panel")
    page.fill("#question", "describe")
    page.click("#live-toggle")
    page.wait_for_function("() => document.getElementById('live-answer').textContent.length > 10", timeout=60_000)
    page.click("#live-toggle")
    expect(page.locator("#live-toggle")).to_have_attribute("aria-pressed", "false")
    expect(panel).to_have_attribute("data-state", "cancelled")
    expect(panel).to_have_attribute("data-stopped", "true")
    expect(page.locator("#live-meta")).to_contain_text("Stopped")
    expect(page.locator("#cancel")).to_be_disabled()
    kept = page.locator("#live-answer").inner_text()
    assert len(kept) > 10, kept
    # The server was told: it ends the generation with its final event (and its 300 tokens are not all made).
    page.wait_for_function("() => window.__vlmStats.outstanding === 0", timeout=5_000)
    page.wait_for_timeout(500)
    assert page.locator("#live-answer").inner_text() == kept, "nothing streamed after live was switched off"


@pytest.fixture(scope="module")
def limited_server() -> Iterator[AppProcess]:
    """Answers of at most two tokens, and a low per-client rate limit the demo model could outrun many times over."""
    with AppProcess(["--model", "demo", "--max-new-tokens", "2", "--rate-limit", str(RATE_LIMIT)]) as app:
        yield app


def test_tokens_per_second_is_hidden_on_answers_of_two_tokens(open_app: OpenApp, limited_server: AppProcess) -> None:
    page = open_app(url=limited_server.url)
    page.fill("#question", "what shape is this?")
    page.press("#question", "Enter")
    entry = page.locator("#history > li").first
    expect(entry).to_have_attribute("data-state", "done")
    expect(entry.locator(".meta")).to_contain_text("ms")
    expect(entry.locator(".meta")).not_to_contain_text("tok/s")


def test_live_mode_at_interval_zero_never_trips_the_rate_limit(open_app: OpenApp, limited_server: AppProcess) -> None:
    """The demo model answers many times faster than the limit; live mode must pace itself by /api/info."""
    page = open_app(url=limited_server.url)
    page.fill("#live-interval", "0")
    page.fill("#question", "what color is this?")
    page.click("#live-toggle")
    page.wait_for_function("() => window.__vlmStats.liveSent >= 8", timeout=30_000)
    page.click("#live-toggle")
    page.wait_for_function("() => window.__vlmStats.outstanding === 0")
    stats = page.evaluate("() => ({...window.__vlmStats})")
    assert stats["errors"] == 0, stats
    assert stats["minLiveGapMs"] >= 1000 / RATE_LIMIT, f"frames were sent faster than the limit: {stats}"


def test_when_the_server_goes_away_the_page_says_so(browser: Browser, limited_server: AppProcess) -> None:
    """Runs last in this module: it stops the server (its own page is opened by hand, because a browser
    logs every refused reconnect as a console error)."""
    context = browser.new_context(viewport=DESKTOP)
    context.set_default_timeout(TIMEOUT_MS)
    try:
        page = context.new_page()
        page.goto(limited_server.url)
        wait_until_ready(page)
        limited_server.terminate()
        expect(page.locator("#error")).to_be_visible()
        expect(page.locator("#error")).to_contain_text("connection to the server was lost")
        expect(page.locator("#error")).to_contain_text("Asking is paused")
        expect(page.locator("#ask")).to_be_disabled()
        assert page.locator("#ask").get_attribute("title") == "Not connected to the server"
    finally:
        context.close()


def test_an_insecure_page_says_how_to_fix_it_and_offers_no_retry(open_app: OpenApp) -> None:
    page = open_app(ready=False, init_script="Object.defineProperty(window, 'isSecureContext', {value: false});")
    expect(page.locator("#camera-message")).to_be_visible()
    expect(page.locator("#camera-message")).to_contain_text("--self-signed")
    expect(page.locator("#camera-retry")).to_be_hidden()


@pytest.fixture(scope="module")
def busy_server(slow_model: Path) -> Iterator[AppProcess]:
    """Answers of 400 tokens, one at a time: one call to it keeps everyone else waiting for seconds."""
    with AppProcess(["--model", str(slow_model), "--max-batch-size", "1", "--max-new-tokens", "400"]) as app:
        yield app


def test_a_question_waiting_behind_others_says_how_many_go_first(open_app: OpenApp, busy_server: AppProcess) -> None:
    """Before, a question on a busy server showed nothing at all until its answer started."""
    page = open_app(url=busy_server.url)
    page.evaluate(RECORD_ANNOUNCEMENTS)
    holders = hold_the_model(busy_server, jpeg_data_url())
    try:
        page.fill("#question", "what is this?")
        page.press("#question", "Enter")
        waiting = re.compile(r"^Waiting: (1 ahead|next) in line$")  # the first holder may end meanwhile
        expect(page.locator("#answer-meta")).to_have_text(waiting)
        entry = page.locator("#history > li").first
        expect(entry).to_have_attribute("data-state", "pending")
        expect(entry.locator(".meta")).to_have_text(waiting)
        page.wait_for_function("() => window.__said.length > 0")
        assert waiting.match(page.evaluate("window.__said")[0]), "a screen reader hears that it waits"
    finally:
        let_go(holders)  # their generations are cancelled, and the question's turn comes
    expect(entry).to_have_attribute("data-state", re.compile("streaming|done"))
    expect(page.locator("#answer-meta")).not_to_contain_text("Waiting")
