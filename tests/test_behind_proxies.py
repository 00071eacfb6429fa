"""The app behind Debian's nginx and HAProxy, each configured as docs/DEPLOYMENT.md tells users to
(tests/proxy_fronts.py), with the proxy's idle timeout cut to 1 s: a streamed ``/v1`` answer that waits its turn
longer than that still arrives, while a non-streamed one, which has nothing to send while it waits, is cut by the
proxy (504), and its request is then cancelled in the app. The page itself through the same proxies is in
tests/browser/test_behind_proxies.py."""

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
from tests.openai_client import ask, openai_client
from tests.proxy_fronts import PROXIES, Front, proxy_in_front
from tests.server_process import AppProcess, serving

IDLE_TIMEOUT_S = 1.0


@pytest.fixture(scope="module")
def app(slow_model: Path) -> Iterator[AppProcess]:
    flags = ("--trusted-proxy", "--max-batch-size", "1", "--sse-keepalive", "0.3")
    with serving(slow_model, *flags, max_new_tokens=400) as running:
        yield running


@pytest.fixture(scope="module", params=PROXIES)
def front(request: pytest.FixtureRequest, app: AppProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Front]:
    folder = tmp_path_factory.mktemp(request.param)
    with proxy_in_front(request.param, app.port, folder, idle_timeout_s=IDLE_TIMEOUT_S) as proxy:
        yield proxy


def test_a_stream_outlasts_the_proxys_idle_timeout_while_it_waits_its_turn(
    app: AppProcess, front: Front, frame: str
) -> None:
    cancelled_before = cancelled_calls(app)  # the app serves both proxies' runs
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
        assert cut.status_code == 504, "the proxy's idle timeout cuts a call with nothing to send while it waits"
        assert time.monotonic() - started >= IDLE_TIMEOUT_S
        eventually(
            lambda: cancelled_calls(app) == cancelled_before + 1,
            "the proxy hung up on the app, which kept the call's place",
        )
        time.sleep(IDLE_TIMEOUT_S)
        assert reader.is_alive(), "the stream waits on past the proxy's timeout"
    finally:
        let_go(holders)
    reader.join(60)
    assert not reader.is_alive() and "".join(chunks) == ask(openai_client(app.url), "describe", frame, max_tokens=3)
    eventually(lambda: in_model_queue(app) == 0, "the model's queue did not empty")
