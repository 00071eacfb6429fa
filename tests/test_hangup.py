"""``hung_up`` on real sockets: what counts as the client gone, and what does not."""

from __future__ import annotations

import errno
import socket
import struct

import pytest

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
