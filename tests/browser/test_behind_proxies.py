"""The page in Chromium over https through Debian's nginx and HAProxy, each configured by docs/DEPLOYMENT.md's own
block (tests/proxy_fronts.py), the app run with ``--trusted-proxy`` and a token, as the guide says. Until now
this was checked by hand only."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
import requests
from playwright.sync_api import expect

from tests.browser.conftest import OpenApp
from tests.calls_by_hand import eventually
from tests.proxy_fronts import PROXIES, Front, proxy_in_front
from tests.server_process import AppProcess

TOKEN = "behind-a-proxy-secret"


@pytest.fixture(scope="module")
def app() -> Iterator[AppProcess]:
    with AppProcess(["--model", "demo", "--trusted-proxy"], env={"VLM_TOKEN": TOKEN}) as running:
        yield running


@pytest.fixture(scope="module", params=PROXIES)
def front(request: pytest.FixtureRequest, app: AppProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Front]:
    with proxy_in_front(request.param, app.port, tmp_path_factory.mktemp(request.param)) as proxy:
        yield proxy


def test_the_page_asks_over_a_websocket_through_the_proxy_as_deployed(open_app: OpenApp, front: Front) -> None:
    page = open_app(f"/?token={TOKEN}", url=front.url, ignore_https_errors=True)
    page.fill("#question", "what shape is this?")
    page.press("#question", "Enter")
    entry = page.locator("#history > li").first
    expect(entry).to_have_attribute("data-state", "done")
    assert entry.locator(".answer").inner_text() in {"circle", "square", "triangle", "star"}
    cookie = next(cookie for cookie in page.context.cookies() if cookie["name"] == "vlm_token")
    assert cookie["secure"] and cookie["httpOnly"], "the proxy said https (X-Forwarded-Proto), so the cookie is Secure"
    page.close()  # a proxy logs the websocket once it ends
    eventually(
        lambda: re.search(front.websocket_logged, front.access_log.read_text()) is not None,
        "no websocket in the proxy's log",
    )
    assert TOKEN not in front.access_log.read_text(), "the documented logging leaves the page link's token out"
    metrics = requests.get(f"{front.url}/metrics", verify=front.cert, timeout=5).status_code
    assert metrics in {401, 403}, "nginx denies /metrics; behind HAProxy the app asks for the token"
