"""Step `baselines`: the expert models, fitted on the train split and tuned on the VALIDATION split only.

Experts (the names `unirec evaluate` reports them under are in `components/evaluation/experts.py`):
* next-item ranking: `popularity` (popularity.py), `sasrec` — SASRec trained on every prefix, grid by successive
  halving (sasrec_tuning.py), `sasrec_recbole` — RecBole's untuned defaults (sasrec.py), `item_knn` (knn.py);
* query: `bm25`, `bm25_sasrec` (query.py); cold-start: `content` (content.py);
* rating: `mf` (tuned biased MF, mf.py), `rating_knn`, `rating_recency` (rating.py);
* CTR: `ctr` (logistic regression on crosses, ctr.py), `ctr_gbdt` (gradient-boosted trees, ctr_gbdt.py).

`train_baselines(params)` reads only the train and valid split files (inputs.py), writes the weights, the
chosen configurations (`chosen.json`) and their sha256 (`MANIFEST.json`) to `baselines.out_dir` and, per expert,
the grid with each configuration's validation figure, the chosen configuration, epochs, validation curve, wall time
and validation figures to `baselines.metrics_file`. No test figure is computed here: `unirec evaluate` is the one
reader of the test split.
"""

from __future__ import annotations

import json
import pickle
import time
from dataclasses import asdict, dataclass, field
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from components.baselines.common import TrainHistory
from components.baselines.content import cold_rows, tune_content
from components.baselines.ctr import ctr_metrics, fit_ctr, genre_matrix
from components.baselines.ctr_gbdt import auc_and_logloss, scoring_matrix, training_matrix, tune_gbdt
from components.baselines.inputs import ExpertInputs, item_texts, load_inputs
from components.baselines.knn import tune_item_knn
from components.baselines.mf import rating_errors, tune_mf
from components.baselines.popularity import Popularity
from components.baselines.query import Bm25Index, QueryExperts, query_rows, tune_query
from components.baselines.rating import RatingTable, errors_of, tune_rating_knn, tune_rating_recency
from components.baselines.sasrec import fit_sasrec
from components.baselines.sasrec_tuning import tune_sasrec
from components.baselines.store import BASELINE_FILES, CHOSEN_FILE, load_baselines, save_torch
from components.config import Params
from components.manifest import write_manifest
from components.evaluation.ranking import NextItemScorer, evaluate_scorer, next_item_task
from components.split import load_split_frame

__all__ = ["BaselinesReport", "NextItemScorer", "train_baselines", "load_baselines"]

RANKING = "full ranking over all items; the user's train items excluded; pessimistic ties (validation split)"
_STREAMS = {"sasrec_recbole": 0, "mf": 1, "ctr": 2, "sasrec": 3, "ctr_gbdt": 4}


@dataclass
class BaselinesReport:
    """Per-expert tuning record and validation figures (the content of `baselines.metrics_file`)."""

    data: dict[str, Any]
    models: dict[str, dict[str, Any]] = field(default_factory=dict)

    def summary(self) -> str:
        lines = [f"baselines on {self.data['dataset']}: {self.data['users']} users, {self.data['items']} items; "
                 f"tuned on validation only; {self.data['ranking']}"]
        for name, rec in self.models.items():
            chosen = f"chosen {rec['chosen']}; " if rec.get("chosen") else ""
            figures = ", ".join(f"{k} {v:.4f}" for k, v in rec["valid"].items() if isinstance(v, float))
            lines.append(f"  {name}: {chosen}{rec['wall_s']:.1f}s; valid {figures}")
        return "\n".join(lines)


def _seed(params: Params, model: str) -> int:
    return params.seed + params.baselines.seed_offset + _STREAMS[model]


def _history(history: TrainHistory) -> dict[str, Any]:
    return asdict(history)


def _examples(params: Params, task: str) -> pd.DataFrame:
    path = params.resolve(params.paths.examples_dir) / task / "valid.parquet"  # `unirec textualize`'s layout
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; run `unirec textualize` first")
    return pd.read_parquet(path, columns=["user_idx", "target_items", "query"])


class _Trainer:
    """Fits the experts one by one into `records` / `chosen`; `done(name)` writes the partial report."""

    def __init__(self, params: Params, inputs: ExpertInputs, out: Path, done: Callable[[], None]) -> None:
        self.params, self.cfg, self.inputs, self.out, self.done = params, params.baselines, inputs, out, done
        self.data, self.seqs = inputs.data, inputs.data.train_sequences()
        self.valid = next_item_task(self.data, "valid")
        self.splits = params.resolve(params.paths.splits_dir)
        self.records: dict[str, dict[str, Any]] = {}
        self.chosen: dict[str, Any] = {}
        self.start = time.perf_counter()

    def record(self, name: str, rec: dict[str, Any], model: NextItemScorer | None = None) -> None:
        if model is not None:
            rec["valid"] = evaluate_scorer(model, self.valid, self.cfg.report_ks, self.cfg.sasrec.eval_batch_size)
        self.records[name] = {**rec, "wall_s": time.perf_counter() - self.start}
        self.start = time.perf_counter()
        self.done()

    def neighbourhoods(self) -> None:
        pop = Popularity(self.inputs.counts)
        pop.save(self.out / "popularity.npy")
        self.record("popularity", {}, pop)
        knn, self.chosen["item_knn"], rec = tune_item_knn(self.inputs.co, self.valid, self.cfg.item_knn,
                                                          self.cfg.eval_k)
        self.record("item_knn", rec, knn)

    def content(self) -> None:
        cold_items = load_split_frame(self.splits, "cold_items")["item_idx"].to_numpy(dtype=np.int64)
        rows = cold_rows(_examples(self.params, "cold_start"), load_split_frame(self.splits, "cold"), cold_items,
                         self.data.n_items, ("extra",))
        _, self.chosen["content"], rec = tune_content(self.inputs.text, rows, self.seqs, self.cfg.content,
                                                      self.cfg.eval_k, self.cfg.report_ks)
        self.record("content", rec)

    def rating(self) -> None:
        data, rating_range = self.data, self.inputs.rating_range
        frames = {s: load_split_frame(self.splits, f"rating_{s}") for s in ("train", "valid")}
        mf, mf_cfg, rec = tune_mf(frames["train"], frames["valid"], data.n_users, data.n_items, self.cfg.mf,
                                  rating_range, _seed(self.params, "mf"))
        save_torch(mf, self.out / "mf.pt")
        self.chosen["mf"] = mf_cfg.model_dump()
        self.record("mf", {**rec, "valid": rating_errors(mf, frames["valid"])})
        valid = frames["valid"]
        users = valid["user_idx"].to_numpy()
        rows = (users, valid["item_idx"].to_numpy(), [self.seqs[int(u)] for u in users])
        for name, tune in (("rating_knn", tune_rating_knn), ("rating_recency", tune_rating_recency)):
            sizes = (data.n_users, data.n_items) if name == "rating_knn" else (data.n_items,)
            model, self.chosen[name], rec = tune(data.train, valid, self.seqs, self.inputs.ratings, *sizes,
                                                 getattr(self.cfg, name), rating_range)
            self.record(name, {**rec, "valid": errors_of(model.predict(*rows), valid)})

    def ctr(self) -> None:
        data, cfg = self.data, self.cfg
        frames = {s: load_split_frame(self.splits, f"ctr_{s}") for s in ("train", "valid")}
        genres, _ = genre_matrix(self.inputs.items, data.n_items)
        ctr, history = fit_ctr(frames["train"], frames["valid"], data.n_users, genres, self.inputs.counts, cfg.ctr,
                               _seed(self.params, "ctr"))
        save_torch(ctr, self.out / "ctr.pt")
        self.record("ctr", {**_history(history), "valid": ctr_metrics(ctr, frames["valid"])})
        tables, recent, v = self.inputs.ctr_tables(), cfg.ctr_gbdt.recent_items, frames["valid"]
        train_ratings = RatingTable([data.train], data.n_users, data.n_items).values  # training rows read train only
        x, y = training_matrix(tables, frames["train"], self.seqs, train_ratings, recent)
        x_valid = scoring_matrix(tables, self.inputs.ratings.values, recent, v["user_idx"].to_numpy(),
                                 v["item_idx"].to_numpy(), dict(enumerate(self.seqs)))
        gbdt, self.chosen["ctr_gbdt"], rec = tune_gbdt(x, y, x_valid, v["label"].to_numpy(), tables.categorical,
                                                       cfg.ctr_gbdt, _seed(self.params, "ctr_gbdt"))
        (self.out / "ctr_gbdt.pkl").write_bytes(pickle.dumps(gbdt))
        self.record("ctr_gbdt", {**rec, "features": tables.names, "train_rows": int(len(y)),
                                 "valid": auc_and_logloss(v["label"].to_numpy(), gbdt.predict_proba(x_valid)[:, 1])})

    def sequential(self) -> None:
        cfg, data, k = self.cfg, self.data, self.cfg.eval_k
        sasrec, sasrec_cfg, rec = tune_sasrec(self.seqs, data.n_items, self.valid, cfg.sasrec, k,
                                              _seed(self.params, "sasrec"))
        save_torch(sasrec, self.out / "sasrec.pt")
        self.chosen["sasrec"] = sasrec_cfg.model_dump()
        self.record("sasrec", rec, sasrec)
        texts = item_texts(self.params, self.inputs.items)
        (self.out / "bm25_texts.json").write_text(json.dumps(texts, ensure_ascii=False) + "\n", encoding="utf-8")
        query = QueryExperts(Bm25Index(texts, cfg.query), sasrec, cfg.query.weights[0], self.inputs.counts)
        self.chosen["bm25_sasrec"], rec = tune_query(query, query_rows(_examples(self.params, "query")), self.seqs,
                                                     cfg.query, k, cfg.report_ks)
        self.record("bm25_sasrec", {**rec, "valid": rec["valid"]["bm25_sasrec"], "all_valid": rec.pop("valid")})
        recbole, history = fit_sasrec(self.seqs, data.n_items, self.valid, cfg.sasrec_recbole, k,
                                      _seed(self.params, "sasrec_recbole"))
        save_torch(recbole, self.out / "sasrec_recbole.pt")
        self.record("sasrec_recbole", _history(history), recbole)


def train_baselines(params: Params) -> BaselinesReport:
    """Fit and tune every expert on the train / valid split files of `params`; write weights, `chosen.json` and
    the report JSON (`baselines.metrics_file`)."""
    cfg = params.baselines
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    out = params.resolve(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    inputs = load_inputs(params)
    data = inputs.data
    report = BaselinesReport(data={"dataset": params.dataset.name, "users": data.n_users, "items": data.n_items,
                                   "train_interactions": len(data.train), "ranking": RANKING, "splits_read":
                                   ["train", "valid"], "seed": params.seed + cfg.seed_offset,
                                   "threads": torch.get_num_threads()})
    path = params.resolve(cfg.metrics_file)
    path.parent.mkdir(parents=True, exist_ok=True)

    def write() -> None:  # after every expert: a stopped run shows what it did
        report.data["wall_s"] = time.perf_counter() - start
        path.write_text(json.dumps(asdict(report), indent=2) + "\n", encoding="utf-8")

    trainer = _Trainer(params, inputs, out, write)
    report.models = trainer.records
    for group in (trainer.neighbourhoods, trainer.content, trainer.rating, trainer.ctr, trainer.sequential):
        group()
    for rec in report.models.values():
        rec.setdefault("chosen", None)
    (out / CHOSEN_FILE).write_text(json.dumps(trainer.chosen, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    write_manifest(out, [out / name for name in BASELINE_FILES], "baselines")
    write()
    return report
