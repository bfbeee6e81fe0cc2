"""The experts on disk: `save_torch` at training, `load_baselines(params)` for `unirec evaluate`.

`baselines.out_dir` holds the learned weights (`popularity.npy`, `sasrec.pt`, `sasrec_recbole.pt`, `mf.pt`,
`ctr.pt`, `ctr_gbdt.pkl`), the BM25 documents (`bm25_texts.json`) and the configuration chosen on validation for
every tuned expert (`chosen.json`), and `MANIFEST.json` with the sha256 of each of these `BASELINE_FILES`
(components/manifest.py), which `verify_baselines` checks before any expert is loaded. The closed-form experts
(item_knn, content, rating_knn, rating_recency) are rebuilt from the train split with their chosen configuration;
every expert reads train + valid, never test.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import torch
from torch import nn

from components.artifacts import missing, reading, torch_load
from components.config import MfParams, Params, SasrecParams
from components.manifest import verify_manifest

CHOSEN_FILE = "chosen.json"
BASELINE_FILES = ("popularity.npy", "sasrec.pt", "sasrec_recbole.pt", "mf.pt", "ctr.pt", "ctr_gbdt.pkl",
                  "bm25_texts.json", CHOSEN_FILE)
"""Every file `unirec baselines` writes to `baselines.out_dir` (and records in its manifest)."""


def save_torch(model: nn.Module, path: Path) -> None:
    torch.save(model.state_dict(), path)


def read_chosen(out: Path) -> dict[str, Any]:
    path = out / CHOSEN_FILE
    if not path.is_file():
        raise missing(path, "baselines")
    with reading(path, "baselines"):
        return json.loads(path.read_text(encoding="utf-8"))


def verify_baselines(params: Params) -> Path:
    """Check every expert file of `baselines.out_dir` against the sha256 `unirec baselines` recorded; → the folder."""
    out = params.resolve(params.baselines.out_dir)
    absent = [n for n in BASELINE_FILES if not (out / n).is_file()]
    if absent:
        raise FileNotFoundError(f"{out}: missing baseline weights {absent}; run `unirec baselines` first")
    verify_manifest(out, "baselines", BASELINE_FILES)
    return out


def load_baselines(params: Params) -> dict[str, Any]:
    """Every trained expert, ready to score (eval mode): popularity, sasrec, sasrec_recbole, item_knn, query,
    content, mf, rating_knn, rating_recency, ctr, ctr_gbdt. Every file is checked (sha256) before any is read."""
    from components.baselines.content import ContentCentroid
    from components.baselines.ctr import LogisticCrosses
    from components.baselines.ctr_gbdt import GbdtCtr
    from components.baselines.inputs import load_inputs
    from components.baselines.knn import ItemKnn
    from components.baselines.mf import BiasedMF
    from components.baselines.popularity import Popularity
    from components.baselines.query import Bm25Index, QueryExperts
    from components.baselines.rating import build_rating_knn, item_biases, RatingRecency
    from components.baselines.sasrec import SASRec

    cfg, out = params.baselines, verify_baselines(params)
    chosen, inputs = read_chosen(out), load_inputs(params)
    data, rating_range = inputs.data, inputs.rating_range
    models: dict[str, Any] = {"popularity": Popularity.load(out / "popularity.npy")}
    for name, arch in (("sasrec", SasrecParams(**chosen["sasrec"])), ("sasrec_recbole", cfg.sasrec_recbole)):
        model = SASRec(data.n_items, arch)
        model.load_state_dict(torch_load(out / f"{name}.pt", "baselines"))
        models[name] = model.eval()
    models["item_knn"] = ItemKnn.build(inputs.co, **chosen["item_knn"])
    texts = json.loads((out / "bm25_texts.json").read_text(encoding="utf-8"))
    models["query"] = QueryExperts(Bm25Index(texts, cfg.query), models["sasrec"], chosen["bm25_sasrec"]["weight"],
                                   inputs.counts)
    models["content"] = ContentCentroid.build(inputs.text, **chosen["content"])
    mf = BiasedMF(data.n_users, data.n_items, MfParams(**chosen["mf"]), 0.0, (0.0, 0.0))
    mf.load_state_dict(torch_load(out / "mf.pt", "baselines"))
    knn = chosen["rating_knn"]
    models["rating_knn"] = build_rating_knn(data.train, data.n_users, data.n_items, knn["neighbours"],
                                            knn["shrinkage"], cfg.rating_knn.bias_reg, inputs.ratings, rating_range)
    recency = chosen["rating_recency"]
    mu, bias = item_biases(data.train, data.n_items, recency["item_reg"])
    models["rating_recency"] = RatingRecency(mu, bias, recency["window"], inputs.ratings, rating_range)
    ctr_state = torch_load(out / "ctr.pt", "baselines")
    ctr = LogisticCrosses(data.n_users, ctr_state["genres"].numpy(), ctr_state["buckets"].numpy(),
                          ctr_state["pop_w.weight"].shape[0] - 1)
    ctr.load_state_dict(ctr_state)
    gbdt_path = out / "ctr_gbdt.pkl"
    if not gbdt_path.is_file():
        raise missing(gbdt_path, "baselines")
    with reading(gbdt_path, "baselines"):
        gbdt = pickle.loads(gbdt_path.read_bytes())
    models["ctr_gbdt"] = GbdtCtr(gbdt, inputs.ctr_tables(), inputs.ratings.values, cfg.ctr_gbdt.recent_items)
    models.update(mf=mf.eval(), ctr=ctr.eval())
    return models
