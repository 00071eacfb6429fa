"""Payload validation: each malformed request names its problem, extra fields are ignored."""

from __future__ import annotations

import pytest

from vlm.config import Settings
from vlm.errors import VlmError
from vlm.openai_chat import parse_chat
from vlm.protocol import parse_cancel, parse_query, parse_skill, to_job

pytestmark = pytest.mark.unit

IMAGE = "data:image/jpeg;base64,AAAA"


def test_seed_payload_parses() -> None:
    incoming = parse_query({"question": " what is this? ", "image": IMAGE}, max_question_chars=100)
    assert incoming.text == "what is this?"
    assert incoming.id  # generated when the client sends none
    assert incoming.task == "query"


def test_client_id_is_kept_and_extra_fields_ignored() -> None:
    incoming = parse_query({"id": 7, "question": "q", "image": IMAGE, "extra": [1, 2]}, max_question_chars=100)
    assert incoming.id == "7"


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        ("just a string", "bad_request"),
        (["a", "list"], "bad_request"),
        ({"image": IMAGE}, "bad_request"),
        ({"question": 3, "image": IMAGE}, "bad_request"),
        ({"question": "", "image": IMAGE}, "empty_question"),
        ({"question": "   \n\t", "image": IMAGE}, "empty_question"),
        ({"question": "x" * 101, "image": IMAGE}, "question_too_long"),
        ({"question": "bad \udc80 text", "image": IMAGE}, "bad_request"),
        ({"question": "q"}, "bad_request"),
        ({"question": "q", "image": IMAGE, "live": "yes"}, "bad_request"),
        ({"question": "q", "image": IMAGE, "id": {"nested": 1}}, "bad_request"),
        ({"question": "q", "image": IMAGE, "id": "x" * 500}, "bad_request"),
    ],
)
def test_bad_queries_are_refused(payload: object, code: str) -> None:
    with pytest.raises(VlmError) as refused:
        parse_query(payload, max_question_chars=100)
    assert refused.value.code == code


def test_skills_respect_capabilities() -> None:
    caps = frozenset({"query", "caption"})
    assert parse_skill({"skill": "caption", "image": IMAGE, "length": "short"}, capabilities=caps).length == "short"
    with pytest.raises(VlmError, match="cannot detect"):
        parse_skill({"skill": "detect", "object": "cup", "image": IMAGE}, capabilities=caps)
    with pytest.raises(VlmError) as refused:
        parse_skill({"skill": "juggle", "image": IMAGE}, capabilities=caps)
    assert refused.value.code == "unsupported_skill"


def test_detect_needs_an_object() -> None:
    caps = frozenset({"detect"})
    with pytest.raises(VlmError):
        parse_skill({"skill": "detect", "image": IMAGE}, capabilities=caps)
    assert parse_skill({"skill": "detect", "object": "cup", "image": IMAGE}, capabilities=caps).text == "cup"


def test_cancel_needs_an_object_payload_naming_a_request() -> None:
    assert parse_cancel({"id": "abc"}) == "abc"
    for payload in ("abc", {}, {"id": None}, {"id": True}):
        with pytest.raises(VlmError):
            parse_cancel(payload)


def test_http_temperature_and_text_only_reach_the_job() -> None:
    body = {"messages": [{"role": "user", "content": "say hi"}], "temperature": 0.7}
    chat = parse_chat(body, max_question_chars=100, text_only=True)
    job, _ = to_job(chat.incoming, Settings(), decode_size=64, temperature=chat.temperature)
    assert (job.temperature, job.image, job.text) == (0.7, None, "say hi")
    with pytest.raises(VlmError) as refused:
        parse_chat(body, max_question_chars=100, text_only=False)
    assert (refused.value.code, refused.value.param) == ("image_required", "messages")


def test_a_temperature_too_small_to_divide_by_is_greedy() -> None:
    """``/v1`` takes any temperature in 0..2; 1e-39 made NaN probabilities and failed the batch it joined."""
    incoming = parse_query({"question": "hi"}, max_question_chars=100, image_required=False)
    assert to_job(incoming, Settings(), decode_size=64, temperature=1e-39)[0].temperature == 0.0
    assert to_job(incoming, Settings(), decode_size=64, temperature=1e-5)[0].temperature == 1e-5
    assert to_job(incoming, Settings(temperature=1e-9), decode_size=64)[0].temperature == 0.0
