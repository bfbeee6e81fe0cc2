"""Expert `ctr_gbdt`: gradient-boosted trees (scikit-learn HistGradientBoostingClassifier) on the features of
`ctr_features.py`, trained on `ctr_train.parquet` and tuned on the validation AUC of `ctr_valid.parquet`.

Every configuration of `baselines.ctr_gbdt.grid` grows `trees_per_round` trees at a time (warm start) and is
scored on the validation rows after each round; it stops after `patience` rounds without a better AUC and keeps
its best round's ensemble. The configuration with the best validation AUC is the expert.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import log_loss, roc_auc_score

from components.baselines.common import best_config, config_key, grid_points, log
from components.baselines.ctr_features import ItemUserTables, ctr_features
from components.config import CtrGbdtParams


def auc_and_logloss(labels: np.ndarray, p: np.ndarray) -> dict[str, float]:
    y = np.asarray(labels)
    auc = float(roc_auc_score(y, p)) if len(np.unique(y)) == 2 else float("nan")
    return {"auc": auc, "logloss": float(log_loss(y, np.clip(p, 1e-7, 1 - 1e-7), labels=[0, 1])), "n": int(len(y))}


class GbdtCtr:
    """A fitted ensemble and the tables its features read; `predict_proba(users, items, histories)`."""

    def __init__(self, model: HistGradientBoostingClassifier, tables: ItemUserTables, ratings: np.ndarray,
                 recent: int) -> None:
        self.model, self.tables, self.ratings, self.recent = model, tables, ratings, recent

    def predict_proba(self, user_idx: np.ndarray, item_idx: np.ndarray, histories: Mapping[int, np.ndarray]
                      ) -> np.ndarray:
        """Click probabilities (E,) of (user, item) rows scored after each user's whole history."""
        if len(user_idx) == 0:
            return np.empty(0)
        x = scoring_matrix(self.tables, self.ratings, self.recent, user_idx, item_idx, histories)
        return self.model.predict_proba(x)[:, 1]


def scoring_matrix(tables: ItemUserTables, ratings: np.ndarray, recent: int, user_idx: np.ndarray,
                   item_idx: np.ndarray, histories: Mapping[int, np.ndarray]) -> np.ndarray:
    """Features of validation / test rows: history = the user's whole history, t = its length, no leave-one-out."""
    users = np.asarray(user_idx, dtype=np.int64)
    seqs = {int(u): np.asarray(histories.get(int(u), np.empty(0, np.int64)), dtype=np.int64) for u in users}
    rows = pd.DataFrame({"user_idx": users, "item_idx": np.asarray(item_idx, dtype=np.int64),
                         "t": [len(seqs[int(u)]) for u in users], "positive": False})
    return ctr_features(tables, rows, _Lookup(seqs), ratings, recent)


class _Lookup:
    """`sequences[u]` over a dict (users absent have an empty history)."""

    def __init__(self, seqs: Mapping[int, np.ndarray]) -> None:
        self.seqs = seqs

    def __getitem__(self, user: int) -> np.ndarray:
        return self.seqs.get(int(user), np.empty(0, np.int64))


def training_matrix(tables: ItemUserTables, ctr_train: pd.DataFrame, sequences: Sequence[np.ndarray],
                    ratings: np.ndarray, recent: int) -> tuple[np.ndarray, np.ndarray]:
    """Point-in-time, leave-one-out features of the training rows (history = the first history_len items)."""
    rows = pd.DataFrame({"user_idx": ctr_train["user_idx"].to_numpy(dtype=np.int64),
                         "item_idx": ctr_train["item_idx"].to_numpy(dtype=np.int64),
                         "t": ctr_train["history_len"].to_numpy(dtype=np.int64),
                         "positive": ctr_train["label"].to_numpy() == 1})
    return ctr_features(tables, rows, sequences, ratings, recent), ctr_train["label"].to_numpy(dtype=np.int64)


def tune_gbdt(x: np.ndarray, y: np.ndarray, x_valid: np.ndarray, y_valid: np.ndarray, categorical: list[bool],
              cfg: CtrGbdtParams, seed: int) -> tuple[HistGradientBoostingClassifier, dict[str, Any], dict[str, Any]]:
    """Each grid configuration grown round by round with early stopping on validation AUC → model, config, report."""
    fits: dict[str, tuple[HistGradientBoostingClassifier, dict[str, Any], list[float], int]] = {}
    for point in grid_points(cfg.grid):
        clf = HistGradientBoostingClassifier(**point, l2_regularization=cfg.l2_regularization, max_iter=0,
                                             categorical_features=categorical, early_stopping=False, warm_start=True,
                                             random_state=seed)
        curve: list[float] = []
        best, best_round = None, 0
        while len(curve) * cfg.trees_per_round < cfg.max_trees and len(curve) - best_round < cfg.patience:
            clf.set_params(max_iter=(len(curve) + 1) * cfg.trees_per_round)
            clf.fit(x, y)
            curve.append(auc_and_logloss(y_valid, clf.predict_proba(x_valid)[:, 1])["auc"])
            if best is None or curve[-1] > max(curve[:-1]):
                best, best_round = copy.deepcopy(clf), len(curve)
        key = config_key(point)
        log.info("ctr_gbdt %s: best valid auc %.4f at %d trees", key, max(curve), best_round * cfg.trees_per_round)
        fits[key] = (best, point, curve, best_round)
    chosen = best_config({k: max(c) for k, (_, _, c, _) in fits.items()})
    model, point, curve, best_round = fits[chosen]
    report = {"monitor": "valid_auc", "grid": {k: {"best_value": max(c), "trees": r * cfg.trees_per_round,
                                                   "curve": c} for k, (_, _, c, r) in fits.items()},
              "chosen": chosen, "curve": curve, "best_value": max(curve), "trees": best_round * cfg.trees_per_round}
    return model, {**point, "trees": best_round * cfg.trees_per_round}, report
