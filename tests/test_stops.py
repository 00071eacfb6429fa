"""Stop strings screened from streamed text: nothing of a stop string, or after it, ever streams."""

from __future__ import annotations

import pytest

from vlm.backends.stops import StopScreen

pytestmark = pytest.mark.unit


def screened(stops: list[str], deltas: list[str]) -> tuple[list[str], bool]:
    screen = StopScreen(stops)
    return [screen.screen(delta) for delta in deltas], screen.hit


def test_without_stop_strings_every_delta_passes_whole() -> None:
    assert screened([], ["a red", " circle"]) == (["a red", " circle"], False)
    assert screened([""], ["a red"]) == (["a red"], False), "an empty stop string asks for nothing"


def test_a_stop_string_inside_one_delta_ends_the_text_before_it() -> None:
    assert screened(["\n"], ["one\ntwo", "three"]) == (["one", ""], True)


def test_a_stop_string_split_across_deltas_never_streams_its_start() -> None:
    shown, hit = screened(["END"], ["a red E", "N", "D and more"])
    assert (shown, hit) == (["a red ", "", ""], True)


def test_a_held_start_that_does_not_complete_is_streamed_with_what_follows() -> None:
    shown, hit = screened(["END"], ["a red E", "N", "ough"])
    assert (shown, hit) == (["a red ", "", "ENough"], False)


def test_the_longest_possible_start_is_held_when_stop_strings_overlap() -> None:
    # "aab" could begin at either "a" of "xaa": both must wait.
    assert screened(["aab"], ["xaa", "b"]) == (["x", ""], True)
    assert screened(["aab"], ["xaa", "ab"]) == (["x", "a"], True), "the stop string begins one later"


def test_the_first_stop_string_to_appear_wins_whichever_is_listed_first() -> None:
    assert screened(["circle", "red"], ["a red circle"]) == (["a "], True)


def test_the_answer_is_cut_before_its_first_stop_string_and_trimmed_as_answers_are() -> None:
    screen = StopScreen(["circle", "."])
    assert screen.cut("a red circle. Then") == "a red"
    assert screen.cut("no such thing") == "no such thing"
    assert StopScreen().cut("a red circle.") == "a red circle."
