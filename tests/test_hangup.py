"""``hung_up`` on real sockets: what counts as the client gone, and what does not."""

from __future__ import annotations

import errno
import select
import socket
import ssl
import struct
import threading
from pathlib import Path

import pytest

from tests.certs import write_pair
from vlm import hangup

pytestmark = pytest.mark.unit


def environ_of(connection: socket.socket) -> dict[str, object]:
    return {"gunicorn.socket": connection}


def test_a_client_that_closed_or_reset_has_hung_up_and_one_still_there_has_not() -> None:
    server, client = socket.socketpair()
    assert not hangup.hung_up(environ_of(server))
    client.sendall(b"x")  # a byte waiting to be read is not a hang-up
    assert not hangup.hung_up(environ_of(server))
    server.recv(1)
    client.close()
    assert hangup.hung_up(environ_of(server))
    server.close()

    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()  # a reset (RST), as a crashed client's kernel sends
    assert hangup.hung_up(environ_of(server))
    server.close()
    listener.close()


def test_running_out_of_descriptors_is_not_taken_for_a_hang_up(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any OSError read as a hang-up, so a busy server (EMFILE) cancelled generations still being waited for."""
    server, client = socket.socketpair()
    client.sendall(b"x")

    def no_more_files(descriptor: int) -> int:
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(hangup.os, "dup", no_more_files)
    assert not hangup.hung_up(environ_of(server))
    server.close()
    client.close()


def connected() -> tuple[socket.socket, socket.socket]:
    """A TCP connection on loopback: the server's end, the client's end."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
    return server, client


def readable(connection: socket.socket) -> bool:
    return bool(select.select([connection], [], [], 5)[0])


def test_a_client_that_closed_behind_bytes_nobody_read_has_hung_up() -> None:
    """Only EOF counted, so bytes sent before the close (a pipelined request, a TLS alert) hid the close for good."""
    server, client = connected()
    client.sendall(b"x")
    assert readable(server) and not hangup.hung_up(environ_of(server))
    client.close()
    assert readable(server) and hangup.hung_up(environ_of(server))
    server.close()


def test_a_tls_client_that_says_goodbye_before_it_closes_has_hung_up(tmp_path: Path) -> None:
    """curl and Go's TLS connections end with a close_notify alert before their FIN (Python's do not). The
    alert's bytes wait unread under the server's TLS socket while the request waits for its answer."""
    cert, key = write_pair(tmp_path / "cert.pem", tmp_path / "key.pem")
    serving = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    serving.load_cert_chain(cert, key)
    raw_server, raw_client = connected()
    handshakes: list[ssl.SSLSocket] = []
    shaking = threading.Thread(target=lambda: handshakes.append(serving.wrap_socket(raw_server, server_side=True)))
    shaking.start()
    client = ssl.create_default_context(cafile=cert).wrap_socket(raw_client, server_hostname="127.0.0.1")
    shaking.join(5)
    server = handshakes[0]
    client.sendall(b"GET / HTTP/1.1\r\n\r\n")
    assert server.recv(100).startswith(b"GET")
    assert not hangup.hung_up(environ_of(server))
    client.setblocking(False)
    with pytest.raises(ssl.SSLWantReadError):  # its close_notify is sent; it would wait for the server's
        client.unwrap()
    client.close()
    assert readable(server) and hangup.hung_up(environ_of(server))
    server.close()
