"""What a drain on shutdown waits for (``WebApp.idle``): every answer written out, over either transport."""

from __future__ import annotations

import time

import pytest

from tests.frames import jpeg_data_url
from tests.in_process import IN_PROCESS_TOKEN as TOKEN
from vlm.web import WebApp

pytestmark = pytest.mark.unit


def chat(stream: bool) -> dict[str, object]:
    question = [{"type": "text", "text": "red circle"}, {"type": "image_url", "image_url": {"url": jpeg_data_url()}}]
    return {"model": "any", "messages": [{"role": "user", "content": question}], "stream": stream}


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_a_v1_answer_is_waited_for_until_its_response_is_written(served_app: WebApp, stream: bool) -> None:
    """The scheduler is done with an answer once its sink has it; its HTTP thread still has to write it."""
    client = served_app.app.test_client()
    headers = {"Authorization": f"Bearer {TOKEN}"}
    response = client.post("/v1/chat/completions", json=chat(stream), headers=headers, buffered=False)
    assert response.status_code == 200
    scheduler = served_app.slot.scheduler
    assert scheduler is not None
    deadline = time.monotonic() + 5
    while scheduler.pending() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert scheduler.pending() == 0, "the answer is with its sink"
    assert not served_app.idle(), "the response is not written yet"
    body = b"".join(response.response)
    response.close()
    assert b"echo" in body
    assert served_app.idle()


def test_a_refused_v1_request_is_counted_out_too(served_app: WebApp) -> None:
    response = served_app.app.test_client().get("/v1/models", buffered=False)
    assert response.status_code == 401
    assert not served_app.idle()
    response.close()
    assert served_app.idle(), "the count went down for a request the token check refused before the route ran"
