"""Closed-form rating experts fitted on the train split's ratings, configured on the validation ratings.

* `rating_recency`: r̂(u, i) = μ + b_i + the mean of r_j − μ − b_j over the user's last `window` rated history
  items, b_i = Σ (r − μ) / (n_i + item_reg) — the "recent offset" heuristic; a user's recent ratings move
  more than a whole-history user bias can follow on a time split;
* `rating_knn`: the item-kNN regressor with a baseline (Koren 2010, Surprise's KNNBaseline): b_ui = μ + b_u + b_i
  (regularised closed-form biases), s_ij the Pearson correlation of the baseline residuals over the users who
  rated both, times n_ij / (n_ij + shrinkage); r̂(u, i) = b_ui + Σ_j s_ij (r_uj − b_uj) / Σ_j s_ij over the
  `neighbours` rated history items j most similar to i (positive similarities only).

Both read a user's ratings from the history they are given (`RatingTable`: train, + valid when scoring test),
never a rating of the predicted pair. Predictions are clipped to the rating range.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from components.baselines.common import best_config, config_key
from components.config import RatingKnnParams, RatingRecencyParams


class RatingTable:
    """Known ratings (U, N) float32, NaN where unknown; `rated(u, history)` → the history's rated items, ratings."""

    def __init__(self, frames: Sequence[pd.DataFrame], n_users: int, n_items: int) -> None:
        self.values = np.full((n_users, n_items), np.nan, dtype=np.float32)
        for frame in frames:
            rated = frame[frame["rating"].notna()]
            self.values[rated["user_idx"].to_numpy(dtype=np.int64), rated["item_idx"].to_numpy(dtype=np.int64)] = \
                rated["rating"].to_numpy(dtype=np.float32)

    def rated(self, user: int, history: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        hist = np.asarray(history, dtype=np.int64)
        r = self.values[user, hist]
        keep = ~np.isnan(r)
        return hist[keep], r[keep].astype(np.float64)


def item_biases(train: pd.DataFrame, n_items: int, reg: float) -> tuple[float, np.ndarray]:
    """μ and b_i = Σ (r − μ) / (n_i + reg) over the train ratings (0 for items without one)."""
    rated = train[train["rating"].notna()]
    mu = float(rated["rating"].mean())
    items = rated["item_idx"].to_numpy(dtype=np.int64)
    sums = np.bincount(items, rated["rating"].to_numpy(dtype=np.float64) - mu, minlength=n_items)
    return mu, sums / (np.bincount(items, minlength=n_items) + reg + 1e-12)


class RatingRecency:
    """Item bias + the user's mean offset over their last `window` rated history items."""

    def __init__(self, mu: float, item_bias: np.ndarray, window: int, table: RatingTable,
                 rating_range: tuple[float, float]) -> None:
        self.mu, self.item_bias, self.window, self.table, self.range = mu, item_bias, window, table, rating_range

    def predict(self, user_idx: np.ndarray, item_idx: np.ndarray, histories: Sequence[np.ndarray]) -> np.ndarray:
        out = np.empty(len(user_idx), dtype=np.float64)
        for row, (u, i, hist) in enumerate(zip(user_idx, item_idx, histories)):
            items, ratings = self.table.rated(int(u), hist)
            items, ratings = items[-self.window:], ratings[-self.window:]
            offset = float(np.mean(ratings - self.mu - self.item_bias[items])) if len(items) else 0.0
            out[row] = self.mu + self.item_bias[int(i)] + offset
        return np.clip(out, *self.range)


class RatingKnn:
    """Baseline + similarity-weighted residuals of the user's `neighbours` most similar rated history items."""

    def __init__(self, mu: float, item_bias: np.ndarray, similarity: np.ndarray, neighbours: int, bias_reg: float,
                 table: RatingTable, rating_range: tuple[float, float]) -> None:
        self.mu, self.item_bias, self.similarity = mu, item_bias, similarity
        self.neighbours, self.bias_reg, self.table, self.range = neighbours, bias_reg, table, rating_range

    @staticmethod
    def pearson_baseline(train: pd.DataFrame, n_users: int, n_items: int, mu: float, item_bias: np.ndarray,
                         bias_reg: float, shrinkage: float) -> np.ndarray:
        """Shrunk Pearson correlation of the baseline residuals over common raters, float32 (N, N)."""
        table = RatingTable([train], n_users, n_items).values
        known = ~np.isnan(table)
        resid_item = np.where(known, table - mu - item_bias[None, :], 0.0)
        user_bias = resid_item.sum(1) / (known.sum(1) + bias_reg)
        z = np.where(known, resid_item - user_bias[:, None], 0.0)
        m = known.astype(np.float64)
        num, sq, common = z.T @ z, (z ** 2).T @ m, m.T @ m
        sim = num / np.sqrt(sq * sq.T + 1e-12) * common / (common + shrinkage + 1e-12)
        np.fill_diagonal(sim, 0.0)
        return sim.astype(np.float32)

    def predict(self, user_idx: np.ndarray, item_idx: np.ndarray, histories: Sequence[np.ndarray]) -> np.ndarray:
        out = np.empty(len(user_idx), dtype=np.float64)
        for row, (u, i, hist) in enumerate(zip(user_idx, item_idx, histories)):
            items, ratings = self.table.rated(int(u), hist)
            resid = ratings - self.mu - self.item_bias[items]
            user_bias = float(resid.sum() / (len(items) + self.bias_reg)) if len(items) else 0.0
            base = self.mu + user_bias + self.item_bias[int(i)]
            sims = self.similarity[int(i), items].astype(np.float64)
            top = np.argsort(-sims, kind="stable")[:self.neighbours]
            top = top[sims[top] > 0]
            weight = sims[top].sum()
            out[row] = base + (float(sims[top] @ (resid[top] - user_bias)) / weight if weight > 0 else 0.0)
        return np.clip(out, *self.range)


def errors_of(pred: np.ndarray, frame: pd.DataFrame) -> dict[str, float]:
    """RMSE and MAE of predictions against a frame's `rating`."""
    err = np.asarray(pred, dtype=np.float64) - frame["rating"].to_numpy(dtype=np.float64)
    return {"rmse": float(np.sqrt(np.mean(err ** 2))) if len(err) else 0.0,
            "mae": float(np.mean(np.abs(err))) if len(err) else 0.0, "n": int(len(err))}


def _rows(frame: pd.DataFrame, histories: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    users = frame["user_idx"].to_numpy(dtype=np.int64)
    return users, frame["item_idx"].to_numpy(dtype=np.int64), [histories[int(u)] for u in users]


def tune_rating_recency(train: pd.DataFrame, valid: pd.DataFrame, histories: Sequence[np.ndarray],
                        table: RatingTable, n_items: int, cfg: RatingRecencyParams,
                        rating_range: tuple[float, float]) -> tuple[RatingRecency, dict[str, Any], dict[str, Any]]:
    """Every (window, item_reg) on the validation RMSE → model, chosen configuration, report."""
    rows, scores, configs = _rows(valid, histories), {}, {}
    for reg in cfg.item_reg:
        mu, bias = item_biases(train, n_items, reg)
        for window in cfg.window:
            key = config_key({"window": window, "item_reg": reg})
            configs[key] = {"window": window, "item_reg": reg}
            scores[key] = errors_of(RatingRecency(mu, bias, window, table, rating_range).predict(*rows),
                                        valid)["rmse"]
    chosen = best_config(scores, higher_is_better=False)
    mu, bias = item_biases(train, n_items, configs[chosen]["item_reg"])
    model = RatingRecency(mu, bias, configs[chosen]["window"], table, rating_range)
    return model, configs[chosen], {"monitor": "valid_rmse", "grid": scores, "chosen": chosen,
                                    "best_value": scores[chosen]}


def build_rating_knn(train: pd.DataFrame, n_users: int, n_items: int, neighbours: int, shrinkage: float,
                     bias_reg: float, table: RatingTable, rating_range: tuple[float, float]) -> RatingKnn:
    mu, bias = item_biases(train, n_items, bias_reg)
    sim = RatingKnn.pearson_baseline(train, n_users, n_items, mu, bias, bias_reg, shrinkage)
    return RatingKnn(mu, bias, sim, neighbours, bias_reg, table, rating_range)


def tune_rating_knn(train: pd.DataFrame, valid: pd.DataFrame, histories: Sequence[np.ndarray], table: RatingTable,
                    n_users: int, n_items: int, cfg: RatingKnnParams, rating_range: tuple[float, float]
                    ) -> tuple[RatingKnn, dict[str, Any], dict[str, Any]]:
    """Every (neighbours, shrinkage) on the validation RMSE → model, chosen configuration, report."""
    rows, scores, configs = _rows(valid, histories), {}, {}
    for shrinkage in cfg.shrinkage:
        model = build_rating_knn(train, n_users, n_items, cfg.neighbours[0], shrinkage, cfg.bias_reg, table,
                                 rating_range)
        for k in cfg.neighbours:
            model.neighbours = k
            key = config_key({"neighbours": k, "shrinkage": shrinkage})
            configs[key] = {"neighbours": k, "shrinkage": shrinkage}
            scores[key] = errors_of(model.predict(*rows), valid)["rmse"]
    chosen = best_config(scores, higher_is_better=False)
    model = build_rating_knn(train, n_users, n_items, **configs[chosen], bias_reg=cfg.bias_reg, table=table,
                             rating_range=rating_range)
    return model, configs[chosen], {"monitor": "valid_rmse", "grid": scores, "chosen": chosen,
                                    "best_value": scores[chosen]}
