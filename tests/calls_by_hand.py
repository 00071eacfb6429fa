"""Chat completions sent by hand on a raw socket, so that a test can hang up on them, and the app's metrics that
say where they stand."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable

from openai import OpenAI

from tests.attack_tools import connect_from
from tests.metrics_scrape import scrape, value
from tests.openai_client import frame_question
from tests.server_process import AppProcess


def chat_body(frame: str, *, stream: bool, max_tokens: int | None = None) -> bytes:
    limit = {} if max_tokens is None else {"max_tokens": max_tokens}
    return json.dumps(
        {"model": "any", "stream": stream, **limit, "messages": frame_question("describe", frame)}
    ).encode()


def post(app: AppProcess, body: bytes, *, token: str | None = None) -> socket.socket:
    """The request sent (with ``token`` as its bearer token, if given), its answer left unread: the caller hangs up
    by closing the socket."""
    authorization = f"Authorization: Bearer {token}\r\n" if token else ""
    caller = connect_from("127.0.0.1", app.port)
    caller.sendall(
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{app.port}\r\n{authorization}"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    return caller


def hold_the_model(app: AppProcess, frame: str, calls: int = 2) -> list[socket.socket]:
    """Long non-streamed calls that keep a one-row model busy, one after the other, until they are closed: each runs
    to the server's token budget, and two of them hold the model for several seconds even on a fast machine."""
    holders = [post(app, chat_body(frame, stream=False)) for _ in range(calls)]
    eventually(lambda: in_model_queue(app) == calls, "the holding calls were not queued")
    return holders


def let_go(holders: list[socket.socket]) -> None:
    """Hang up on every holding call: each is cancelled, and the model is free for what waits behind them."""
    for holder in holders:
        holder.close()


def streamed_on_a_thread(client: OpenAI, frame: str) -> tuple[threading.Thread, list[str]]:
    """A streamed three-token answer to "describe", read by the official client on a thread of its own, already
    started; its text pieces are in the list once the thread ends."""
    chunks: list[str] = []

    def read() -> None:
        stream = client.chat.completions.create(
            model="any", messages=frame_question("describe", frame), stream=True, max_tokens=3
        )
        chunks.extend(choice.delta.content or "" for chunk in stream for choice in chunk.choices)

    reader = threading.Thread(target=read)
    reader.start()
    return reader, chunks


def eventually(check: Callable[[], bool], what: str, within_s: float = 10.0) -> None:
    deadline = time.monotonic() + within_s
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def in_model_queue(app: AppProcess) -> float:
    """Requests queued or generating."""
    return value(scrape(app), "vlm_queue_depth")


def cancelled_calls(app: AppProcess) -> float:
    return value(scrape(app), "vlm_requests_total", door="http", code="cancelled")
