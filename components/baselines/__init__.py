"""Step `baselines`: expert models trained on the project's split files, for comparison with unirec.

* popularity (popularity.py) and SASRec (sasrec.py): next-item scorers with the common
  `score_users(user_idx, histories) -> (U, N)` interface (`NextItemScorer`);
* biased MF (mf.py): `predict(user_idx, item_idx) -> ratings`;
* CTR expert, logistic regression on crosses (ctr.py): `predict_proba(user_idx, item_idx) -> p`.

`train_baselines(params)` trains all four, writes their weights to `baselines.out_dir` and
per-model epochs / best epoch / validation curve / wall time / test figures to `baselines.metrics_file`.
Test figures use full ranking over all items with the user's train (+ valid) items excluded and
pessimistic ties (components/baselines/common.py).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from components.artifacts import torch_load
from components.baselines.common import TrainHistory
from components.evaluation.ranking import (NextItemScorer, SplitData, evaluate_scorer, load_split_data,
                                           next_item_task)
from components.baselines.ctr import LogisticCrosses, ctr_metrics, fit_ctr, genre_matrix
from components.baselines.mf import BiasedMF, fit_mf, rating_errors
from components.baselines.popularity import Popularity
from components.baselines.sasrec import SASRec, fit_sasrec
from components.config import Params
from components.split import load_split_frame
from components.tables import table_path

__all__ = ["BaselinesReport", "NextItemScorer", "Popularity", "SASRec", "BiasedMF", "LogisticCrosses",
           "train_baselines", "load_baselines"]

RANKING = "full ranking over all items; user's train (+valid for test) items excluded; pessimistic ties"
_STREAMS = {"sasrec": 0, "mf": 1, "ctr": 2}


@dataclass
class BaselinesReport:
    """Per-model training record and held-out figures (the content of `baselines.metrics_file`)."""

    data: dict[str, Any]
    models: dict[str, dict[str, Any]] = field(default_factory=dict)

    def summary(self) -> str:
        lines = [f"baselines on {self.data['dataset']}: {self.data['users']} users, {self.data['items']} items; "
                 f"{self.data['ranking']}"]
        for name, rec in self.models.items():
            train = (f"{rec['epochs']} epochs, best {rec['best_epoch']} ({rec['monitor']} {rec['best_value']:.4f}), "
                     if "epochs" in rec else "")
            figures = ", ".join(f"{k} {v:.4f}" for k, v in rec["test"].items() if isinstance(v, float))
            lines.append(f"  {name}: {train}{rec['wall_s']:.1f}s; test {figures}")
        return "\n".join(lines)


def _record(history: TrainHistory | None, wall_s: float, **figures: dict[str, float]) -> dict[str, Any]:
    rec: dict[str, Any] = asdict(history) if history is not None else {}
    rec["wall_s"] = wall_s
    rec.update(figures)
    return rec


def _seed(params: Params, model: str) -> int:
    return params.seed + params.baselines.seed_offset + _STREAMS[model]


def train_popularity(data: SplitData, params: Params, out: Path) -> tuple[Popularity, dict[str, Any]]:
    """Fit popularity on train counts; evaluate on valid and test."""
    start = time.perf_counter()
    model = Popularity.fit(data.train, data.n_items)
    model.save(out / "popularity.npy")
    ks, bs = params.baselines.report_ks, params.baselines.sasrec.eval_batch_size
    figures = {s: evaluate_scorer(model, next_item_task(data, s), ks, bs) for s in ("valid", "test")}
    return model, _record(None, time.perf_counter() - start, **figures)


def train_sasrec(data: SplitData, params: Params, out: Path) -> tuple[SASRec, dict[str, Any]]:
    """Fit SASRec with early stopping on valid NDCG@eval_k; evaluate the best epoch on valid and test."""
    cfg, start = params.baselines.sasrec, time.perf_counter()
    valid, test = next_item_task(data, "valid"), next_item_task(data, "test")
    model, history = fit_sasrec(data.train_sequences(), data.n_items, valid, cfg, params.baselines.eval_k,
                                _seed(params, "sasrec"))
    torch.save(model.state_dict(), out / "sasrec.pt")
    ks = params.baselines.report_ks
    figures = {"valid": evaluate_scorer(model, valid, ks, cfg.eval_batch_size),
               "test": evaluate_scorer(model, test, ks, cfg.eval_batch_size)}
    return model, _record(history, time.perf_counter() - start, **figures)


def train_mf(data: SplitData, params: Params, out: Path) -> tuple[BiasedMF, dict[str, Any]]:
    """Fit biased MF on rating_train, early-stop on rating_valid RMSE; evaluate on rating_test."""
    splits, start = params.resolve(params.paths.splits_dir), time.perf_counter()
    frames = {s: load_split_frame(splits, f"rating_{s}") for s in ("train", "valid", "test")}
    rating_range = (params.validate_.rating_min, params.validate_.rating_max)
    model, history = fit_mf(frames["train"], frames["valid"], data.n_users, data.n_items, params.baselines.mf,
                            rating_range, _seed(params, "mf"))
    torch.save(model.state_dict(), out / "mf.pt")
    mean = float(frames["train"]["rating"].mean())
    mean_rmse = float(np.sqrt(((frames["test"]["rating"] - mean) ** 2).mean())) if len(frames["test"]) else 0.0
    figures = {"valid": rating_errors(model, frames["valid"]), "test": rating_errors(model, frames["test"]),
               "reference": {"global_mean_test_rmse": mean_rmse}}
    return model, _record(history, time.perf_counter() - start, **figures)


def train_ctr(data: SplitData, params: Params, out: Path) -> tuple[LogisticCrosses, dict[str, Any]]:
    """Fit the CTR expert on ctr_train, early-stop on ctr_valid AUC; evaluate on ctr_test."""
    splits, start = params.resolve(params.paths.splits_dir), time.perf_counter()
    frames = {s: load_split_frame(splits, f"ctr_{s}") for s in ("train", "valid", "test")}
    items = pd.read_parquet(table_path(params.resolve(params.paths.canonical_dir), "items"))
    genres, _ = genre_matrix(items, data.n_items)
    counts = np.bincount(data.train["item_idx"].to_numpy(dtype=np.int64), minlength=data.n_items)
    model, history = fit_ctr(frames["train"], frames["valid"], data.n_users, genres, counts, params.baselines.ctr,
                             _seed(params, "ctr"))
    torch.save(model.state_dict(), out / "ctr.pt")
    figures = {"valid": ctr_metrics(model, frames["valid"]), "test": ctr_metrics(model, frames["test"])}
    return model, _record(history, time.perf_counter() - start, **figures)


def train_baselines(params: Params) -> BaselinesReport:
    """Train popularity, SASRec, MF and the CTR expert on the split files of `params`; write weights
    under `baselines.out_dir` and the report JSON to `baselines.metrics_file`."""
    cfg = params.baselines
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    out = params.resolve(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = load_split_data(params)
    report = BaselinesReport(data={"dataset": params.dataset.name, "users": data.n_users, "items": data.n_items,
                                   "train_interactions": len(data.train), "ranking": RANKING,
                                   "seed": params.seed + cfg.seed_offset, "threads": torch.get_num_threads()})
    for name, trainer in (("popularity", train_popularity), ("sasrec", train_sasrec), ("mf", train_mf),
                          ("ctr", train_ctr)):
        report.models[name] = trainer(data, params, out)[1]
    path = params.resolve(cfg.metrics_file)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(asdict(report), indent=2) + "\n", encoding="utf-8")
    return report


def load_baselines(params: Params) -> dict[str, Any]:
    """The trained experts from `baselines.out_dir`: popularity, sasrec, mf, ctr (eval mode)."""
    out, data = params.resolve(params.baselines.out_dir), load_split_data(params)
    models: dict[str, Any] = {"popularity": Popularity.load(out / "popularity.npy")}
    sasrec = SASRec(data.n_items, params.baselines.sasrec)
    sasrec.load_state_dict(torch_load(out / "sasrec.pt", "baselines"))
    mf_state = torch_load(out / "mf.pt", "baselines")
    mf = BiasedMF(data.n_users, data.n_items, params.baselines.mf, 0.0, (0.0, 0.0))
    mf.load_state_dict(mf_state)
    ctr_state = torch_load(out / "ctr.pt", "baselines")
    ctr = LogisticCrosses(data.n_users, ctr_state["genres"].numpy(), ctr_state["buckets"].numpy(),
                          ctr_state["pop_w.weight"].shape[0] - 1)
    ctr.load_state_dict(ctr_state)
    models.update(sasrec=sasrec.eval(), mf=mf.eval(), ctr=ctr.eval())
    return models
