"""The link the app prints opens: a wildcard --host gives the LAN address and localhost, never 0.0.0.0.

Against the real app process (the terminal's link in process, with the terminal faked).
"""

from __future__ import annotations

import io
import re
import socket
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.server_process import AppProcess
from vlm.config import parse_settings

TOKEN = "correct-horse-battery-staple"


def lan_address() -> str:
    """This machine's address on its network, as another device would reach it ("" without a route)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # picks a route; sends nothing
        except OSError:
            return ""
        return str(probe.getsockname()[0])


def ready_line(app: AppProcess) -> str:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = re.search(r"ready: open (.*)", app.log())
        if found:
            return found.group(1)
        time.sleep(0.1)
    raise AssertionError(app.log())


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_a_wildcard_host_prints_links_that_open(tmp_path: Path, scheme: str) -> None:
    """``--host 0.0.0.0`` printed https://0.0.0.0:PORT/?token=..., which no phone can open."""
    flags = ["--self-signed"] if scheme == "https" else []
    with AppProcess(
        ["--model", "demo", "--host", "0.0.0.0", *flags], env={"HOME": str(tmp_path), "VLM_TOKEN": TOKEN}
    ) as app:
        line = ready_line(app)
        assert "0.0.0.0" not in line and TOKEN not in line, line
        links = re.findall(rf"{scheme}://\S+/\?token=\*\*\*", line)
        lan = lan_address()
        expected = [f"{scheme}://{lan}:{app.port}/?token=***"] if lan else []
        assert links == [*expected, f"{scheme}://localhost:{app.port}/?token=***"], line
        cert = tmp_path / ".cache" / "webcam-vlm" / "cert.pem"
        for link in links:  # each opens, certificate verified, with the real token in place of the mask
            page = requests.get(link.replace("***", TOKEN), timeout=10, verify=str(cert) if flags else True)
            assert page.status_code == 200, link


@pytest.mark.unit
@pytest.mark.parametrize("host", ["0.0.0.0", "::"])
def test_the_terminal_gets_the_same_links_with_the_real_token(monkeypatch: pytest.MonkeyPatch, host: str) -> None:
    import app as entry

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, "stdout", terminal)
    entry.announce_ready(parse_settings(["--host", host, "--port", "5123", "--token", TOKEN]))
    shown = terminal.getvalue()
    assert f"http://localhost:5123/?token={TOKEN}" in shown, shown
    lan = lan_address()
    assert not lan or f"http://{lan}:5123/?token={TOKEN}" in shown, shown
    assert "0.0.0.0" not in shown and "[::]" not in shown, shown
