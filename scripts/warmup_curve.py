"""Run the collaborative warm-up alone and print its validation curve (no LLM training, nothing saved).

Usage::

    python scripts/warmup_curve.py [dotted.param=value ...]
    python scripts/warmup_curve.py train.collab_warmup.eval_every=50 train.collab_warmup.patience=100

Builds the model from params.yaml (plus the overrides), runs `components.model.warmup.collab_warmup` with
the validation rows, and prints one JSON line: steps run, kept step, seconds, validation NDCG@10 every
`eval_every` steps and the training loss every 50 steps. Needs `dvc repro embed_items` first.
"""

from __future__ import annotations

import json
import sys
import time

import pandas as pd
import torch
import yaml

from components.baselines.common import load_split_data, next_item_task
from components.collab import user_sequences
from components.config import load_params
from components.model.build import build_model
from components.model.warmup import collab_warmup


def main(argv: list[str]) -> None:
    overrides = {k: yaml.safe_load(v) for k, v in (a.split("=", 1) for a in argv)}
    params = load_params("params.yaml", overrides)
    if params.train.num_threads:
        torch.set_num_threads(params.train.num_threads)
    if not params.train.collab_warmup.eval_every:
        raise SystemExit("set train.collab_warmup.eval_every > 0: the curve is what this script prints")
    seed = params.seed + params.train.seed_offset
    built = build_model(params)
    frame = pd.read_parquet(params.resolve(params.paths.splits_dir) / "train.parquet",
                            columns=["user_idx", "item_idx", "order"])
    valid = next_item_task(load_split_data(params), "valid")
    start = time.perf_counter()
    report = collab_warmup(built.model, user_sequences(frame), params.train.collab_warmup, seed, 50, valid)
    print(json.dumps({"overrides": overrides, "steps": report.steps, "best_step": report.best_step,
                      "seconds": round(time.perf_counter() - start),
                      "valid_ndcg@10": [[s, round(v, 4)] for s, v in report.valid_curve],
                      "loss": [[s, round(v, 3)] for s, v in report.curve]}))


if __name__ == "__main__":
    main(sys.argv[1:])
