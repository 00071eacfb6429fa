"""moondream2's answers decoded together (vlm/backends/moondream_rows.py), against its own loop, in process.

The look-alike (scripts/build_remote_code_fixture.py) lays out its text decoder as moondream2 does, so the
batched step here reads the same weights by the same names as it would in moondream2. Greedy rows must give
what moondream2's own loop gives alone: the same tokens, answers, counts and finish reasons.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from scripts.build_remote_code_fixture import QUESTION, build_remote_code_fixture, fixture_image
from tests.moondream_like import MoondreamLike
from tests.test_moondream_backend import Events as OwnLoopEvents
from tests.test_moondream_backend import load
from vlm.backends import moondream_rows
from vlm.backends.base import Job, Result
from vlm.backends.frame_cache import FrameCache
from vlm.backends.moondream import MoondreamBackend
from vlm.backends.moondream_rows import AnswerStart, MoondreamRows, RowCache, attend, decode_step
from vlm.errors import Code, VlmError

FRAMES = [Image.new("RGB", (640, 480), colour) for colour in ("red", "navy", "olive", "white")]
QUESTIONS = ["what is in the picture?", "what colour is it?", "is anyone there?", "what is on the table?"]


class RowEventsRecorder:
    """Reports by row key; cancels ``cancel_key`` once it has streamed ``cancel_after`` deltas."""

    def __init__(self, cancel_key: int | None = None, cancel_after: int = 2) -> None:
        self.deltas: dict[int, list[str]] = {}
        self.results: dict[int, Result] = {}
        self.failures: dict[int, VlmError] = {}
        self.cancel_key, self.cancel_after = cancel_key, cancel_after

    def delta(self, key: int, text: str) -> None:
        self.deltas.setdefault(key, []).append(text)

    def done(self, key: int, result: Result) -> None:
        assert key not in self.results, "each row finishes once"
        self.results[key] = result

    def failed(self, key: int, error: VlmError) -> None:
        self.failures[key] = error

    def cancelled(self, key: int) -> bool:
        return key == self.cancel_key and len(self.deltas.get(key, [])) >= self.cancel_after


@pytest.fixture(scope="module")
def md(tmp_path_factory: pytest.TempPathFactory) -> MoondreamBackend:
    """A look-alike of two text blocks (moondream2 has 24), so that each layer's cache is its own."""
    hub = tmp_path_factory.mktemp("hub-cache")
    folder = build_remote_code_fixture(tmp_path_factory.mktemp("moondream-like-2"), hub, text={"n_layers": 2})
    backend = load(MoondreamLike(folder, hub))
    assert len(backend.model.model.text.blocks) == 2
    return backend


def query(index: int, **extra: Any) -> Job:
    return Job(task="query", image=FRAMES[index % 4], image_key=f"frame-{index % 4}", text=QUESTIONS[index], **extra)


def own_loop(md: MoondreamBackend, job: Job) -> Result:
    events = OwnLoopEvents()
    md.generate([job], events)
    (result,) = events.results
    return result


def run_to_end(rows: MoondreamRows, limit: int = 3000) -> None:
    for _ in range(limit):
        if not rows.rows():
            return
        rows.step()
    raise AssertionError("rows never ended")


def prompt_tokens(md: MoondreamBackend, question: str) -> torch.Tensor:
    """A query's prompt as moondream2 builds it: its answer suffix twice."""
    inner = md.model.model
    template = inner.config.tokenizer.templates["query"]
    return torch.tensor([template["prefix"] + inner.tokenizer.encode(question).ids + template["suffix"] * 2])


def started_row(md: MoondreamBackend, index: int) -> tuple[torch.Tensor, int, list[Any]]:
    """Row ``index``'s prompt prefilled by the model's own code: (first token, its position, its cache)."""
    inner = md.model.model
    encoded = md.model.encode_image(FRAMES[index])
    inner.load_encoded_image(encoded)
    _, _, token, position = inner._prefill_prompt(prompt_tokens(md, QUESTIONS[index]), encoded.pos, 0, 0)
    cache = [
        (b.kv_cache.k_cache[:, :, :position].clone(), b.kv_cache.v_cache[:, :, :position].clone())
        for b in inner.text.blocks
    ]
    return token, position, cache


def own_logits(md: MoondreamBackend, index: int) -> torch.Tensor:
    """The next token's logits from the model's own ``_decode_one_tok``, its cache holding row ``index`` alone."""
    inner = md.model.model
    token, position, _ = started_row(md, index)
    mask = torch.zeros(1, 1, inner.config.text.max_context, dtype=torch.bool)
    mask[..., : position + 1] = True
    with torch.inference_mode():
        logits, _ = inner._decode_one_tok(inner._embed(token), mask, torch.tensor([position]), None)
    return logits


def batched_logits(md: MoondreamBackend, indexes: list[int]) -> torch.Tensor:
    inner = md.model.model
    started = [started_row(md, index) for index in indexes]
    cache = RowCache()
    cache.add([row[2] for row in started], [row[1] for row in started])
    positions = torch.tensor([row[1] for row in started])
    cache.admit(positions)
    tokens = torch.cat([row[0] for row in started])
    with torch.inference_mode():
        return decode_step(inner, inner._embed(tokens), positions, cache)


def test_a_lone_row_computes_moondream2s_own_logits_exactly(md: MoondreamBackend) -> None:
    assert torch.equal(batched_logits(md, [0]), own_logits(md, 0))


def test_rows_of_different_frames_and_prompt_lengths_each_compute_their_own(md: MoondreamBackend) -> None:
    lengths = {len(prompt_tokens(md, question)[0]) for question in QUESTIONS}
    assert len(lengths) > 1, "the rows must sit at different positions"
    together = batched_logits(md, [0, 1, 2, 3])
    for index in range(4):
        alone = own_logits(md, index)[0]
        torch.testing.assert_close(together[index], alone, rtol=0.02, atol=0.02)
        assert int(together[index].argmax()) == int(alone.argmax())


def test_greedy_rows_joined_at_different_steps_answer_as_moondream2_alone(md: MoondreamBackend) -> None:
    jobs = {index: query(index, max_new_tokens=60) for index in range(4)}
    jobs[4] = Job(task="caption", image=FRAMES[2], image_key="frame-2", length="short", max_new_tokens=60)
    alone = {key: own_loop(md, job) for key, job in jobs.items()}
    events = RowEventsRecorder()
    rows = MoondreamRows(md, events)
    rows.join({0: jobs[0], 1: jobs[1]})
    for _ in range(3):
        rows.step()
    rows.join({2: jobs[2], 3: jobs[3], 4: jobs[4]})
    run_to_end(rows)
    assert events.failures == {}
    for key, result in alone.items():
        assert events.results[key] == result, key
        assert "".join(events.deltas.get(key, [])).strip() == result.answer


def test_a_budget_ends_a_row_with_length_and_the_others_go_on(md: MoondreamBackend) -> None:
    jobs = {0: query(0, max_new_tokens=3), 1: query(1, max_new_tokens=60)}
    events = RowEventsRecorder()
    rows = MoondreamRows(md, events)
    rows.join(jobs)  # the first token
    rows.step()
    rows.step()  # the third
    assert rows.rows() <= {1}
    run_to_end(rows)
    assert events.results[0].finish_reason == "length"
    assert events.results[0].tokens == 3
    assert events.results == {key: own_loop(md, job) for key, job in jobs.items()}


def test_a_cancelled_row_leaves_and_the_others_answer_unchanged(md: MoondreamBackend) -> None:
    jobs = {key: query(key, max_new_tokens=60) for key in range(3)}
    events = RowEventsRecorder(cancel_key=1, cancel_after=1)
    rows = MoondreamRows(md, events)
    rows.join(jobs)
    rows.step()
    assert 1 not in rows.rows()
    run_to_end(rows)
    assert 1 not in events.results
    assert events.results == {key: own_loop(md, jobs[key]) for key in (0, 2)}


@pytest.fixture(scope="module")
def worded(moondream_like: MoondreamLike) -> MoondreamBackend:
    """The whole look-alike, whose greedy answer to its own question is several words."""
    return load(moondream_like)


def fixture_question(max_new_tokens: int = 60, **extra: Any) -> Job:
    return Job(
        task="query", image=fixture_image(), image_key="fixture", text=QUESTION, max_new_tokens=max_new_tokens, **extra
    )


def test_a_stop_string_ends_the_answer_before_it_in_moondream2s_own_loop_and_in_the_rows(
    worded: MoondreamBackend,
) -> None:
    """moondream2 streams words, the rows tokens: either way the answer is the text before the stop string,
    nothing of it streams, it took fewer tokens than the whole answer, and the row beside it runs on."""
    md, job = worded, fixture_question()
    other = query(1, max_new_tokens=60)
    whole = own_loop(md, job)
    words = whole.answer.split()
    assert len(words) >= 4, whole.answer
    stop = words[len(words) // 2]
    stopping = replace(job, stop=(stop,))
    expected = whole.answer[: whole.answer.index(stop)].rstrip()
    own = OwnLoopEvents()
    md.generate([stopping], own)
    events = RowEventsRecorder()
    rows = MoondreamRows(md, events)
    rows.join({0: other})
    rows.step()
    rows.join({1: stopping})
    run_to_end(rows)
    for result, deltas in ((own.results[0], own.deltas), (events.results[1], events.deltas[1])):
        assert (result.answer, result.finish_reason) == (expected, "stop")
        assert result.tokens < whole.tokens and result.prompt_tokens == whole.prompt_tokens
        assert stop not in "".join(deltas) and "".join(deltas).strip() == expected
    assert events.results[0] == own_loop(md, other)


def test_sampled_rows_vary_and_leave_greedy_rows_exact(md: MoondreamBackend) -> None:
    greedy = query(0, max_new_tokens=40)
    answers = set()
    for _ in range(4):
        events = RowEventsRecorder()
        rows = MoondreamRows(md, events)
        rows.join({0: greedy, 1: query(1, max_new_tokens=40, temperature=1.5)})
        run_to_end(rows)
        assert events.results[0] == own_loop(md, greedy)
        answers.add(events.results[1].answer)
    assert len(answers) > 1


def test_top_p_reaches_moondream2s_own_loop_and_the_rows(worded: MoondreamBackend) -> None:
    """At top_p 0 only the likeliest token is left to sample, so a hot answer is the same every time in each loop;
    at 1 it varies. The two loops need not agree with each other at top_p 0: moondream2 ranks its probabilities in
    bfloat16, where near ones tie and it keeps the one sorted first, the rows in float32 (as the look-alike's own
    test of moondream2's sampling shows)."""
    narrow = fixture_question(temperature=2.0, top_p=0.0)
    wide = fixture_question(temperature=2.0, max_new_tokens=20)
    in_rows: list[str] = []
    for _ in range(2):
        events = RowEventsRecorder()
        rows = MoondreamRows(worded, events)
        rows.join({0: narrow, 1: wide, 2: wide})
        run_to_end(rows)
        in_rows += [events.results[0].answer]
    assert len(set(in_rows)) == 1 and len({own_loop(worded, narrow).answer for _ in range(3)}) == 1
    assert len({own_loop(worded, wide).answer, events.results[1].answer, events.results[2].answer}) > 1


def test_a_seed_repeats_its_answer_in_moondream2s_own_loop_and_in_the_rows(worded: MoondreamBackend) -> None:
    """Each loop draws the same answer again for the same seed, whatever the rows beside it. moondream2 samples from
    torch's global generator (its first token in the rows too); a seed sets it for the call, and a row draws the
    rest from its own (``seeds.ROW_STREAM``), so neither the rows beside it nor other draws change it. The two
    loops do not give each other's answer: after the first token they draw from different streams (and moondream2
    in bfloat16, the rows in float32)."""
    seeded = fixture_question(temperature=2.0, max_new_tokens=20, seed=5)
    wide = fixture_question(temperature=2.0, max_new_tokens=20)

    def in_rows(work: list[Job]) -> str:
        events = RowEventsRecorder()
        rows = MoondreamRows(worded, events)
        rows.join(dict(enumerate(work)))
        run_to_end(rows)
        return events.results[0].answer

    assert own_loop(worded, seeded).answer == own_loop(worded, seeded).answer
    assert in_rows([seeded]) == in_rows([seeded, wide, seeded]) == in_rows([seeded])
    others = {own_loop(worded, replace(seeded, seed=seed)).answer for seed in range(6)}
    assert len(others) > 1, "another seed, other draws"


def test_a_seeded_answer_is_prefilled_on_the_worker_not_ahead(moondream_like: MoondreamLike) -> None:
    """Its first token is drawn from torch's global generators set to its seed: on a preparing thread that would
    set them under the worker's feet, whose other rows draw from them meanwhile (and be shifted by theirs)."""
    ahead = load(moondream_like, ahead="prefill")
    hot = fixture_question(temperature=2.0, max_new_tokens=8)
    assert ahead.prepare(replace(hot, seed=3)).prepared is None
    assert ahead.prepare(hot).prepared is not None and ahead.prepare(replace(hot, temperature=0.0, seed=3)).prepared


def test_skills_run_their_own_loop_during_the_join(md: MoondreamBackend) -> None:
    detect = Job(task="detect", image=FRAMES[0], image_key="frame-0", text="face")
    point = Job(task="point", image=FRAMES[1], image_key="frame-1", text="cup")
    events = RowEventsRecorder()
    rows = MoondreamRows(md, events)
    rows.join({0: query(0, max_new_tokens=20), 1: detect, 2: point})
    assert rows.rows() <= {0}
    assert events.results[1] == own_loop(md, detect)
    assert events.results[2] == own_loop(md, point)
    run_to_end(rows)
    assert events.results[0] == own_loop(md, query(0, max_new_tokens=20))


@pytest.mark.parametrize("ahead", ["prefill", "encode"])
def test_newcomers_prepared_on_a_thread_while_the_batch_decodes_answer_as_moondream2_alone(
    md: MoondreamBackend, monkeypatch: pytest.MonkeyPatch, ahead: str
) -> None:
    """``--prepare prefill``: a preparing thread runs moondream2's own code (the frame, the prompt, a whole point
    skill) in the model's one cache while the worker steps the running batch, which keeps its own; with
    ``encode``, only the frame. Taking turns at moondream2's code (detect runs its own loop in the join) keeps
    every answer its own."""
    jobs = {index: query(index, max_new_tokens=60) for index in range(4)}
    jobs[4] = Job(task="caption", image=FRAMES[2], image_key="frame-2", length="short", max_new_tokens=60)
    jobs[5] = Job(task="detect", image=FRAMES[3], image_key="frame-3", text="face")
    jobs[6] = Job(task="point", image=FRAMES[1], image_key="frame-1", text="cup")
    alone = {key: own_loop(md, job) for key, job in jobs.items()}
    monkeypatch.setattr(md, "encoded", FrameCache())  # every frame encoded again, ahead
    monkeypatch.setattr(md, "ahead", ahead)
    events = RowEventsRecorder()
    rows = MoondreamRows(md, events)
    rows.join({0: jobs[0], 1: jobs[1]})
    with ThreadPoolExecutor(1) as pool:
        preparing = pool.submit(lambda: {key: md.prepare(jobs[key]) for key in (2, 3, 4, 6)})
        while not preparing.done():
            rows.step()
            rows.join({5: jobs[5]} if 5 not in events.results else {})
        prepared = preparing.result()
    assert all(isinstance(prepared[key].prepared, AnswerStart) == (ahead == "prefill") for key in (2, 3, 4))
    assert isinstance(prepared[6].prepared, Result) == (ahead == "prefill"), "a skill runs to its end ahead"
    assert all(md.encoded.get(job.image_key) is not None for job in prepared.values()), "frames encoded ahead"
    if ahead == "prefill":
        monkeypatch.setattr(md, "run_skill", lambda *_: pytest.fail("the join ran a skill prepared ahead"))
    rows.join(prepared)
    run_to_end(rows)
    assert events.failures == {}
    assert events.results == alone


def test_work_ahead_whose_request_has_ended_stops_at_the_next_token(
    md: MoondreamBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ``prefill`` a detect runs to its end ahead; a request cancelled meanwhile must not hold moondream2's
    code (and every other newcomer's prefill) for the rest of it."""
    monkeypatch.setattr(md, "ahead", "prefill")
    detect = Job(task="detect", image=FRAMES[3], image_key="frame-3", text="face")
    tokens: list[int] = []

    def ended() -> bool:
        tokens.append(md.meter.tokens)
        return len(tokens) > 2

    whole = md.prepare(detect).prepared
    assert md.prepare(detect, ended).prepared is None
    assert md.prepare(query(0, max_new_tokens=60), lambda: True).prepared is None
    assert max(tokens) <= 2 < whole.tokens, "stopped within a token of being told, not at the end"


def test_a_question_too_long_fails_alone(md: MoondreamBackend) -> None:
    events = RowEventsRecorder()
    rows = MoondreamRows(md, events)
    too_long = Job(task="query", image=FRAMES[0], image_key="frame-0", text="why " * 2000)
    rows.join({0: too_long, 1: query(1, max_new_tokens=20)})
    assert events.failures[0].code == Code.QUESTION_TOO_LONG
    run_to_end(rows)
    assert events.results[1] == own_loop(md, query(1, max_new_tokens=20))


def test_a_newcomer_that_fails_in_the_join_fails_alone(md: MoondreamBackend) -> None:
    """A newcomer's prefill runs moondream2's own code in the model's cache, not the running batch's: what goes
    wrong there (a temperature so small that moondream2's bfloat16 probabilities are NaN and its first draw
    fails) fails that request, not the answers running beside it or joining with it."""
    running, beside = query(0, max_new_tokens=20), query(2, max_new_tokens=20)
    events = RowEventsRecorder()
    rows = MoondreamRows(md, events)
    rows.join({0: running})
    rows.step()
    rows.join({1: query(1, max_new_tokens=20, temperature=1e-39), 2: beside})
    assert {key: error.code for key, error in events.failures.items()} == {1: Code.MODEL_ERROR}
    run_to_end(rows)
    assert events.results == {0: own_loop(md, running), 2: own_loop(md, beside)}


def test_a_skill_that_fails_in_the_join_fails_alone(md: MoondreamBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    running = query(0, max_new_tokens=20)
    events = RowEventsRecorder()
    rows = MoondreamRows(md, events)
    rows.join({0: running})

    def failing_point(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("a fault in moondream2's point")

    monkeypatch.setattr(md.model.model, "point", failing_point)
    rows.join({1: Job(task="point", image=FRAMES[1], image_key="frame-1", text="cup")})
    monkeypatch.undo()
    assert {key: error.code for key, error in events.failures.items()} == {1: Code.MODEL_ERROR}
    run_to_end(rows)
    assert events.results == {0: own_loop(md, running)}


def test_an_answer_ended_by_the_context_is_the_same_in_moondream2s_own_loop_and_in_the_rows(
    worded: MoondreamBackend,
) -> None:
    """moondream2's stream holds back the word it is in until a space, and streams it at its end: stopped at the
    context's last position by an exception, its answer lost that word and said fewer tokens than the rows'."""
    md = worded
    frame_and_template = own_loop(md, fixture_question(max_new_tokens=1)).prompt_tokens - len(QUESTION)
    cut_in_a_word = []
    for room in range(1, 9):
        question = QUESTION + "a" * (2048 - frame_and_template - len(QUESTION) - room)  # one token a character
        job = replace(fixture_question(max_new_tokens=100), text=question)
        events = RowEventsRecorder()
        rows = MoondreamRows(md, events)
        rows.join({0: job})
        run_to_end(rows)
        alone = own_loop(md, job)
        assert alone == events.results[0]
        assert (alone.tokens, alone.finish_reason, alone.prompt_tokens + alone.tokens) == (room, "length", 2048)
        cut_in_a_word.append(not "".join(events.deltas[0]).endswith(" "))
    assert any(cut_in_a_word), "some answer must end inside a word"


def test_the_cache_grows_with_the_answers_and_is_freed_with_the_last_row(
    md: MoondreamBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(moondream_rows, "SLOT_CHUNK", 8)
    events = RowEventsRecorder()
    rows = MoondreamRows(md, events)
    rows.join({0: query(0, max_new_tokens=120)})
    sizes = [rows.cache.slots]
    while rows.rows():
        assert rows.cache.slots >= int(rows.positions.max())  # every token written so far has its slot
        rows.step()
        sizes.append(rows.cache.slots)
    assert events.results[0].tokens > 8, "the answer must outgrow a chunk of slots"
    assert max(sizes) > sizes[0]
    assert sizes[-1] == 0


@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("kv_heads", [4, 2])
def test_attention_of_several_rows_is_the_fused_kernels_up_to_rounding(
    dtype: torch.dtype, tolerance: float, kv_heads: int
) -> None:
    generator = torch.Generator().manual_seed(0)
    q = torch.randn(5, 4, 1, 16, generator=generator).to(dtype)
    keys, values = (torch.randn(5, kv_heads, 40, 16, generator=generator).to(dtype) for _ in range(2))
    mask = torch.arange(40) < torch.tensor([3, 17, 40, 25, 9])[:, None, None, None]
    fused = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, enable_gqa=kv_heads != 4)
    torch.testing.assert_close(attend(q, keys, values, mask), fused, rtol=tolerance, atol=tolerance)
    assert torch.equal(
        attend(q[:1], keys[:1], values[:1], mask[:1]),
        F.scaled_dot_product_attention(q[:1], keys[:1], values[:1], attn_mask=mask[:1], enable_gqa=kv_heads != 4),
    ), "a lone row takes moondream2's own kernel"
    keys[~mask.expand(5, kv_heads, 1, 40).transpose(2, 3).squeeze(-1)] = float("nan")
    assert not attend(q, keys, values, mask).isnan().any(), "a masked slot leaked into a row"
