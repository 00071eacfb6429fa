"""How a running batch picks each row's next token: greedy, or sampled at the row's temperature from its nucleus."""

from __future__ import annotations

import pytest
import torch

from vlm.backends.seeds import seeded
from vlm.backends.step_decoder import Row, RowText, nucleus, pick

pytestmark = pytest.mark.unit


def row(temperature: float = 0.0, top_p: float = 1.0, seed: int | None = None) -> Row:
    return Row(0, 8, 1, RowText(tokenizer=None), temperature, top_p, seed)


def test_the_nucleus_keeps_a_token_while_the_likelier_ones_sum_to_no_more_than_top_p() -> None:
    probabilities = torch.tensor([[0.2, 0.5, 0.3]] * 3)
    kept = nucleus(probabilities, torch.tensor([0.0, 0.6, 1.0]))
    left = [[False, True, False], [False, True, True], [True, True, True]]
    assert (kept > 0).tolist() == left
    assert torch.equal(kept, probabilities * torch.tensor(left)), "what stays keeps its probability"


def test_greedy_rows_take_the_likeliest_and_a_zero_top_p_leaves_only_it_to_sample() -> None:
    torch.manual_seed(0)
    logits = torch.tensor([[1.0, 3.0, 2.9]]).repeat(4, 1)
    rows = [row(), row(temperature=5.0, top_p=0.0), row(temperature=5.0), row(temperature=5.0, top_p=0.4)]
    picks = torch.stack([pick(logits.clone(), rows) for _ in range(200)])
    assert set(picks[:, 0].tolist()) == set(picks[:, 1].tolist()) == {1}
    assert set(picks[:, 2].tolist()) == {0, 1, 2}, "the whole vocabulary"
    assert set(picks[:, 3].tolist()) == {1, 2}, "the two likeliest: the first alone has less than 0.4"


def test_a_seeded_row_draws_the_same_tokens_whatever_rows_are_beside_it_and_whatever_the_global_seed() -> None:
    logits = torch.randn(1, 50, generator=torch.Generator().manual_seed(3))

    def drawn(rows: list[Row], at: int, global_seed: int) -> list[int]:
        torch.manual_seed(global_seed)
        return [int(pick(logits.repeat(len(rows), 1), rows)[at]) for _ in range(40)]

    alone = drawn([row(temperature=2.0, seed=7)], 0, global_seed=0)
    crowded = [row(temperature=2.0), row(), row(temperature=2.0, top_p=0.5), row(temperature=2.0, seed=7)]
    assert drawn(crowded, 3, global_seed=1) == alone
    assert drawn([row(temperature=2.0, seed=8)], 0, global_seed=0) != alone
    assert len(set(alone)) > 1, "it samples"


def test_unseeded_rows_beside_a_seeded_one_still_sample() -> None:
    logits = torch.zeros(2, 10)
    rows = [row(temperature=1.0), row(temperature=1.0, seed=1)]
    picks = torch.stack([pick(logits.clone(), rows) for _ in range(100)])
    assert len(set(picks[:, 0].tolist())) > 5 and len(set(picks[:, 1].tolist())) > 5


def test_seeded_code_draws_from_the_seed_and_leaves_the_global_generator_as_it_was() -> None:
    cpu = torch.device("cpu")
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    with seeded(5, cpu):
        first = torch.rand(3)
    with seeded(5, cpu):
        again = torch.rand(3)
    assert torch.equal(first, again)
    assert torch.equal(torch.rand(3), expected), "the draws around it go on as if it had not run"
    with seeded(None, cpu):
        assert not torch.equal(torch.rand(3), first)
