"""What the page tells a user of the bundled demo model: one hint line and questions to click.

The demo model only knows drawn shapes, colours and a few question phrasings, so a user
who asks anything else gets nonsense and concludes the app is broken. Other models get
no guide: they answer open questions. The questions are phrasings the model was trained
on (tests/test_demo_model.py checks that it answers each of them).
"""

from __future__ import annotations

from pathlib import Path

from .config import DEMO_MODEL_DIR

DEMO_HINT = (
    "Demo model: show it a circle, square, triangle or star in red, green, blue, yellow or white, "
    "drawn on a dark background, and ask about it."
)
DEMO_QUESTIONS = (
    "what shape is this?",
    "what color is the shape?",
    "how many shapes are there?",
    "describe the image.",
)


def demo_guide(model_path: str) -> dict[str, object]:
    """``hint`` and ``suggested_questions`` for `/api/info` when `model_path` is the demo model, else nothing."""
    if Path(model_path).resolve() != DEMO_MODEL_DIR.resolve():
        return {}
    return {"hint": DEMO_HINT, "suggested_questions": list(DEMO_QUESTIONS)}
