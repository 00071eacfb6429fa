"""One batch from model inputs a processor made one job at a time.

Jobs are processed as they arrive, off the model's thread, so a batch is put together from
single rows afterwards. It must come out as the processor's own batch would: prompts
left-padded to one length (``input_ids`` with the pad token, masks and other per-token rows
with 0), and everything else (pixels, their masks, image sizes) concatenated on the first
dimension, zero-padded at the end of any dimension where rows differ, as processors pad the
tiles of frames that were split differently.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F


def collate(rows: list[Mapping[str, torch.Tensor]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """``rows`` (each one job's inputs, batch dimension 1) as one left-padded batch."""
    length = max(row["input_ids"].shape[-1] for row in rows)
    batch: dict[str, torch.Tensor] = {}
    for name in rows[0]:
        values = [row[name] for row in rows]
        if not all(torch.is_tensor(value) for value in values):
            raise TypeError(f"the processor gave {name!r} as {type(values[0]).__name__}, not a tensor")
        if all(value.shape == row["input_ids"].shape for value, row in zip(values, rows, strict=True)):
            fill = pad_token_id if name == "input_ids" else 0
            batch[name] = torch.cat([F.pad(value, (length - value.shape[-1], 0), value=fill) for value in values])
        else:
            batch[name] = torch.cat(_padded_to_one_shape(values))
    return batch


def _padded_to_one_shape(values: list[torch.Tensor]) -> list[torch.Tensor]:
    """Each tensor zero-padded at the end of every dimension but the first to the largest size among them."""
    largest = [max(sizes) for sizes in zip(*(value.shape[1:] for value in values), strict=True)]
    padded = []
    for value in values:
        widths = [
            width
            for size, most in zip(reversed(value.shape[1:]), reversed(largest), strict=True)
            for width in (0, most - size)
        ]
        padded.append(F.pad(value, widths) if any(widths) else value)
    return padded
