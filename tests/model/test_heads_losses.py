"""Set-out heads and retrieval losses, checked against hand-computed values."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from components.config import load_params
from components.model.heads import ItemProjection, SetQueryHead, set_scores
from components.model.losses import (
    build_candidates,
    full_softmax_loss,
    membership_mask,
    multi_positive_loss,
    sampled_softmax_loss,
)

REPO = Path(__file__).resolve().parents[2]
MODEL = load_params(REPO / "params.yaml").model.model_copy(update={"retrieval_dim": 8})
E = math.e

# One user u = (1, 0) and three items c0 = (1, 0), c1 = (0, 1), c2 = (-1, 0): scores 1, 0, -1.
USER = torch.tensor([[[1.0, 0.0]]])  # (Q=1, M=1, D=2)
ITEMS = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
IDS = torch.arange(3)


def _user(head: SetQueryHead, hidden: torch.Tensor) -> torch.Tensor:
    """The head on `hidden`, with a random recent-history input when the head has a history path."""
    reader = head.history_reader
    return head(hidden, None if reader is None else torch.randn(*hidden.shape[:-1], reader.out_dim))


def test_heads_shapes_and_normalisation() -> None:
    head, proj = SetQueryHead.from_params(MODEL, 16), ItemProjection.from_params(MODEL, 16)
    um = _user(head, torch.randn(2, 4, 16))  # (B, M, H) -> (B, M, D)
    dense = _user(head, torch.randn(2, 7, 16))  # (B, T, H) -> (B, T, D)
    items = proj(torch.randn(5, 16))
    assert MODEL.l2_normalize and MODEL.item_bias  # D = 8 unit coordinates + the bias column
    assert um.shape == (2, 4, 9) and dense.shape == (2, 7, 9) and items.shape == (5, 9)
    assert torch.allclose(um[..., :8].norm(dim=-1), torch.ones(2, 4), atol=1e-5)
    assert torch.equal(um[..., 8], torch.ones(2, 4))  # the user side of the bias column is 1
    assert torch.equal(items[:, 8], torch.zeros(5))  # item bias starts at 0
    plain = _user(SetQueryHead.from_params(MODEL.model_copy(update={"item_bias": False}), 16), torch.randn(2, 4, 16))
    assert plain.shape == (2, 4, 8)
    raw = SetQueryHead(16, 8, l2_normalize=False)(torch.randn(3, 16))
    assert not torch.allclose(raw.norm(dim=-1), torch.ones(3))


def test_item_bias_adds_to_every_score() -> None:
    """score = cos(u, v) + b(item): the inner product of the augmented vectors."""
    head, proj = SetQueryHead.from_params(MODEL, 16).eval(), ItemProjection.from_params(MODEL, 16).eval()
    with torch.no_grad():
        proj.bias.bias.fill_(0.5)
        hidden_u, hidden_i = torch.randn(3, 2, 16), torch.randn(4, 16)
        users, items = _user(head, hidden_u), proj(hidden_i)
        cos = set_scores(users[..., :8], items[:, :8])
        assert torch.allclose(set_scores(users, items), cos + items[:, 8], atol=1e-6)
        assert torch.allclose(items[:, 8], proj.bias(proj.standardise(hidden_i)).squeeze(1))


def test_set_scores_is_max_over_user_vectors() -> None:
    # user vectors (1, 0) and (0, 2); items (1, 1), (3, 0), (0, -1)
    # item0: max(1, 2) = 2; item1: max(3, 0) = 3; item2: max(0, -2) = 0
    users = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])
    items = torch.tensor([[1.0, 1.0], [3.0, 0.0], [0.0, -1.0]])
    assert torch.equal(set_scores(users, items), torch.tensor([[2.0, 3.0, 0.0]]))


def test_sampled_softmax_hand_computed() -> None:
    # τ = 1, log q = 0, positive c0: loss = log(e^1 + e^0 + e^-1) - 1 = log(1 + e^-1 + e^-2)
    #   = log(1 + 0.367879 + 0.135335) = log(1.503214) = 0.407606
    loss = sampled_softmax_loss(USER, torch.tensor([0]), IDS, ITEMS, torch.zeros(3), 1.0)
    assert loss.item() == pytest.approx(0.407606, abs=1e-6)
    # τ = 0.5 doubles the scores: log(1 + e^-2 + e^-4) = log(1 + 0.135335 + 0.018316) = 0.142932
    loss = sampled_softmax_loss(USER, torch.tensor([0]), IDS, ITEMS, torch.zeros(3), 0.5)
    assert loss.item() == pytest.approx(math.log(1 + E**-2 + E**-4), abs=1e-6)
    assert loss.item() == pytest.approx(0.142932, abs=1e-6)


def test_log_q_correction_in_the_logits() -> None:
    # q = (0.5, 0.25, 0.25): logits = s - log q = 1 + ln 2, 0 + ln 4, -1 + ln 4
    #   exp: 2e = 5.436564, 4, 4/e = 1.471518; sum = 10.908082; log = 2.389504
    #   loss = 2.389504 - (1 + ln 2 = 1.693147) = 0.696357
    log_q = torch.log(torch.tensor([0.5, 0.25, 0.25]))
    loss = sampled_softmax_loss(USER, torch.tensor([0]), IDS, ITEMS, log_q, 1.0)
    assert loss.item() == pytest.approx(0.696357, abs=1e-6)


def test_ignore_mask_hand_computed_and_never_masks_positive() -> None:
    # ignoring c2 removes e^-1 from the denominator: log(1 + e^-1) = 0.313262
    ignore = torch.tensor([[False, False, True]])
    loss = sampled_softmax_loss(USER, torch.tensor([0]), IDS, ITEMS, torch.zeros(3), 1.0, ignore)
    assert loss.item() == pytest.approx(0.313262, abs=1e-6)
    # masking the positive itself is ignored: same as the unmasked 0.407606
    ignore_pos = torch.tensor([[True, False, False]])
    loss = sampled_softmax_loss(USER, torch.tensor([0]), IDS, ITEMS, torch.zeros(3), 1.0, ignore_pos)
    assert loss.item() == pytest.approx(0.407606, abs=1e-6)
    # everything ignored: only the positive is left, loss 0 (finite, no NaN)
    loss = sampled_softmax_loss(USER, torch.tensor([0]), IDS, ITEMS, torch.zeros(3), 1.0, torch.ones(1, 3, dtype=torch.bool))
    assert loss.item() == pytest.approx(0.0, abs=1e-6)


@given(seed=st.integers(0, 10_000), q=st.integers(1, 5), c=st.integers(2, 9))
@settings(max_examples=40, deadline=None)
def test_ignore_mask_on_positive_has_no_effect(seed: int, q: int, c: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    users, items = torch.randn(q, 2, 4, generator=gen), torch.randn(c, 4, generator=gen)
    positives = torch.randint(0, c, (q,), generator=gen)
    ignore = torch.rand(q, c, generator=gen) < 0.5
    with_pos = ignore.clone()
    with_pos[torch.arange(q), positives] = True
    without_pos = ignore.clone()
    without_pos[torch.arange(q), positives] = False
    a = sampled_softmax_loss(users, positives, torch.arange(c), items, torch.zeros(c), 0.3, with_pos)
    b = sampled_softmax_loss(users, positives, torch.arange(c), items, torch.zeros(c), 0.3, without_pos)
    assert torch.isfinite(a) and a.item() >= 0
    assert a.item() == pytest.approx(b.item(), abs=1e-6)


def test_sampled_equals_full_when_candidates_are_all_items() -> None:
    gen = torch.Generator().manual_seed(0)
    users, items = torch.randn(6, 3, 8, generator=gen), torch.randn(20, 8, generator=gen)
    positives = torch.randint(0, 20, (6,), generator=gen)
    ignore = torch.rand(6, 20, generator=gen) < 0.2
    full = full_softmax_loss(users, positives, items, 0.1, ignore)
    constant_log_q = torch.full((20,), -3.7)  # any constant cancels in the softmax
    sampled = sampled_softmax_loss(users, positives, torch.arange(20), items, constant_log_q, 0.1, ignore)
    assert sampled.item() == pytest.approx(full.item(), rel=1e-6)
    # and full softmax equals the textbook cross-entropy over all items
    logits = set_scores(users, items) / 0.1
    reference = torch.nn.functional.cross_entropy(logits.masked_fill(ignore & ~torch.nn.functional.one_hot(positives, 20).bool(), -torch.inf), positives)
    assert full.item() == pytest.approx(reference.item(), rel=1e-6)


def test_build_candidates_log_q_from_batch_frequency() -> None:
    # positives 0, 0, 1, 3 (B = 4), no uniform draws (S = 0): q = count / B = 2/4, 1/4, 1/4
    ids, log_q = build_candidates(torch.tensor([0, 0, 1, 3]), 10, 0, torch.Generator().manual_seed(0))
    assert ids.tolist() == [0, 1, 3]
    assert torch.allclose(log_q.exp(), torch.tensor([0.5, 0.25, 0.25]))
    # B = 4 positives 1, 2, 2, 5, S = 3 uniform draws over N = 10: q(c) = (count(c) + 3/10) / 7
    #   q(2) = 2.3 / 7 = 0.328571, q(1) = q(5) = 1.3 / 7 = 0.185714, uniform-only c: 0.3 / 7 = 0.042857
    ids, log_q = build_candidates(torch.tensor([1, 2, 2, 5]), 10, 3, torch.Generator().manual_seed(0))
    q = dict(zip(ids.tolist(), log_q.exp().tolist()))
    assert {1, 2, 5} <= set(q)
    assert q[2] == pytest.approx(0.328571, abs=1e-6) and q[1] == q[5] == pytest.approx(0.185714, abs=1e-6)
    for item in set(q) - {1, 2, 5}:
        assert q[item] == pytest.approx(0.042857, abs=1e-6)
    assert ids.unique().numel() == ids.numel()


def test_build_candidates_log_q_from_item_probability() -> None:
    # p = (0.1, 0.2, 0.3, 0.4), B = 2 positives, S = 2 uniform of N = 4: q(c) = (2 p(c) + 2/4) / 4
    #   q = (0.2 + 0.5) / 4, (0.4 + 0.5) / 4, (0.6 + 0.5) / 4, (0.8 + 0.5) / 4 = 0.175, 0.225, 0.275, 0.325
    p = torch.tensor([0.1, 0.2, 0.3, 0.4])
    ids, log_q = build_candidates(torch.tensor([1, 3, -1]), 4, 2, torch.Generator().manual_seed(1), p.log())
    expected = {0: 0.175, 1: 0.225, 2: 0.275, 3: 0.325}
    for item, value in zip(ids.tolist(), log_q.exp().tolist()):
        assert value == pytest.approx(expected[item], abs=1e-6)


def test_multi_positive_hand_computed() -> None:
    # τ = 1: logits 1, 0, -1; positives {c0, c1}; each against the negative c2 only (other positive masked):
    #   c0: log(1 + e^(-1-1)) = log(1 + e^-2) = 0.126928;  c1: log(1 + e^(-1-0)) = 0.313262
    #   mean = (0.126928 + 0.313262) / 2 = 0.220095
    loss = multi_positive_loss(USER, torch.tensor([[0, 1, -1]]), IDS, ITEMS, torch.zeros(3), 1.0)
    assert loss.item() == pytest.approx(0.220095, abs=1e-6)
    # τ = 0.5: logits 2, 0, -2: c0: log(1 + e^-4) = 0.018149, c1: log(1 + e^-2) = 0.126928; mean 0.072539
    loss = multi_positive_loss(USER, torch.tensor([[0, 1, -1]]), IDS, ITEMS, torch.zeros(3), 0.5)
    assert loss.item() == pytest.approx(0.072539, abs=1e-6)
    # a single-positive row equals sampled_softmax_loss
    single = multi_positive_loss(USER, torch.tensor([[0, -1]]), IDS, ITEMS, torch.zeros(3), 0.5)
    assert single.item() == pytest.approx(sampled_softmax_loss(USER, torch.tensor([0]), IDS, ITEMS, torch.zeros(3), 0.5).item())


def test_membership_mask_and_missing_positive() -> None:
    candidates = torch.tensor([2, 5, 9])
    mask = membership_mask(candidates, torch.tensor([[5, -1, 7], [9, 2, -1]]))
    assert mask.tolist() == [[False, True, False], [True, False, True]]
    with pytest.raises(ValueError, match="not among candidate_ids"):
        sampled_softmax_loss(USER, torch.tensor([4]), candidates, ITEMS, torch.zeros(3), 1.0)


def test_loss_in_float32_under_bf16_autocast_and_gradients() -> None:
    gen = torch.Generator().manual_seed(3)
    users = torch.randn(4, 2, 8, generator=gen, requires_grad=True)
    items = torch.randn(30, 8, generator=gen)
    positives = torch.tensor([1, 5, 5, 20])
    ids, log_q = build_candidates(positives, 30, 10, gen)
    reference = sampled_softmax_loss(users, positives, ids, items[ids], log_q, 0.5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = sampled_softmax_loss(users.bfloat16(), positives, ids, items[ids].bfloat16(), log_q, 0.5)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(reference.item(), rel=2e-2)
    reference.backward()
    assert users.grad is not None and users.grad.abs().sum() > 0
