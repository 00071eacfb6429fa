"""How a running batch picks each row's next token: greedy, or sampled at the row's temperature from its nucleus."""

from __future__ import annotations

import pytest
import torch

from vlm.backends.step_decoder import Row, RowText, nucleus, pick

pytestmark = pytest.mark.unit


def row(temperature: float = 0.0, top_p: float = 1.0) -> Row:
    return Row(0, 8, 1, RowText(tokenizer=None), temperature, top_p)


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
