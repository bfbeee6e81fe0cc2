"""Verbaliser scoring from the LM head restricted to answer tokens."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from components.model.verbaliser import ctr_probability, rating_expectation, verbaliser_logits, verbaliser_loss


@given(seed=st.integers(0, 10_000), k=st.integers(1, 6), bias=st.booleans())
@settings(max_examples=30, deadline=None)
def test_logits_equal_full_vocabulary_columns(seed: int, k: int, bias: bool) -> None:
    gen = torch.Generator().manual_seed(seed)
    hidden, weight = torch.randn(3, 16, generator=gen), torch.randn(50, 16, generator=gen)
    lm_bias = torch.randn(50, generator=gen) if bias else None
    token_ids = torch.randint(0, 50, (k,), generator=gen)
    full = hidden @ weight.T + (lm_bias if bias else 0.0)  # (B, V)
    got = verbaliser_logits(hidden, weight, token_ids, lm_bias)
    assert got.shape == (3, k)
    assert torch.allclose(got, full[:, token_ids], atol=1e-5)


def test_ctr_probability_hand_computed() -> None:
    # logits (yes 2, no 0): P(yes) = e^2 / (e^2 + 1) = 1 / (1 + e^-2) = 0.880797; equal logits: 0.5
    prob = ctr_probability(torch.tensor([[2.0, 0.0], [1.0, 1.0]]))
    assert prob.tolist() == pytest.approx([0.880797, 0.5], abs=1e-6)


def test_rating_expectation_hand_computed() -> None:
    # logits log(1, 1, 1, 1, 4): probs 1/8 ×4 and 4/8 → (1 + 2 + 3 + 4)/8 + 5·0.5 = 1.25 + 2.5 = 3.75
    logits = torch.log(torch.tensor([[1.0, 1.0, 1.0, 1.0, 4.0], [1.0, 1.0, 1.0, 1.0, 1.0]]))
    assert rating_expectation(logits).tolist() == pytest.approx([3.75, 3.0], abs=1e-6)
    with pytest.raises(ValueError):
        rating_expectation(logits, values=(1.0, 2.0))


def test_verbaliser_loss_hand_computed() -> None:
    # logits (0, ln 3), target 0: -log(1 / (1 + 3)) = ln 4 = 1.386294
    loss = verbaliser_loss(torch.tensor([[0.0, math.log(3.0)]]), torch.tensor([0]))
    assert loss.item() == pytest.approx(1.386294, abs=1e-6)


def test_gradient_reaches_hidden_and_selected_rows_only() -> None:
    hidden = torch.randn(2, 8, requires_grad=True)
    weight = torch.randn(20, 8, requires_grad=True)
    verbaliser_loss(verbaliser_logits(hidden, weight, torch.tensor([4, 9])), torch.tensor([0, 1])).backward()
    assert hidden.grad.abs().sum() > 0
    touched = weight.grad.abs().sum(dim=1).nonzero().flatten().tolist()
    assert touched == [4, 9]
