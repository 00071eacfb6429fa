"""Access control, origin checks and HTTPS, against the real server."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests
import socketio
import websocket

from tests.server_process import AppProcess, serving
from tests.socket_client import RecordingClient

TOKEN = "correct-horse-battery-staple"


pytestmark = pytest.mark.app("tiny", max_new_tokens=4, token=TOKEN)


def test_page_and_api_need_the_token(app: AppProcess) -> None:
    refused = requests.get(app.url, timeout=5)
    assert refused.status_code == 401 and "?token=" in refused.text, "a page that says how to get the link"
    assert 'data-testid="wrong-token"' not in refused.text
    wrong = requests.get(f"{app.url}/?token=wrong", timeout=5)
    assert wrong.status_code == 401 and 'data-testid="wrong-token"' in wrong.text, "a wrong token is said to be wrong"
    session = requests.Session()
    assert session.get(f"{app.url}/?token={TOKEN}", timeout=5).status_code == 200
    assert session.get(app.url, timeout=5).status_code == 200, "a reload without ?token= still works"
    assert session.get(f"{app.url}/api/info", timeout=5).status_code == 200, "a new tab has only the cookie"
    assert requests.get(f"{app.url}/api/info", timeout=5).status_code == 401
    authorised = {"Authorization": f"Bearer {TOKEN}"}
    assert requests.get(f"{app.url}/api/info", headers=authorised, timeout=5).status_code == 200


def refusal(url: str, auth: dict[str, str] | None) -> object:
    """What a real Socket.IO client is told when its connection is refused."""
    client = socketio.Client(reconnection=False)
    told: list[object] = []
    client.on("connect_error", told.append)
    with pytest.raises(socketio.exceptions.ConnectionError):
        client.connect(url, auth=auth, wait_timeout=10)
    return told[-1]


def test_socket_connect_needs_the_token_and_says_so(app: AppProcess, frame: str) -> None:
    reason = {"code": "unauthorized", "message": "missing or wrong access token"}
    assert refusal(app.url, None) == {"message": reason["message"], "data": reason}
    assert refusal(app.url, {"token": "wrong"}) == {"message": reason["message"], "data": reason}
    client = RecordingClient(app.url, auth={"token": TOKEN})
    try:
        assert client.ask({"id": "ok", "question": "q", "image": frame})[0] == "response"
    finally:
        client.close()


def websocket_handshake(url: str, origin: str) -> bool:
    address = url.replace("http", "ws", 1) + "/socket.io/?EIO=4&transport=websocket"
    try:
        connection = websocket.create_connection(address, origin=origin, timeout=5)
    except websocket.WebSocketException:
        return False
    connection.close()
    return True


def test_cross_origin_websocket_is_refused(tiny_model: Path) -> None:
    """Without --cors-origin only the own origin; tests/test_clients.py covers widening it."""
    with serving(tiny_model) as running:
        assert websocket_handshake(running.url, running.url)
        assert not websocket_handshake(running.url, "http://evil.example")


def test_a_cors_origin_page_calls_v1_with_the_token_and_not_without(tiny_model: Path) -> None:
    """The browser's preflight carries no credentials, so it is answered without the token; what follows is not."""
    page = "https://chat.example"
    with serving(tiny_model, "--cors-origin", page, max_new_tokens=2, token=TOKEN) as running:
        url = f"{running.url}/v1/chat/completions"
        ask = {
            "Origin": page,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization",
        }
        preflight = requests.options(url, headers=ask, timeout=10)
        assert preflight.ok and preflight.headers["Access-Control-Allow-Origin"] == page
        body = {"messages": [{"role": "user", "content": "hi"}]}
        refused = requests.post(url, json=body, headers={"Origin": page}, timeout=10)
        assert refused.status_code == 401, "the page can read why: the refusal carries its origin too"
        assert refused.headers["Access-Control-Allow-Origin"] == page
        answered = requests.post(
            url, json=body, headers={"Origin": page, "Authorization": f"Bearer {TOKEN}"}, timeout=30
        )
        assert answered.ok and answered.headers["Access-Control-Allow-Origin"] == page


def test_self_signed_https(tiny_model: Path, tmp_path: Path) -> None:
    with serving(tiny_model, "--self-signed", env={"HOME": str(tmp_path)}) as running:
        cert = tmp_path / ".cache" / "webcam-vlm" / "cert.pem"
        assert cert.exists()
        with pytest.raises(requests.exceptions.SSLError):
            requests.get(f"{running.url}/healthz", timeout=5)
        # What a user does on another device: trust the saved certificate, then connect with verification on.
        page = requests.get(f"{running.url}/healthz", timeout=5, verify=str(cert))
        assert page.status_code == 200
