"""A request's ``seed``: where its answer is sampled, the same seed, frame and question draw the same answer.

A running batch draws a seeded row's tokens from a generator of the row's own (``draws``), so the rows
beside it never shift its draws. Code that draws from torch's global generators (``generate``, moondream2's
own loop) runs ``seeded``: those generators set to the seed for the call and put back after it, so the
unseeded draws around it go on as before. Like OpenAI's, a seed is best effort: other rows in a batch can
change a row's logits in their last bits, which can change a draw that was close.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def seeded(seed: int | None, device: torch.device) -> Iterator[None]:
    """torch's global generators (the CPU's, and ``device``'s if it is a GPU) drawing from ``seed`` meanwhile."""
    if seed is None:
        yield
        return
    gpus = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=gpus, device_type="cuda"):
        torch.manual_seed(seed)
        yield


def draws(seed: int, device: torch.device) -> torch.Generator:
    """A generator of a row's own, on the device its logits are on."""
    return torch.Generator(device=device).manual_seed(seed)
