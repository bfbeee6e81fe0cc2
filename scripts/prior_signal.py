"""How much the verbaliser prior's signal says on its own: AUC of s on ctr rows, its fit to ratings.

Usage::

    python scripts/prior_signal.py [models/unirec] [--split test]

s is `UniversalRecModel.answer_scores`: the history path's next-item score of the asked-about item (what
`model.verbaliser_prior` adds to the verbaliser logits). Loads a trained model (a model trained without
the prior loads too: the prior is switched on or off to match the saved modules) and scores every row of
data/examples/{ctr,rating}/<split>.parquet. Prints ctr AUC(s) per template and overall, and for rating the
correlation of s with the rating and the RMSE of a least-squares line on s (in-sample) vs the mean alone.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors import safe_open

from components.config import load_params
from components.evaluation.metrics import auc, rmse
from components.model.batching import collate
from components.model.build import load_trained
from components.model.prompting import encode_example


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model_dir", nargs="?", default=None)
    parser.add_argument("--split", default="test", choices=["valid", "test"])
    args = parser.parse_args()
    params = load_params("params.yaml")
    model_dir = Path(args.model_dir) if args.model_dir else params.resolve(params.train.out_dir)
    with safe_open(model_dir / "modules.safetensors", "pt") as saved:  # trained with or without the prior
        has_prior = any(k.startswith("verbaliser_prior.") for k in saved.keys())
    params = load_params("params.yaml", {"model.verbaliser_prior": has_prior})
    if params.evaluate.num_threads:
        torch.set_num_threads(params.evaluate.num_threads)
    built = load_trained(params, model_dir)
    model, tok = built.model.eval(), built.backbone.tokenizer
    for task in ("ctr", "rating"):
        frame = pd.read_parquet(params.resolve(params.paths.examples_dir) / task / f"{args.split}.parquet")
        rows, scores = frame.to_dict("records"), []
        for i in range(0, len(rows), 64):
            batch = collate([encode_example(r, tok, built.spec) for r in rows[i:i + 64]], tok.pad_token_id)
            scores.append(model.answer_scores(batch, torch.arange(batch.answer_rows.numel())).numpy())
        frame["s"] = np.concatenate(scores)
        if task == "ctr":
            print(f"ctr: {len(frame)} rows, AUC(s) {auc(frame['label'].to_numpy(), frame['s'].to_numpy()):.4f}")
            for template, group in frame.groupby("template_id"):
                print(f"  {template}: {auc(group['label'].to_numpy(), group['s'].to_numpy()):.4f}")
        else:
            y = frame["rating"].astype(float).to_numpy()
            a, b = np.polyfit(frame["s"], y, 1)
            print(f"rating: {len(frame)} rows, corr(s, rating) {np.corrcoef(frame['s'], y)[0, 1]:.4f}, "
                  f"RMSE of a line on s {rmse(y, a * frame['s'] + b):.4f} vs the mean alone "
                  f"{rmse(y, np.full(len(y), y.mean())):.4f}")


if __name__ == "__main__":
    main()
