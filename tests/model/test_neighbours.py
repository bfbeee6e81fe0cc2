"""The history path's item-neighbourhood term (components/model/neighbours.py) against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from components.model.build import build_model
from components.model.neighbours import ItemNeighbours


def _slots(rows_items: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids, rows, cols) of item slots at token columns 2, 4, 6, … of each row, in (row, col) order."""
    ids = [i for items in rows_items for i in items]
    rows = [r for r, items in enumerate(rows_items) for _ in items]
    cols = [2 + 2 * k for items in rows_items for k in range(len(items))]
    return torch.tensor(ids), torch.tensor(rows), torch.tensor(cols)


def test_user_block_is_the_decayed_sum_of_the_recent_history_factors() -> None:
    factors = torch.arange(12, dtype=torch.float32).view(6, 2)  # f_i = (2i, 2i+1)
    nb = ItemNeighbours(factors, window=2, decay=0.5, weight=3.0)
    ids, rows, cols = _slots([[1, 2, 3], [4, -1, 5]])  # row 1's middle item enters content-only
    read_rows = torch.tensor([0, 0, 0, 1, 1])
    read_cols = torch.tensor([1, 4, 9, 4, 6])  # before any item, after 2 items, after all; row 1: after 2, after 3
    out = nb.user_block(ids, rows, cols, 2, read_rows, read_cols)
    f = factors
    expected = 3.0 * torch.stack([torch.zeros(2), f[2] + 0.5 * f[1], f[3] + 0.5 * f[2],
                                  torch.zeros(2) + 0.5 * f[4], f[5] + 0.0])
    torch.testing.assert_close(out, expected)
    assert nb.item_block(torch.tensor([1, 2]), torch.tensor([True, False])).tolist() == [[2.0, 3.0], [0.0, 0.0]]


@settings(max_examples=30, deadline=None)
@given(lengths=st.lists(st.integers(0, 7), min_size=1, max_size=4), window=st.integers(1, 4),
       decay=st.floats(0.1, 1.0), seed=st.integers(0, 1000))
def test_user_block_matches_a_loop_over_every_read_position(lengths, window, decay, seed) -> None:
    rng = np.random.default_rng(seed)
    factors = torch.from_numpy(rng.normal(size=(9, 3)).astype(np.float32))
    histories = [[int(i) for i in rng.integers(-1, 9, size=n)] for n in lengths]
    ids, rows, cols = _slots(histories)
    read_rows = torch.tensor([r for r, h in enumerate(histories) for _ in range(len(h) + 1)], dtype=torch.long)
    read_cols = torch.tensor([1 + 2 * k for h in histories for k in range(len(h) + 1)], dtype=torch.long)
    nb = ItemNeighbours(factors, window, decay, 0.7)
    out = nb.user_block(ids, rows, cols, len(histories), read_rows, read_cols)
    for r, (row, col) in enumerate(zip(read_rows.tolist(), read_cols.tolist())):
        seen = [i for k, i in enumerate(histories[row]) if 2 + 2 * k <= col][::-1][:window]  # newest first
        want = sum((decay ** k * factors[i] for k, i in enumerate(seen) if i >= 0), torch.zeros(3))
        torch.testing.assert_close(out[r], 0.7 * want, atol=1e-5, rtol=1e-4)


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="ItemNeighbours"):
        ItemNeighbours(torch.zeros(3, 2), window=0, decay=0.5, weight=1.0)
    with pytest.raises(ValueError, match="ItemNeighbours"):
        ItemNeighbours(torch.zeros(3, 2), window=2, decay=0.0, weight=1.0)


def test_model_scores_add_beta_times_the_item_cosines_and_skip_content_only_items(model_params) -> None:
    """With `model.item_neighbours`, a history-path score is the score without the term plus
    β Σ_r decay^r f_{h_r}·f_j; content-only (drop_id) candidates and history items add nothing."""
    params = model_params({"model.item_neighbours.window": 3, "model.item_neighbours.decay": 0.5,
                           "model.item_neighbours.weight": 2.0})
    model = build_model(params).model.eval()
    nb = model.neighbours
    assert nb is not None and nb.dim == params.embed_items.neighbours.rank
    assert float(nb.weight) == 2.0
    known = model.fusion.id_known.nonzero().squeeze(1)[:5]
    assert len(known) == 5
    fused = model.fusion(known).float()
    rows, cols = torch.zeros(5, dtype=torch.long), torch.arange(5)
    read = (torch.zeros(1, dtype=torch.long), torch.tensor([10]))
    summary = model.history_summary(fused, known, rows, cols, 1, *read)
    users = model.user_head.history_vectors(summary)  # (1, D + 1 + k)
    items = model.item_vectors()  # (N, D + 1 + k)
    k = nb.dim
    assert users.shape[-1] == items.shape[-1] == params.model.retrieval_dim + 1 + k
    f = nb.factors
    term = 2.0 * sum(0.5 ** r * (f[known[4 - r]] @ f.T) for r in range(3))  # (N,)
    torch.testing.assert_close((users @ items.T)[0], (users[:, :-k] @ items[:, :-k].T)[0] + term, atol=1e-4, rtol=1e-4)
    content = model.item_vectors(drop_id=True)
    assert (content[:, -k:] == 0).all()
    dropped = model.history_summary(fused, known, rows, cols, 1, *read, drop_id=torch.ones(5, dtype=torch.bool))
    assert (dropped[:, -k:] == 0).all()
