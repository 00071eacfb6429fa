"""``--backend openai`` forwards each request the moment it is admitted, never in waves.

The upstream is a real instance of this app serving the slow random model (its answers last
as long as their token budget), reached over its real ``/v1``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from tests.doubles import RecordingSinkDouble
from tests.server_process import AppProcess, serving
from vlm.backends.base import Job
from vlm.backends.openai_backend import OpenAIBackend
from vlm.scheduler import Request, Scheduler

TOKEN = "upstream-secret"
FRAME = Image.new("RGB", (320, 240), "red")


@pytest.fixture(scope="module")
def upstream(slow_model: Path) -> Iterator[AppProcess]:
    """An upstream that batches continuously (the default), as vLLM does: a short request is answered beside
    a long one."""
    with serving(slow_model, "--request-timeout", "600", max_new_tokens=200, token=TOKEN) as running:
        yield running


def ask(sink: RecordingSinkDouble, rid: str, client: str, tokens: int) -> Request:
    job = Job(task="query", image=FRAME, image_key=rid, text="describe the image", max_new_tokens=tokens)
    return Request(id=rid, client=client, job=job, sink=sink.to(rid), door="http")


def test_a_request_is_forwarded_while_another_streams(upstream: AppProcess, slow_model: Path) -> None:
    backend = OpenAIBackend.load(
        f"{upstream.url}/v1", api_key=TOKEN, model=str(slow_model), timeout_s=120, max_batch_size=4
    )
    sink = RecordingSinkDouble()
    scheduler = Scheduler(backend, batch_window_s=0, timeout_s=600)
    scheduler.submit(ask(sink, "long", "alice", 200))
    with sink.finished:
        assert sink.finished.wait_for(lambda: any(e[:2] == ("stream", "long") for e in sink.events), 60)
    scheduler.submit(ask(sink, "short", "bob", 3))
    assert list(sink.wait_finals(1, timeout_s=60)) == ["short"], "answered while the long one still streams"
    finals = sink.wait_finals(2, timeout_s=120)
    assert finals["long"][0] == finals["short"][0] == "response", finals
