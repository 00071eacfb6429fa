"""Where the moondream2 look-alike lives, and a Hugging Face cache that this process reads offline."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class MoondreamLike:
    """The moondream2 look-alike's folder, and the Hugging Face cache that holds its tokenizer."""

    folder: Path
    hub_cache: Path


@contextmanager
def hub_cache(path: Path) -> Iterator[None]:
    """Hugging Face downloads in this process look in ``path`` (offline) while the block runs."""
    from huggingface_hub import constants

    saved = constants.HF_HUB_CACHE, constants.HF_HUB_OFFLINE
    constants.HF_HUB_CACHE, constants.HF_HUB_OFFLINE = str(path), True
    try:
        yield
    finally:
        constants.HF_HUB_CACHE, constants.HF_HUB_OFFLINE = saved
