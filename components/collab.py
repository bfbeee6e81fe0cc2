"""Collaborative item vectors: a frozen item modality learned from the training interactions alone.

Items that appear near each other in users' time-ordered training sequences get similar vectors:
symmetric co-occurrence counts within `window` positions (weighted 1/distance) → positive pointwise
mutual information (PPMI) → truncated SVD (`U·sqrt(S)`) → rows L2-normalised and scaled by
sqrt(dim) (unit root-mean-square per coordinate, the scale the fusion MLP expects). This is the
"collaborative embedding as an extra item modality" of CoLLM / LLaRA, computed in seconds.

Items without training interactions (cold items) get an all-zero row; `ItemFusion` treats this
modality like the ID (`model.behavioural_modalities`), so cold items never read it.
Only `data/splits/train.parquet` is read: validation and test interactions never leak in.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.utils.extmath import randomized_svd

COLLAB_MODALITY = "collab"
"""File stem (`<embed_items.out_dir>/collab.npy`) and modality name of the collaborative vectors."""


def cooccurrence(sequences: list[np.ndarray], n_items: int, window: int) -> sp.csr_matrix:
    """Symmetric `(N, N)` co-occurrence of items at distance 1..window in each sequence, weight 1/distance."""
    rows: list[np.ndarray] = []
    cols: list[np.ndarray] = []
    vals: list[np.ndarray] = []
    for seq in sequences:
        for off in range(1, min(window, len(seq) - 1) + 1):
            a, b = seq[:-off], seq[off:]
            w = np.full(len(a), 1.0 / off)
            rows += [a, b]
            cols += [b, a]
            vals += [w, w]
    if not rows:
        return sp.csr_matrix((n_items, n_items))
    matrix = sp.coo_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                           shape=(n_items, n_items))
    return matrix.tocsr()  # duplicates summed


def ppmi(counts: sp.csr_matrix) -> sp.csr_matrix:
    """Positive PMI of a non-negative count matrix (zero where the count is zero)."""
    total = counts.sum()
    if total <= 0:
        return counts.copy()
    row = np.asarray(counts.sum(1)).ravel()
    coo = counts.tocoo()
    pmi = np.log(coo.data * total / (row[coo.row] * row[coo.col]))
    keep = pmi > 0
    return sp.csr_matrix((pmi[keep], (coo.row[keep], coo.col[keep])), shape=counts.shape)


def user_sequences(train: pd.DataFrame, column: str = "item_idx") -> list[np.ndarray]:
    """Each user's training items (or another `column`, e.g. `rating` as float64 with nan for none) in
    chronological order (`order`), users by `user_idx`: `[(L_u,)]`."""
    ordered = train.sort_values(["user_idx", "order"], kind="stable")
    if column == "item_idx":
        return [g.to_numpy(dtype=np.int64) for _, g in ordered.groupby("user_idx", sort=True)["item_idx"]]
    return [g.astype("Float64").to_numpy(dtype=np.float64, na_value=np.nan)
            for _, g in ordered.groupby("user_idx", sort=True)[column]]


def collaborative_vectors(train: pd.DataFrame, n_items: int, dim: int, window: int, seed: int) -> np.ndarray:
    """`(N, dim)` float32 item vectors from `train` (columns user_idx, item_idx, order).

    Deterministic for a given seed (randomized SVD with a fixed random_state). Zero rows for items
    without training interactions.
    """
    if dim < 1 or window < 1:
        raise ValueError(f"collab dim and window must be >= 1, got dim={dim}, window={window}")
    sequences = user_sequences(train)
    matrix = ppmi(cooccurrence(sequences, n_items, window))
    k = min(dim, n_items - 1)
    out = np.zeros((n_items, dim), dtype=np.float64)
    if matrix.nnz and k >= 1:
        u, s, _ = randomized_svd(matrix, n_components=k, n_iter=7, random_state=seed)
        out[:, :k] = u * np.sqrt(s)
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    out = np.divide(out, norms, out=np.zeros_like(out), where=norms > 0) * np.sqrt(dim)
    return out.astype(np.float32)


NEIGHBOURS_FILE = "neighbours"
"""File stem (`<embed_items.out_dir>/neighbours.npy`) of the item-neighbourhood factors (`neighbour_factors`)."""


def neighbour_factors(train: pd.DataFrame, n_items: int, rank: int, seed: int) -> np.ndarray:
    """`(N, rank)` float32 factors `f` with `f_i · f_j` ≈ the cosine of items i and j over the users who have
    them in `train` (columns user_idx, item_idx): the truncated SVD `V·S` of the binary user × item incidence
    with each item column scaled to unit norm (exact when rank ≥ min(users, items)); the item-kNN similarity
    of `model.item_neighbours` (components/model/neighbours.py). Zero rows for items without training
    interactions; deterministic for a given seed. Columns beyond the incidence's rank stay 0."""
    if rank < 1:
        raise ValueError(f"embed_items.neighbours.rank must be >= 1, got {rank}")
    pairs = train[["user_idx", "item_idx"]].drop_duplicates()
    users = pairs["user_idx"].to_numpy()
    items = pairs["item_idx"].to_numpy()
    if len(pairs) and (items.min() < 0 or items.max() >= n_items):
        raise ValueError(f"item_idx outside [0, {n_items}) in the training interactions")
    n_users = int(users.max()) + 1 if len(pairs) else 0
    counts = np.bincount(items, minlength=n_items).astype(np.float64)
    values = 1.0 / np.sqrt(counts[items])  # each item column has unit norm
    matrix = sp.csr_matrix((values, (users, items)), shape=(n_users, n_items))
    k = min(rank, n_users, n_items)
    out = np.zeros((n_items, rank), dtype=np.float64)
    if matrix.nnz and k >= 1:
        _, s, vt = randomized_svd(matrix, n_components=k, n_iter=7, random_state=seed)
        out[:, :k] = vt.T * s
    return out.astype(np.float32)
