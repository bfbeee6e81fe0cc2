"""Step `baselines` end to end on the tiny project (examples and text embeddings included): every expert is
written with its chosen configuration and VALIDATION figures only, reloads, and `expert_rows` — the code path of
`unirec evaluate` — reproduces each expert's own validation figures on the validation rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from components.baselines import load_baselines, train_baselines
from components.config import Params
from components.evaluation.experts import EXPERT_NAMES, expert_rows
from components.evaluation.rows import load_eval_data
from components.evaluation.scoring import MetricContext, task_metrics
from tests.conftest import params_in
from tests.model.conftest import TINY_EXPERTS, TINY_MODEL

EXPERTS = ("popularity", "sasrec_recbole", "sasrec", "item_knn", "bm25_sasrec", "content", "mf", "rating_knn",
           "rating_recency", "ctr", "ctr_gbdt")
OWN = {  # expert_rows name → (name in baselines_train.json, task, metric)
    "pop": ("popularity", "next_item", "ndcg@10"), "sasrec": ("sasrec", "next_item", "ndcg@10"),
    "sasrec_recbole": ("sasrec_recbole", "next_item", "ndcg@10"), "item_knn": ("item_knn", "next_item", "ndcg@10"),
    "bm25_sasrec": ("bm25_sasrec", "query", "ndcg@10"), "content": ("content", "cold_start", "ndcg@10"),
    "mf": ("mf", "rating", "rmse"), "rating_knn": ("rating_knn", "rating", "rmse"),
    "rating_recency": ("rating_recency", "rating", "rmse"), "ctr_expert": ("ctr", "ctr", "auc"),
    "ctr_gbdt": ("ctr_gbdt", "ctr", "auc")}


def experts_params(project: Path, out: Path, **extra: object) -> Params:
    return params_in(project, {**TINY_MODEL, **TINY_EXPERTS, "baselines.out_dir": str(out / "baselines"),
                               "baselines.metrics_file": str(out / "metrics" / "baselines_train.json"), **extra})


@pytest.fixture(scope="module")
def trained(model_project: Path, tmp_path_factory: pytest.TempPathFactory) -> Params:
    params = experts_params(model_project, tmp_path_factory.mktemp("experts"))
    train_baselines(params)
    return params


def _walk(node: object) -> list[str]:
    if isinstance(node, dict):
        return [str(k) for k in node] + [k for v in node.values() for k in _walk(v)]
    return []


def test_every_expert_is_tuned_on_validation_and_written_without_test_figures(trained: Params) -> None:
    saved = json.loads(trained.resolve(trained.baselines.metrics_file).read_text())
    assert list(saved["models"]) == list(EXPERTS) and saved["data"]["splits_read"] == ["train", "valid"]
    assert "test" not in _walk(saved)  # validation figures only: unirec evaluate is the one reader of test
    for name in EXPERTS:
        rec = saved["models"][name]
        assert rec["valid"] and rec["wall_s"] > 0, name
        if name not in ("popularity", "sasrec_recbole", "ctr"):  # the untuned ones have no grid
            assert rec["chosen"] in rec["grid"], name
    sasrec = saved["models"]["sasrec"]
    assert set(sasrec["grid"]) == {"dropout=0.1,max_len=10,hidden_size=16", "dropout=0.5,max_len=10,hidden_size=16"}
    assert sasrec["selection"] == "successive halving" and len(sasrec["curve"]) == sasrec["epochs"]
    assert sasrec["valid"]["ndcg@10"] == pytest.approx(sasrec["best_value"])
    assert saved["models"]["ctr_gbdt"]["valid"]["auc"] == pytest.approx(saved["models"]["ctr_gbdt"]["best_value"])
    assert saved["models"]["mf"]["valid"]["rmse"] == pytest.approx(saved["models"]["mf"]["best_value"])
    out = trained.resolve(trained.baselines.out_dir)
    assert {p.name for p in out.iterdir()} >= {"popularity.npy", "sasrec.pt", "sasrec_recbole.pt", "mf.pt", "ctr.pt",
                                               "ctr_gbdt.pkl", "bm25_texts.json", "chosen.json"}
    chosen = json.loads((out / "chosen.json").read_text())
    assert set(chosen) == {"sasrec", "item_knn", "bm25_sasrec", "content", "mf", "rating_knn", "rating_recency",
                           "ctr_gbdt"}
    assert chosen["sasrec"]["hidden_dropout"] == chosen["sasrec"]["attn_dropout"]


def test_expert_rows_on_validation_rows_reproduce_each_experts_own_validation_figure(trained: Params) -> None:
    """The same protocol twice — `unirec baselines`' tuning and `expert_rows` on validation rows of every user."""
    saved = json.loads(trained.resolve(trained.baselines.metrics_file).read_text())["models"]
    valid = trained.model_copy(update={"evaluate": trained.evaluate.model_copy(update={
        "split": "valid", "users_per_task": {t: None for t in trained.evaluate.users_per_task}})})
    data = load_eval_data(valid)
    rows = expert_rows(load_baselines(trained), data, 10, seed=0)
    assert set(rows) == set(EXPERT_NAMES)
    ctx = MetricContext(ks=(10,), top_k=10, tail_items=frozenset(int(i) for i in data.tail_items),
                        genres=data.genres, mask_format=data.mask_format)
    for name, (own, task, metric) in OWN.items():
        measured = task_metrics(task, rows[name][task], ctx)[metric]
        assert measured == pytest.approx(saved[own]["valid"][metric], rel=1e-5, abs=1e-9), (name, task)
    bm25 = task_metrics("query", rows["bm25"]["query"], ctx)["ndcg@10"]
    assert bm25 == pytest.approx(saved["bm25_sasrec"]["all_valid"]["bm25"]["ndcg@10"])
