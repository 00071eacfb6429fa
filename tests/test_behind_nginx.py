"""The app behind Debian's nginx, configured as docs/DEPLOYMENT.md tells users to (tests/nginx_front.py), with the
proxy's idle timeout cut to 2 s: a streamed ``/v1`` answer that waits its turn longer than that still arrives,
while a non-streamed one, which has nothing to send while it waits, is cut by nginx, and its request is then
cancelled in the app. The page itself through the same nginx is in tests/browser/test_behind_nginx.py."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from tests.calls_by_hand import (
    cancelled_calls,
    chat_body,
    eventually,
    hold_the_model,
    in_model_queue,
    let_go,
    streamed_on_a_thread,
)
from tests.nginx_front import Front, nginx_in_front
from tests.openai_client import ask, openai_client
from tests.server_process import AppProcess, serving

PROXY_READ_TIMEOUT_S = 1.0


@pytest.fixture(scope="module")
def app(slow_model: Path) -> Iterator[AppProcess]:
    flags = ("--trusted-proxy", "--max-batch-size", "1", "--sse-keepalive", "0.3")
    with serving(slow_model, *flags, max_new_tokens=400) as running:
        yield running


@pytest.fixture(scope="module")
def front(app: AppProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Front]:
    with nginx_in_front(app.port, tmp_path_factory.mktemp("nginx"), read_timeout_s=PROXY_READ_TIMEOUT_S) as nginx:
        yield nginx


def test_a_stream_outlasts_the_proxys_idle_timeout_while_it_waits_its_turn(
    app: AppProcess, front: Front, frame: str
) -> None:
    holders = hold_the_model(app, frame)  # straight to the app
    try:
        reader, chunks = streamed_on_a_thread(openai_client(front.url, ca=front.cert), frame)
        started = time.monotonic()
        with httpx2.Client(verify=str(front.cert), timeout=30) as plain:
            cut = plain.post(
                f"{front.url}/v1/chat/completions",
                content=chat_body(frame, stream=False),
                headers={"Content-Type": "application/json"},
            )
        assert cut.status_code == 504, "nginx's idle timeout cuts a call with nothing to send while it waits"
        assert time.monotonic() - started >= PROXY_READ_TIMEOUT_S
        eventually(lambda: cancelled_calls(app) == 1, "nginx hung up on the app, which kept the call's place")
        time.sleep(PROXY_READ_TIMEOUT_S)
        assert reader.is_alive(), "the stream waits on past nginx's timeout"
    finally:
        let_go(holders)
    reader.join(60)
    assert not reader.is_alive() and "".join(chunks) == ask(openai_client(app.url), "describe", frame, max_tokens=3)
    eventually(lambda: in_model_queue(app) == 0, "the model's queue did not empty")
