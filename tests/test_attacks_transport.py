"""Process tests: transport-level attacks from the s22 audit, against the real app in every async mode.

As in tests/test_attacks.py, each attack is a bounded loop from 127.0.0.x, after which a bystander
(another address) must be answered promptly and the server's descriptors, threads and RSS must come back
near where they were. One server per async mode serves every test here.
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
import websocket

from tests.attack_tools import assert_bystander_served, connect_from, flood, read_response, wait_for_recovery
from tests.server_process import AppProcess
from tests.test_attacks import AUTH, TOKEN, limited, raw_socketio, settled
from vlm.servers.bounds import HEADER_TIMEOUT_S
from vlm.sessions import HANDSHAKE_TIMEOUT_S

TRICKLE_EVERY_S = 2.0
CUT_SLACK_S = 3.0  # the deadline is checked each second (gunicorn), or at the next trickled byte (websocket)


@pytest.fixture(scope="module", params=["threading", "gevent", "eventlet"])
def server(request: pytest.FixtureRequest, tiny_model: Path) -> Iterator[AppProcess]:
    with limited(tiny_model, "--async-mode", request.param) as app:
        yield app


def closed_by_server(connection: socket.socket) -> bool:
    """Whether the server has closed (or reset) the connection; whatever it answered first is read and dropped."""
    try:
        while select.select([connection], [], [], 0)[0]:
            if not connection.recv(65536):
                return True
    except OSError:
        return True
    return False


def ended_by_server(connection: socket.socket, within_s: float = 3.0) -> bool:
    """Whether the server closes (or resets) the connection within ``within_s``, whatever it sends first."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if closed_by_server(connection):
            return True
        time.sleep(0.1)
    return False


def trickle(connections: list[socket.socket], byte: bytes, within_s: float) -> dict[int, float]:
    """Send ``byte`` on each connection every ``TRICKLE_EVERY_S`` for at most ``within_s``; returns when the
    server closed each (seconds from the start), by index."""
    started, cut = time.monotonic(), {}
    while len(cut) < len(connections) and time.monotonic() - started < within_s:
        time.sleep(TRICKLE_EVERY_S)
        for index, connection in enumerate(connections):
            if index in cut:
                continue
            with contextlib.suppress(OSError):  # closed: seen just below
                connection.sendall(byte)
            if closed_by_server(connection):
                cut[index] = time.monotonic() - started
    return cut


def websocket_frame_header(length: int) -> bytes:
    """A masked (mask 0) final text frame announcing ``length`` bytes of payload, as a client sends it."""
    return bytes([0x81, 0xFF]) + struct.pack(">Q", length) + b"\x00\x00\x00\x00"


def test_trickled_headers_and_websocket_messages_are_cut(server: AppProcess, frame: str) -> None:
    """Finding 1: headers sent a byte every 2 s, an authenticated websocket whose 1 MiB message comes a byte
    every 2 s, and an authenticated request whose body does. Before: each held for good in every mode (messages:
    threading and gevent), so four addresses of 64 such connections took all 256 and locked everyone out. Now
    headers are cut at the 10 s deadline, a message or a body once it has averaged under 1 KiB/s for 10 s; and
    meanwhile a client sending messages back to back at an honest rate is not cut."""
    baseline = settled(server)
    honest = ThreadPoolExecutor(1).submit(send_back_to_back, server)
    headers = []
    for index in range(8):
        connection = connect_from(f"127.0.5.{1 + index % 2}", server.port)
        connection.sendall(f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n".encode())
        headers.append(connection)
    message = raw_socketio(server, address="127.0.5.3")
    message.sock.sendall(websocket_frame_header(1 << 20))
    body = connect_from("127.0.5.5", server.port)
    body.sendall(
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nAuthorization: Bearer {TOKEN}\r\n"
        "Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{".encode()
    )
    try:
        held = [*headers, message.sock, body]
        cut = trickle(held, b" ", within_s=2 * HEADER_TIMEOUT_S + 2 * CUT_SLACK_S)
    finally:
        for connection in [*headers, body]:
            connection.close()
        message.close()
    assert sorted(cut) == list(range(len(held))), f"held after {2 * HEADER_TIMEOUT_S + 2 * CUT_SLACK_S:.0f}s: {cut}"
    assert max(cut[index] for index in range(len(headers))) < HEADER_TIMEOUT_S + CUT_SLACK_S, cut
    assert cut[len(headers)] < 2 * HEADER_TIMEOUT_S + CUT_SLACK_S, cut
    assert cut[len(headers) + 1] < HEADER_TIMEOUT_S + CUT_SLACK_S, "a request body has the websocket's rate too"
    assert "Traceback" not in server.log()
    assert honest.result(timeout=30) == '431[{"id":"x","cancelled":false}]', "the honest sender: connected, answered"
    assert_bystander_served(server, frame, auth=AUTH)
    wait_for_recovery(server, baseline)


def send_back_to_back(server: AppProcess) -> str:
    """16 messages of 20 KB in a row at 20 KB/s (20 times the minimum rate), in writes that do not line up with
    them, then a cancel; the server's answer to it. The rate check timed a message from the start of an earlier one
    that ended in the same read, so such a client on a slow link was cut after 10-14 s."""
    sender = raw_socketio(server, address="127.0.5.7")
    stream = b"".join(
        websocket.ABNF.create_frame(f'42["nope","{"x" * 20_000}{index}"]', websocket.ABNF.OPCODE_TEXT).format()
        for index in range(16)
    )
    chunk, rate = 4000, 20_000
    try:
        for start in range(0, len(stream), chunk):  # writes that do not line up with the messages
            sender.sock.sendall(stream[start : start + chunk])
            time.sleep(chunk / rate)
        sender.send('421["cancel",{"id":"x"}]')
        while (reply := sender.recv()) == "2":  # the server's ping, every 10 s
            sender.send("3")
        return str(reply)
    finally:
        sender.close()


def test_a_websocket_flood_before_connect_leaves_the_server_responsive(server: AppProcess, frame: str) -> None:
    """Finding 2: Engine.IO pings as fast as one websocket can send them, never a Socket.IO connect. Before, under
    eventlet, the flood held the hub: /healthz waited 12-17 s and the 5 s sweep never ran, so it went on for good."""
    baseline = settled(server)
    flooder = websocket.WebSocket()
    flooder.sock_opt.timeout = 5
    flooder.connect(
        f"ws://127.0.0.1:{server.port}/socket.io/?EIO=4&transport=websocket",
        socket=connect_from("127.0.5.4", server.port),
    )
    assert flooder.recv().startswith("0{")
    flooder.settimeout(1.0)  # a server that stops reading it ends the flood within a second
    waits: list[float] = []
    flooding = threading.Event()
    flooding.set()

    def watch_healthz() -> None:
        while flooding.is_set():
            started = time.monotonic()
            requests.get(f"{server.url}/healthz", timeout=20)
            waits.append(time.monotonic() - started)
            time.sleep(0.1)

    watcher = threading.Thread(target=watch_healthz)
    watcher.start()
    try:
        cut_after, sent = flood(flooder, "2", within_s=HANDSHAKE_TIMEOUT_S + 5)
    finally:
        flooding.clear()
        watcher.join()
    try:
        assert cut_after < HANDSHAKE_TIMEOUT_S + 4, f"still read after {cut_after:.1f}s of flooding ({sent} pings)"
        assert ended_by_server(flooder.sock), "the server stopped reading the flooder but kept its connection"
    finally:
        flooder.close()
    assert max(waits) < 2.0, f"/healthz waited {max(waits):.2f}s during the flood"
    assert_bystander_served(server, frame, auth=AUTH)
    wait_for_recovery(server, baseline)


def test_malformed_requests_log_one_masked_line_and_no_traceback(server: AppProcess) -> None:
    """Findings 5 and 6: eventlet wrote ``?token=`` unmasked to stderr for its 431 and 505 answers; gevent printed
    a traceback for more than 100 headers."""
    logged = len(server.log())
    requests_sent = [
        f"GET /?token={TOKEN} HTTP/9.9\r\nHost: 127.0.0.1\r\n\r\n",
        f"GET /?token={TOKEN} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: {'b' * 70_000}\r\n\r\n",
        f"GET /?token={TOKEN} HTTP/1.1\r\nHost: 127.0.0.1\r\n" + "".join(f"X-{i}: a\r\n" for i in range(120)) + "\r\n",
    ]
    for raw in requests_sent:
        with connect_from("127.0.5.5", server.port, timeout_s=3) as connection:
            connection.sendall(raw.encode())
            assert read_response(connection), raw[:40]  # answered (eventlet's 505 is a page without a status line)
    time.sleep(0.5)  # the server's log lines are written after its answer
    added = server.log()[logged:]
    assert TOKEN not in added, added
    assert "Traceback" not in added, added


def test_content_length_with_transfer_encoding_is_refused_and_closed(server: AppProcess) -> None:
    """Finding 8: gevent read such a body by Transfer-Encoding and answered the request smuggled after it."""
    body = b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    with connect_from("127.0.5.6", server.port, timeout_s=3) as connection:
        connection.sendall(
            b"POST /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 4\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n" + body
        )
        reply = read_response(connection)
        closed = closed_by_server(connection)
    assert reply.startswith(b"HTTP/1.1 400") or reply.startswith(b"HTTP/1.0 400"), reply[:200]
    assert reply.count(b"HTTP/1.") == 1, reply
    assert closed
