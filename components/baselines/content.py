"""Expert `content` for `cold_start`: the user's history centroid in the frozen text-embedding space.

Item vectors are the rows of `data/embeddings/text.npy` (`unirec embed-items`: the frozen backbone's mean-pooled
hidden states over the item text), optionally centred on the catalogue's mean (`center`: LLM hidden states share
one large component), then L2-normalised. A user's vector is the normalised mean of their last `window` history
items' vectors (0 = all); an item's score is the cosine. Cold items are known by this content alone, so the
expert ranks them like any item. `window` and `center` are chosen on the validation cold-start rows
(`data/examples/cold_start/valid.parquet`; ranked among the cold items, the user's earlier cold interactions
excluded, as `unirec evaluate` ranks them) by NDCG@eval_k.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from components.baselines.common import best_config, config_key, grid_points
from components.config import ContentParams
from components.evaluation.ranking import rank_metrics, rank_of_targets


def unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


class ContentCentroid:
    """Cosine between item vectors and the centroid of the user's recent items; `NextItemScorer` interface."""

    def __init__(self, vectors: np.ndarray, window: int) -> None:
        self.vectors, self.window = vectors.astype(np.float32), window

    @classmethod
    def build(cls, text: np.ndarray, window: int, center: bool) -> "ContentCentroid":
        x = np.asarray(text, dtype=np.float64)
        return cls(unit_rows(x - x.mean(0, keepdims=True) if center else x), window)

    def score_users(self, user_idx: np.ndarray, histories: Sequence[np.ndarray]) -> np.ndarray:
        """(U,) users, chronological histories → float32 (U, N); an empty history scores every item 0."""
        users = np.zeros((len(histories), self.vectors.shape[1]), dtype=np.float32)
        for row, hist in enumerate(histories):
            hist = np.asarray(hist, dtype=np.int64)
            recent = hist[-self.window:] if self.window > 0 else hist
            if len(recent):
                users[row] = self.vectors[recent].mean(0)
        return unit_rows(users) @ self.vectors.T


def cold_rows(frame: pd.DataFrame, cold: pd.DataFrame, cold_items: np.ndarray, n_items: int, roles: Sequence[str]
              ) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Users, targets and exclusions of cold-start rows (one per user and target): every warm item and the
    user's earlier cold interactions of `roles` are excluded, so the target ranks among the cold items."""
    rows = pd.DataFrame({"user_idx": frame["user_idx"].to_numpy(dtype=np.int64),
                         "target": [int(t[0]) for t in frame["target_items"]]}).drop_duplicates()
    warm = np.setdiff1d(np.arange(n_items), cold_items)
    earlier = cold[cold["role"].isin(list(roles))].groupby("user_idx")["item_idx"].agg(list).to_dict()
    excludes = [np.union1d(warm, np.asarray(earlier.get(int(u), []), dtype=np.int64)) for u in rows["user_idx"]]
    return rows["user_idx"].to_numpy(), rows["target"].to_numpy(), excludes


def tune_content(text: np.ndarray, rows: tuple[np.ndarray, np.ndarray, list[np.ndarray]],
                 histories: Sequence[np.ndarray], cfg: ContentParams, eval_k: int, ks: Sequence[int]
                 ) -> tuple[ContentCentroid, dict[str, Any], dict[str, Any]]:
    """Every (window, center) on validation NDCG@eval_k of the cold-start rows → model, config, report."""
    users, targets, excludes = rows
    hist = [histories[int(u)] for u in users]
    scores: dict[str, float] = {}
    configs: dict[str, dict[str, Any]] = {}
    for point in grid_points(cfg):
        key = config_key(point)
        model = ContentCentroid.build(text, **point)
        configs[key] = point
        scores[key] = rank_metrics(rank_of_targets(model.score_users(users, hist), targets, excludes),
                                   (eval_k,))[f"ndcg@{eval_k}"]
    chosen = best_config(scores)
    model = ContentCentroid.build(text, **configs[chosen])
    valid = rank_metrics(rank_of_targets(model.score_users(users, hist), targets, excludes), ks)
    return model, configs[chosen], {"monitor": f"valid_ndcg@{eval_k}", "rows": int(len(users)), "grid": scores,
                                    "chosen": chosen, "best_value": scores[chosen], "valid": valid}
