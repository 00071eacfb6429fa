"""``BodyDeadlines`` on real sockets, with the grace shortened: a body that stops coming is cut, one read whole
is never cut however long its answer takes."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterable
from typing import Any

import pytest

from vlm.servers import body_rate, bounds
from vlm.servers.body_rate import BodyDeadlines

pytestmark = pytest.mark.unit

BODY = b"x" * 100  # at the minimum rate, a tenth of a second


@pytest.fixture(autouse=True)
def short_grace(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bounds, "HEADER_TIMEOUT_S", 0.5)
    monkeypatch.setattr(body_rate, "SWEEP_EVERY_S", 0.1)


def serve_one(app: Any, client_sends: bytes) -> tuple[bytes, float, socket.socket]:
    """``app`` behind ``BodyDeadlines`` on the server end of a socket pair, as gunicorn hands it a request that
    announced ``len(BODY)`` bytes of which the client sent ``client_sends``; what it read and in how long."""
    server, client = socket.socketpair()
    client.sendall(client_sends)
    environ = {
        "gunicorn.socket": server,
        "wsgi.input": server.makefile("rb"),
        "CONTENT_LENGTH": str(len(BODY)),
        "REQUEST_METHOD": "POST",
    }
    started = time.monotonic()
    read = b"".join(BodyDeadlines(app)(environ, lambda *_: None))
    return read, time.monotonic() - started, client


def test_a_body_that_stops_coming_is_cut_once_under_the_rate() -> None:
    def reads_its_body(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        return [environ["wsgi.input"].read(len(BODY))]

    read, took, client = serve_one(reads_its_body, BODY[:10])
    assert read == BODY[:10], "the read under way ended as at a hang-up"
    assert took < 2.0
    client.close()


def test_a_body_read_whole_is_not_cut_while_its_answer_takes_long() -> None:
    shut = threading.Event()

    def answers_slowly(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        body = environ["wsgi.input"].read(len(BODY))
        time.sleep(1.5)  # three times the shortened grace: a generation after the body
        connection = environ["gunicorn.socket"]
        connection.setblocking(False)
        with contextlib.suppress(BlockingIOError):  # nothing to read and not shut: still open
            if connection.recv(1) == b"":
                shut.set()
        return [body]

    read, _, client = serve_one(answers_slowly, BODY)
    assert read == BODY and not shut.is_set()
    client.close()
