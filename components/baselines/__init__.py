"""Step `baselines`: the expert models, fitted on the train split and tuned on the VALIDATION split only.

Experts (the names `unirec evaluate` reports them under are in `components/evaluation/experts.py`):
* next-item ranking: `popularity` (popularity.py), `sasrec` — SASRec trained on every prefix, grid by successive
  halving (sasrec_tuning.py), `sasrec_recbole` — RecBole's untuned defaults (sasrec.py), `item_knn` (knn.py);
* query: `bm25`, `bm25_sasrec` (query.py); cold-start: `content` (content.py);
* rating: `mf` (tuned biased MF, mf.py), `rating_knn`, `rating_recency` (rating.py);
* CTR: `ctr` (logistic regression on crosses, ctr.py), `ctr_gbdt` (gradient-boosted trees, ctr_gbdt.py).

`train_baselines(params)` reads only the train and valid split files (inputs.py), writes the weights and the
chosen configurations (`chosen.json`) to `baselines.out_dir` and, per expert, the grid with each configuration's
validation figure, the chosen configuration, epochs, validation curve, wall time and validation figures to
`baselines.metrics_file`. No test figure is computed here: `unirec evaluate` is the one reader of the test split.
"""

from __future__ import annotations

import json
import pickle
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from components.baselines.common import TrainHistory, config_key
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
from components.baselines.store import CHOSEN_FILE, load_baselines, save_torch
from components.config import Params
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


def _train_all(params: Params, inputs: ExpertInputs, out: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Fit and tune every expert → (metrics records, chosen configurations)."""
    cfg, data = params.baselines, inputs.data
    ks, k = cfg.report_ks, cfg.eval_k
    seqs, valid = data.train_sequences(), next_item_task(data, "valid")
    records: dict[str, dict[str, Any]] = {}
    chosen: dict[str, Any] = {}

    def ranking(name: str, model: NextItemScorer, start: float, **rec: Any) -> None:
        records[name] = {**rec, "valid": evaluate_scorer(model, valid, ks, cfg.sasrec.eval_batch_size),
                         "wall_s": time.perf_counter() - start}

    start = time.perf_counter()
    pop = Popularity(inputs.counts)
    pop.save(out / "popularity.npy")
    ranking("popularity", pop, start)

    start = time.perf_counter()
    recbole, history = fit_sasrec(seqs, data.n_items, valid, cfg.sasrec_recbole, k, _seed(params, "sasrec_recbole"))
    save_torch(recbole, out / "sasrec_recbole.pt")
    ranking("sasrec_recbole", recbole, start, **_history(history))

    start = time.perf_counter()
    sasrec, sasrec_cfg, rec = tune_sasrec(seqs, data.n_items, valid, cfg.sasrec, k, _seed(params, "sasrec"))
    save_torch(sasrec, out / "sasrec.pt")
    chosen["sasrec"] = sasrec_cfg.model_dump()
    ranking("sasrec", sasrec, start, **rec)

    start = time.perf_counter()
    knn, chosen["item_knn"], rec = tune_item_knn(inputs.co, valid, cfg.item_knn, k)
    ranking("item_knn", knn, start, **rec)

    start = time.perf_counter()
    texts = item_texts(params, inputs.items)
    (out / "bm25_texts.json").write_text(json.dumps(texts, ensure_ascii=False) + "\n", encoding="utf-8")
    query = QueryExperts(Bm25Index(texts, cfg.query), sasrec, cfg.query.weights[0], inputs.counts)
    chosen["bm25_sasrec"], rec = tune_query(query, query_rows(_examples(params, "query")), seqs, cfg.query, k, ks)
    records["bm25_sasrec"] = {**rec, "valid": rec["valid"]["bm25_sasrec"], "all_valid": rec.pop("valid"),
                              "wall_s": time.perf_counter() - start}

    start = time.perf_counter()
    splits = params.resolve(params.paths.splits_dir)
    cold_items = load_split_frame(splits, "cold_items")["item_idx"].to_numpy(dtype=np.int64)
    rows = cold_rows(_examples(params, "cold_start"), load_split_frame(splits, "cold"), cold_items, data.n_items,
                     ("extra",))
    _, chosen["content"], rec = tune_content(inputs.text, rows, seqs, cfg.content, k, ks)
    records["content"] = {**rec, "wall_s": time.perf_counter() - start}

    rating_range = inputs.rating_range
    frames = {s: load_split_frame(splits, f"rating_{s}") for s in ("train", "valid")}
    start = time.perf_counter()
    mf, mf_cfg, rec = tune_mf(frames["train"], frames["valid"], data.n_users, data.n_items, cfg.mf, rating_range,
                              _seed(params, "mf"))
    save_torch(mf, out / "mf.pt")
    chosen["mf"] = mf_cfg.model_dump()
    records["mf"] = {**rec, "valid": rating_errors(mf, frames["valid"]), "wall_s": time.perf_counter() - start}
    rows_args = (frames["valid"]["user_idx"].to_numpy(), frames["valid"]["item_idx"].to_numpy(),
                 [seqs[int(u)] for u in frames["valid"]["user_idx"]])
    for name, tune in (("rating_knn", tune_rating_knn), ("rating_recency", tune_rating_recency)):
        start = time.perf_counter()
        extra = (data.n_users, data.n_items) if name == "rating_knn" else (data.n_items,)
        model, chosen[name], rec = tune(data.train, frames["valid"], seqs, inputs.ratings, *extra,
                                        getattr(cfg, name), rating_range)
        records[name] = {**rec, "valid": errors_of(model.predict(*rows_args), frames["valid"]),
                         "wall_s": time.perf_counter() - start}

    ctr_frames = {s: load_split_frame(splits, f"ctr_{s}") for s in ("train", "valid")}
    start = time.perf_counter()
    genres, _ = genre_matrix(inputs.items, data.n_items)
    ctr, history = fit_ctr(ctr_frames["train"], ctr_frames["valid"], data.n_users, genres, inputs.counts, cfg.ctr,
                           _seed(params, "ctr"))
    save_torch(ctr, out / "ctr.pt")
    records["ctr"] = {**_history(history), "valid": ctr_metrics(ctr, ctr_frames["valid"]),
                      "wall_s": time.perf_counter() - start}

    start = time.perf_counter()
    tables, recent = inputs.ctr_tables(), cfg.ctr_gbdt.recent_items
    train_ratings = RatingTable([data.train], data.n_users, data.n_items).values  # a training row reads train only
    x, y = training_matrix(tables, ctr_frames["train"], seqs, train_ratings, recent)
    v = ctr_frames["valid"]
    x_valid = scoring_matrix(tables, inputs.ratings.values, recent, v["user_idx"].to_numpy(),
                             v["item_idx"].to_numpy(), dict(enumerate(seqs)))
    gbdt, chosen["ctr_gbdt"], rec = tune_gbdt(x, y, x_valid, v["label"].to_numpy(), tables.categorical,
                                              cfg.ctr_gbdt, _seed(params, "ctr_gbdt"))
    (out / "ctr_gbdt.pkl").write_bytes(pickle.dumps(gbdt))
    records["ctr_gbdt"] = {**rec, "features": tables.names, "train_rows": int(len(y)),
                           "valid": auc_and_logloss(v["label"].to_numpy(), gbdt.predict_proba(x_valid)[:, 1]),
                           "wall_s": time.perf_counter() - start}
    return records, chosen


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
    records, chosen = _train_all(params, inputs, out)
    for name, rec in records.items():
        rec.setdefault("chosen", config_key(chosen[name]) if name in chosen and "chosen" not in rec else None)
    report.models = records
    report.data["wall_s"] = time.perf_counter() - start
    (out / CHOSEN_FILE).write_text(json.dumps(chosen, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    path = params.resolve(cfg.metrics_file)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(asdict(report), indent=2) + "\n", encoding="utf-8")
    return report
