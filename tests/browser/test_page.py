"""The page in a real browser, against the real app: the demo model, and a moondream2 stand-in for detect/point.

Proves that each question is answered about the frame the camera shows at that moment,
and covers the real-time experience: streaming, cancel, supersede, live mode with
backpressure, history, snapshot, skills, camera problems, phone layout and the token.
"""

from __future__ import annotations

import base64
import io
import os
import re
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
import requests
from PIL import Image
from playwright.sync_api import Browser, Locator, Page, expect

from tests.browser.conftest import ARTIFACTS, DESKTOP, TIMEOUT_MS, OpenApp, wait_until_ready
from tests.browser.fake_camera import SIZE as CAMERA_SIZE
from tests.server_process import REPO, AppProcess

SHAPE_QUESTION = "what shape is this?"
COLOR_QUESTION = "what color is this?"
FINISHED = re.compile(r"^(done|error|cancelled)$")
DOCS = REPO / "docs"

# Colour of the video's centre pixel, classified in the page.
SCENE_IS = """([wanted]) => {
  const video = document.getElementById('video');
  if (!video.videoWidth) return false;
  const canvas = document.createElement('canvas');
  canvas.width = video.videoWidth;
  canvas.height = video.videoHeight;
  const ctx = canvas.getContext('2d');
  ctx.drawImage(video, 0, 0);
  const [r, g, b] = ctx.getImageData(canvas.width / 2, canvas.height / 2, 1, 1).data;
  return wanted === 'red' ? r > 150 && g < 100 && b < 100 : b > 150 && r < 110 && g < 140;
}"""


def model_info(app: AppProcess) -> dict:
    return requests.get(f"{app.url}/api/info", timeout=5).json()


@pytest.fixture(scope="session")
def info(server: AppProcess) -> dict:
    return model_info(server)


def entries(page: Page) -> Locator:
    return page.locator("#history > li")


def ask(page: Page, question: str) -> Locator:
    """Types ``question``, presses Enter and returns its history entry once it has finished."""
    before = entries(page).count()
    page.fill("#question", question)
    page.press("#question", "Enter")
    expect(entries(page)).to_have_count(before + 1)
    entry = page.locator(f'#history > li[data-id="{entries(page).first.get_attribute("data-id")}"]')
    expect(entry).to_have_attribute("data-state", FINISHED)
    return entry


def answer(entry: Locator) -> str:
    return entry.locator(".answer").inner_text()


def thumbnail(entry: Locator) -> Image.Image:
    src = entry.locator("img.thumb").get_attribute("src") or ""
    assert src.startswith("data:image/jpeg;base64,"), src[:40]
    return Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).convert("RGB")


def centre(image: Image.Image) -> tuple[int, int, int]:
    return image.getpixel((image.width // 2, image.height // 2))


def stats(page: Page) -> dict:
    return page.evaluate("() => ({...window.__vlmStats})")


def wait_until_answered_everything(page: Page) -> None:
    """Every request sent has had its one final event from the server."""
    page.wait_for_function("() => window.__vlmStats.outstanding === 0")


def save_screenshot(page: Page, name: str, *, docs_name: str | None = None, down_to: str | None = None) -> None:
    """Into artifacts/; also into docs/ for the README when it is missing there or VLM_UPDATE_SCREENSHOT=1.

    Of the viewport, or with ``down_to`` (a selector) of the page from its top to that element's bottom."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    if down_to:
        bottom = page.evaluate(f"document.querySelector('{down_to}').getBoundingClientRect().bottom + scrollY + 12")
        width = page.evaluate("document.documentElement.clientWidth")
        page.screenshot(path=path, full_page=True, clip={"x": 0, "y": 0, "width": width, "height": bottom})
    else:
        page.screenshot(path=path)
    if docs_name and (os.environ.get("VLM_UPDATE_SCREENSHOT") == "1" or not (DOCS / docs_name).exists()):
        # 256 colours: the camera's textured scene made a full-colour file five times the size.
        with Image.open(path) as shot:
            shot.convert("RGB").quantize(256).save(DOCS / docs_name, optimize=True)


@pytest.fixture
def switch_page(switch_browser: Browser, open_app: OpenApp) -> Page:
    """The app in a browser whose camera starts on the red circle (set up before, closed after, the tab)."""
    return open_app(browser=switch_browser)


def test_each_answer_is_about_the_frame_shown_when_asked(switch_page: Page) -> None:
    """A red circle drawn on paper held up to the camera, then a blue triangle on a dark background.

    The answers must follow the camera, and be right about the shape and its colour in both.
    """
    page = switch_page
    page.wait_for_function(SCENE_IS, arg=["red"])
    first = ask(page, SHAPE_QUESTION)
    assert first.get_attribute("data-state") == "done", answer(first)
    assert answer(first).lower() == "circle"
    red, _, blue = centre(thumbnail(first))
    assert red > 150 and blue < 100, "the frame sent with the first question was not the red circle"
    first_colour = ask(page, COLOR_QUESTION)
    assert answer(first_colour).lower() == "red"
    red, _, blue = centre(thumbnail(first_colour))
    assert red > 150 and blue < 100, "the frame sent with the colour question was not the red circle"

    page.wait_for_function(SCENE_IS, arg=["blue"], timeout=10_000)
    second = ask(page, SHAPE_QUESTION)
    assert second.get_attribute("data-state") == "done", answer(second)
    assert answer(second).lower() == "triangle"
    assert page.locator("#answer").inner_text().lower() == "triangle"
    red, _, blue = centre(thumbnail(second))
    assert blue > 150 and red < 110, "the frame sent with the second question was not the blue triangle"
    second_colour = ask(page, COLOR_QUESTION)
    assert answer(second_colour).lower() == "blue"
    expect(page.locator("#answer-meta")).to_contain_text("ms")
    save_screenshot(page, "page-answer.png", docs_name="screenshot.png")


def test_the_guide_shows_only_for_the_demo_model(open_app: OpenApp, either_server: AppProcess) -> None:
    """With the demo model the page says what it can answer and offers questions to click; others get no guide."""
    page = open_app(url=either_server.url)
    info = model_info(either_server)
    guide = page.locator("#guide")
    if "hint" not in info:
        expect(guide).to_be_hidden()
        return
    expect(guide).to_be_visible()
    expect(guide).to_contain_text(info["hint"])
    buttons = guide.locator("button")
    expect(buttons).to_have_count(len(info["suggested_questions"]))
    buttons.first.click()
    entry = entries(page).first
    expect(entry).to_have_attribute("data-state", "done")
    assert entry.locator(".question").inner_text() == info["suggested_questions"][0]
    assert answer(entry) in {"circle", "square", "triangle", "star"}


def test_answer_streams_in_before_the_final_response(page: Page, info: dict) -> None:
    assert "stream" in info["capabilities"], "the demo model is expected to stream"
    page.evaluate("""() => {
      window.__seen = [];
      const card = document.getElementById('current');
      const text = document.getElementById('answer');
      new MutationObserver(() => window.__seen.push([card.dataset.state, text.textContent]))
        .observe(card, {subtree: true, childList: true, characterData: true, attributes: true});
    }""")
    entry = ask(page, COLOR_QUESTION)
    final = answer(entry)
    assert entry.get_attribute("data-state") == "done"
    assert int(entry.get_attribute("data-deltas-before-final") or 0) >= 1
    partial = [text for state, text in page.evaluate("window.__seen") if state == "streaming" and text]
    assert partial, "no partial answer was ever rendered"
    assert all(final.startswith(text.strip()) for text in partial)
    assert stats(page)["streamEvents"] >= 1


def test_while_the_model_loads_asking_waits_and_says_why(browser: Browser, server: AppProcess) -> None:
    """Ask, Live and the skills were enabled while the server loaded its model, and every try put the server's
    'still loading' error in History. /api/info answers 503 while it loads (here faked, for as long as wanted);
    the tab is opened by hand, because a browser logs each 503 as a console error."""
    context = browser.new_context(viewport=DESKTOP)
    context.set_default_timeout(TIMEOUT_MS)
    try:
        context.route("**/api/info", lambda route: route.fulfill(status=503, body="loading"))
        page = context.new_page()
        page.goto(server.url)
        page.wait_for_selector("html[data-camera=ready] #status[data-state=connected]", state="attached")
        expect(page.locator("html")).to_have_attribute("data-info", "loading")
        for control in ("#ask", "#live-toggle", "#caption-short", "#caption-normal"):
            expect(page.locator(control)).to_be_disabled()
        reason = page.locator("#ask-blocked")
        expect(reason).to_be_visible()  # a touch screen shows no tooltips
        expect(reason).to_have_text("The model is still loading…")
        page.fill("#question", SHAPE_QUESTION)
        page.press("#question", "Enter")
        page.wait_for_timeout(300)
        expect(entries(page)).to_have_count(0)

        context.unroute("**/api/info")  # loaded: the page's next look at /api/info finds it so
        wait_until_ready(page)
        expect(page.locator("#ask")).to_be_enabled()
        expect(reason).to_be_hidden()
        entry = ask(page, SHAPE_QUESTION)
        assert entry.get_attribute("data-state") == "done", answer(entry)
    finally:
        context.close()


# A slow network's upload, made exact: everything the page emits reaches the server this much later. (Chromium's
# network emulation delays only some requests, and no WebSocket frames.)
UPLOAD_DELAY_MS = 500
SLOW_UPLOAD = f"""(() => {{
  let io;
  Object.defineProperty(window, 'io', {{
    configurable: true,
    set(value) {{ io = value; }},
    get() {{
      return io && ((...args) => {{
        const socket = io(...args);
        const emit = socket.emit.bind(socket);
        socket.emit = (...message) => {{ setTimeout(() => emit(...message), {UPLOAD_DELAY_MS}); return socket; }};
        return socket;
      }});
    }},
  }});
}})();"""


def test_the_time_shown_is_the_round_trip_the_page_measured(open_app: OpenApp) -> None:
    """It was the server's total (8 ms) where a slow network made the user wait seconds: the page shows what it
    waited, and the server's own times stay in the tooltip, named as such."""
    page = open_app(init_script=SLOW_UPLOAD)
    entry = ask(page, SHAPE_QUESTION)
    assert entry.get_attribute("data-state") == "done", answer(entry)
    meta = entry.locator(".meta")
    shown = int(re.match(r"(\d+) ms", meta.inner_text()).group(1))
    tooltip = meta.get_attribute("title") or ""
    assert tooltip.startswith(f"Round trip (measured by this page): {shown} ms\nServer time:\n"), tooltip
    server_total = int(re.search(r"^  total: (\d+) ms$", tooltip, re.MULTILINE).group(1))
    assert shown >= UPLOAD_DELAY_MS + server_total - 2, tooltip  # 2: each figure is rounded


def test_cancel_marks_the_entry_and_drops_its_answer(page: Page) -> None:
    page.fill("#question", SHAPE_QUESTION)
    page.evaluate("() => { document.getElementById('ask').click(); document.getElementById('cancel').click(); }")
    entry = entries(page).first
    expect(entry).to_have_attribute("data-state", "cancelled")
    wait_until_answered_everything(page)
    page.wait_for_timeout(300)  # a late answer for it must still be ignored
    expect(entry).to_have_attribute("data-state", "cancelled")
    assert answer(entry) == "Cancelled."
    expect(page.locator("#answer")).to_have_text("Cancelled.")
    expect(page.locator("#cancel")).to_be_disabled()


def test_asking_again_supersedes_the_unfinished_request(page: Page) -> None:
    page.fill("#question", SHAPE_QUESTION)
    page.evaluate("() => { const ask = document.getElementById('ask'); ask.click(); ask.click(); }")
    expect(entries(page)).to_have_count(2)
    newest, older = entries(page).first, entries(page).nth(1)
    expect(newest).to_have_attribute("data-state", "done")
    expect(older).to_have_attribute("data-state", "cancelled")
    assert "Superseded" in answer(older)
    wait_until_answered_everything(page)  # the server ended the superseded one too


def test_live_mode_follows_the_camera_one_request_at_a_time(page: Page) -> None:
    page.evaluate("""() => {
      window.__liveAnswers = new Set();
      const panel = document.getElementById('live-panel');
      const text = document.getElementById('live-answer');
      new MutationObserver(() => panel.dataset.state === 'done' && window.__liveAnswers.add(text.textContent))
        .observe(panel, {subtree: true, childList: true, characterData: true, attributes: true});
    }""")
    page.fill("#question", COLOR_QUESTION)
    page.click("#live-toggle")
    expect(page.locator("#live-toggle")).to_have_attribute("aria-pressed", "true")
    expect(page.locator("#live-panel")).to_be_visible()
    # The clip changes colour every second: live answers must change with it.
    page.wait_for_function(
        "() => window.__liveAnswers.size >= 2 && Number(document.getElementById('live-count').textContent) >= 4",
        timeout=10_000,
    )
    page.click("#live-toggle")
    expect(page.locator("#live-toggle")).to_have_attribute("aria-pressed", "false")
    wait_until_answered_everything(page)
    stopped = stats(page)
    assert stopped["maxOutstanding"] == 1, stopped
    assert stopped["errors"] == 0, stopped
    page.wait_for_timeout(1000)
    assert stats(page)["liveSent"] == stopped["liveSent"], "live mode kept sending after it was turned off"
    expect(entries(page)).to_have_count(0)  # live answers stay in the live panel
    # The last answer's timing, or, when switching off stopped one part-way, that it was stopped.
    expect(page.locator("#live-meta")).to_contain_text(re.compile(r"ms|Stopped"))


def test_history_keeps_thumbnails_timing_and_copies(page: Page) -> None:
    first = ask(page, COLOR_QUESTION)
    second = ask(page, SHAPE_QUESTION)
    expect(entries(page)).to_have_count(2)
    for entry in (first, second):
        assert entry.get_attribute("data-state") == "done"
        assert max(thumbnail(entry).size) <= 160
        expect(entry.locator(".meta")).to_have_text(re.compile(r"^\d+ ms( · [\d.]+ tok/s)?$"))
    assert entries(page).first.locator(".question").inner_text() == SHAPE_QUESTION

    second.locator("button.copy").click()
    assert page.evaluate("navigator.clipboard.readText()").startswith(f"Q: {SHAPE_QUESTION}\nA: {answer(second)}")
    page.click("#copy-all")
    copied = page.evaluate("navigator.clipboard.readText()")
    assert copied.index(f"Q: {COLOR_QUESTION}") < copied.index(f"Q: {SHAPE_QUESTION}")

    page.click("#clear-history")
    expect(entries(page)).to_have_count(0)


# The camera's centre pixel differs from the frozen frame's (the clip changes scene every second).
CAMERA_MOVED_ON = """() => {
  const centre = (source, width, height) => {
    const canvas = document.createElement('canvas');
    canvas.width = width;
    canvas.height = height;
    const ctx = canvas.getContext('2d');
    ctx.drawImage(source, 0, 0);
    return Array.from(ctx.getImageData(width / 2, height / 2, 1, 1).data);
  };
  const video = document.getElementById('video');
  const frozen = document.getElementById('frozen');
  const now = centre(video, video.videoWidth, video.videoHeight);
  const then = centre(frozen, frozen.width, frozen.height);
  return now.some((value, i) => Math.abs(value - then[i]) > 60);
}"""


def test_snapshot_freezes_the_frame_for_several_questions(page: Page) -> None:
    page.click("#snapshot")
    expect(page.locator("html")).to_have_attribute("data-frozen", "true")
    expect(page.locator("#frozen")).to_be_visible()
    expect(page.locator("#snapshot")).to_have_text("Unfreeze")
    first = ask(page, COLOR_QUESTION)
    page.wait_for_function(CAMERA_MOVED_ON)
    second = ask(page, SHAPE_QUESTION)
    assert thumbnail(first).tobytes() == thumbnail(second).tobytes()

    page.click("#snapshot")
    expect(page.locator("#frozen")).to_be_hidden()
    expect(page.locator("html")).to_have_attribute("data-frozen", "false")
    page.wait_for_function(CAMERA_MOVED_ON)
    live = ask(page, COLOR_QUESTION)
    assert thumbnail(live).tobytes() != thumbnail(first).tobytes()


SKILL_CONTROLS = {
    "caption-short": {"caption"},
    "caption-normal": {"caption"},
    "detect": {"detect"},
    "point": {"point"},
    "skill-object": {"detect", "point"},
}


@pytest.fixture(params=["server", "moondream_server"], ids=["demo", "moondream-like"])
def either_server(request: pytest.FixtureRequest) -> AppProcess:
    """The demo model's app, which lacks detect and point, or the moondream stand-in's, which has every skill."""
    return request.getfixturevalue(request.param)


def test_only_the_skills_the_model_has_are_offered(open_app: OpenApp, either_server: AppProcess) -> None:
    page = open_app(url=either_server.url)
    capabilities = set(model_info(either_server)["capabilities"])
    for control, needs in SKILL_CONTROLS.items():
        locator = page.locator(f"#{control}")
        if needs & capabilities:
            expect(locator).to_be_visible()
        else:
            expect(locator).to_be_hidden()
    if "caption" in capabilities:
        page.click("#caption-short")
        expect(entries(page).first).to_have_attribute("data-state", "done")
        assert answer(entries(page).first).strip()


def test_describe_answers_are_named_after_the_button(page: Page) -> None:
    """They were headed 'Detailed caption', a name the page shows nowhere else."""
    button = page.locator("#caption-normal")
    button.click()
    entry = entries(page).first
    expect(entry).to_have_attribute("data-state", "done")
    expect(entry.locator(".question")).to_have_text(button.inner_text())
    expect(page.locator("#current-question")).to_have_text(button.inner_text())


# How the page draws a result (static/page/overlay.js, colours from style.css): detect boxes green, point dots pink.
MARK_COLOURS = {"detect": [0x3E, 0xE0, 0x8F], "point": [0xFF, 0x3D, 0x7F]}

# Whether any pixel of the overlay is inked (in the given colour, if one is given).
OVERLAY_INKED = """(colour) => {
  const canvas = document.getElementById('overlay');
  const pixels = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
  const matches = (i) => !colour || colour.every((value, c) => Math.abs(pixels[i + c] - value) <= 8);
  for (let i = 0; i < pixels.length; i += 4) if (pixels[i + 3] && matches(i)) return true;
  return false;
}"""


@pytest.mark.parametrize("skill", ["detect", "point"])
def test_detect_or_point_draws_on_the_overlay_until_the_next_ask(
    open_app: OpenApp, moondream_server: AppProcess, skill: str
) -> None:
    """Its marks are drawn over the frame they were found on, frozen on the stage (over the moving video they
    pointed at nothing a moment later), until something else is asked. Point is pressed while live mode runs:
    the next live frame wiped its dots before they were ever drawn; now it stops live mode."""
    page = open_app(url=moondream_server.url)
    overlay = page.locator("#overlay")
    html = page.locator("html")
    if skill == "point":
        page.fill("#question", COLOR_QUESTION)
        page.click("#live-toggle")
        page.wait_for_function("() => window.__vlmStats.liveSent >= 1")
    page.fill("#skill-object", "shape")
    page.click(f"#{skill}")
    expect(html).to_have_attribute("data-frozen", "true")  # at once: the frame asked about is the one shown
    expect(page.locator("#live-toggle")).to_have_attribute("aria-pressed", "false")
    # Like moondream2 on a CPU, the look-alike takes seconds: it decodes up to 50 objects, one token at a time.
    expect(entries(page).first).to_have_attribute("data-state", "done", timeout=60_000)
    expect(entries(page).first.locator(".meta")).not_to_contain_text("tok/s")  # its steps decode coordinates
    expect(overlay).to_have_attribute("data-marks", re.compile(r"^[1-9]\d*$"))
    assert page.evaluate(OVERLAY_INKED, MARK_COLOURS[skill]), f"no {skill} mark was drawn"
    save_screenshot(page, f"page-{skill}.png", docs_name="screenshot-detect.png" if skill == "detect" else None)
    page.wait_for_function(CAMERA_MOVED_ON)  # the camera has moved on; the marks stay with their frame
    expect(html).to_have_attribute("data-frozen", "true")
    expect(overlay).to_have_attribute("data-marks", re.compile(r"^[1-9]\d*$"))
    ask(page, COLOR_QUESTION)
    expect(overlay).to_have_attribute("data-marks", "0")
    expect(html).to_have_attribute("data-frozen", "false")  # a new question is about the camera again
    assert not page.evaluate(OVERLAY_INKED, None)


def test_marks_found_on_a_snapshot_go_with_it(open_app: OpenApp, moondream_server: AppProcess) -> None:
    """They stayed drawn over the live video after Unfreeze, on a frame they were not found on."""
    page = open_app(url=moondream_server.url)
    page.click("#snapshot")
    page.fill("#skill-object", "shape")
    page.click("#point")
    expect(entries(page).first).to_have_attribute("data-state", "done", timeout=60_000)
    expect(page.locator("#overlay")).to_have_attribute("data-marks", re.compile(r"^[1-9]\d*$"))
    page.click("#snapshot")
    expect(page.locator("#overlay")).to_have_attribute("data-marks", "0")


# Draws ``count`` detect boxes at one place through the page's own overlay module (the same module instance the
# page uses), and counts the overlay's inked pixels.
DRAW_BOXES_AT_ONE_PLACE = """async (count) => {
  const overlay = await import('/static/page/overlay.js');
  const box = {x_min: 0.3, y_min: 0.3, x_max: 0.6, y_max: 0.6};
  overlay.setMarks({aspect: 4 / 3, object: 'circle'}, {objects: Array(count).fill(box)});
  const canvas = document.getElementById('overlay');
  const pixels = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
  let inked = 0;
  for (let i = 3; i < pixels.length; i += 4) if (pixels[i]) inked += 1;
  return inked;
}"""


def test_labels_of_boxes_at_one_place_do_not_cover_each_other(page: Page) -> None:
    """Boxes with shared corners had their labels printed on top of each other ('circle' over 'circle'): the
    second box's label must be drawn elsewhere, inking more of the overlay than one box does."""
    one = page.evaluate(DRAW_BOXES_AT_ONE_PLACE, 1)
    two = page.evaluate(DRAW_BOXES_AT_ONE_PLACE, 2)
    assert one > 0 and two > one * 1.1, (one, two)


NO_CAMERA_FOUND = "navigator.mediaDevices.getUserMedia = () => Promise.reject(new DOMException('no', 'NotFoundError'));"


@pytest.mark.parametrize(
    ("init_script", "explanation", "reason"),
    [
        (
            "navigator.mediaDevices.getUserMedia = () => Promise.reject(new DOMException('no', 'NotAllowedError'));",
            "denied",
            "Camera access blocked",
        ),
        (NO_CAMERA_FOUND, "No camera was found", "No camera found"),
        (
            "Object.defineProperty(window, 'isSecureContext', {value: false});",
            "https://",
            "The camera needs an https://",
        ),
    ],
    ids=["permission-denied", "no-camera", "insecure-context"],
)
def test_camera_problems_are_explained(open_app: OpenApp, init_script: str, explanation: str, reason: str) -> None:
    page = open_app(ready=False, init_script=init_script)
    expect(page.locator("html")).to_have_attribute("data-camera", "error")
    expect(page.locator("#camera-message")).to_be_visible()
    expect(page.locator("#camera-message")).to_contain_text(explanation)
    # An alert, so that a screen reader says it as it appears (it was said nowhere: nothing has focus at load).
    expect(page.get_by_role("alert").filter(has_text=explanation)).to_have_count(1)
    expect(page.locator("#error")).to_be_hidden()  # said once, in the stage (the banner repeated it)
    expect(page.locator("#ask")).to_be_disabled()
    # Live cannot start without a frame either, and says why as Ask does, once connected (before that, both say
    # so: reading Ask's title then and waiting for Live's to match raced the connection). The reason names the
    # problem: "No camera frame yet" was misleading where there is a camera, refused.
    for control in ("#ask", "#live-toggle"):
        expect(page.locator(control)).to_be_disabled()
        expect(page.locator(control)).to_have_attribute("title", re.compile(f"^{re.escape(reason)}"))
    expect(page.locator("#ask-blocked")).to_have_text(re.compile(f"^{re.escape(reason)}"))  # not in a tooltip alone
    expect(page.locator("#ask-blocked")).to_be_visible()


def test_without_a_camera_the_camera_picker_says_so(open_app: OpenApp) -> None:
    """It was left an empty box."""
    page = open_app(
        ready=False,
        init_script=NO_CAMERA_FOUND + "navigator.mediaDevices.enumerateDevices = () => Promise.resolve([]);",
    )
    expect(page.locator("html")).to_have_attribute("data-camera", "error")
    expect(page.locator("#camera option")).to_have_text(["No camera"])
    expect(page.locator("#camera")).to_be_disabled()


def test_the_resolution_picker_says_what_the_camera_delivers(page: Page) -> None:
    """It showed the size asked for; the fake camera, like many real ones, delivers its own size whatever is asked."""
    delivered = "×".join(map(str, CAMERA_SIZE))
    chosen = page.locator("#resolution option:checked")
    expect(chosen).to_have_text(f"640×480 → {delivered}")
    expect(page.locator("#resolution")).to_have_attribute(
        "title", f"The camera gives {delivered}, not the 640×480 asked for"
    )
    page.select_option("#resolution", "x".join(map(str, CAMERA_SIZE)))
    expect(chosen).to_have_text(delivered)
    expect(page.locator("#resolution")).to_have_attribute("title", "")
    page.select_option("#resolution", "1920x1080")
    expect(chosen).to_have_text(f"1920×1080 → {delivered}")
    expect(page.locator("#resolution option:not(:checked)")).to_have_text(["320×240", "640×480", "1280×720"])


def test_phone_sized_screen(open_app: OpenApp) -> None:
    page = open_app(viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True, has_touch=True)
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"), "the page scrolls sideways"
    for control in ("#stage", "#question", "#ask", "#live-toggle", "#snapshot"):
        box = page.locator(control).bounding_box()
        assert box and box["x"] >= 0 and box["x"] + box["width"] <= 390, control
    page.fill("#question", SHAPE_QUESTION)
    page.tap("#ask")
    expect(entries(page).first).to_have_attribute("data-state", "done")
    save_screenshot(page, "page-phone.png", docs_name="screenshot-phone.png", down_to="#current")


def test_on_a_phone_a_new_answer_is_scrolled_into_view(open_app: OpenApp) -> None:
    """The answer card can be below the fold on a phone: tapping a suggested question brings it into view, with the
    question and Stop still in view (scrolling to the history's entry took them off a phone held sideways, finding
    7 of the page audit), and an entry already in view does not move the page."""
    page = open_app(viewport={"width": 375, "height": 667}, is_mobile=True, has_touch=True)
    page.tap("#guide button >> nth=0")
    first = entries(page).first
    expect(first).to_have_attribute("data-state", "done")
    for shown in ("#current", "#question", "#cancel"):
        expect(page.locator(shown)).to_be_in_viewport(ratio=1)
    page.evaluate("() => window.scrollTo(0, document.documentElement.scrollHeight)")
    scrolled = page.evaluate("window.scrollY")
    page.fill("#question", COLOR_QUESTION)
    page.evaluate("() => document.getElementById('ask-form').requestSubmit()")  # no scrolling to a control
    expect(entries(page)).to_have_count(2)
    expect(entries(page).first).to_be_in_viewport()
    assert page.evaluate("window.scrollY") == scrolled


def test_page_runs_under_its_content_security_policy(open_app: OpenApp, server: AppProcess) -> None:
    violations = (
        "window.__csp = []; addEventListener('securitypolicyviolation', (e) => __csp.push(e.violatedDirective));"
    )
    page = open_app(init_script=violations)
    policy = requests.get(server.url, timeout=5).headers.get("Content-Security-Policy", "")
    assert "script-src 'self'" in policy and "style-src 'self'" in policy, policy
    ask(page, COLOR_QUESTION)
    assert page.evaluate("window.__csp") == []


@pytest.fixture(scope="module")
def token_server() -> Iterator[AppProcess]:
    """Served under /vlm, as behind a proxy at https://homelab.lan/vlm/; a request without it is one the proxy
    stripped, so the page at / works too."""
    with AppProcess(["--model", "demo", "--token", "s3cret-token", "--root-path", "/vlm"]) as app:
        yield app


def test_token_from_the_link_is_used_and_hidden(open_app: OpenApp, token_server: AppProcess) -> None:
    page = open_app("/?token=s3cret-token&lang=en", url=token_server.url)
    assert "token" not in page.url and "lang=en" in page.url
    assert page.evaluate("sessionStorage.getItem('vlm-token')") == "s3cret-token"
    expect(page.locator("#model-info")).not_to_have_text("Model unknown")
    entry = ask(page, SHAPE_QUESTION)
    assert entry.get_attribute("data-state") == "done", answer(entry)


def test_the_page_under_a_path_asks_for_everything_under_it(open_app: OpenApp, token_server: AppProcess) -> None:
    """Behind a proxy at https://homelab.lan/vlm/ the page asked for /static/…, /api/info, /socket.io and /v1/watch
    at the host's root, where another site lives: it stayed unstyled on "Connecting…"."""
    page = open_app("/vlm/?token=s3cret-token", url=token_server.url)
    entry = ask(page, SHAPE_QUESTION)
    assert entry.get_attribute("data-state") == "done", answer(entry)
    fetched = {urlsplit(url).path for url in page.evaluate("performance.getEntriesByType('resource').map(e => e.name)")}
    assert {"/vlm/static/app.js", "/vlm/api/info", "/vlm/v1/watch"} <= fetched, fetched
    assert any(path.startswith("/vlm/socket.io/") for path in fetched), fetched
    assert all(path.startswith("/vlm/") for path in fetched), fetched
    # A new tab has only the cookie, which is the app's path's alone (and /vlm's, not only /vlm/'s).
    tab = page.context.new_page()
    tab.goto(f"{token_server.url}/vlm")
    wait_until_ready(tab)
