"""Run the collaborative warm-up alone and print its validation curve (no LLM training, nothing saved).

Usage::

    python scripts/warmup_curve.py [--scores=FILE.npz] [--explore-neighbours] [--explore-factors] [dotted.param=value ...]
    python scripts/warmup_curve.py train.collab_warmup.eval_every=50 train.collab_warmup.patience=100

Builds the model from params.yaml (plus the overrides), runs `components.model.warmup.collab_warmup` with
the validation rows, and prints one JSON line: steps run, kept step, seconds, validation NDCG@10 every
`eval_every` steps, the training loss every 50 steps, and the kept state's history path on the TEST split:
next-item HR/NDCG@{5,10,20} over all items (train + valid items excluded; the SASRec expert's evaluator) and
cold-start HR@10 / NDCG@10 among the cold items (each user's earlier cold items excluded, as `unirec
evaluate` ranks them; history items with their IDs, and content-only as cold-start prompts give them), and
with `model.rating_prior_window > 0` the test RMSE of the rating estimate r̂ and of the rating verbaliser's
prior alone (expected rating, LM logits left out) on every test prompt of template `rating/seen-1`.
`--explore-factors`: after the warm-up, the neighbourhood term's factors recomputed at SVD ranks 128 / 256 / 512 /
943 (943 = exact cosine here) and the item side scaled by (training users of the item)^γ, γ 0 / 0.15 / 0.3 / 0.5
(a popularity-weighted item-kNN; scaled to mean 1 over the items with users); β chosen on validation for every
cell as the warm-up does, validation and test NDCG@10 / HR@10 printed.
Needs `dvc repro embed_items` first.
"""

from __future__ import annotations

import json
import logging
import sys
import time

import numpy as np
import pandas as pd
import torch
import yaml

from components.baselines.common import NextItemTask, evaluate_scorer, load_split_data, next_item_task
from components.collab import neighbour_factors, user_sequences
from components.config import load_params
from components.model.batching import collate
from components.model.build import build_model
from components.model.data import encode_frames
from components.model.verbalizer import rating_expectation
from components.model.history_scoring import choose_neighbour_weight
from components.model.warmup import HistoryPathScorer, collab_warmup


class _ContentOnly(HistoryPathScorer):
    """The history path with every history item content-only (ID and collaborative modalities dropped)."""

    def score_users(self, user_idx: np.ndarray, histories: list[np.ndarray]) -> np.ndarray:
        fusion = self.model.fusion
        known = fusion.id_known.clone()
        fusion.id_known.zero_()
        try:
            users = super().score_users(user_idx, histories)
        finally:
            fusion.id_known.copy_(known)
        return users


def cold_task(params, data, history: NextItemTask) -> NextItemTask:
    """Test cold-start rows: target = the user's last cold item; every non-cold item and the user's earlier cold
    items excluded (the candidate set `unirec evaluate` ranks cold_start in)."""
    splits = params.resolve(params.paths.splits_dir)
    cold = pd.read_parquet(splits / "cold.parquet")
    cold_items = pd.read_parquet(splits / "cold_items.parquet")["item_idx"].to_numpy()
    warm = np.setdiff1d(np.arange(data.n_items), cold_items)
    hist = dict(zip(history.user_idx.tolist(), history.histories))
    test = cold[cold["role"] == "test"]
    earlier = cold[cold["role"] != "test"].groupby("user_idx")["item_idx"].apply(lambda s: s.to_numpy())
    users = test["user_idx"].to_numpy()
    return NextItemTask(user_idx=users, histories=[hist.get(int(u), np.empty(0, dtype=np.int64)) for u in users],
                        targets=test["item_idx"].to_numpy(),
                        exclude=[np.union1d(warm, earlier.get(int(u), np.empty(0, dtype=np.int64))) for u in users])


@torch.no_grad()
def rating_rmse(params, built, template: str = "rating/seen-1") -> dict[str, float]:
    """Test RMSE of r̂ and of the prior's expected rating on the rating test prompts of `template`."""
    frame = pd.read_parquet(params.resolve(params.paths.examples_dir) / "rating" / "test.parquet")
    frame = frame[frame["template_id"] == template]
    model = built.model.eval()
    examples = encode_frames({"rating": frame}, built.backbone.tokenizer, built.spec, progress=False)["rating"]
    estimates, expected = [], []
    for start in range(0, len(examples), 64):
        batch = collate(examples[start: start + 64], built.spec.eos_id)
        rows = torch.arange(batch.answer_rows.numel())
        r_hat = model.rating_scores(batch, rows)
        estimates.append(r_hat)
        expected.append(rating_expectation(model.verbaliser_prior("rating", r_hat - model.rating_estimator.mean)))
    truth = torch.tensor(frame["rating"].astype(float).to_numpy(), dtype=torch.float32)
    rmse = {name: float((torch.cat(v) - truth).pow(2).mean().sqrt()) for name, v in
            (("estimate", estimates), ("prior_expectation", expected))}
    return {"rows": len(frame), **{k: round(v, 4) for k, v in rmse.items()}}


@torch.no_grad()
def explore_neighbours(model, valid: NextItemTask, test: NextItemTask) -> list[dict[str, float]]:
    """Validation and test NDCG@10 / HR@10 of the kept history path over a grid of the item-neighbourhood term's
    window, decay and β (the model is left with its configured window / decay and chosen β)."""
    nb, scorer, rows = model.neighbours, HistoryPathScorer(model), []
    kept = (nb.window, nb.decay, float(nb.weight))
    for window in (5, 10, 20):
        for decay in (0.5, 0.6, 0.8):
            for weight in (0.25, 0.5, 1.0):
                nb.window, nb.decay = window, decay
                nb.weight.fill_(weight)
                v = evaluate_scorer(scorer, valid, ks=(10,), batch_size=512)
                t = evaluate_scorer(scorer, test, ks=(10,), batch_size=512)
                rows.append({"window": window, "decay": decay, "beta": weight,
                             **{f"valid_{k}": round(x, 4) for k, x in v.items()},
                             **{f"test_{k}": round(x, 4) for k, x in t.items()}})
    nb.window, nb.decay = kept[:2]
    nb.weight.fill_(kept[2])
    return rows


@torch.no_grad()
def explore_factors(params, model, frame: pd.DataFrame, n_items: int, valid: NextItemTask,
                    test: NextItemTask) -> list[dict[str, float]]:
    """Validation and test NDCG@10 / HR@10 of the kept history path with the neighbourhood factors at other SVD
    ranks and a popularity exponent γ on the item side (β chosen on validation per cell; the model is restored)."""
    nb, head, scorer, rows = model.neighbours, model.user_head, HistoryPathScorer(model), []
    kept = (nb.factors, head.passthrough, float(nb.weight))
    pairs = frame[["user_idx", "item_idx"]].drop_duplicates()
    counts = torch.from_numpy(np.bincount(pairs["item_idx"].to_numpy(), minlength=n_items).astype(np.float32))
    grid = params.model.item_neighbours.weight_grid
    try:
        for rank in (128, 256, 512, 943):
            factors = torch.from_numpy(neighbour_factors(frame, n_items, rank, params.seed))
            nb.factors, head.passthrough = factors, rank
            for gamma in (0.0, 0.15, 0.3, 0.5):
                scale = torch.where(counts > 0, counts.clamp(min=1).pow(gamma), 0.0)
                scale = scale / scale[counts > 0].mean()
                items = factors * scale.unsqueeze(1)
                nb.item_block = lambda ids, use_id, t=items: torch.where(use_id.unsqueeze(-1), t[ids], 0.0)
                choose_neighbour_weight(model, grid, valid)
                v = evaluate_scorer(scorer, valid, ks=(10,), batch_size=512)
                t = evaluate_scorer(scorer, test, ks=(10,), batch_size=512)
                rows.append({"rank": rank, "gamma": gamma, "beta": float(nb.weight),
                             **{f"valid_{k}": round(x, 4) for k, x in v.items()},
                             **{f"test_{k}": round(x, 4) for k, x in t.items()}})
                print(json.dumps(rows[-1]), flush=True)
    finally:
        nb.__dict__.pop("item_block", None)
        nb.factors, head.passthrough = kept[:2]
        nb.weight.fill_(kept[2])
    return rows


def main(argv: list[str]) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")  # the per-evaluation lines
    scores_path = next((a.split("=", 1)[1] for a in argv if a.startswith("--scores=")), None)
    explore = "--explore-neighbours" in argv
    explore_f = "--explore-factors" in argv
    argv = [a for a in argv if not a.startswith("--scores=") and a not in ("--explore-neighbours", "--explore-factors")]
    overrides = {k: yaml.safe_load(v) for k, v in (a.split("=", 1) for a in argv)}
    params = load_params("params.yaml", overrides)
    if params.train.num_threads:
        torch.set_num_threads(params.train.num_threads)
    if not params.train.collab_warmup.eval_every:
        raise SystemExit("set train.collab_warmup.eval_every > 0: the curve is what this script prints")
    seed = params.seed + params.train.seed_offset
    built = build_model(params)
    frame = pd.read_parquet(params.resolve(params.paths.splits_dir) / "train.parquet",
                            columns=["user_idx", "item_idx", "order", "rating"])
    valid = next_item_task(load_split_data(params), "valid")
    start = time.perf_counter()
    ratings = user_sequences(frame, "rating") if params.train.collab_warmup.rating_weight else None
    grid = params.model.item_neighbours.weight_grid if built.model.neighbours is not None else []
    report = collab_warmup(built.model, user_sequences(frame), params.train.collab_warmup, seed, 50, valid, ratings,
                           grid)
    data = load_split_data(params)
    test = next_item_task(data, "test")
    scorer = HistoryPathScorer(built.model)
    test_metrics = evaluate_scorer(scorer, test, ks=(5, 10, 20), batch_size=512)
    if scores_path:  # the test users' raw history-path scores, for scripts/ensemble_scores.py
        np.savez_compressed(scores_path, user_idx=test.user_idx,
                            scores=scorer.score_users(test.user_idx, test.histories).astype(np.float32))
    cold = cold_task(params, data, test)
    cold_ids = evaluate_scorer(scorer, cold, ks=(10,), batch_size=512)
    cold_content = evaluate_scorer(_ContentOnly(built.model), cold, ks=(10,), batch_size=512)
    rating = rating_rmse(params, built) if built.model.rating_estimator is not None else None
    grid = explore_neighbours(built.model, valid, test) if explore and built.model.neighbours is not None else None
    factors = explore_factors(params, built.model, frame, data.n_items, valid, test) \
        if explore_f and built.model.neighbours is not None else None
    print(json.dumps({"overrides": overrides, "steps": report.steps, "best_step": report.best_step,
                      "neighbour_explore": grid, "factor_explore": factors,
                      "rating_test_rmse": rating,
                      "seconds": round(time.perf_counter() - start),
                      "test": {k: round(v, 4) for k, v in test_metrics.items()},
                      "cold_test_history_ids": {k: round(v, 4) for k, v in cold_ids.items()},
                      "cold_test_content_only": {k: round(v, 4) for k, v in cold_content.items()},
                      "valid_ndcg@10": [[s, round(v, 4)] for s, v in report.valid_curve],
                      "neighbour_beta": report.neighbour_weight,
                      "neighbour_valid_ndcg@10": [[w, round(v, 4)] for w, v in report.neighbour_curve],
                      "loss": [[s, round(v, 3)] for s, v in report.curve]}))


if __name__ == "__main__":
    main(sys.argv[1:])
