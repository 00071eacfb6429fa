"""Helpers for the attack tests: raw loopback connections, the server's resource use, a bystander.

Everything here talks to a real app process on 127.0.0.x. Loopback has the whole 127/8, so an
attacker can come from 127.0.0.2 while the bystander comes from 127.0.0.1, as two machines would.
"""

from __future__ import annotations

import re
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
import websocket

from tests.server_process import AppProcess
from tests.socket_client import RecordingClient

ATTACKER = "127.0.0.2"


@dataclass(frozen=True)
class Usage:
    fds: int
    threads: int
    rss_mib: float


def usage(app: AppProcess) -> Usage:
    assert app.process is not None
    proc = Path(f"/proc/{app.process.pid}")
    threads = next(
        int(line.split()[1]) for line in (proc / "status").read_text().splitlines() if line.startswith("Threads:")
    )
    return Usage(fds=len(list((proc / "fd").iterdir())), threads=threads, rss_mib=app.memory_mib())


def wait_for_recovery(
    app: AppProcess, baseline: Usage, *, within_s: float = 12.0, fds: int = 10, threads: int = 12, rss_mib: float = 80.0
) -> Usage:
    """Poll until descriptors, threads and RSS are back near ``baseline``; fail with both if they never are."""
    deadline = time.monotonic() + within_s
    while True:
        now = usage(app)
        if (
            now.fds <= baseline.fds + fds
            and now.threads <= baseline.threads + threads
            and now.rss_mib <= baseline.rss_mib + rss_mib
        ):
            return now
        if time.monotonic() > deadline:
            raise AssertionError(f"not back near baseline {within_s}s after the attack: {baseline} -> {now}")
        time.sleep(0.25)


def assert_bystander_served(
    app: AppProcess, frame: str, *, within_s: float = 5.0, auth: dict[str, str] | None = None
) -> None:
    """Another client, from its own address, gets /healthz and an answer promptly."""
    started = time.monotonic()
    assert requests.get(f"{app.url}/healthz", timeout=within_s).status_code == 200
    client = RecordingClient(app.url, auth=auth)
    try:
        kind, payload = client.ask({"id": "bystander", "question": "what is this?", "image": frame}, timeout_s=within_s)
    finally:
        client.close()
    assert kind == "response", payload
    assert time.monotonic() - started < within_s


def connect_from(
    address: str, port: int, *, timeout_s: float = 5.0, receive_buffer: int | None = None
) -> socket.socket:
    connection = socket.socket()
    if receive_buffer is not None:
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    connection.bind((address, 0))
    connection.settimeout(timeout_s)
    connection.connect(("127.0.0.1", port))
    return connection


def read_response(connection: socket.socket) -> bytes:
    """Whatever the server sends until it closes (or resets) the connection or goes quiet (the socket's timeout)."""
    data = b""
    try:
        while chunk := connection.recv(65536):
            data += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    return data


def get_raw(port: int, path: str, *, address: str = ATTACKER) -> bytes:
    """One GET on its own connection from ``address``; returns the raw response."""
    with connect_from(address, port) as connection:
        connection.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode())
        return read_response(connection)


def polling_handshake(app: AppProcess, *, address: str = ATTACKER) -> str:
    """Open an Engine.IO session the way every client starts: one unauthenticated GET. Returns its sid."""
    reply = get_raw(app.port, "/socket.io/?EIO=4&transport=polling", address=address)
    assert reply.startswith(b"HTTP/1.1 200"), reply[:300]
    found = re.search(rb'"sid":"([^"]+)"', reply)  # the body may be chunked
    assert found, reply[:300]
    return found.group(1).decode()


def post_raw(
    port: int,
    path: str,
    body: bytes,
    *,
    headers: dict[str, str] | None = None,
    content_length: int | None = None,
    address: str = "127.0.0.1",
) -> bytes:
    """One POST on its own connection from ``address``; the raw response (empty if the server never answered)."""
    lines = [
        f"POST {path} HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Content-Type: text/plain;charset=UTF-8",
        f"Content-Length: {len(body) if content_length is None else content_length}",
        *(f"{name}: {value}" for name, value in (headers or {}).items()),
    ]
    with connect_from(address, port) as connection:
        connection.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        return read_response(connection)


def flood(connection: Any, packet: str, within_s: float) -> tuple[float, int]:
    """Send ``packet`` on a websocket again and again until the server cuts it off or ``within_s`` has passed;
    returns the seconds it took and the packets sent."""
    started, sent = time.monotonic(), 0
    try:
        while time.monotonic() - started < within_s:
            connection.send(packet)
            sent += 1
    except (websocket.WebSocketException, OSError):
        pass  # cut off by the server: what should happen
    return time.monotonic() - started, sent
