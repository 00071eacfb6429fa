"""Stop strings: an answer ends just before the first of its client's stop strings (OpenAI's ``stop``).

The decoders screen each row's streamed text through a ``StopScreen``: a delta that ends with the start of a
stop string holds that tail back until the next token shows whether the string completes. Held text that
never becomes a stop string is still in the answer, which is what every transport sends last.
"""

from __future__ import annotations

from collections.abc import Sequence


class StopScreen:
    """One answer's streamed text, screened for its stop strings; ``hit`` once one has appeared."""

    def __init__(self, stops: Sequence[str] = ()) -> None:
        self.stops = tuple(stop for stop in stops if stop)
        self.held = ""
        self.hit = False

    def screen(self, delta: str) -> str:
        """What of ``delta`` may stream now: nothing once a stop string has appeared, and never its start."""
        if self.hit or not self.stops:
            return "" if self.hit else delta
        text = self.held + delta
        if (end := self._first(text)) is not None:
            self.hit, self.held = True, ""
            return text[:end]
        # The longest tail that some stop string begins with: a stop string can start no earlier.
        tail = max(
            (n for stop in self.stops for n in range(1, min(len(stop), len(text) + 1)) if text.endswith(stop[:n])),
            default=0,
        )
        self.held = text[len(text) - tail :]
        return text[: len(text) - tail]

    def cut(self, text: str) -> str:
        """The whole generated ``text`` up to its first stop string. Cut it before stripping it, as answers are:
        a stop string may begin or end with the whitespace a strip would take."""
        end = self._first(text)
        return text if end is None else text[:end]

    def _first(self, text: str) -> int | None:
        found = [index for stop in self.stops if (index := text.find(stop)) >= 0]
        return min(found, default=None)
