"""`unirec evaluate`: pure helpers against hand-computed values, then one tiny trained model and tiny experts
evaluated end to end (schema, ranges, templates, seen/unseen, agreement with the shared ranking helpers,
determinism, self-contained HTML, MLflow) and a clear error without a model."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from components.baselines import load_baselines, train_baselines
from components.baselines.mf import rating_errors
from components.config import TASKS, Params
from components.evaluation import evaluate
from components.evaluation.pipeline import build_payload
from components.evaluation.report import render_html
from components.evaluation.experts import EXPERT_NAMES, template_free
from components.evaluation.ranking import evaluate_scorer, load_split_data, next_item_task
from components.evaluation.rows import EvalData, parse_spans, rank_rows, rotate_templates, sample_users, span_matches
from components.evaluation.scoring import MetricContext, by_kind, by_template, sensitivity, task_metrics
from components.evaluation.tracking import flatten_metrics, metric_name
from components.model.inference import generate_batch, length_buckets
from components.model.batching import collate
from components.model.build import load_trained
from components.model.data import load_examples
from components.model.prompting import encode_example
from components.split import load_split_frame
from tests.model.conftest import eval_params, inside
from unirec.cli import app

SET_OUT = ("next_item", "multi_objective", "query", "cold_start", "long_tail")


# ------------------------------------------------------------------------------------------ pure helpers
def test_sample_users_takes_lowest_priority_eligible_users_and_nests() -> None:
    priority = np.array([5, 0, 4, 1, 3, 2])  # user 1 first, then 3, 5, 4, 2, 0
    assert sample_users([0, 2, 3, 3, 4], 2, priority).tolist() == [3, 4]
    assert sample_users([0, 2, 3, 4], 3, priority).tolist() == [2, 3, 4]
    assert sample_users([4, 0], None, priority).tolist() == [0, 4]
    assert sample_users([4, 0], 9, priority).tolist() == [0, 4]
    small, large = sample_users(range(6), 2, priority), sample_users(range(6), 4, priority)
    assert small.tolist() == [1, 3] and set(small) <= set(large)


@settings(max_examples=60, deadline=None)
@given(n_users=st.integers(1, 40), n_seen=st.integers(1, 5), n_unseen=st.integers(0, 3), targets=st.integers(1, 3),
       per_seen=st.one_of(st.none(), st.integers(1, 6)), per_unseen=st.one_of(st.none(), st.integers(1, 4)),
       seed=st.integers(0, 1000))
def test_rotate_templates_gives_every_user_n_templates_of_each_kind_in_equal_shares(
        n_users: int, n_seen: int, n_unseen: int, targets: int, per_seen: int | None, per_unseen: int | None,
        seed: int) -> None:
    templates = [(f"t/seen-{i}", "seen") for i in range(n_seen)] + [(f"t/unseen-{i}", "unseen") for i in range(n_unseen)]
    frame = pd.DataFrame([{"template_id": t, "template_kind": k, "user_idx": u, "target": j}
                          for u in range(n_users) for t, k in templates for j in range(targets)])
    frame["row"] = np.arange(len(frame))
    rank = np.random.default_rng(seed).permutation(n_users)
    out = rotate_templates(frame, rank, {"seen": per_seen, "unseen": per_unseen})
    assert out.equals(frame.iloc[out["row"].to_numpy()].reset_index(drop=True))  # rows of the frame, unchanged
    assert (np.diff(out["row"]) > 0).all()  # file order kept
    for kind, n, count in (("seen", per_seen, n_seen), ("unseen", per_unseen, n_unseen)):
        want = count if n is None else min(n, count)
        rows = out[out["template_kind"] == kind]
        per_user = rows.groupby("user_idx")["template_id"].nunique().reindex(range(n_users), fill_value=0)
        assert (per_user == want).all()  # every user, n templates of the kind, every target of each
        assert (rows.groupby(["user_idx", "template_id"]).size() == targets).all()
        if count and want:
            shares = rows.groupby("template_id")["user_idx"].nunique().reindex(
                [t for t, k in templates if k == kind], fill_value=0)
            assert shares.max() - shares.min() <= want  # near-equal shares (rotation over the seeded order)
            if want == 1:
                assert shares.max() - shares.min() <= 1


def test_rank_rows_excludes_seen_never_the_target_and_restricts_to_allowed_items() -> None:
    scores = np.array([[0.9, 0.8, 0.5, 0.5, 0.1],
                       [0.2, 0.9, 0.9, 0.3, 0.4]])
    # row 0: target 3 ties with item 2 (pessimistic) and trails 0, 1; item 0 is seen -> rank 3
    # row 1: target 1 ties with 2 -> rank 2; its own id in the exclude list is ignored
    ranks, top = rank_rows(scores, [3, 1], [np.array([0]), np.array([1, 4])], k=2)
    assert ranks.tolist() == [3, 2]
    assert top.tolist() == [[1, 2], [1, 2]]
    # only items {1, 3, 4} are ranked: row 0 target 3 behind 1 -> 2; row 1 target 4 behind nothing but 1 -> 2
    ranks, top = rank_rows(scores, [3, 4], [np.array([0]), np.array([3])], k=5, allowed=np.array([1, 3, 4]))
    assert ranks.tolist() == [2, 2]
    assert top[0].tolist() == [1, 3, 4] and top[1][:2].tolist() == [1, 4]
    with pytest.raises(ValueError, match="not allowed"):
        rank_rows(scores, [0, 1], [np.array([]), np.array([])], k=1, allowed=np.array([1, 3]))


def test_infill_spans_and_exact_matches() -> None:
    fmt = "[MASK_{k}]"
    target = "[MASK_0] Heat (1995) [MASK_1] Drama [MASK_2] Comedy"
    assert parse_spans(target, fmt) == {0: "Heat (1995)", 1: "Drama", 2: "Comedy"}
    assert span_matches("[MASK_0] heat (1995) [MASK_2] Drama", target, fmt) == (1, 3)
    assert span_matches("no masks at all", target, fmt) == (0, 3)


def test_length_buckets_sort_stably_and_cover_every_row_once() -> None:
    buckets = length_buckets([5, 3, 9, 3, 1], 2)
    assert [b.tolist() for b in buckets] == [[4, 1], [3, 0], [2]]


def test_row_metrics_pool_by_kind_split_objectives_and_group_gauc_by_user_and_template() -> None:
    ctx = MetricContext(ks=(5, 10), top_k=10, tail_items=frozenset(), genres=(), mask_format="[MASK_{k}]")
    rows = pd.DataFrame({"template_id": ["t/seen-1", "t/seen-1", "t/seen-2", "t/unseen-1"],
                         "template_kind": ["seen", "seen", "seen", "unseen"], "user_idx": [0, 1, 0, 0],
                         "rank": [1, 3, 12, 2], "objective": ["watch", "like", "watch", "watch"]})
    kinds = by_kind("multi_objective", rows, ctx)
    seen = kinds["seen"]  # ranks 1, 3, 12: NDCG@10 = (1 + 1/log2(4) + 0) / 3, MRR@10 = (1 + 1/3 + 0) / 3
    assert seen["hr@5"] == pytest.approx(2 / 3) and seen["ndcg@10"] == pytest.approx(0.5)
    assert seen["mrr@10"] == pytest.approx(4 / 9) and "recall@10" not in seen
    assert seen["watch/ndcg@10"] == pytest.approx(0.5) and seen["like/ndcg@10"] == pytest.approx(0.5)
    assert kinds["unseen"]["ndcg@10"] == pytest.approx(1 / np.log2(3))
    table = sensitivity("multi_objective", rows, by_template("multi_objective", rows, ctx), ctx)
    assert table["metric"] == "ndcg@10" and table["templates"]["t/unseen-1"]["kind"] == "unseen"
    assert [table["templates"][t]["value"] for t in ("t/seen-1", "t/seen-2")] == pytest.approx([0.75, 0.0])
    assert table["mean"] == pytest.approx((0.75 + 1 / np.log2(3)) / 3) and table["max"] == 0.75
    # the same user under two templates: per (user, template) AUCs 1 and 0 -> GAUC 0.5 (per user it would be 0.75)
    ctr = pd.DataFrame({"template_id": ["a", "a", "b", "b"], "template_kind": "seen", "user_idx": 0,
                        "label": [1, 0, 1, 0], "score": [0.9, 0.1, 0.3, 0.5], "prob": [0.9, 0.1, 0.3, 0.5]})
    m = task_metrics("ctr", ctr, ctx)
    assert m["auc"] == pytest.approx(0.75) and m["gauc"] == pytest.approx(0.5)
    assert m["logloss"] == pytest.approx(-(np.log(0.9) + np.log(0.9) + np.log(0.3) + np.log(0.5)) / 4)
    assert "logloss" not in task_metrics("ctr", ctr.assign(prob=np.nan), ctx)
    frame = pd.DataFrame({"template_id": ["t/seen-1", "t/seen-1", "t/unseen-1", "t/unseen-1", "t/seen-1"],
                          "template_kind": ["seen", "seen", "unseen", "unseen", "seen"], "user_idx": [0, 1, 0, 1, 0],
                          "target_items": [[7], [8], [7], [8], [7]],
                          "objective": ["watch", None, "watch", None, "like"]})
    free = template_free("multi_objective", frame)
    assert free["user_idx"].tolist() == [0, 1, 0] and free["objective"].fillna("-").tolist() == ["watch", "-", "like"]
    assert set(free["template_id"]) == {"-"} and set(free["template_kind"]) == {"baseline"}


def test_payload_of_a_run_where_only_rating_has_rows_lists_the_skipped_tasks() -> None:
    ctx = MetricContext(ks=(5, 10), top_k=10, tail_items=frozenset(), genres=(), mask_format="[MASK_{k}]")
    frame = pd.DataFrame({"template_id": ["rating/seen-1", "rating/unseen-1"], "template_kind": ["seen", "unseen"],
                          "user_idx": [3, 3]})
    data = EvalData(split="test", n_users=5, n_items=9, frames={"rating": frame}, eligible={"rating": 1},
                    seen={}, seen_cold={}, history={}, cold_items=np.empty(0, np.int64),
                    tail_items=np.empty(0, np.int64), genres=(), mask_format="[MASK_{k}]")
    model = frame.assign(rating=[4.0, 4.0], pred=[3.0, 4.5])
    mf = frame.iloc[:1].assign(template_id="-", template_kind="baseline", rating=[4.0], pred=[2.0])
    payload = build_payload("toy", data, {"rating": model}, {"mf": {"rating": mf}}, ctx, {"wall_seconds": {}})
    assert payload["model"] == {"rating": {"rmse": 1.0, "mae": 1.0}}
    assert payload["unseen"] == {"rating": {"rmse": 0.5, "mae": 0.5}}
    assert payload["baselines"] == {"mf": {"rating": {"rmse": 2.0, "mae": 2.0}}}
    assert payload["prompt_sensitivity"]["rating"]["lower_is_better"] is True
    assert payload["meta"]["rows"]["rating"] == {"seen": 1, "unseen": 1, "templates": 2, "baseline": 1}
    assert payload["meta"]["skipped_tasks"] == [t for t in TASKS if t != "rating"]
    assert "lower is better" in render_html(payload, 10)


def test_metric_names_are_mlflow_legal() -> None:
    assert metric_name("eval", "multi_objective", "like/ndcg@10") == "eval.multi_objective.like.ndcg_at_10"
    payload = {"model": {"next_item": {"hr@5": 0.5, "ndcg@10": 0.25}}, "unseen": {"ctr": {"auc": 0.7}},
               "baselines": {"sasrec": {"next_item": {"mrr@10": 0.125}}},
               "prompt_sensitivity": {"ctr": {"metric": "auc", "mean": 0.6, "std": 0.1, "n_templates": 6}}}
    assert flatten_metrics(payload) == {"eval.next_item.hr_at_5": 0.5, "eval.next_item.ndcg_at_10": 0.25,
                                        "eval_unseen.ctr.auc": 0.7, "eval_baseline.sasrec.next_item.mrr_at_10": 0.125,
                                        "eval_sensitivity.ctr.mean": 0.6, "eval_sensitivity.ctr.std": 0.1}


# ------------------------------------------------------------------------------------------ end to end
def test_eval_json_schema_tasks_and_metric_ranges(evaluated) -> None:
    params, report = evaluated
    saved = json.loads(Path(params.resolve(params.evaluate.metrics_file)).read_text())
    assert saved == json.loads(json.dumps(report.payload))
    assert {"dataset", "model", "unseen", "baselines", "prompt_sensitivity", "meta"} <= set(saved)
    assert saved["dataset"] == "tiny"
    assert set(saved["model"]) == set(saved["unseen"]) == set(TASKS)
    assert set(saved["baselines"]) == {"pop", "sasrec", "sasrec_recbole", "item_knn", "bm25", "bm25_sasrec", "content",
                                       "ctr_gbdt", "ctr_expert", "mf", "rating_knn", "rating_recency"}
    assert set(saved["baselines"]["pop"]) == {*SET_OUT, "candidate_choice", "ctr"}
    ranking = {"next_item", "multi_objective", "long_tail", "candidate_choice"}
    assert set(saved["baselines"]["sasrec"]) == ranking | {"query"}
    assert set(saved["baselines"]["sasrec_recbole"]) == set(saved["baselines"]["item_knn"]) == ranking
    assert set(saved["baselines"]["bm25"]) == set(saved["baselines"]["bm25_sasrec"]) == {"query"}
    assert set(saved["baselines"]["content"]) == {"cold_start"}
    for name in ("mf", "rating_knn", "rating_recency"):
        assert set(saved["baselines"][name]) == {"rating"}
    assert set(saved["baselines"]["ctr_expert"]) == set(saved["baselines"]["ctr_gbdt"]) == {"ctr"}
    for task in SET_OUT:
        m = saved["model"][task]
        assert {"hr@5", "hr@10", "hr@20", "ndcg@5", "ndcg@10", "ndcg@20", "mrr@10"} <= set(m)
        assert m["hr@5"] <= m["hr@10"] <= m["hr@20"] and m["ndcg@10"] <= m["hr@10"]
    assert {"like/ndcg@10", "watch/ndcg@10"} & set(saved["model"]["multi_objective"])
    assert {"tail_coverage@10", "tail_share@10"} <= set(saved["model"]["long_tail"])
    assert set(saved["model"]["candidate_choice"]) == {"hr@1", "ndcg@5"}
    assert {"auc", "gauc", "logloss"} <= set(saved["model"]["ctr"]) and set(saved["baselines"]["pop"]["ctr"]) == {
        "auc", "gauc"}
    assert {"rmse", "mae"} == set(saved["model"]["rating"]) and saved["model"]["rating"]["mae"] <= 4.0
    assert {"rouge_l", "attribute_f1"} <= set(saved["model"]["text"]) and "rouge_l" in saved["model"]["infill"]
    for block in (saved["model"], saved["unseen"], *saved["baselines"].values()):
        for task, metrics in block.items():
            for name, value in metrics.items():
                upper = 1.0 if name.split("/")[-1] not in ("rmse", "mae", "logloss") else np.inf
                assert 0.0 <= value <= upper and np.isfinite(value), (task, name, value)
    meta = saved["meta"]
    assert meta["split"] == "test" and "pessimistic" in meta["conventions"]["ranking"]
    assert "jitter" in meta["conventions"]["baselines"] and meta["wall_seconds"]["total"] > 0
    assert meta["users"]["text"]["evaluated"] == 3 and meta["users"]["ctr"]["evaluated"] == 4
    assert meta["users"]["next_item"]["evaluated"] == meta["users"]["next_item"]["eligible"]
    for task in TASKS:  # one seen and one unseen template per user (the default rotation): one row each per target
        rows = meta["rows"][task]
        assert rows["seen"] == rows["unseen"] > 0 and 2 <= rows["templates"] <= 6
        if task in saved["baselines"]["pop"]:
            assert rows["unseen"] == rows["baseline"]


def test_every_template_is_in_the_sensitivity_table_with_its_kind(evaluated) -> None:
    _, report = evaluated
    table = report.payload["prompt_sensitivity"]
    assert set(table) == set(TASKS)
    users = report.payload["meta"]["users"]
    for task, t in table.items():
        kinds = {tid: rec["kind"] for tid, rec in t["templates"].items()}
        every = [f"{task}/seen-{i}" for i in (1, 2, 3, 4)] + [f"{task}/unseen-{i}" for i in (1, 2)]
        if users[task]["evaluated"] >= 4:  # the rotation gives each of the 4 seen templates a user
            assert sorted(kinds) == every and list(kinds.values()).count("unseen") == 2
        assert set(kinds) <= set(every) and all(kinds[tid] == tid.split("/")[1].split("-")[0] for tid in kinds)
        values = [rec["value"] for rec in t["templates"].values()]
        assert t["n_templates"] == len(kinds) and t["min"] == min(values) and t["max"] == max(values)
        assert t["mean"] == pytest.approx(np.mean(values)) and t["std"] == pytest.approx(np.std(values))
        first = sorted(kinds)[0]
        assert report.payload["per_template"][task][first][t["metric"]] == t["templates"][first]["value"]


def test_experts_match_the_shared_ranking_helpers_on_all_users(evaluated) -> None:
    """The experts' next_item figures in eval.json equal `ranking.evaluate_scorer` (the protocol they are tuned with
    on validation) on every test user; MF's RMSE equals its own predictions on rating_test."""
    params, report = evaluated
    models = load_baselines(params)
    test = next_item_task(load_split_data(params), "test")
    for ours, theirs in (("sasrec", "sasrec"), ("sasrec_recbole", "sasrec_recbole"), ("item_knn", "item_knn"),
                         ("pop", "popularity")):
        own = evaluate_scorer(models[theirs], test, (5, 10, 20), 64)
        for metric in ("hr@5", "ndcg@10", "hr@20"):
            assert report.payload["baselines"][ours]["next_item"][metric] == pytest.approx(own[metric]), (ours, metric)
    rating_test = load_split_frame(params.resolve(params.paths.splits_dir), "rating_test")
    assert report.payload["baselines"]["mf"]["rating"]["rmse"] == pytest.approx(
        rating_errors(models["mf"], rating_test)["rmse"], rel=1e-5)


def test_plots_and_html_report_are_written_and_self_contained(evaluated) -> None:
    params, report = evaluated
    plots = params.resolve(params.evaluate.plots_dir)
    comparison = pd.read_csv(plots / "comparison.csv")
    assert list(comparison.columns) == ["task", "metric", "model", "value"]
    assert {"unirec", "unirec_unseen", *report.payload["baselines"]} == set(comparison["model"])
    assert set(report.payload["baselines"]) == set(EXPERT_NAMES)
    sens = pd.read_csv(plots / "sensitivity.csv")
    assert list(sens.columns) == ["task", "template_id", "kind", "metric", "value"] and len(sens) == sum(
        t["n_templates"] for t in report.payload["prompt_sensitivity"].values())
    html = params.resolve(params.evaluate.report_file).read_text()
    assert html.startswith("<!DOCTYPE html>")
    for task in TASKS:  # one headline chart per task, one ablation chart, the experts' validation curves
        metric = report.payload["prompt_sensitivity"][task]["metric"]
        assert html.count(f'aria-label="{task} — {metric}"') == 1
    assert html.count('aria-label="ablations"') == 1 and "sasrec: valid_ndcg@10 per epoch" in html
    assert "Model vs best expert vs popularity" in html and "Seen vs unseen templates" in html
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html, re.IGNORECASE)
    assert "<script" not in html.lower() and "<link" not in html.lower()
    for task in TASKS:
        assert task in html
    assert "next_item" in report.summary() and "sasrec" in report.summary()


def test_metrics_and_files_are_logged_into_the_training_run(evaluated) -> None:
    params, report = evaluated
    train_run = json.loads((params.resolve(params.paths.metrics_dir) / "train.json").read_text())["mlflow_run_id"]
    assert report.mlflow_run_id == train_run
    client = mlflow.MlflowClient(tracking_uri=params.tracking_uri())
    metrics = client.get_run(train_run).data.metrics
    ndcg = report.payload["model"]["next_item"]["ndcg@10"]
    assert metrics["eval.next_item.ndcg_at_10"] == pytest.approx(ndcg)
    assert "eval_unseen.ctr.auc" in metrics and "eval_baseline.sasrec.next_item.hr_at_10" in metrics
    assert "eval.multi_objective.watch.ndcg_at_10" in metrics and "eval_sensitivity.rating.std" in metrics
    assert not any("@" in k for k in metrics)
    assert {Path(a.path).name for a in client.list_artifacts(train_run, "evaluation")} == {"eval.json", "eval.html"}


def test_rerun_is_deterministic_and_without_a_training_run_logs_a_new_evaluate_run(evaluated, tmp_path) -> None:
    params, first = evaluated
    out = Path(params.resolve(params.train.out_dir)).parent
    again = eval_params(Path(params.root), out, **{"paths.metrics_dir": str(tmp_path / "metrics"),
                                               "train.checkpoint_dir": str(tmp_path / "no_checkpoints"),
                                               "evaluate.metrics_file": str(tmp_path / "eval.json"),
                                               "evaluate.report_file": str(tmp_path / "eval.html"),
                                               "evaluate.plots_dir": str(tmp_path / "plots")})
    with inside(tmp_path):
        second = evaluate(again)

    def stable(payload: dict) -> dict:
        payload = json.loads(json.dumps(payload))
        payload["meta"].pop("wall_seconds")
        payload["meta"].pop("mlflow_run_id")
        return payload

    assert stable(second.payload) == stable(first.payload)
    assert second.mlflow_run_id != first.mlflow_run_id
    run = mlflow.MlflowClient(tracking_uri=again.tracking_uri()).get_run(second.mlflow_run_id)
    assert run.info.run_name == "evaluate" and run.info.status == "FINISHED"
    assert "eval.rating.rmse" in run.data.metrics


def test_batched_generation_gives_the_row_by_row_tokens(evaluated) -> None:
    params, _ = evaluated
    built = load_trained(params)
    tok = built.backbone.tokenizer
    frames = load_examples(params.resolve(params.paths.examples_dir), ["text", "infill"], "test")
    rows = pd.concat([frames["text"].head(3), frames["infill"].head(3)]).to_dict("records")
    specs = [dataclasses.replace(built.spec, max_prompt_tokens=30 + 9 * i) for i in range(len(rows))]  # ragged
    batch = collate([encode_example(r, tok, spec, with_target=False) for r, spec in zip(rows, specs)],
                    tok.pad_token_id)
    assert len(set(batch.attention_mask.sum(1).tolist())) == len(rows)  # really padded
    with torch.inference_mode():
        together = generate_batch(built.model, batch, 6, built.spec.eos_id)
        one_by_one = built.model.generate_ids(batch, 6, built.spec.eos_id)
    assert together == one_by_one and any(together)


def test_missing_model_or_experts_fail_with_a_clear_message(evaluated, tmp_path) -> None:
    params, _ = evaluated
    out = Path(params.resolve(params.train.out_dir)).parent
    with pytest.raises(FileNotFoundError, match=r"no trained model .*run `unirec train` first"):
        evaluate(eval_params(Path(params.root), out, **{"train.out_dir": str(tmp_path / "nothing")}))
    with pytest.raises(FileNotFoundError, match=r"missing baseline weights .*run `unirec baselines` first"):
        evaluate(eval_params(Path(params.root), out, **{"baselines.out_dir": str(tmp_path / "nothing")}))
    result = CliRunner().invoke(app, ["evaluate", "--params", str(Path(params.root) / "params.yaml"),
                                      "--set", f"train.out_dir={tmp_path / 'nothing'}"])
    assert result.exit_code == 1 and "unirec evaluate failed:" in result.output
    assert "run `unirec train` first" in result.output and "Traceback" not in result.output
