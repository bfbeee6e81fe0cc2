"""Collaborative item vectors (components/collab.py) against hand-computed values."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from components.collab import collaborative_vectors, cooccurrence, neighbour_factors, ppmi


def _train(sequences: dict[int, list[int]]) -> pd.DataFrame:
    rows = [(u, i, k) for u, seq in sequences.items() for k, i in enumerate(seq)]
    return pd.DataFrame(rows, columns=["user_idx", "item_idx", "order"])


def test_cooccurrence_weights_by_inverse_distance_and_is_symmetric():
    counts = cooccurrence([np.array([0, 1, 2])], n_items=4, window=2).toarray()
    expected = np.zeros((4, 4))
    expected[0, 1] = expected[1, 0] = 1.0  # distance 1
    expected[1, 2] = expected[2, 1] = 1.0  # distance 1
    expected[0, 2] = expected[2, 0] = 0.5  # distance 2
    np.testing.assert_allclose(counts, expected)
    # window 1 drops the distance-2 pair; a second sequence adds up
    counts = cooccurrence([np.array([0, 1, 2]), np.array([1, 0])], n_items=4, window=1).toarray()
    assert counts[0, 1] == counts[1, 0] == 2.0 and counts[0, 2] == 0.0


def test_ppmi_matches_the_formula_and_drops_negative_pmi():
    counts = cooccurrence([np.array([0, 1, 2])], n_items=3, window=2)
    dense = counts.toarray()
    total, row = dense.sum(), dense.sum(1)
    got = ppmi(counts).toarray()
    for a in range(3):
        for b in range(3):
            want = 0.0 if dense[a, b] == 0 else max(0.0, float(np.log(dense[a, b] * total / (row[a] * row[b]))))
            assert got[a, b] == pytest.approx(want)
    # hand value: total 5, row sums (1.5, 2, 1.5): PMI(0,1) = log(1 * 5 / 3) > 0, PMI(0,2) = log(0.5*5/2.25) > 0
    assert got[0, 1] == pytest.approx(np.log(5 / 3))
    assert got[0, 2] == pytest.approx(np.log(2.5 / 2.25))


def test_vectors_zero_for_items_without_training_interactions_and_unit_rms_otherwise():
    rng = np.random.default_rng(0)
    seqs = {u: list(rng.permutation(8)[:6]) for u in range(30)}  # items 8, 9 never interacted
    vecs = collaborative_vectors(_train(seqs), n_items=10, dim=4, window=3, seed=1)
    assert vecs.shape == (10, 4) and vecs.dtype == np.float32
    assert not vecs[8:].any()
    rms = np.sqrt((vecs[:8] ** 2).mean(1))
    np.testing.assert_allclose(rms, 1.0, rtol=1e-5)


def test_vectors_are_deterministic_and_capture_co_occurrence():
    # two disjoint "communities": items 0-3 co-occur, items 4-7 co-occur
    seqs = {u: [0, 1, 2, 3] if u % 2 else [4, 5, 6, 7] for u in range(20)}
    a = collaborative_vectors(_train(seqs), n_items=8, dim=4, window=3, seed=5)
    b = collaborative_vectors(_train(seqs), n_items=8, dim=4, window=3, seed=5)
    np.testing.assert_array_equal(a, b)
    unit = a / np.linalg.norm(a, axis=1, keepdims=True)
    sims = unit @ unit.T
    within = np.mean([sims[i, j] for i in range(4) for j in range(4) if i != j])
    across = np.mean([sims[i, j] for i in range(4) for j in range(4, 8)])
    assert within > across + 0.5


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="dim and window"):
        collaborative_vectors(_train({0: [0, 1]}), n_items=2, dim=0, window=1, seed=0)


def test_neighbour_factors_give_the_item_cosine_over_users_at_full_rank():
    """f_i · f_j = |U_i ∩ U_j| / sqrt(|U_i| |U_j|), hand-computed on 3 users × 4 items (item 3 has no users);
    a repeated (user, item) pair counts once."""
    train = pd.DataFrame({"user_idx": [0, 0, 0, 1, 1, 2, 2, 2], "item_idx": [0, 1, 1, 1, 2, 0, 1, 2]})
    f = neighbour_factors(train, n_items=4, rank=8, seed=0)
    assert f.shape == (4, 8) and f.dtype == np.float32
    # users of item 0: {0, 2}; item 1: {0, 1, 2}; item 2: {1, 2}
    expected = np.array([[1, 2 / np.sqrt(6), 1 / 2, 0],
                         [2 / np.sqrt(6), 1, 2 / np.sqrt(6), 0],
                         [1 / 2, 2 / np.sqrt(6), 1, 0],
                         [0, 0, 0, 0]])
    np.testing.assert_allclose(f @ f.T, expected, atol=1e-5)
    assert (f[3] == 0).all() and (f[:, 3:] == 0).all()  # rank ≤ min(users, items) = 3
    np.testing.assert_array_equal(neighbour_factors(train, 4, 8, seed=0), f)


def test_neighbour_factors_refuse_bad_input():
    train = pd.DataFrame({"user_idx": [0], "item_idx": [5]})
    with pytest.raises(ValueError, match="outside"):
        neighbour_factors(train, n_items=3, rank=2, seed=0)
    with pytest.raises(ValueError, match="rank"):
        neighbour_factors(train, n_items=9, rank=0, seed=0)
