"""One typed result, each transport's own wire shape: Socket.IO, ``/v1`` (JSON and SSE), metrics, HTTP statuses."""

from __future__ import annotations

import json

import pytest
from flask import Flask
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from vlm.backends.base import Result
from vlm.errors import Code, VlmError, http_status
from vlm.metrics import Metrics
from vlm.openai_api import error_response
from vlm.openai_chat import Completion
from vlm.openai_responses import ResponseObject
from vlm.openai_wire import KEEPALIVE, ApiRequest, error_body
from vlm.protocol import Incoming
from vlm.results import Answer, Timing
from vlm.socket_sink import SocketSink, error_event, response_payload

pytestmark = pytest.mark.unit

STREAM_EVENT: TypeAdapter[ResponseStreamEvent] = TypeAdapter(ResponseStreamEvent)
TIMING = Timing(queue_ms=1.0, decode_ms=2.0, model_ms=30.0, first_token_ms=5.0, total_ms=33.5)
POINT = Answer("p1", "point", Result(answer="", tokens=4, prompt_tokens=9, points=[{"x": 0.5, "y": 0.25}]), TIMING)
QUERY = Answer("q1", "query", Result(answer="a red circle", tokens=3, prompt_tokens=12, finish_reason="length"), TIMING)


def test_socketio_response_shape() -> None:
    assert json.dumps(response_payload(POINT)) == json.dumps(
        {
            "id": "p1",
            "answer": "",
            "finish_reason": "stop",
            "timing": {
                "queue_ms": 1.0,
                "decode_ms": 2.0,
                "model_ms": 30.0,
                "first_token_ms": 5.0,
                "total_ms": 33.5,
                "tokens": 4,
                "prompt_tokens": 9,
            },
            "skill": "point",
            "points": [{"x": 0.5, "y": 0.25}],
        }
    )
    assert "skill" not in response_payload(QUERY) and "objects" not in response_payload(QUERY)


def test_socketio_errors_for_clients_with_and_without_ids() -> None:
    error = VlmError(Code.BUSY, "the server is busy")
    assert json.dumps(error_event("r", error, seed=False)) == json.dumps(
        ["query_error", {"id": "r", "code": "busy", "message": "the server is busy"}]
    )
    assert error_event("r", error, seed=True) == (
        "response",
        {
            "id": "r",
            "answer": "Sorry, an error occurred: the server is busy",
            "error": {"code": "busy", "message": "the server is busy"},
        },
    )


def test_a_socket_sink_sends_every_event_to_its_one_client() -> None:
    sent: list[tuple[str, dict[str, object], str | None]] = []
    sink = SocketSink(lambda event, payload, sid: sent.append((event, payload, sid)), "sid-1", "q1")
    sink.stream("a red")
    sink.answered(QUERY)
    sink.failed(VlmError(Code.TIMEOUT, "no answer within 60 s"))
    assert [(event, sid) for event, _, sid in sent] == [
        ("stream", "sid-1"),
        ("response", "sid-1"),
        ("query_error", "sid-1"),
    ]
    assert sent[0][1] == {"id": "q1", "delta": "a red"}


def test_openai_completion_and_stream_from_the_same_answer() -> None:
    completion = Completion(id="chatcmpl-q1", model="demo", include_usage=True, created=1)
    message = completion.body(QUERY)
    assert message["choices"] == [
        {"index": 0, "message": {"role": "assistant", "content": "a red circle"}, "finish_reason": "length"}
    ]
    assert message["usage"] == {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}
    closed: list[bool] = []
    chunks = list(completion.sse(iter([("stream", " a red"), ("answer", QUERY)]), on_close=lambda: closed.append(True)))
    bodies = [json.loads(chunk.removeprefix("data: ")) for chunk in chunks[:-1]]
    text = "".join(body["choices"][0]["delta"].get("content", "") for body in bodies if body["choices"])
    assert text == "a red circle", "the deltas add up to exactly the non-streamed answer"
    assert bodies[-2]["choices"][0]["finish_reason"] == "length" and bodies[-1]["usage"]["total_tokens"] == 15
    assert chunks[-1] == "data: [DONE]\n\n" and closed == [True]


def sse_events(chunks: list[str]) -> list[dict[str, object]]:
    """Each server-sent event's data, checked against its ``event:`` line."""
    events = []
    for chunk in chunks:
        kind, data = chunk.removesuffix("\n\n").split("\n")
        event = json.loads(data.removeprefix("data: "))
        assert kind == f"event: {event['type']}"
        events.append(event)
    return events


def test_a_responses_api_stream_builds_the_response_the_whole_answer_is() -> None:
    asked = ApiRequest(
        incoming=Incoming(id="q1", task="query", text="what?", image=None),
        max_tokens=3,
        temperature=None,
        top_p=1.0,
        streaming=True,
    )
    shape = ResponseObject("resp_q1", "demo", asked, created=1)
    whole = shape.body(QUERY)
    assert (whole["status"], whole["incomplete_details"]) == ("incomplete", {"reason": "max_output_tokens"})
    assert whole["output"][0]["content"] == [{"type": "output_text", "text": "a red circle", "annotations": []}]
    assert whole["usage"]["input_tokens"] == 12 and whole["usage"]["output_tokens"] == 3
    closed: list[bool] = []
    streamed = ResponseObject("resp_q1", "demo", asked, created=1)
    events = sse_events(
        list(streamed.sse(iter([("stream", " a red"), ("answer", QUERY)]), on_close=lambda: closed.append(True)))
    )
    assert "".join(str(e["delta"]) for e in events if e["type"] == "response.output_text.delta") == "a red circle"
    assert events[-1] == {"type": "response.incomplete", "sequence_number": len(events) - 1, "response": whole}
    assert closed == [True]
    Response.model_validate(whole)  # strictly, as typed clients and agent kits check it
    for event in events:
        STREAM_EVENT.validate_python(event)


def test_a_responses_api_stream_that_fails_ends_with_response_failed() -> None:
    asked = ApiRequest(
        incoming=Incoming(id="q1", task="query", text="what?", image=None),
        max_tokens=None,
        temperature=None,
        top_p=1.0,
        streaming=True,
    )
    failing = iter([("stream", "a red"), ("error", VlmError(Code.TIMEOUT, "no answer within 60 s"))])
    events = sse_events(list(ResponseObject("resp_q1", "demo", asked).sse(failing, on_close=lambda: None)))
    assert events[-1]["type"] == "response.failed"
    assert events[-1]["response"]["error"] == {"code": "server_error", "message": "no answer within 60 s (timeout)"}
    STREAM_EVENT.validate_python(events[-1])


def test_openai_error_objects_take_their_status_from_the_errors_module() -> None:
    assert [http_status(code) for code in (Code.BUSY, Code.LOADING, Code.UPSTREAM_ERROR, "method_not_allowed")] == [
        429,
        503,
        502,
        400,
    ]
    assert error_body(Code.BUSY, "full") == {
        "error": {"message": "full", "type": "rate_limit_error", "code": "busy", "param": None}
    }
    assert error_body(Code.TIMEOUT, "late")["error"]["type"] == "server_error"


def test_a_draining_server_is_unavailable_for_a_second_not_busy() -> None:
    """A stopping server said ``busy`` (429): the page told its user the model was busy with other users."""
    with Flask(__name__).app_context():
        response, status = error_response(Code.SHUTTING_DOWN, "the server is shutting down")
    assert (status, response.headers["Retry-After"], response.json["error"]["type"]) == (503, "1", "server_error")


def test_metrics_count_an_answer_from_its_typed_timing() -> None:
    metrics = Metrics()
    metrics.answered("http", QUERY)
    assert (
        metrics.registry.get_sample_value("vlm_requests_total", {"door": "http", "outcome": "answered", "code": ""})
        == 1
    )
    assert metrics.registry.get_sample_value("vlm_generated_tokens_total") == 3
    assert metrics.registry.get_sample_value("vlm_latency_seconds_sum", {"stage": "total"}) == pytest.approx(0.0335)


@pytest.mark.parametrize("shape", ["chat", "responses"])
def test_a_stream_waiting_for_its_answer_carries_comments_and_the_same_events(shape: str) -> None:
    """An SSE comment for each wait, wherever it comes; the events around them are those of a stream that never
    waited, so a client that skips comments (as SSE parsers must) reads the same answer."""
    asked = ApiRequest(Incoming(id="q1", task="query", text="what?", image=None), None, None, 1.0, streaming=True)

    def stream(events: list[tuple[str, object]]) -> list[str]:
        if shape == "chat":
            return list(Completion("chatcmpl-q1", "demo", False, created=1).sse(iter(events), on_close=lambda: None))
        return list(ResponseObject("resp_q1", "demo", asked, created=1).sse(iter(events), on_close=lambda: None))

    waited = stream([("waiting", None), ("waiting", None), ("stream", " a red"), ("waiting", None), ("answer", QUERY)])
    assert waited.count(KEEPALIVE) == 3 and KEEPALIVE.startswith(":") and KEEPALIVE.endswith("\n\n")
    assert [chunk for chunk in waited if chunk != KEEPALIVE] == stream([("stream", " a red"), ("answer", QUERY)])
