"""Test next-item metrics of an ensemble of warm-up runs' history paths (score files of `warmup_curve.py --scores`).

Usage::

    python scripts/ensemble_scores.py runs/a.npz runs/b.npz [...]

Each file holds the test users' raw history-path scores `(U, N)`; the ensemble averages each run's
per-user log-softmax (the runs' logits live on one temperature but differ by a per-user shift) and ranks
with the SASRec expert's evaluator (train + valid items excluded). Prints one JSON line: every member
alone and the ensemble.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import torch

from components.baselines.common import evaluate_scorer, load_split_data, next_item_task
from components.config import load_params


class _Fixed:
    """`NextItemScorer` over precomputed scores `(U, N)` of `user_idx`."""

    def __init__(self, user_idx: np.ndarray, scores: np.ndarray) -> None:
        self.row = {int(u): r for r, u in enumerate(user_idx)}
        self.scores = scores

    def score_users(self, user_idx: np.ndarray, histories: list[np.ndarray]) -> np.ndarray:
        return self.scores[[self.row[int(u)] for u in user_idx]]


def main(paths: list[str]) -> None:
    if not paths:
        raise SystemExit(__doc__)
    test = next_item_task(load_split_data(load_params("params.yaml")), "test")
    members, logp = {}, []
    for path in paths:
        run = np.load(path)
        if not np.array_equal(run["user_idx"], test.user_idx):
            raise SystemExit(f"{path}: its test users differ from this checkout's test split")
        members[path] = evaluate_scorer(_Fixed(run["user_idx"], run["scores"]), test, ks=(5, 10, 20), batch_size=512)
        logp.append(torch.log_softmax(torch.from_numpy(run["scores"]), dim=1).numpy())
    ensemble = evaluate_scorer(_Fixed(test.user_idx, np.mean(logp, axis=0)), test, ks=(5, 10, 20), batch_size=512)
    print(json.dumps({"members": {p: {k: round(v, 4) for k, v in m.items()} for p, m in members.items()},
                      "ensemble": {k: round(v, 4) for k, v in ensemble.items()}}))


if __name__ == "__main__":
    main(sys.argv[1:])
