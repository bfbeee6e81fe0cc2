"""The item-neighbourhood term alone (no neural part): validation and test next-item metrics.

Usage::

    python scripts/item_knn.py [dotted.param=value ...]

Scores every item j for a user by Σ_r decay^r · f_{h_r} · f_j over the last `model.item_neighbours.window`
history items (the user block of `components/model/neighbours.py` with β = 1; every history item counts, as
they all have a trained ID on the next-item rows), f = `<embed_items.out_dir>/neighbours.npy`, and ranks
with the SASRec expert's evaluator (full ranking, history items excluded). Prints one JSON line per
(window, decay) of a small grid, the configured pair first. Needs `dvc repro embed_items` with
`embed_items.neighbours.enabled: true`.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import yaml

from components.baselines.common import evaluate_scorer, load_split_data, next_item_task
from components.collab import NEIGHBOURS_FILE
from components.config import load_params


class NeighbourScorer:
    """`NextItemScorer`: Σ_r decay^r f_{h_r} · f_j over the last `window` items of each history → `(U, N)`."""

    def __init__(self, factors: np.ndarray, window: int, decay: float) -> None:
        self.factors, self.window, self.decay = factors, window, decay

    def score_users(self, user_idx: np.ndarray, histories: list[np.ndarray]) -> np.ndarray:
        users = np.zeros((len(histories), self.factors.shape[1]), dtype=np.float64)
        for row, history in enumerate(histories):
            recent = np.asarray(history, dtype=np.int64)[-self.window:][::-1]  # newest first
            users[row] = (self.decay ** np.arange(len(recent)))[:, None].T @ self.factors[recent]
        return (users @ self.factors.T).astype(np.float32)


def main(argv: list[str]) -> None:
    params = load_params("params.yaml", {k: yaml.safe_load(v) for k, v in (a.split("=", 1) for a in argv)})
    factors = np.load(params.resolve(params.embed_items.out_dir) / f"{NEIGHBOURS_FILE}.npy").astype(np.float64)
    data = load_split_data(params)
    tasks = {split: next_item_task(data, split) for split in ("valid", "test")}
    cfg = params.model.item_neighbours
    pairs = [(cfg.window or 10, cfg.decay)] + [(w, d) for w in (5, 10, 20) for d in (0.5, 0.6, 0.8)]
    for window, decay in dict.fromkeys(pairs):
        scorer = NeighbourScorer(factors, window, decay)
        out = {split: {k: round(v, 4) for k, v in evaluate_scorer(scorer, task, ks=(10, 20), batch_size=512).items()}
               for split, task in tasks.items()}
        print(json.dumps({"window": window, "decay": decay, **out}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
