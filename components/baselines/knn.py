"""Expert `item_knn`: cosine item-item neighbourhoods over the training incidence (next-item ranking).

s(i, j) = c_ij / (sqrt(n_i · n_j) + shrinkage), with c_ij the number of training users who have both i and j,
n_i the users who have i, s(i, i) = 0; each item j keeps its `neighbours` most similar items i (0 = all) —
the ItemKNN-CF of Dacrema et al. (2019). A user with history h_1..h_n (oldest first) scores item j as
Σ_r decay^r · s(h_{n−r}, j), r = 0 for the most recent item. Neighbourhood size, shrinkage and decay are chosen
on validation NDCG@eval_k (`baselines.item_knn`); the similarities are rebuilt from the train split on load.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from components.baselines.common import best_config, config_key
from components.config import ItemKnnParams
from components.evaluation.ranking import NextItemTask, evaluate_scorer


def co_counts(train: pd.DataFrame, n_users: int, n_items: int) -> np.ndarray:
    """Training users shared by every pair of items: (N, N) float64, the diagonal = users per item."""
    pairs = train[["user_idx", "item_idx"]].drop_duplicates()
    x = sp.csr_matrix((np.ones(len(pairs)), (pairs["user_idx"].to_numpy(), pairs["item_idx"].to_numpy())),
                      shape=(n_users, n_items))
    return (x.T @ x).toarray()


def cosine(co: np.ndarray, shrinkage: float) -> np.ndarray:
    """Shrunk cosine of the co-count matrix (zero diagonal), float32 (N, N)."""
    norms = np.sqrt(np.diag(co))
    sim = co / (np.outer(norms, norms) + shrinkage + 1e-12)
    np.fill_diagonal(sim, 0.0)
    return sim.astype(np.float32)


def keep_neighbours(sim: np.ndarray, k: int) -> np.ndarray:
    """Keep the `k` largest entries of every column (the k items most similar to each target item)."""
    if k <= 0 or k >= sim.shape[0] - 1:
        return sim
    drop = np.argpartition(-sim, k, axis=0)[k:]
    pruned = sim.copy()
    np.put_along_axis(pruned, drop, 0.0, axis=0)
    return pruned


def recency_weights(histories: Sequence[np.ndarray], n_items: int, decay: float) -> np.ndarray:
    """(U, N) float32: Σ over each history's occurrences of item j of decay^(position from the end)."""
    out = np.zeros((len(histories), n_items), dtype=np.float32)
    for row, hist in enumerate(histories):
        hist = np.asarray(hist, dtype=np.int64)
        np.add.at(out[row], hist, decay ** np.arange(len(hist) - 1, -1, -1, dtype=np.float64))
    return out


class ItemKnn:
    """Next-item scorer over a (pruned) item-item similarity; `NextItemScorer` interface."""

    def __init__(self, similarity: np.ndarray, decay: float) -> None:
        self.similarity, self.decay = similarity, decay

    @classmethod
    def build(cls, co: np.ndarray, neighbours: int, shrinkage: float, recency_decay: float) -> "ItemKnn":
        return cls(keep_neighbours(cosine(co, shrinkage), neighbours), recency_decay)

    def score_users(self, user_idx: np.ndarray, histories: Sequence[np.ndarray]) -> np.ndarray:
        """(U,) users, their chronological histories → float32 (U, N)."""
        return recency_weights(histories, self.similarity.shape[0], self.decay) @ self.similarity


def tune_item_knn(co: np.ndarray, valid: NextItemTask, cfg: ItemKnnParams, eval_k: int
                  ) -> tuple[ItemKnn, dict[str, Any], dict[str, Any]]:
    """Every (neighbours, shrinkage, recency_decay) of the grid on validation NDCG@eval_k → model, config, report."""
    scores: dict[str, float] = {}
    configs: dict[str, dict[str, Any]] = {}
    for shrinkage in cfg.shrinkage:
        full = cosine(co, shrinkage)
        for k in cfg.neighbours:
            sim = keep_neighbours(full, k)
            for decay in cfg.recency_decay:
                config = {"neighbours": k, "shrinkage": shrinkage, "recency_decay": decay}
                key = config_key(config)
                configs[key] = config
                scores[key] = evaluate_scorer(ItemKnn(sim, decay), valid, (eval_k,), cfg.batch_size)[f"ndcg@{eval_k}"]
    chosen = best_config(scores)
    report = {"monitor": f"valid_ndcg@{eval_k}", "grid": scores, "chosen": chosen, "best_value": scores[chosen]}
    return ItemKnn.build(co, **configs[chosen]), configs[chosen], report
