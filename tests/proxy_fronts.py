"""Debian's nginx or HAProxy in front of a running app, configured by the blocks docs/DEPLOYMENT.md gives users.

Each block is read from the document and changed only where a test machine must differ: the upstream's port,
the listening address, the certificate, the log's path and, where a test asks, the proxy's idle timeout. Each
change must find its line, so the test follows the document and fails if the document moves on without it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import requests

from tests.certs import write_pair
from tests.missing_tools import tool_missing
from tests.server_process import REPO, free_port

DEPLOYMENT = REPO / "docs" / "DEPLOYMENT.md"
PROXIES = ("nginx", "haproxy")


@dataclass(frozen=True)
class Front:
    url: str
    cert: Path  # the proxy's certificate, self-signed: a client checks the connection against it
    access_log: Path
    websocket_logged: str  # a pattern of the access log's line for a Socket.IO websocket


def documented_block(language: str) -> str:
    """The guide's first code block in ``language``: the one for the host's root, with TLS."""
    found = re.search(rf"```{language}\n(.*?)```", DEPLOYMENT.read_text(), re.DOTALL)
    assert found, f"{DEPLOYMENT} no longer has a {language} block"
    return found.group(1)


def changed(block: str, pattern: str, replacement: str) -> str:
    result, made = re.subn(pattern, replacement, block, flags=re.MULTILINE)
    assert made, f"the documented block has no line matching {pattern!r}"
    return result


def nginx_configuration(app_port: int, port: int, folder: Path, idle_timeout_s: float | None) -> str:
    block = documented_block("nginx")
    block = changed(
        block,
        r"^(\s*)server 127\.0\.0\.1:\d+;\n(?:\s*server 127\.0\.0\.1:\d+;\n)*",
        rf"\1server 127.0.0.1:{app_port};\n",
    )
    block = changed(block, r"listen 443 ssl;", f"listen 127.0.0.1:{port} ssl;")
    block = changed(block, r"ssl_certificate\s+\S+;", f"ssl_certificate {folder / 'cert.pem'};")
    block = changed(block, r"ssl_certificate_key\s+\S+;", f"ssl_certificate_key {folder / 'key.pem'};")
    block = changed(block, r"access_log /var/log/nginx/\S+", f"access_log {folder / 'access.log'}")
    if idle_timeout_s is not None:
        block = changed(block, r"proxy_read_timeout \S+;", f"proxy_read_timeout {idle_timeout_s:g}s;")
    temp = "\n".join(
        f"    {kind}_temp_path {folder / kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return (
        f"daemon off;\nmaster_process off;\npid {folder / 'nginx.pid'};\nerror_log {folder / 'error.log'} info;\n"
        f"events {{}}\nhttp {{\n{temp}\n{block}}}\n"
    )


# The guide appends its block to Debian's /etc/haproxy/haproxy.cfg: these are that file's `defaults` (its
# errorfile lines aside), under a `global` that logs to standard output instead of syslog.
HAPROXY_DEBIAN = """global
    log stdout format raw local0
defaults
    log global
    mode http
    option httplog
    option dontlognull
    timeout connect 5000
    timeout client  50000
    timeout server  50000
"""


def haproxy_configuration(app_port: int, port: int, folder: Path, idle_timeout_s: float | None) -> str:
    block = documented_block("haproxy")
    block = changed(block, r"bind :443 ssl crt \S+", f"bind 127.0.0.1:{port} ssl crt {folder / 'both.pem'}")
    block = changed(block, r"server app 127\.0\.0\.1:\d+", f"server app 127.0.0.1:{app_port}")
    if idle_timeout_s is not None:
        block = changed(block, r"timeout (client|server) \S+", rf"timeout \1 {idle_timeout_s:g}s")
    return HAPROXY_DEBIAN + block


@dataclass(frozen=True)
class Proxy:
    configuration: Callable[[int, int, Path, float | None], str]
    check: Callable[[str, Path, Path], list[str]]  # the binary, config, folder: a command that checks the config
    run: Callable[[str, Path, Path], list[str]]  # the same: a command that serves in the foreground
    log_name: str  # the access log's file in the folder (HAProxy's is its standard output)
    websocket_logged: str


KINDS = {
    "nginx": Proxy(
        nginx_configuration,
        lambda binary, conf, folder: [binary, "-t", "-c", str(conf), "-p", str(folder)],
        lambda binary, conf, folder: [binary, "-c", str(conf), "-p", str(folder)],
        "access.log",
        r'"GET /socket\.io/" 101 ',
    ),
    "haproxy": Proxy(
        haproxy_configuration,
        lambda binary, conf, folder: [binary, "-c", "-f", str(conf)],
        lambda binary, conf, folder: [binary, "-db", "-f", str(conf)],
        "output.log",
        r' 101 .*"GET" "/socket\.io/"',
    ),
}


def installed(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin")
    if found is None:
        tool_missing(name, f"`apt-get install {name}`", f"VLM_SKIP_{name.upper()}")
    return found


@contextmanager
def proxy_in_front(name: str, app_port: int, folder: Path, *, idle_timeout_s: float | None = None) -> Iterator[Front]:
    """``name`` serving https on a free loopback port, proxying to the app on ``app_port``, until the block ends."""
    kind, binary, port = KINDS[name], installed(name), free_port()
    cert, key = write_pair(folder / "cert.pem", folder / "key.pem")
    (folder / "both.pem").write_text(cert.read_text() + key.read_text())
    conf = folder / f"{name}.conf"
    conf.write_text(kind.configuration(app_port, port, folder, idle_timeout_s))
    checked = subprocess.run(kind.check(binary, conf, folder), capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    with (folder / "output.log").open("wb") as output:
        process = subprocess.Popen(kind.run(binary, conf, folder), stdout=output, stderr=subprocess.STDOUT)
    front = Front(f"https://127.0.0.1:{port}", cert, folder / kind.log_name, kind.websocket_logged)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                requests.get(f"{front.url}/healthz", verify=front.cert, timeout=2)
                break
            except requests.ConnectionError:
                assert process.poll() is None and time.monotonic() < deadline, f"{name} did not start"
                time.sleep(0.1)
        yield front
    finally:
        process.terminate()
        process.wait(10)
