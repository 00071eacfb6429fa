"""``POST /v1/responses`` through the official ``openai`` client's Responses API, against the real app."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import openai
import pytest
import requests

from scripts.synthetic_scenes import draw_scene, held_drawing_scene
from tests.frames import data_url, jpeg_data_url
from tests.openai_client import ask, frame_question, openai_client
from tests.server_process import AppProcess, serving

pytestmark = pytest.mark.app("demo")

QUESTION = "Describe the image."  # the demo model answers it in a few words


def user_input(question: str, image_url: str) -> list[dict[str, Any]]:
    content = [{"type": "input_text", "text": question}, {"type": "input_image", "image_url": image_url}]
    return [{"role": "user", "content": content}]


def test_a_follow_up_without_an_image_asks_about_the_conversations_frame(app: AppProcess) -> None:
    """Chat clients (the ``llm`` CLI, LangChain's history, chat UIs) send the frame with the first question only;
    the follow-up, text alone, was answered about no image at all ("blue" for a red shape)."""
    client = openai_client(app.url)
    red, blue = (data_url(draw_scene(held_drawing_scene("circle", colour))) for colour in ("red", "blue"))
    about_the_frame = ask(client, "what color is this?", blue)
    assert about_the_frame != ask(client, "what color is this?", red), "the two frames tell apart"
    chat = [
        *frame_question("what shape is this?", red),
        {"role": "assistant", "content": "A shape."},
        *frame_question("what shape is this?", blue),
        {"role": "assistant", "content": "A shape."},
        {"role": "user", "content": "what color is this?"},
    ]
    answer = client.chat.completions.create(model="any", messages=chat).choices[0].message.content
    assert answer == about_the_frame, "the newest frame of the conversation"
    conversation = [
        *user_input("what shape is this?", blue),
        {"role": "assistant", "content": [{"type": "output_text", "text": "A shape."}]},
        {"role": "user", "content": [{"type": "input_text", "text": "what color is this?"}]},
    ]
    assert client.responses.create(model="any", input=conversation).output_text == about_the_frame


def test_a_response_holds_the_same_answer_and_counts_as_a_chat_completion(app: AppProcess, frame: str) -> None:
    client = openai_client(app.url)
    response = client.responses.create(
        model="any", instructions="You look at pictures.", input=user_input(QUESTION, frame)
    )
    completion = client.chat.completions.create(
        model="any",
        messages=[
            {
                "role": "user",
                "content": [{"type": "text", "text": QUESTION}, {"type": "image_url", "image_url": {"url": frame}}],
            }
        ],
    )
    assert response.status == "completed" and response.output_text == completion.choices[0].message.content
    assert response.id.startswith("resp_") and response.output[0].type == "message"
    assert response.usage and completion.usage
    assert (response.usage.input_tokens, response.usage.output_tokens) == (
        completion.usage.prompt_tokens,
        completion.usage.completion_tokens,
    )


def test_the_clients_stream_helper_builds_the_same_response_from_the_events(app: AppProcess, frame: str) -> None:
    """``responses.stream`` checks every event against the response it builds (ids, indexes, order)."""
    client = openai_client(app.url)
    whole = client.responses.create(model="any", input=user_input(QUESTION, frame)).output_text
    with client.responses.stream(model="any", input=user_input(QUESTION, frame)) as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [event.type for event in events]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    deltas = [event.delta for event in events if event.type == "response.output_text.delta"]
    assert len(deltas) > 1 and "".join(deltas) == whole == final.output_text
    assert [event.sequence_number for event in events] == list(range(len(events)))


@pytest.mark.parametrize("mode", ["eventlet", "gevent"])
def test_the_event_stream_is_whole_under_the_green_async_modes(frame: str, mode: str) -> None:
    """Each event is an ``event:`` line and a ``data:`` line; the green servers write them as the thread does."""
    with serving("demo", "--async-mode", mode) as running:
        client = openai_client(running.url)
        whole = client.responses.create(model="any", input=user_input(QUESTION, frame)).output_text
        with client.responses.stream(model="any", input=user_input(QUESTION, frame)) as stream:
            assert stream.get_final_response().output_text == whole


def test_a_generation_past_the_request_timeout_ends_the_stream_with_response_failed(slow_model: Path) -> None:
    """And, whole, it is a 504 the official client does not retry: its default retries every 5xx twice, which ran
    a generation that had overrun the limit twice more."""
    with serving(slow_model, "--request-timeout", "2", max_new_tokens=430) as running:  # 430 tokens: ~4 s here
        # A first answer warms the process up: on a busy machine the first one's first token came past the limit.
        openai_client(running.url).responses.create(model="any", input="hi", max_output_tokens=1)
        stream = openai_client(running.url).responses.create(
            model="any", input=user_input("describe", jpeg_data_url()), stream=True
        )
        events = list(stream)
        with pytest.raises(openai.InternalServerError) as timed_out:
            openai.OpenAI(base_url=f"{running.url}/v1", api_key="none").responses.create(
                model="any", input=user_input("describe", jpeg_data_url())
            )
        assert timed_out.value.status_code == 504 and timed_out.value.response.headers["x-should-retry"] == "false"
        deadline = time.monotonic() + 5  # the scheduler logs each overrun just after it answers it
        while running.log().count("the model was asked to stop") < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert running.log().count("the model was asked to stop") == 2, "the stream's, and one for the 504"
    assert any(event.type == "response.output_text.delta" for event in events), "it failed mid-stream"
    assert events[-1].type == "response.failed"
    assert events[-1].response.error.code == "server_error"
    assert events[-1].response.error.message == "no answer within 2 s (timeout)"


def test_an_answer_cut_at_max_output_tokens_is_incomplete(app: AppProcess, frame: str) -> None:
    client = openai_client(app.url)
    response = client.responses.create(model="any", input=user_input(QUESTION, frame), max_output_tokens=1)
    assert (response.status, response.incomplete_details and response.incomplete_details.reason) == (
        "incomplete",
        "max_output_tokens",
    )
    assert response.usage and response.usage.output_tokens == 1
    events = list(
        client.responses.create(model="any", input=user_input(QUESTION, frame), max_output_tokens=1, stream=True)
    )
    assert events[-1].type == "response.incomplete"


def test_a_plain_string_input_is_a_text_only_question_and_sampling_options_hold(app: AppProcess, frame: str) -> None:
    client = openai_client(app.url)
    assert client.responses.create(model="any", input="say hello").output_text
    greedy = client.responses.create(model="any", input=user_input(QUESTION, frame)).output_text
    narrow = client.responses.create(model="any", input=user_input(QUESTION, frame), temperature=2, top_p=0)
    assert narrow.output_text == greedy == ask(client, QUESTION, frame)
    plain = client.responses.create(
        model="any", input=user_input(QUESTION, frame), text={"format": {"type": "text"}, "verbosity": "medium"}
    )
    assert plain.output_text == greedy and plain.text and plain.text.verbosity == "medium"


@pytest.mark.parametrize(
    ("options", "param"),
    [
        ({"previous_response_id": "resp_1"}, "previous_response_id"),
        ({"tools": [{"type": "function", "name": "f", "parameters": {}}]}, "tools"),
        ({"text": {"format": {"type": "json_object"}}}, "text"),
        ({"text": {"verbosity": "low"}}, "text"),
        ({"temperature": 3}, "temperature"),
        ({"max_output_tokens": 0}, "max_output_tokens"),
    ],
)
def test_options_no_backend_honours_are_refused_by_name(
    app: AppProcess, frame: str, options: dict[str, Any], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        openai_client(app.url).responses.create(model="any", input=user_input(QUESTION, frame), **options)
    assert refused.value.param == param


def test_inputs_it_cannot_take_are_refused_with_a_reason(app: AppProcess, frame: str) -> None:
    bodies = [
        {"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "file-1"}]}]},
        {"input": user_input(QUESTION, "https://example.com/cat.jpg")},
        {"input": [{"role": "assistant", "content": "hello"}]},
        {"input": 7},
    ]
    for body in bodies:
        refused = requests.post(f"{app.url}/v1/responses", json={"model": "any", **body}, timeout=10)
        assert refused.status_code == 400, body
        assert refused.json()["error"]["param"] == "input", body
    broken = requests.post(f"{app.url}/v1/responses", data=b'{"input": [', timeout=10)
    assert broken.status_code == 400 and broken.json()["error"]["code"] == "bad_request"
    assert requests.get(f"{app.url}/v1/responses/resp_1", timeout=10).status_code == 404, "nothing is stored"
