"""Behind a reverse proxy: served under a path of its host, the proxy's headers trusted only when told to, and a
refused page origin explained. In process, through Flask's test client (the app as create_app wires it)."""

from __future__ import annotations

import logging

import pytest
from flask.testing import FlaskClient

from tests.doubles import ScriptedBackendDouble
from vlm import origins
from vlm.config import Settings, parse_settings
from vlm.origins import socket_origins
from vlm.web import create_app

pytestmark = pytest.mark.unit

HOST = "127.0.0.1:5000"


def client_of(**settings: object) -> FlaskClient:
    web = create_app(Settings(secret_key="test", **settings))  # type: ignore[arg-type]
    web.install_model(ScriptedBackendDouble())
    return web.app.test_client()


def test_the_root_path_is_one_plain_path() -> None:
    assert [parse_settings(["--root-path", given]).root_path for given in ("vlm/", "/vlm", "/a/b/", "/", "")] == [
        "/vlm",
        "/vlm",
        "/a/b",
        "",
        "",
    ]
    for bad in ("/a/../b", "/a//b", "/vlm?x", "/a b"):
        with pytest.raises(SystemExit):
            parse_settings(["--root-path", bad])


@pytest.mark.parametrize("path", ["/vlm/", "/"], ids=["passed on", "stripped by the proxy"])
def test_under_a_root_path_the_page_names_every_url_under_it(path: str) -> None:
    """At https://homelab.lan/vlm/ the page asked for /static/…, /api/info and /socket.io at the host's root, where
    another site lives: it stayed unstyled on "Connecting…", whether the proxy stripped /vlm or passed it on."""
    client = client_of(root_path="/vlm")
    page = client.get(path, headers={"Host": HOST}).get_data(as_text=True)
    assert 'data-root="/vlm"' in page and 'href="/vlm/static/style.css"' in page
    assert 'src="/vlm/static/app.js"' in page and "/static/" not in page.replace("/vlm/static/", "")
    for route in ("/vlm/static/page/paths.js", "/vlm/api/info", "/api/info", "/vlm/v1/models"):
        assert client.get(route, headers={"Host": HOST}).status_code == 200, route
    handshake = client.get("/vlm/socket.io/?EIO=4&transport=polling", headers={"Host": HOST})
    assert handshake.status_code == 200 and '"sid"' in handshake.get_data(as_text=True)


def test_a_proxy_prefix_is_taken_from_a_trusted_proxy_only_and_only_as_a_path() -> None:
    forwarded = {"Host": HOST, "X-Forwarded-Prefix": "/cam"}
    trusted = client_of(trusted_proxy=True).get("/", headers=forwarded)
    assert 'data-root="/cam"' in trusted.get_data(as_text=True) and 'href="/cam/static/style.css"' in trusted.text
    assert trusted.headers["Cache-Control"] == "no-store", "a shared cache must not give one client's root to others"
    untrusted = client_of().get("/", headers=forwarded).get_data(as_text=True)
    assert 'data-root=""' in untrusted and 'href="/static/style.css"' in untrusted
    # A client's own header that the proxy let through named where the page loads its scripts from.
    foreign = client_of(trusted_proxy=True).get(
        "/", headers={**forwarded, "X-Forwarded-Prefix": "https://evil.example"}
    )
    assert 'data-root=""' in foreign.text and "evil" not in foreign.text
    # A proxy that passes /cam on and says so too: the prefix once, not /cam/cam.
    both = client_of(trusted_proxy=True, root_path="/cam").get("/cam/", headers=forwarded)
    assert 'data-root="/cam"' in both.text


def test_the_token_cookie_is_for_the_apps_own_path() -> None:
    """Path=/ sent the access token to every other app behind the same proxy."""
    page = client_of(root_path="/vlm", token="t0k").get("/vlm/?token=t0k", headers={"Host": HOST})
    assert page.status_code == 200 and "Path=/vlm;" in page.headers["Set-Cookie"]


def test_a_doubled_slash_is_not_redirected_to_an_address_made_from_the_host_header() -> None:
    """Werkzeug answered /static//style.css with a 308 to an absolute URL built from Host: behind a caching proxy
    with --allowed-host '*', one request could have left that redirect for everyone."""
    doubled = client_of().get("/static//style.css", headers={"Host": "10.9.8.7"})
    assert doubled.status_code == 404 and "Location" not in doubled.headers


def test_a_forwarded_host_name_not_ours_gets_421() -> None:
    """Apache without ProxyPreserveHost names this server by address and puts a rebound name in X-Forwarded-Host,
    where Engine.IO's origin rule reads it: a DNS-rebinding page got /api/info and a Socket.IO session."""
    client = client_of()
    rebound = {"Host": HOST, "X-Forwarded-Host": "evil.example:8280", "Origin": "http://evil.example:8280"}
    assert client.get("/api/info", headers=rebound).status_code == 421
    assert client.get("/socket.io/?EIO=4&transport=polling", headers=rebound).status_code == 421
    assert client.get("/api/info", headers={**rebound, "X-Forwarded-Host": "localhost:8280"}).status_code == 200


def test_a_refused_page_origin_is_logged_once_with_the_origin_expected(caplog: pytest.LogCaptureFixture) -> None:
    """Apache sends no X-Forwarded-Proto: the real https page was refused every visit, and Engine.IO logs only the
    first refusal of the process, whatever it was, so the operator had no line saying why."""
    allowed = socket_origins(())
    assert callable(allowed)
    behind_apache = {"wsgi.url_scheme": "http", "HTTP_HOST": "homelab.lan:8643"}
    with caplog.at_level(logging.WARNING, logger="vlm.origins"):
        assert not allowed("https://homelab.lan:8643", behind_apache)
        assert not allowed("https://homelab.lan:8643", behind_apache)
        assert not allowed(None, behind_apache)
    assert len(caplog.records) == 1
    assert "'https://homelab.lan:8643'" in caplog.text and "own origin here is http://homelab.lan:8643" in caplog.text
    assert allowed("https://homelab.lan:8643", {**behind_apache, "HTTP_X_FORWARDED_PROTO": "https"})


def test_a_flood_of_made_up_origins_does_not_hide_the_real_one(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = [1000.0]
    monkeypatch.setattr(origins.time, "monotonic", lambda: clock[0])
    allowed = socket_origins(())
    assert callable(allowed)
    page = {"wsgi.url_scheme": "http", "HTTP_HOST": "homelab.lan"}
    with caplog.at_level(logging.WARNING, logger="vlm.origins"):
        for n in range(origins.LOGGED_ORIGINS + 100):
            allowed(f"http://made-up-{n}.example", page)
        assert len(caplog.records) == origins.LOGGED_ORIGINS
        clock[0] += origins.LATER_EVERY_S
        allowed("https://homelab.lan", page)
    assert len(caplog.records) == origins.LOGGED_ORIGINS + 1 and "'https://homelab.lan'" in caplog.records[-1].message
