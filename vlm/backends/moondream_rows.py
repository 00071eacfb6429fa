"""Continuous batching for moondream2: its answers decoded together, one token per step.

moondream2's own loop decodes one answer at a time in the one KV cache the model keeps. Here a
question starts through moondream2's own code (its prompt template, its prefill, its choice of
the first token), and its cache is then copied out of the model into the running batch's. From
there every row advances together through the same text decoder, on the same weights, written
for many rows at once (``decode_step``): each row keeps its own positions, for the rotary turn and
for the cache slot it writes, and the attention mask hides the slots past a row's own. A lone row
computes moondream2's own logits bit for bit; rows in company agree with them to rounding
(tests/test_moondream_rows.py, and the README for the real code). Detect and point run
moondream2's own skills during the join; they are short.

What this relies on in moondream2's code (github.com/vikhyat/moondream at 44146f1, ``moondream/torch``):
``_prefill_prompt`` returns ``(logits, hidden, next_token, next_position)``; each text block is
``ln``, ``attn.qkv``/``attn.proj`` and ``mlp.fc1``/``mlp.fc2`` side by side with a tanh GELU; the
rotary table ``freqs_cis`` holds (cos, sin) for the first half of each head, read as two halves and
written back interleaved; the answer loop forbids ``answer_id`` and stops at ``eos_id``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from .base import Job, Result, RowEvents, failing_alone
from .step_decoder import Row, RunningRows, pick, take

if TYPE_CHECKING:
    from .moondream import MoondreamBackend

# Cache slots are added in chunks, so a running batch is copied into a longer cache once every so many steps.
SLOT_CHUNK = 64


class Prefilled(Exception):
    """Raised out of moondream2's answer loop once its prompt is prefilled: the batch decodes from there."""

    def __init__(self, token: torch.Tensor, position: int) -> None:
        super().__init__()
        self.token = token
        self.position = position


# The tasks whose answers are text decoded token by token (rows of the batch); skills run moondream2's own loop.
ANSWER_TASKS = frozenset({"query", "caption"})
# A row's keys and values, layer by layer: (1, kv heads, length, head size) pairs.
LayerCaches = list[tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class AnswerStart:
    """A query or caption prefilled through moondream2's own code, ready to join: its first token, the position
    its next one goes to, its prompt's length (frame included), and that prompt's keys and values, copied out of
    the model's one cache before the next prompt overwrites them."""

    token: torch.Tensor
    position: int
    prompt_tokens: int
    cache: LayerCaches


def copied_cache(inner: Any, length: int) -> LayerCaches:
    """The first ``length`` positions of every layer of the model's one cache, copied."""
    return [
        (block.kv_cache.k_cache[:, :, :length].clone(), block.kv_cache.v_cache[:, :, :length].clone())
        for block in inner.text.blocks
    ]


@contextmanager
def stopping_after_prompt(model: Any) -> Iterator[None]:
    """moondream2's ``_prefill_prompt`` ends the call it runs in with ``Prefilled``, for the duration."""
    own = model._prefill_prompt

    def prefill_then_stop(*args: Any, **kwargs: Any) -> Any:
        _, _, token, position = own(*args, **kwargs)
        raise Prefilled(token, int(position))

    model._prefill_prompt = prefill_then_stop
    try:
        yield
    finally:
        del model._prefill_prompt  # the instance attribute goes; the class's method shows through again


def rotate(x: torch.Tensor, table: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """moondream2's rotary turn of ``x`` (rows, heads, 1, head size), each row at its own position."""
    turned = table.size(-2) * 2
    x_rot, x_pass = x[..., :turned], x[..., turned:]
    real, imag = x_rot[..., : turned // 2], x_rot[..., turned // 2 :]
    cos = table[..., 0][positions][:, None, None, :]
    sin = table[..., 1][positions][:, None, None, :]
    out = torch.stack((real * cos - imag * sin, real * sin + imag * cos), dim=-1).flatten(-2)
    return torch.cat([out.to(x.dtype), x_pass], dim=-1)


class RowCache:
    """Every running row's keys and values, layer by layer: (rows, kv heads, slots, head size), slot = position."""

    def __init__(self) -> None:
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.mask = torch.empty(0)  # (rows, 1, 1, slots): the slots each row attends to

    @property
    def slots(self) -> int:
        return self.mask.size(-1) if self.keys else 0

    def add(self, rows: list[LayerCaches], lengths: list[int]) -> None:
        """Append rows given as per-layer (1, kv heads, length, head size) pairs, each ``lengths`` long."""
        slots = max(self.slots, _chunked(max(lengths) + 1))
        old = self.mask.size(0) if self.keys else 0
        first = rows[0][0][0]

        def joined(running: list[torch.Tensor], layer: int, which: int) -> torch.Tensor:
            """One layer's keys (``which`` 0) or values (1): the running rows', then each new row's, zeros after."""
            out = first.new_zeros(old + len(rows), first.size(1), slots, first.size(3))
            if old:
                out[:old, :, : self.slots] = running[layer]
            for index, (row, length) in enumerate(zip(rows, lengths, strict=True)):
                out[old + index, :, :length] = row[layer][which][0, :, :length]
            return out

        layers = range(len(rows[0]))
        keys, values = [joined(self.keys, n, 0) for n in layers], [joined(self.values, n, 1) for n in layers]
        mask = torch.zeros(old + len(rows), 1, 1, slots, dtype=torch.bool, device=first.device)
        if old:
            mask[:old, ..., : self.slots] = self.mask
        for index, length in enumerate(lengths):
            mask[old + index, ..., :length] = True
        self.keys, self.values, self.mask = keys, values, mask

    def keep(self, index: torch.Tensor) -> None:
        """Only the rows at ``index`` stay (in that order); slots past the last one a row still uses go."""
        mask = self.mask[index]
        used = int(mask.any(0).flatten().nonzero().max()) + 1
        slots = min(self.slots, _chunked(used + 1))
        self.mask = mask[..., :slots]
        self.keys = [layer[index, :, :slots] for layer in self.keys]
        self.values = [layer[index, :, :slots] for layer in self.values]

    def admit(self, positions: torch.Tensor) -> None:
        """Each row's slot at its ``positions`` is opened for its next token (the cache grows a chunk if needed)."""
        needed = int(positions.max()) + 1
        if needed > self.slots:
            extra = _chunked(needed) - self.slots
            self.mask = F.pad(self.mask, (0, extra))
            self.keys = [F.pad(layer, (0, 0, 0, extra)) for layer in self.keys]
            self.values = [F.pad(layer, (0, 0, 0, extra)) for layer in self.values]
        self.mask[torch.arange(len(positions), device=positions.device), 0, 0, positions] = True

    def write(self, layer: int, positions: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """One new (rows, kv heads, 1, head size) key and value per row, at the row's own position."""
        rows = torch.arange(k.size(0), device=k.device)
        self.keys[layer][rows, :, positions] = k[:, :, 0]
        self.values[layer][rows, :, positions] = v[:, :, 0]


def _chunked(slots: int) -> int:
    return -(-slots // SLOT_CHUNK) * SLOT_CHUNK


def attend(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """One new token's attention per row: (rows, heads, 1, head size) over (rows, kv heads, slots, head size).

    A lone row takes PyTorch's fused kernel, as moondream2's own decode does, so it computes the same numbers.
    Several rows on a CPU take two matrix products and a softmax instead: PyTorch's fused CPU kernel took
    19 ms per layer for 16 rows of one query token over 832 slots in bfloat16, this 4.6 ms (0.2 against
    1.1 ms for one row), and rows in company already differ from alone by rounding (README).
    """
    grouped = q.size(1) != keys.size(1)
    if q.size(0) == 1 or q.device.type != "cpu":
        return F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, enable_gqa=grouped)
    if grouped:
        keys = keys.repeat_interleave(q.size(1) // keys.size(1), dim=1)
        values = values.repeat_interleave(q.size(1) // values.size(1), dim=1)
    scores = (q @ keys.transpose(-1, -2)).float() * q.size(-1) ** -0.5
    weights = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
    return weights.to(values.dtype) @ values


def decode_step(inner: Any, x: torch.Tensor, positions: torch.Tensor, cache: RowCache) -> torch.Tensor:
    """moondream2's ``text_decoder`` and ``lm_head`` for one new token per row: (rows, 1, dim) in, logits out.

    ``positions`` (rows,) is where each row's token goes; the cache must already admit it (``RowCache.admit``).
    """
    config, text = inner.config.text, inner.text
    heads = config.n_heads
    kv_heads = getattr(config, "n_kv_heads", heads)
    rows, length, dim = x.shape
    head = dim // heads
    for layer, block in enumerate(text.blocks):
        normed = F.layer_norm(x, block.ln.bias.shape, block.ln.weight, block.ln.bias)
        q, k, v = block.attn.qkv(normed).split([heads * head, kv_heads * head, kv_heads * head], dim=-1)
        q = rotate(q.view(rows, length, heads, head).transpose(1, 2), text.freqs_cis, positions)
        k = rotate(k.view(rows, length, kv_heads, head).transpose(1, 2), text.freqs_cis, positions)
        v = v.view(rows, length, kv_heads, head).transpose(1, 2)
        cache.write(layer, positions, k, v)
        attended = attend(q, cache.keys[layer], cache.values[layer], cache.mask)
        attention = block.attn.proj(attended.transpose(1, 2).reshape(rows, length, dim))
        feed_forward = block.mlp.fc2(F.gelu(block.mlp.fc1(normed), approximate="tanh"))
        x = x + attention + feed_forward
    last = x[:, -1, :]
    return text.lm_head(F.layer_norm(last, text.post_ln.bias.shape, text.post_ln.weight, text.post_ln.bias))


class MoondreamRows(RunningRows):
    """moondream2's running batch of answers (query and caption), advanced one token per ``step``."""

    def __init__(self, backend: MoondreamBackend, events: RowEvents) -> None:
        self.backend = backend
        self.inner = backend.model.model
        self.events = events
        tokenizer = self.inner.config.tokenizer
        self.eos_id, self.answer_id = tokenizer.eos_id, tokenizer.answer_id
        self._reset()

    def _reset(self) -> None:
        self.batch: list[Row] = []
        self.cache = RowCache()
        self.positions = torch.empty(0, dtype=torch.long)
        self.last = torch.empty(0, dtype=torch.long)

    def _keep_cache(self, index: torch.Tensor) -> None:
        self.cache.keep(index)

    @torch.inference_mode()
    def join(self, jobs: dict[int, Job]) -> None:
        """Queries and captions join, prefilled ahead (``--prepare prefill``) or here; skills run to their end. A
        job's prefill or skill runs in the model's own cache, not the batch's: its fault fails it alone."""
        self._drop_ended()
        rows: list[Row] = []
        starts: list[AnswerStart] = []
        for key, job in jobs.items():
            if self.events.cancelled(key):
                continue
            if job.task not in ANSWER_TASKS:
                self._run_skill(key, job)
                continue
            start = failing_alone(self.events, key, partial(self._start, key, job))
            if start is None:  # cancelled while it prefilled, or failed alone
                continue
            rows.append(Row.for_job(key, job, start.prompt_tokens, self.inner.tokenizer))
            starts.append(start)
        if rows:
            self.cache.add([start.cache for start in starts], [start.position for start in starts])
            device = self.cache.mask.device
            started = torch.tensor([start.position for start in starts], device=device)
            self.positions = torch.cat([self.positions.to(device), started])
            self.last = torch.cat([self.last.to(device), torch.cat([s.token.view(1) for s in starts])])
            self.batch = self.batch + rows
            for row, start in zip(rows, starts, strict=True):
                self._take(row, int(start.token), start.position)
        self._drop_ended()

    def _start(self, key: int, job: Job) -> AnswerStart | None:
        """A query's or caption's start, prefilled ahead (``--prepare prefill``) or here."""
        return job.prepared or self.backend.start_answer(job, lambda: self.events.cancelled(key))

    def _run_skill(self, key: int, job: Job) -> None:
        if (result := failing_alone(self.events, key, partial(self._skill, key, job))) is not None:
            self.events.done(key, result)

    def _skill(self, key: int, job: Job) -> Result | None:
        """A skill's result, run ahead (``--prepare prefill``) or here, to its end, in the model's own cache."""
        return job.prepared or self.backend.run_skill(job, lambda: self.events.cancelled(key))

    @torch.inference_mode()
    def step(self) -> None:
        self._drop_ended()
        if not self.batch:
            return
        self.cache.admit(self.positions)
        embedded = F.embedding(self.last[:, None], self.inner.text.wte)
        logits = decode_step(self.inner, embedded, self.positions, self.cache)
        logits[:, self.answer_id] = float("-inf")
        self.positions = self.positions + 1
        self.last = self._choose(logits)
        for row, token, position in zip(self.batch, self.last.tolist(), self.positions.tolist(), strict=True):
            self._take(row, token, position)
        self._drop_ended()

    def _choose(self, logits: torch.Tensor) -> torch.Tensor:
        """Greedy as moondream2 picks; a row with a temperature samples from its nucleus (``top_p``), as the
        backend asks."""
        return pick(logits, self.batch)

    def _take(self, row: Row, token: int, position: int) -> None:
        """A row's newest token, chosen for ``position``; it ends where the meter ends moondream2's own loop."""
        take(self.events, row, token, stop=token == self.eos_id, at_end=self.backend.meter.at_end(position))
