"""A request's ``seed``: where its answer is sampled, the same seed, frame and question draw the same answer.

A running batch draws a seeded row's tokens from a generator of the row's own (``row_generator``), so the
rows beside it never shift its draws. Code that draws from torch's global generators (``generate``,
moondream2's own loop, its first token of a row) runs ``seeded``: those generators set to the seed for the
call and put back after it, so the unseeded draws around it go on as before. That is only sound on the
model's worker thread, where nothing else draws meanwhile; on a preparing thread the worker's draws would
come from a client's seed. Like OpenAI's, a seed is best effort: other rows in a batch can change a row's
logits in their last bits, which can change a draw that was close.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

# A row's own stream is the seed's, moved: its first token may have come from the global generators set to the
# seed (moondream2's own code draws it), and the row's next draw must not reuse that one's random number.
ROW_STREAM = 0x5EED_5EED_5EED_5EED


@contextmanager
def seeded(seed: int | None, device: torch.device) -> Iterator[None]:
    """torch's global generators (the CPU's, and ``device``'s if it is a GPU) drawing from ``seed`` meanwhile; the
    worker thread's only (see module doc)."""
    if seed is None:
        yield
        return
    gpus = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=gpus, device_type="cuda"):
        torch.random.default_generator.manual_seed(seed)
        for gpu in gpus:  # only the one forked: torch.manual_seed would reseed every GPU for good
            with torch.cuda.device(gpu):
                torch.cuda.manual_seed(seed)
        yield


def row_generator(seed: int, device: torch.device) -> torch.Generator:
    """A generator of a row's own, on the device its logits are on."""
    return torch.Generator(device=device).manual_seed(seed ^ ROW_STREAM)
