"""Closed-form rating predictors on the split files: what a user's recent ratings are worth on ml-100k.

Usage::

    python scripts/rating_baselines.py

Test RMSE (the last interaction of every user, as `unirec evaluate` and the MF expert score it) of the global
mean, an item bias (shrunk by +5 interactions), the user + item bias over the user's whole train + valid
history, and the user offset from only the LAST k rated items (k = 1, 3, 5, 10, 20; residuals after the item
bias, shrunk by +3): the recency signal `model.rating_prior_window` learns (components/model/rating.py).
Train + valid are the history (the valid item precedes the test item); nothing of the test split is read but
its targets. Prints one JSON line.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from components.baselines.common import load_split_data
from components.config import load_params


def main() -> None:
    data = load_split_data(load_params("params.yaml"))
    history = (pd.concat([data.train.assign(part=0), data.valid.assign(part=1)], ignore_index=True)
               .sort_values(["user_idx", "part", "order"], kind="stable"))
    history = history[history["rating"].notna()]
    mean = float(history["rating"].mean())
    truth = data.test["rating"].to_numpy(dtype=float)

    def rmse(pred: np.ndarray) -> float:
        return round(float(np.sqrt(np.mean((truth - pred) ** 2))), 4)

    stats = history.groupby("item_idx")["rating"].agg(["sum", "count"])
    item_bias = (stats["sum"] - mean * stats["count"]) / (stats["count"] + 5.0)
    item_pred = mean + data.test["item_idx"].map(item_bias).fillna(0.0).to_numpy()
    residual = history["rating"] - mean - history["item_idx"].map(item_bias).fillna(0.0)

    def user_offset(frame_residual, shrink: float) -> np.ndarray:
        grouped = frame_residual.groupby(history.loc[frame_residual.index, "user_idx"]).agg(["sum", "count"])
        offset = grouped["sum"] / (grouped["count"] + shrink)
        return data.test["user_idx"].map(offset).fillna(0.0).to_numpy()

    out = {"test_rows": int(len(truth)), "global_mean": rmse(np.full_like(truth, mean)),
           "item_bias": rmse(item_pred), "user_and_item_bias_all_history": rmse(item_pred + user_offset(residual, 3.0))}
    for k in (1, 3, 5, 10, 20):
        recent = residual[history.groupby("user_idx").cumcount(ascending=False) < k]
        out[f"item_bias_plus_last_{k}_offset"] = rmse(item_pred + user_offset(recent, 3.0))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
