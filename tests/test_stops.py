"""Stop strings screened from streamed text: nothing of a stop string, or after it, ever streams."""

from __future__ import annotations

import pytest

from vlm.backends.base import Job, Result
from vlm.backends.step_decoder import Row, take
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


def test_the_text_is_cut_before_its_first_stop_string() -> None:
    screen = StopScreen(["circle", "."])
    assert screen.cut("a red circle. Then") == "a red "
    assert screen.cut("no such thing") == "no such thing"
    assert StopScreen().cut("a red circle.") == "a red circle."


class PieceTokenizer:
    """Token ``i`` is ``pieces[i]``: text that ends on whitespace, or starts with it, token by token."""

    def __init__(self, pieces: list[str]) -> None:
        self.pieces = pieces

    def decode(self, tokens: list[int], skip_special_tokens: bool = True) -> str:
        return "".join(self.pieces[token] for token in tokens)


class Recorder:
    def __init__(self) -> None:
        self.deltas: list[str] = []
        self.results: list[Result] = []

    def delta(self, index: int, text: str) -> None:
        self.deltas.append(text)

    def done(self, index: int, result: Result) -> None:
        self.results.append(result)

    def cancelled(self, index: int) -> bool:
        return False


@pytest.mark.parametrize(
    ("pieces", "stop", "answer"),
    [
        (["A", " red", " square", ".", "\n", "More"], ".\n", "A red square"),  # it ends on whitespace
        (["\nA", " red"], "\n", ""),  # it is the whitespace an answer's strip would take
        (["A", " red", " ", " square"], "  ", "A red"),
    ],
    ids=["ends-on-whitespace", "leading-whitespace", "inner-whitespace"],
)
def test_a_stop_string_with_whitespace_never_reaches_the_answer_or_the_stream(
    pieces: list[str], stop: str, answer: str
) -> None:
    events = Recorder()
    row = Row.for_job(0, Job(task="query", image=None, image_key="", stop=(stop,)), 1, PieceTokenizer(pieces))
    for token in range(len(pieces)):
        take(events, row, token, stop=False)
    (result,) = events.results
    assert (result.answer, result.finish_reason) == (answer, "stop")
    assert "".join(events.deltas).strip() == answer
