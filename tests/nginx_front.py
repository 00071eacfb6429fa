"""Debian's nginx in front of a running app, configured by the block docs/DEPLOYMENT.md gives users.

The block is read from the document and changed only where a test machine must differ: the upstream's ports,
the listening address, the certificate, the log's path and, where a test asks, ``proxy_read_timeout``. Each
change must find its line, so the test follows the document and fails if the document moves on without it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from tests.certs import write_pair
from tests.server_process import REPO, free_port

DEPLOYMENT = REPO / "docs" / "DEPLOYMENT.md"


@dataclass(frozen=True)
class Front:
    url: str
    cert: Path  # nginx's certificate, self-signed: a client checks the connection against it
    access_log: Path


def documented_block() -> str:
    """The first ``nginx`` code block of the deployment guide: the one with sticky sessions and TLS."""
    found = re.search(r"```nginx\n(.*?)```", DEPLOYMENT.read_text(), re.DOTALL)
    assert found, f"{DEPLOYMENT} no longer has an nginx block"
    return found.group(1)


def changed(block: str, pattern: str, replacement: str) -> str:
    result, made = re.subn(pattern, replacement, block, flags=re.MULTILINE)
    assert made, f"the documented nginx block has no line matching {pattern!r}"
    return result


def configuration(app_port: int, port: int, folder: Path, *, read_timeout_s: float | None) -> str:
    cert, key = folder / "cert.pem", folder / "key.pem"
    block = documented_block()
    block = changed(
        block,
        r"^(\s*)server 127\.0\.0\.1:\d+;\n(?:\s*server 127\.0\.0\.1:\d+;\n)*",
        rf"\1server 127.0.0.1:{app_port};\n",
    )
    block = changed(block, r"listen 443 ssl;", f"listen 127.0.0.1:{port} ssl;")
    block = changed(block, r"ssl_certificate\s+\S+;", f"ssl_certificate {cert};")
    block = changed(block, r"ssl_certificate_key\s+\S+;", f"ssl_certificate_key {key};")
    block = changed(block, r"access_log /var/log/nginx/\S+", f"access_log {folder / 'access.log'}")
    if read_timeout_s is not None:
        block = changed(block, r"proxy_read_timeout \S+;", f"proxy_read_timeout {read_timeout_s:g}s;")
    temp = "\n".join(
        f"    {kind}_temp_path {folder / kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return (
        f"daemon off;\nmaster_process off;\npid {folder / 'nginx.pid'};\nerror_log {folder / 'error.log'} info;\n"
        f"events {{}}\nhttp {{\n{temp}\n{block}}}\n"
    )


def nginx() -> str:
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")
    if found is None:
        if os.environ.get("VLM_SKIP_NGINX") == "1":
            pytest.skip("nginx is not installed and VLM_SKIP_NGINX=1")
        pytest.fail("nginx is not installed: `apt-get install nginx` (or set VLM_SKIP_NGINX=1 to skip)")
    return found


@contextmanager
def nginx_in_front(app_port: int, folder: Path, *, read_timeout_s: float | None = None) -> Iterator[Front]:
    """nginx serving https on a free loopback port, proxying to the app on ``app_port``, until the block ends."""
    binary = nginx()
    port = free_port()
    conf = folder / "nginx.conf"
    write_pair(folder / "cert.pem", folder / "key.pem")
    conf.write_text(configuration(app_port, port, folder, read_timeout_s=read_timeout_s))
    checked = subprocess.run([binary, "-t", "-c", str(conf), "-p", str(folder)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr
    with (folder / "stderr.log").open("wb") as stderr:
        process = subprocess.Popen([binary, "-c", str(conf), "-p", str(folder)], stderr=stderr)
    front = Front(f"https://127.0.0.1:{port}", folder / "cert.pem", folder / "access.log")
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                requests.get(f"{front.url}/healthz", verify=front.cert, timeout=2)
                break
            except requests.ConnectionError:
                assert process.poll() is None and time.monotonic() < deadline, "nginx did not start"
                time.sleep(0.1)
        yield front
    finally:
        process.terminate()
        process.wait(10)
