"""TLS files the server could not serve with stop the app at start with one sentence; the printed link opens.

Against the real app process: before these checks the app said ``ready: open https://...`` and then failed
every connection (a warning or a traceback each time), or waited on a passphrase prompt.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from tests.certs import write_pair
from tests.server_process import REPO, AppProcess, free_port
from vlm.config import Settings, parse_settings
from vlm.network import lan_address
from vlm.tls import tls_pair

MODES = ("threading", "gevent", "eventlet")
TOKEN = "correct-horse-battery-staple"
START_TIMEOUT_S = 60  # the refusal comes before the model loads, in about a second


def refused_start(*flags: str, home: Path, mode: str = "threading") -> str:
    """The app started with ``flags`` must exit with status 2 at once; its output (stdout and stderr)."""
    command = [sys.executable, "app.py", "--model", "demo", "--host", "127.0.0.1", "--port", str(free_port())]
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO), "HOME": str(home)}
    try:
        done = subprocess.run(
            [*command, "--async-mode", mode, *flags],
            cwd=REPO,
            env=environment,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=START_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired as running:  # run() has killed it
        output = running.stdout.decode(errors="replace") if isinstance(running.stdout, bytes) else running.stdout
        pytest.fail(f"still serving after {START_TIMEOUT_S}s instead of refusing to start:\n{(output or '')[-3000:]}")
    assert done.returncode == 2, done.stdout[-3000:]
    assert "Traceback" not in done.stdout, done.stdout[-3000:]
    assert "ready: open" not in done.stdout and "Enter PEM pass phrase" not in done.stdout, done.stdout[-3000:]
    return done.stdout


def the_sentence(output: str, *phrases: str) -> str:
    """The one line that says what is wrong: it names the file and the problem (every one of ``phrases``)."""
    lines = [line for line in output.splitlines() if line.startswith("ERROR: ")]
    assert len(lines) == 1, output
    for phrase in phrases:
        assert phrase in lines[0], lines[0]
    assert lines[0].count(". ") == 0, f"one sentence: {lines[0]}"
    return lines[0]


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path]:
    return write_pair(tmp_path / "cert.pem", tmp_path / "key.pem")


@pytest.mark.parametrize("mode", MODES)
def test_a_key_of_another_certificate_is_refused(tmp_path: Path, pair: tuple[Path, Path], mode: str) -> None:
    cert, _ = pair
    _, other_key = write_pair(tmp_path / "other-cert.pem", tmp_path / "other-key.pem")
    said = refused_start("--ssl-cert", str(cert), "--ssl-key", str(other_key), home=tmp_path, mode=mode)
    the_sentence(said, str(other_key), str(cert), "does not belong to")


@pytest.mark.parametrize("mode", MODES)
def test_a_missing_file_is_refused(tmp_path: Path, pair: tuple[Path, Path], mode: str) -> None:
    _, key = pair
    missing = tmp_path / "nope.pem"
    said = refused_start("--ssl-cert", str(missing), "--ssl-key", str(key), home=tmp_path, mode=mode)
    the_sentence(said, str(missing), "does not exist")


@pytest.mark.parametrize("mode", MODES)
def test_an_encrypted_key_is_refused_with_how_to_decrypt_it(tmp_path: Path, mode: str, pair: tuple[Path, Path]) -> None:
    cert, key = write_pair(tmp_path / "cert.pem", tmp_path / "key.pem", passphrase=b"hunter2")
    said = refused_start("--ssl-cert", str(cert), "--ssl-key", str(key), home=tmp_path, mode=mode)
    the_sentence(said, str(key), "encrypted", "not supported", f"openssl pkey -in {key} -out")


def test_swapped_cert_and_key_are_named_as_such(tmp_path: Path, pair: tuple[Path, Path]) -> None:
    cert, key = pair
    said = refused_start("--ssl-cert", str(key), "--ssl-key", str(cert), home=tmp_path)
    the_sentence(said, str(key), "swapped")


def test_a_corrupt_certificate_is_refused(tmp_path: Path, pair: tuple[Path, Path]) -> None:
    cert, key = pair
    cert.write_text(cert.read_text().replace("M", "*", 3))
    said = refused_start("--ssl-cert", str(cert), "--ssl-key", str(key), home=tmp_path)
    the_sentence(said, str(cert), "not a valid PEM certificate")


def test_a_certificate_cache_that_cannot_be_written_is_refused(tmp_path: Path) -> None:
    (tmp_path / ".cache").mkdir()
    (tmp_path / ".cache" / "webcam-vlm").write_text("a file where the folder should be")
    said = refused_start("--self-signed", home=tmp_path)
    the_sentence(said, str(tmp_path / ".cache" / "webcam-vlm"), "self-signed")


def test_a_corrupt_cached_self_signed_pair_is_remade(tmp_path: Path) -> None:
    cache = tmp_path / ".cache" / "webcam-vlm"
    cache.mkdir(parents=True)
    (cache / "cert.pem").write_text("-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n")
    (cache / "key.pem").write_text("garbage")
    with AppProcess(["--model", "demo", "--self-signed"], env={"HOME": str(tmp_path)}, ready_timeout_s=90) as app:
        assert requests.get(f"{app.url}/healthz", timeout=5, verify=str(cache / "cert.pem")).status_code == 200
        assert re.search(r"INFO vlm\.tls: made a self-signed certificate .*does not load", app.log()), app.log()


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
        # A phone on plain http gets no camera (browsers give it to https pages and localhost only): say so.
        assert ("other devices get no camera over http: restart with --self-signed" in app.log()) == (scheme == "http")


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


@pytest.mark.unit
def test_a_token_with_url_characters_is_printed_in_a_link_that_carries_it() -> None:
    """A base64 token (``openssl rand -base64``) was printed as it is: its ``+`` reached the server as a space, and
    the link the 401 page tells the user to open answered 401."""
    import app as entry

    token = "q8+Zr/3kT+0aLw9v1M2x&x=1 #"
    link = entry.page_urls(parse_settings(["--port", "5123", "--token", token]), token)[0]
    assert parse_qs(urlsplit(link).query) == {"token": [token]}, link


@pytest.mark.unit
def test_an_operators_certificate_near_its_end_is_served_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Browsers refuse an expired certificate with no hint in the server's log; the log now says when."""
    cert, key = write_pair(tmp_path / "cert.pem", tmp_path / "key.pem", valid_days=-1)
    with caplog.at_level("WARNING", logger="vlm.tls"):
        assert tls_pair(Settings(ssl_cert=str(cert), ssl_key=str(key))) == (str(cert), str(key))
    assert f"the TLS certificate {cert} expired on" in caplog.text
    caplog.clear()
    fresh_cert, fresh_key = write_pair(tmp_path / "fresh-cert.pem", tmp_path / "fresh-key.pem")
    with caplog.at_level("WARNING", logger="vlm.tls"):
        tls_pair(Settings(ssl_cert=str(fresh_cert), ssl_key=str(fresh_key)))
    assert caplog.text == ""


@pytest.mark.parametrize("mode", MODES)
def test_an_operators_certificate_near_its_end_is_warned_about_once(tmp_path: Path, mode: str) -> None:
    """The start checks load the pair; the servers are then given it as it is, not loading it (and warning) again."""
    cert, key = write_pair(tmp_path / "cert.pem", tmp_path / "key.pem", valid_days=-1)
    flags = ["--model", "demo", "--ssl-cert", str(cert), "--ssl-key", str(key), "--async-mode", mode]
    with AppProcess(flags, env={"HOME": str(tmp_path)}, ready_timeout_s=90) as app:
        assert app.log().count(f"the TLS certificate {cert} expired on") == 1, app.log()
