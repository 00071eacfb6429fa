"""The page in Chromium through Debian's nginx over https, nginx configured by docs/DEPLOYMENT.md's own block
(tests/nginx_front.py), the app run with ``--trusted-proxy`` and a token, as the guide says. Until now this was
checked by hand only."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
import requests
from playwright.sync_api import expect

from tests.browser.conftest import OpenApp
from tests.calls_by_hand import eventually
from tests.nginx_front import Front, nginx_in_front
from tests.server_process import AppProcess

TOKEN = "behind-nginx-secret"


@pytest.fixture(scope="module")
def front(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Front]:
    with (
        AppProcess(["--model", "demo", "--trusted-proxy"], env={"VLM_TOKEN": TOKEN}) as app,
        nginx_in_front(app.port, tmp_path_factory.mktemp("nginx")) as nginx,
    ):
        yield nginx


def test_the_page_asks_over_a_websocket_through_nginx_as_deployed(open_app: OpenApp, front: Front) -> None:
    page = open_app(f"/?token={TOKEN}", url=front.url, ignore_https_errors=True)
    page.fill("#question", "what shape is this?")
    page.press("#question", "Enter")
    entry = page.locator("#history > li").first
    expect(entry).to_have_attribute("data-state", "done")
    assert entry.locator(".answer").inner_text() in {"circle", "square", "triangle", "star"}
    cookie = next(cookie for cookie in page.context.cookies() if cookie["name"] == "vlm_token")
    assert cookie["secure"] and cookie["httpOnly"], "nginx said https (X-Forwarded-Proto), so the cookie is Secure"
    page.close()  # nginx logs the websocket once it ends
    eventually(lambda: re.search(r'"GET /socket\.io/" 101 ', front.access_log.read_text()) is not None, "no websocket")
    assert TOKEN not in front.access_log.read_text(), "the documented log format leaves the page link's token out"
    assert requests.get(f"{front.url}/metrics", verify=front.cert, timeout=5).status_code == 403
