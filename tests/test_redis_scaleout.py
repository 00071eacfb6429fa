"""A scaled-out web tier: two app processes share Socket.IO state through a real Redis, and one
model server (``--backend openai``) answers for both.

Clients connect straight to one web process each with the websocket transport; behind a load
balancer the same needs sticky sessions (docs/DEPLOYMENT.md).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import redis
import requests
import socketio

from tests.missing_tools import tool_missing
from tests.openai_client import ask, openai_client
from tests.server_process import AppProcess, free_port, serving
from tests.socket_client import RecordingClient
from vlm.config import parse_settings
from vlm.probes import FAILURES_TO_REPORT, INTERVAL_S, TIMEOUT_S

CHANNEL = "flask-socketio"  # Flask-SocketIO's default pub/sub channel
QUESTIONS = ["what shape is this?", "what color is it?", "how many shapes are there?", "describe the picture"]


class RedisServer:
    """A private ``redis-server`` on a loopback port, which a test may kill and start again on that port."""

    def __init__(self, binary: str) -> None:
        self.binary = binary
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process = self.start()

    def start(self) -> subprocess.Popen[bytes]:
        command = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while True:
            try:
                redis.Redis(port=self.port).ping()
                return server
            except redis.ConnectionError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise
                time.sleep(0.05)

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(10)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    binary = shutil.which("redis-server")
    if binary is None:
        tool_missing("redis-server", "`apt-get install redis-server`", "VLM_SKIP_REDIS")
    server = RedisServer(binary)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def redis_url(redis_server: RedisServer) -> str:
    return redis_server.url


@pytest.fixture(scope="module")
def model_server(tiny_model: Path) -> Iterator[AppProcess]:
    with serving(tiny_model, max_new_tokens=12) as running:
        yield running


@pytest.fixture(scope="module")
def web_tier(redis_url: str, model_server: AppProcess, tiny_model: Path) -> Iterator[list[AppProcess]]:
    args = [
        "--backend",
        "openai",
        "--base-url",
        f"{model_server.url}/v1",
        "--model",
        str(tiny_model),
        "--message-queue",
        redis_url,
    ]
    with AppProcess(args) as first, AppProcess(args) as second:
        yield [first, second]


def close_all(clients: list[RecordingClient]) -> None:
    """In parallel: each websocket close takes the threading server a few seconds to notice."""
    with ThreadPoolExecutor(len(clients)) as pool:
        list(pool.map(RecordingClient.close, clients))


def publishes(redis_url: str) -> int:
    return int(redis.Redis.from_url(redis_url).info("commandstats").get("cmdstat_publish", {}).get("calls", 0))


def test_clients_on_either_process_get_their_own_answers(
    redis_url: str, model_server: AppProcess, web_tier: list[AppProcess], frame: str
) -> None:
    expected = [ask(openai_client(model_server.url), question, frame) for question in QUESTIONS]
    published_before = publishes(redis_url)
    clients = [RecordingClient(web_tier[index % 2].url) for index in range(len(QUESTIONS))]
    try:
        for index, (client, question) in enumerate(zip(clients, QUESTIONS, strict=True)):
            client.sio.emit("query", {"id": f"c{index}", "question": question, "image": frame})
        for index, client in enumerate(clients):
            kind, payload = client.final(f"c{index}")
            assert (kind, payload["answer"]) == ("response", expected[index])
        time.sleep(0.3)  # anything misrouted would have arrived by now
        for index, client in enumerate(clients):
            assert {body["id"] for _, body in client.received} == {f"c{index}"}
            assert [kind for kind, _ in client.received].count("response") == 1
    finally:
        close_all(clients)
    assert publishes(redis_url) == published_before, "an answer to a client of the process never goes through Redis"


def test_an_emit_published_to_redis_reaches_a_client_of_either_process(
    redis_url: str, web_tier: list[AppProcess]
) -> None:
    """An emitter holding no connection at all: delivery can only go through Redis to the owning process."""
    clients = [RecordingClient(web.url) for web in web_tier]
    try:
        listening = redis.Redis.from_url(redis_url)
        deadline = time.monotonic() + 10  # each process subscribes once its first client has connected
        while listening.pubsub_numsub(CHANNEL) != [(CHANNEL.encode(), len(web_tier))]:
            assert time.monotonic() < deadline, f"subscribers: {listening.pubsub_numsub(CHANNEL)}"
            time.sleep(0.05)
        emitter = socketio.RedisManager(redis_url, channel=CHANNEL, write_only=True)
        for index, client in enumerate(clients):
            emitter.emit(
                "response", {"id": f"via-redis-{index}", "answer": "hello"}, to=client.sio.get_sid("/"), namespace="/"
            )
        for index, client in enumerate(clients):
            assert client.final(f"via-redis-{index}", timeout_s=10)[1]["answer"] == "hello"
            assert len(client.received) == 1
    finally:
        close_all(clients)


def test_a_hung_redis_holds_no_answer_to_a_client_of_the_process(
    redis_url: str, web_tier: list[AppProcess], frame: str
) -> None:
    """A Redis that stops answering (a failover, a network partition; here SIGSTOP) held every event of the process
    ~10 s, though each answer's client was connected right there: no answer came within 90 s. And /healthz said
    "ok" throughout: now it says the message queue does not answer, and the log says so once."""
    clients = [RecordingClient(web.url) for web in web_tier]
    redis_pid = int(redis.Redis.from_url(redis_url).info()["process_id"])
    assert all(queue_state(web) == "ok" for web in web_tier)
    os.kill(redis_pid, signal.SIGSTOP)
    try:
        for index, client in enumerate(clients):
            client.sio.emit("query", {"id": f"h{index}", "question": QUESTIONS[index], "image": frame})
        for index, client in enumerate(clients):
            assert client.final(f"h{index}", timeout_s=8)[0] == "response"
        for web in web_tier:
            wait_for_queue_state(web, "unreachable")
    finally:
        os.kill(redis_pid, signal.SIGCONT)
        close_all(clients)
    for web in web_tier:
        wait_for_queue_state(web, "ok")
        log = web.log()
        assert log.count("does not answer (TimeoutError") == 1 and log.count("answers again") == 1, log[-2000:]


def queue_state(web: AppProcess) -> str:
    health = requests.get(f"{web.url}/healthz", timeout=5)
    assert health.status_code == 200, "a process whose Redis is down still serves its own clients"
    return health.json()["message_queue"]


# The probe's period and timeout for each failed check it takes to report one, and a margin for a loaded machine.
NOTICED_S = FAILURES_TO_REPORT * (INTERVAL_S + TIMEOUT_S) + 3


def wait_for_queue_state(web: AppProcess, state: str) -> None:
    deadline = time.monotonic() + NOTICED_S
    while (seen := queue_state(web)) != state:
        assert time.monotonic() < deadline, f"/healthz still says the message queue is {seen}"
        time.sleep(0.2)


def wait_for_subscribers(redis_url: str, count: int, timeout_s: float) -> float:
    """Seconds until ``count`` processes listen on the channel."""
    listening, started = redis.Redis.from_url(redis_url), time.monotonic()
    while listening.pubsub_numsub(CHANNEL) != [(CHANNEL.encode(), count)]:
        assert time.monotonic() < started + timeout_s, f"subscribers: {listening.pubsub_numsub(CHANNEL)}"
        time.sleep(0.1)
    return time.monotonic() - started


def test_every_process_listens_again_within_seconds_of_redis_coming_back(
    redis_server: RedisServer, web_tier: list[AppProcess]
) -> None:
    """python-socketio's listener waits 1, 2, 4 ... 60 s between tries: after a 20-s outage a process stayed deaf
    about 11 s more, and a whole minute after longer ones, while Redis answered and /healthz said so; every watch
    alert sent meanwhile reached no client of another process (scale-out audit). An 8-s outage is enough to tell:
    its tries come at 1, 3, 7 and then 15 s, 7 s after Redis is back. Run last: it restarts Redis."""
    clients = [RecordingClient(web.url) for web in web_tier]
    try:
        wait_for_subscribers(redis_server.url, len(web_tier), timeout_s=10)
        redis_server.kill()
        time.sleep(8)
        redis_server.process = redis_server.start()
        assert wait_for_subscribers(redis_server.url, len(web_tier), timeout_s=30) < 5
        emitter = socketio.RedisManager(redis_server.url, channel=CHANNEL, write_only=True)
        emitter.emit("response", {"id": "to-all", "answer": "hello"}, namespace="/")
        for client in clients:
            assert client.final("to-all", timeout_s=10)[1]["answer"] == "hello"
    finally:
        close_all(clients)


def test_message_queue_is_refused_under_green_async_modes() -> None:
    """The app never monkey-patches, so a Redis client's blocking reads would stall an eventlet/gevent hub."""
    with pytest.raises(SystemExit):
        parse_settings(["--message-queue", "redis://127.0.0.1:6379/0", "--async-mode", "eventlet"])
    assert parse_settings(["--message-queue", "redis://127.0.0.1:6379/0"]).message_queue == "redis://127.0.0.1:6379/0"
