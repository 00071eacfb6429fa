"""Continuous batching for transformers models: a decode loop that rows join and leave between tokens.

``generate`` runs a fixed batch to its end, so a question that arrives one token after a batch
started waits for the whole batch. Here a newcomer is prefilled on its own (prompt and image
through the model once), then its KV cache is appended to the running batch's on the batch
dimension: both are left-padded to one length, the attention mask hides the padding, and every
row keeps its own position ids, so each row computes what it would have computed alone. A row
that ends (EOS, its token budget, or cancelled) is dropped from the cache by index at once, and
padding no row needs any more is cut off.

A prompt may also be prefilled before its join (``prefill``, on a preparing thread with
``--prepare prefill``); the join then only appends its cache, and the running rows wait for that
copy instead of a forward pass through the model.

Only text decoders whose cache is a plain ``DynamicCache`` with 1-D positions are stepped this
way, and only where the model's generation config changes nothing about choosing a token (no
repetition penalty, banned words, minimum length...: see ``can_step``); other models keep ``generate``.
A row with a temperature samples at that temperature from its nucleus (``top_p``; the whole
vocabulary by default), as ``generate`` does, a seeded one from a generator of its own; greedy rows
are exact.
"""

from __future__ import annotations

import inspect
import logging
from abc import abstractmethod
from collections.abc import Callable, Sequence, Set
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from .base import Decoder, FinishReason, GenerationEvents, Job, Result, RowEvents, failing_alone
from .seeds import row_generator
from .stops import StopScreen

log = logging.getLogger(__name__)

# Text decoders checked to keep a dynamic full-attention cache and 1-D rotary positions (Llama:
# SmolVLM/Idefics3, LLaVA-1.5, the demo model's FastVLM layout). Sliding windows, M-RoPE (Qwen-VL) or linear
# attention would not survive the padding and cutting done here.
STEPPED_TEXT_MODELS = frozenset({"llama"})
# Generation settings that change greedy choices beyond suppressing tokens, with their neutral values.
# The loop reproduces none of them, so a model that sets one keeps ``generate``.
GREEDY_CHANGERS: dict[str, object] = {
    "repetition_penalty": 1.0,
    "encoder_repetition_penalty": 1.0,
    "no_repeat_ngram_size": 0,
    "bad_words_ids": None,
    "min_length": 0,
    "min_new_tokens": 0,
    "begin_suppress_tokens": None,
    "forced_bos_token_id": None,
    "forced_eos_token_id": None,
    "sequence_bias": None,
    "exponential_decay_length_penalty": None,
}


def context_length(model: Any) -> int | None:
    """How many positions the model's text decoder was built for (None where its config does not say)."""
    length = getattr(model.config.get_text_config(), "max_position_embeddings", None)
    return length if isinstance(length, int) else None


def can_step(model: Any) -> bool:
    """Whether ``StepDecoder`` reproduces this model's greedy ``generate``."""
    settings = model.generation_config
    return (
        model.config.get_text_config().model_type in STEPPED_TEXT_MODELS
        and cache_keyword(model) is not None
        and all(getattr(settings, name, None) in (None, neutral) for name, neutral in GREEDY_CHANGERS.items())
    )


def cache_keyword(model: Any) -> str | None:
    """The name ``forward`` takes the KV cache under: ``cache`` in recent transformers, ``past_key_values``
    before. Forward swallows unknown keywords, so a wrong name decodes silently without the cache."""
    parameters = inspect.signature(model.forward).parameters
    return next((name for name in ("cache", "past_key_values") if name in parameters), None)


@dataclass
class Prefill:
    """Prompts run through the model, one row each: their KV cache and attention mask (left-padded to one
    length), each row's next position and its last position's logits, and its prompt's token count."""

    cache: DynamicCache
    mask: torch.Tensor
    positions: torch.Tensor
    logits: torch.Tensor
    prompt_tokens: list[int]


@torch.inference_mode()
def prefill(model: Any, inputs: dict[str, Any], keyword: str) -> Prefill:
    """Run ``inputs`` (the model's, for a left-padded batch) through ``model`` into a cache of their own, passed
    under ``keyword`` (``cache_keyword``). The model keeps no state between calls, so this may run on a thread
    other than the one that steps the batch."""
    mask = inputs["attention_mask"].long()
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
    cache = DynamicCache(config=model.config)
    logits = model(**inputs, position_ids=positions, **{keyword: cache}, use_cache=True, logits_to_keep=1).logits
    if any(type(layer) is not DynamicLayer for layer in cache.layers):
        raise RuntimeError("the model's cache is not a plain dynamic cache; it cannot be batched step-wise")
    if cache.get_seq_length() != mask.shape[1]:
        raise RuntimeError("the model did not fill the cache it was given; it cannot be batched step-wise")
    return Prefill(cache, mask, positions[:, -1] + 1, logits[:, -1], mask.sum(-1).tolist())


class RowText:
    """One answer's tokens and its streamed text; a delta never ends inside a character, nor inside what may be
    the start of one of its stop strings (``StopScreen``).

    Each new token decodes a window of a few tokens, not the whole answer (which made every step
    cost more as answers grew): the window starts at the last chunk already streamed, so it begins
    on a whole character and a tokenizer's spacing between words decodes as in the whole answer,
    and the delta is what the newest tokens add to that chunk's own text.
    """

    def __init__(self, tokenizer: Any, stops: Sequence[str] = ()) -> None:
        self.tokenizer = tokenizer
        self.screen = StopScreen(stops)
        self.tokens: list[int] = []
        self.start = 0  # the window's first token: where the last streamed chunk began
        self.read = 0  # tokens before this one are streamed

    def add(self, token: int) -> str:
        self.tokens.append(token)
        streamed = self._decode(self.tokens[self.start : self.read])
        window = self._decode(self.tokens[self.start :])
        if len(window) <= len(streamed) or window.endswith("\ufffd"):
            return ""  # nothing new yet, or half of a multi-byte character: wait for the rest
        self.start, self.read = self.read, len(self.tokens)
        return self.screen.screen(window[len(streamed) :])

    @property
    def stopped(self) -> bool:
        """A stop string has appeared: the answer ends before it."""
        return self.screen.hit

    def answer(self) -> str:
        return self.screen.cut(self._decode(self.tokens)).strip()

    def _decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True)


@dataclass
class Row:
    """One answer in a running batch: who asked, its token budget, its prompt's length and its text so far."""

    key: int
    budget: int
    prompt_tokens: int
    text: RowText
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0  # 1: sampled from the whole vocabulary
    seed: int | None = None  # None: drawn from torch's global generator, with the rows beside it
    ended: bool = False
    _draws: torch.Generator | None = field(default=None, repr=False)

    @classmethod
    def for_job(cls, key: int, job: Job, prompt_tokens: int, tokenizer: Any, context: int | None = None) -> Row:
        """The row that answers ``job``, once its prompt of ``prompt_tokens`` is in the cache; its answer ends with
        the model's ``context`` (positions past it were never trained, and the answer would be noise)."""
        text = RowText(tokenizer, job.stop)
        budget = job.max_new_tokens if context is None else min(job.max_new_tokens, context - prompt_tokens)
        return cls(key, budget, prompt_tokens, text, job.temperature, job.top_p, job.seed)

    def draws(self, device: torch.device) -> torch.Generator:
        """A seeded row's own generator, made at its first draw, on the device its logits are on."""
        if self._draws is None:
            assert self.seed is not None, "only a seeded row draws on its own"
            self._draws = row_generator(self.seed, device)
        return self._draws


def take(events: GenerationEvents, row: Row, token: int, *, stop: bool, at_end: bool = False) -> None:
    """A row's newest ``token``: a stop token ends the answer, any other is streamed and ends it where it completes
    a stop string; the budget (or, with ``at_end``, the model's context) ends it after that. A cancelled row
    just ends, unanswered."""
    if row.ended or events.cancelled(row.key):
        row.ended = True
    elif stop:
        finish(events, row, "stop")
    else:
        if delta := row.text.add(token):
            events.delta(row.key, delta)
        if row.text.stopped:
            finish(events, row, "stop")
        elif len(row.text.tokens) >= row.budget or at_end:
            finish(events, row, "length")


def pick(logits: torch.Tensor, rows: Sequence[Row]) -> torch.Tensor:
    """Each row's next token: the likeliest, or one sampled at the row's temperature from its ``nucleus``.

    The settings are the rows' own numbers, not tensors: an all-greedy batch (the usual one) then asks the
    device nothing, where testing a tensor for a sampled row would wait for the GPU at every step."""
    chosen = logits.argmax(-1)
    if sampled := [index for index, row in enumerate(rows) if row.temperature > 0]:
        index = torch.tensor(sampled, device=logits.device)
        scale = torch.tensor([rows[i].temperature for i in sampled], device=logits.device)
        probabilities = torch.softmax(logits[index].float() / scale[:, None], dim=-1)
        if any(rows[i].top_p < 1 for i in sampled):
            probabilities = nucleus(probabilities, torch.tensor([rows[i].top_p for i in sampled], device=logits.device))
        shared = [at for at, i in enumerate(sampled) if rows[i].seed is None]
        if shared:
            chosen[index[shared]] = torch.multinomial(probabilities[shared], 1).squeeze(-1)
        for at, i in enumerate(sampled):
            if rows[i].seed is not None:
                chosen[i] = torch.multinomial(probabilities[at], 1, generator=rows[i].draws(logits.device))[0]
    return chosen


def nucleus(probabilities: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Each row's probabilities with all but its likeliest tokens zeroed: a token stays while the tokens likelier
    than it sum to no more than the row's ``top_p`` (so the likeliest always stays). Unnormalised, as
    ``torch.multinomial`` takes them."""
    ordered, order = probabilities.sort(dim=-1, descending=True)
    likelier = ordered.cumsum(dim=-1) - ordered
    return torch.zeros_like(probabilities).scatter(-1, order, ordered.masked_fill(likelier > top_p[:, None], 0.0))


def rows_left(batch: list[Row], events: RowEvents) -> list[int]:
    """The indexes of the rows still running; a cancelled one counts as ended from now on."""
    for row in batch:
        row.ended = row.ended or events.cancelled(row.key)
    return [index for index, row in enumerate(batch) if not row.ended]


def finish(events: GenerationEvents, row: Row, reason: FinishReason) -> None:
    """The row's answer, as far as it got."""
    row.ended = True
    answer = row.text.answer()
    events.done(
        row.key, Result(answer, tokens=len(row.text.tokens), prompt_tokens=row.prompt_tokens, finish_reason=reason)
    )


class RunningRows(Decoder):
    """What both running batches keep beside their cache: the rows, each one's next position and latest token.

    A subclass keeps the cache, empties everything in ``_reset`` and cuts the cache to the rows that stay in
    ``_keep_cache``; rows leave here, once ended or cancelled.
    """

    events: RowEvents
    batch: list[Row]
    positions: torch.Tensor  # where each row's next token goes
    last: torch.Tensor  # each row's latest token

    def rows(self) -> Set[int]:
        return {row.key for row in self.batch}

    def clear(self) -> None:
        self._reset()

    @abstractmethod
    def _reset(self) -> None:
        """No rows and no cache."""

    @abstractmethod
    def _keep_cache(self, index: torch.Tensor) -> None:
        """Only the rows at ``index`` (in that order) stay in the cache."""

    def _drop_ended(self) -> None:
        keep = rows_left(self.batch, self.events)
        if len(keep) == len(self.batch):
            return
        if not keep:
            self._reset()
            return
        index = torch.tensor(keep, device=self.positions.device)
        self._keep_cache(index)
        self.positions = self.positions[index]
        self.last = self.last[index]
        self.batch = [self.batch[i] for i in keep]


@dataclass(frozen=True)
class Started:
    """Newcomers prefilled, with their rows and first tokens, not yet in the running batch."""

    rows: list[Row]
    prefill: Prefill
    tokens: torch.Tensor


class StepDecoder(RunningRows):
    """The running batch of one transformers model, advanced one token per ``step``."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        eos_ids: frozenset[int],
        model_inputs: Callable[[list[Job]], dict[str, Any]],
        events: RowEvents,
        prefilled: Callable[[Job], Prefill | None] = lambda job: None,
    ) -> None:
        """``prefilled`` gives a job's prompt where it was prefilled before its join (None: the join prefills it)."""
        self.model = model
        self.tokenizer = tokenizer
        self.eos_ids = eos_ids
        self.model_inputs = model_inputs
        self.prefilled = prefilled
        self.context = context_length(model)
        self.events = events
        suppressed = sorted(set(model.generation_config.suppress_tokens or ()))
        self.suppressed = torch.tensor(suppressed, dtype=torch.long, device=model.device)
        if (keyword := cache_keyword(model)) is None:
            raise ValueError("this model's forward takes no KV cache; it cannot be stepped (see can_step)")
        self.cache_keyword = keyword
        self._reset()

    def _reset(self) -> None:
        self.batch: list[Row] = []
        self.cache: DynamicCache | None = None
        self.mask = torch.empty(0, 0, dtype=torch.long, device=self.model.device)  # rows x cached tokens
        self.positions = torch.empty(0, dtype=torch.long, device=self.model.device)  # each row's next position
        self.last = torch.empty(0, dtype=torch.long, device=self.model.device)  # each row's latest token

    @torch.inference_mode()
    def join(self, jobs: dict[int, Job]) -> None:
        """Newcomers join with their first token. Their prefill and first draw touch no running row, so a fault
        there fails only the job at fault (``failing_alone``); the running rows go on."""
        self._drop_ended()
        waiting: dict[int, Job] = {}
        for key, job in jobs.items():
            if (done := self.prefilled(job)) is None:
                waiting[key] = job
            elif started := failing_alone(self.events, key, partial(self._first_tokens, {key: job}, done)):
                self._start(started)
        for text_only in (False, True):  # a processor batch has a frame in every row or in none
            if group := {key: job for key, job in waiting.items() if (job.image is None) == text_only}:
                for started in self._prefill_here(group):
                    self._start(started)
        self._drop_ended()

    def _prefill_here(self, jobs: dict[int, Job]) -> list[Started]:
        """``jobs`` prefilled together to their first tokens; where that fails, one by one, so that the fault fails
        the job it belongs to alone (and a batch too big for memory still joins)."""
        if len(jobs) > 1:
            try:
                return [self._started_here(jobs)]
            except Exception as error:
                log.warning(
                    "%d newcomers failed to prefill together (%s: %s); prefilling them one by one",
                    len(jobs),
                    type(error).__name__,
                    error,
                )
        alone = (failing_alone(self.events, key, partial(self._started_here, {key: job})) for key, job in jobs.items())
        return [started for started in alone if started is not None]

    def _started_here(self, jobs: dict[int, Job]) -> Started:
        """``jobs`` prefilled here, together, to their first tokens."""
        return self._first_tokens(jobs, prefill(self.model, self.model_inputs(list(jobs.values())), self.cache_keyword))

    def _first_tokens(self, jobs: dict[int, Job], done: Prefill) -> Started:
        """Prefilled jobs' rows and their first tokens, the running batch untouched."""
        rows = [
            Row.for_job(key, job, count, self.tokenizer, self.context)
            for (key, job), count in zip(jobs.items(), done.prompt_tokens, strict=True)
        ]
        return Started(rows, done, self._choose(done.logits, rows))

    def _start(self, started: Started) -> None:
        """Started rows join the batch with their first token."""
        done = started.prefill
        self._append(started.rows, done.cache, done.mask, done.positions, started.tokens)
        for row, token in zip(started.rows, started.tokens.tolist(), strict=True):
            take(self.events, row, token, stop=token in self.eos_ids)

    @torch.inference_mode()
    def step(self) -> None:
        self._drop_ended()
        if not self.batch:
            return
        self.mask = F.pad(self.mask, (0, 1), value=1)
        logits = self.model(
            input_ids=self.last[:, None],
            attention_mask=self.mask,
            position_ids=self.positions[:, None],
            **{self.cache_keyword: self.cache},
            use_cache=True,
            logits_to_keep=1,
        ).logits
        self.positions = self.positions + 1
        self.last = self._choose(logits[:, -1], self.batch)
        for row, token in zip(self.batch, self.last.tolist(), strict=True):
            take(self.events, row, token, stop=token in self.eos_ids)
        self._drop_ended()

    def _choose(self, logits: torch.Tensor, rows: list[Row]) -> torch.Tensor:
        """Greedy, as ``generate`` chooses, or sampled where a row has a temperature; suppressed tokens never win."""
        logits = logits.float()
        if len(self.suppressed):
            logits[:, self.suppressed] = -float("inf")
        return pick(logits, rows)

    def _append(
        self,
        rows: list[Row],
        cache: DynamicCache,
        mask: torch.Tensor,
        positions: torch.Tensor,
        last: torch.Tensor,
    ) -> None:
        """Newly prefilled rows join the batch: both sides left-padded to one cache length."""
        if self.cache is None:
            self.batch, self.cache, self.mask, self.positions = rows, cache, mask, positions
            self.last = last
            return
        length = max(self.mask.shape[1], mask.shape[1])
        ours, theirs = length - self.mask.shape[1], length - mask.shape[1]
        for running, joining in zip(self.cache.layers, cache.layers, strict=True):
            running.keys = torch.cat([_pad_left(running.keys, ours), _pad_left(joining.keys, theirs)])
            running.values = torch.cat([_pad_left(running.values, ours), _pad_left(joining.values, theirs)])
        self.mask = torch.cat([F.pad(self.mask, (ours, 0)), F.pad(mask, (theirs, 0))])
        self.positions = torch.cat([self.positions, positions])
        self.last = torch.cat([self.last, last])
        self.batch = self.batch + rows

    def _keep_cache(self, index: torch.Tensor) -> None:
        """Columns that are padding for every row left go too."""
        self.mask = self.mask[index]
        cut = int(self.mask.any(0).long().argmax())  # the first column some row still attends to
        self.mask = self.mask[:, cut:]
        assert self.cache is not None
        for layer in self.cache.layers:
            layer.keys = layer.keys[index, :, cut:]
            layer.values = layer.values[index, :, cut:]


def _pad_left(states: torch.Tensor, count: int) -> torch.Tensor:
    """Zero key/value states for ``count`` masked positions before a row's own (batch, heads, tokens, dim)."""
    return F.pad(states, (0, 0, count, 0)) if count else states
