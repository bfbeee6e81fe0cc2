"""The steering tests on one tiny trained model: the swapped prompts differ from the evaluated ones in the objective
or query words only (checked by hand), a paraphrase renders the same instance, a gate > 0 lets those words change the
user vectors (at gate 0 they cannot), and eval.json carries the `steering` section with its intervals."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch

from components.config import TASKS
from components.evaluation.rows import load_eval_data, user_priority
from components.evaluation.steering import load_source, run_steering
from components.evaluation.steering_rows import objective_rows, paraphrase_rows, pick_donors, query_rows, same_tokens
from components.evaluation.universal import SET_OUT_TASKS, predict_views
from components.model.ablations import FULL
from components.model.batching import collate
from components.model.build import load_trained
from components.model.inference import InferenceConfig, catalogue_vectors, decoder_states
from components.model.prompting import encode_example
from components.textualize.registry import load_registry

PAIR_KEYS = {"users", "diff", "ci95", "holds"}


@pytest.fixture(scope="module")
def every_user(evaluated):
    """(params, EvalData of every user of the split, render source, paraphrases, genres, donor pool)."""
    params, _ = evaluated
    params = params.model_copy(update={"evaluate": params.evaluate.model_copy(update={"users_per_task": {}})})
    data = load_eval_data(params)
    return (params, data, *load_source(params, data))


def _seen(data, task: str):
    frame = data.frames[task]
    return frame[frame["template_kind"] == "seen"].reset_index(drop=True)


def _by_hand(original: str, template: str, field: str, old: str, new: str) -> str:
    """`original` with the text `old` that `{field}` wrote replaced by `new`: the field starts right after the
    literal text that precedes it in the template."""
    literal = template.split("{" + field + "}")[0].rsplit("}", 1)[-1]
    at = original.index(literal) + len(literal) if literal else 0
    assert original[at: at + len(old)] == old
    return original[:at] + new + original[at + len(old):]


def _same_instance(a: dict, b: dict) -> None:
    for key in ("task", "split", "user_idx", "target_items", "candidates"):
        assert np.array_equal(np.asarray(a[key]), np.asarray(b[key])), key


def test_the_objective_swap_changes_the_objective_words_only(every_user) -> None:
    params, data, source, *_ = every_user
    registry = load_registry(params.resolve(params.textualize.registry))
    watch = registry.objectives["watch"].format(threshold=f"{params.textualize.like_threshold:g}")
    like = registry.objectives["like"].format(threshold=f"{params.textualize.like_threshold:g}")
    seen = _seen(data, "multi_objective")
    swapped = objective_rows(seen, source, params.textualize.like_threshold)
    originals = seen[(seen["objective"] == "watch") & (seen["rating"] < params.textualize.like_threshold)]
    assert len(swapped) == len(originals) > 0
    assert (seen[seen["objective"] == "like"]["rating"] >= params.textualize.like_threshold).all()
    for a, b in zip(originals.to_dict("records"), swapped.to_dict("records")):
        _same_instance(a, b)
        assert b["template_id"] == a["template_id"] and b["objective"] == "like"
        assert b["template_kind"] == "objective_swap"
        assert b["prompt"] == _by_hand(a["prompt"], registry.by_id(a["template_id"]).template, "objective", watch, like)
        assert list(b["items"]) == list(a["items"]) and b["n_history"] == a["n_history"]


def test_the_query_swap_changes_the_query_words_only(every_user) -> None:
    params, data, source, _, genres, pool = every_user
    registry = load_registry(params.resolve(params.textualize.registry))
    seen = _seen(data, "query")
    donors = pick_donors(seen["user_idx"].unique(), pool, genres, np.random.default_rng(0))
    swapped = query_rows(seen, donors, pool, source)
    assert len(swapped) == int(seen["user_idx"].isin(list(donors)).sum()) > 0
    donor_of = pool.set_index("user_idx")
    for a, b in zip(seen[seen["user_idx"].isin(list(donors))].to_dict("records"), swapped.to_dict("records")):
        _same_instance(a, b)
        donor = donor_of.loc[donors[a["user_idx"]]]
        assert donors[a["user_idx"]] != a["user_idx"] and b["query"] == donor["query"] != a["query"]
        assert not set(genres[int(a["target_items"][0])]) & set(genres[int(donor["target"])])
        assert b["prompt"] == _by_hand(a["prompt"], registry.by_id(a["template_id"]).template, "query", a["query"],
                                       b["query"])
        assert list(b["items"]) == list(a["items"])


def test_a_paraphrase_renders_the_same_instance_with_the_user_s_rotated_template(every_user) -> None:
    params, data, source, paraphrases, *_ = every_user
    priority = user_priority(params, data.n_users)
    for task in (t for t in SET_OUT_TASKS if t in data.frames):
        seen = _seen(data, task)
        mine = sorted(t.id for t in paraphrases if t.task == task)
        rows = paraphrase_rows(seen, [t for t in paraphrases if t.task == task], priority, source)
        assert len(rows) == len(seen)
        for a, b in zip(seen.to_dict("records"), rows.to_dict("records")):
            _same_instance(a, b)
            assert b["template_id"] == mine[int(priority[a["user_idx"]]) % len(mine)]
            assert b["objective"] == a["objective"] and b["query"] == a["query"]
            history = source.histories[task][a["user_idx"]]
            assert list(b["items"][b["history_start"]: b["history_start"] + b["n_history"]]) == list(history)


def _user_vectors(built, rows: list[dict]) -> torch.Tensor:
    tokenizer = built.backbone.tokenizer
    batch = collate([encode_example(r, tokenizer, built.spec) for r in rows], tokenizer.pad_token_id)
    with torch.inference_mode():
        return built.model.user_vectors(decoder_states(built.model, batch, InferenceConfig(8, 10, 1, False)), batch)


@pytest.mark.parametrize("task", ["multi_objective", "query"])
def test_a_gate_above_zero_lets_the_swapped_words_move_the_user_vectors(evaluated, every_user, task) -> None:
    params, data, source, _, genres, pool = every_user
    built = load_trained(params, gates_file=params.resolve(params.select_gates.out_file))
    built.model.eval()
    seen = _seen(data, task)
    if task == "multi_objective":
        swapped = objective_rows(seen, source, params.textualize.like_threshold)
    else:
        swapped = query_rows(seen, pick_donors(seen["user_idx"].unique(), pool, genres, np.random.default_rng(0)),
                             pool, source)
    originals = seen.set_index("example_id").loc[[e.rsplit("/", 1)[0] for e in swapped["example_id"]]].reset_index()
    # keep pairs whose changed words survive the left cut at train.max_prompt_tokens (same_tokens: the others encode
    # to the same ids, and eval.json counts them as pairs_cut)
    cut = same_tokens(originals, swapped, built.backbone.tokenizer, built.spec).set_index(["user_idx", "template_id"])
    visible = ~np.array([cut.loc[(u, t), "same"] for u, t in zip(originals["user_idx"], originals["template_id"])])
    assert visible.any(), "every swapped pair lost its changed words to the left cut"
    n = min(int(visible.sum()), 3)
    rows = [*originals[visible].head(n).to_dict("records"), *swapped[visible].head(n).to_dict("records")]
    gates = built.model.user_head.task_gate.clone()
    try:
        for gate, moved in ((1.0, True), (0.5, True), (0.0, False)):
            built.model.user_head.set_task_gates({task: gate})
            vectors = _user_vectors(built, rows)  # (2n, M, D)
            same = torch.isclose(vectors[:n], vectors[n:], rtol=0, atol=1e-6).flatten(1).all(1)
            assert (not same.any()) if moved else bool(same.all()), (task, gate)
    finally:
        built.model.user_head.task_gate.copy_(gates)


def test_every_user_gives_both_objective_groups_an_interval(every_user) -> None:
    """`run_steering` on every user of multi_objective and query (the fixture evaluates 3 of each): both objective
    groups and the query swap get users and an interval, and rows already evaluated are reused, not re-run."""
    params, data, *_ = every_user
    built = load_trained(params, gates_file=params.resolve(params.select_gates.out_file))
    cfg = InferenceConfig(8, 10, 1, False)
    data = dataclasses.replace(data, frames={t: data.frames[t] for t in ("multi_objective", "query")})
    vectors = catalogue_vectors(built.model)
    rows = {t: predict_views(built.model, built.backbone.tokenizer, built.spec, t, data, {FULL: vectors}, cfg)[FULL]
            for t in data.frames}
    out, seconds = run_steering(params, data, rows, built, cfg)
    assert set(seconds) == {"multi_objective", "query"}
    obj = out["objective_swap"]
    assert obj["liked"]["users"] > 0 and obj["not_liked"]["users"] > 0
    seen = _seen(data, "multi_objective")
    liked = seen["rating"] >= params.textualize.like_threshold
    assert obj["liked"]["users"] == seen.loc[liked, "user_idx"].nunique()
    assert out["meta"]["rows_added"]["multi_objective"]["objective_swap"] == int(
        ((seen["objective"] == "watch") & ~liked).sum())  # only the not-liked users' `like` prompts are new
    for rec in (obj["liked"], obj["not_liked"], out["query_swap"]):
        lo, hi = rec["ci95"]
        assert lo <= hi and rec["pairs"] >= rec["users"]
    assert set(out["paraphrase"]) == {"multi_objective", "query"}


def test_eval_json_has_the_steering_section(evaluated) -> None:
    params, report = evaluated
    payload = json.loads(Path(report.files["metrics"]).read_text(encoding="utf-8"))
    steering = payload["steering"]
    gates = json.loads(params.resolve(params.select_gates.out_file).read_text(encoding="utf-8"))
    assert set(steering) == {"objective_swap", "query_swap", "paraphrase", "meta"}
    wall = payload["meta"]["wall_seconds"]
    assert isinstance(wall["steering"], float) and set(wall["steering_tasks"]) == set(steering["paraphrase"])
    assert "steering" in payload["meta"]["conventions"]

    def interval(rec: dict, a: str, b: str, gate: float) -> None:
        assert PAIR_KEYS | {a, b} <= set(rec)
        if not rec["users"]:
            return
        lo, hi = rec["ci95"]
        assert lo <= hi and math.isclose(rec["diff"], rec[a] - rec[b], abs_tol=1e-12)
        if gate == 0.0:  # the prompt cannot reach the answer: exactly the same ranks
            assert rec["diff"] == 0.0 and rec["ci95"] == [0.0, 0.0]

    obj = steering["objective_swap"]
    assert obj["metric"] == "ndcg@10" and obj["gate"] == gates.get("multi_objective", 1.0)
    interval(obj["liked"], "like", "watch", obj["gate"])
    interval(obj["not_liked"], "watch", "like", obj["gate"])
    for rec in (obj["liked"], obj["not_liked"], steering["query_swap"]):
        assert 0 <= rec["pairs_cut"] <= rec["pairs"] and rec["pairs"] >= rec["users"]
    users = payload["meta"]["users"]["multi_objective"]["evaluated"]
    assert obj["liked"]["users"] + obj["not_liked"]["users"] + obj["users_unrated"] == users
    assert obj["holds"] == (obj["liked"]["holds"] and obj["not_liked"]["holds"])
    query = steering["query_swap"]
    assert query["metric"] == "hr@10" and query["users"] > 0
    interval(query, "true", "swapped", query["gate"])
    assert query["users"] + query["users_without_donor"] == payload["meta"]["users"]["query"]["evaluated"]
    assert set(steering["paraphrase"]) == {t for t in SET_OUT_TASKS if t in payload["model"]}
    for task, rec in steering["paraphrase"].items():
        interval(rec, "paraphrased", "seen", rec["gate"])
        assert rec["users"] == payload["meta"]["users"][task]["evaluated"] and rec["templates"]
        assert rec["metric"] == ("ndcg@5" if task == "candidate_choice" else "ndcg@10")
        assert math.isclose(rec["seen"], payload["model"][task][rec["metric"]])  # the seen rows `model` pools
        if rec["ratio"] is not None:
            assert math.isclose(rec["ratio"], rec["paraphrased"] / rec["seen"])
            assert rec["holds"] == (rec["ratio"] >= params.evaluate.steering.paraphrase_min_ratio)
    assert set(steering["meta"]["rows_added"]) <= set(TASKS)
    logged = mlflow.MlflowClient(tracking_uri=params.tracking_uri()).get_run(report.mlflow_run_id).data.metrics
    assert logged["steer.query_swap.diff"] == pytest.approx(query["diff"])
    assert logged["steer.paraphrase.next_item.ratio"] == pytest.approx(steering["paraphrase"]["next_item"]["ratio"])
    html = Path(report.files["report"]).read_text(encoding="utf-8")
    assert "Steering" in html and "objective swap" in html and "paraphrase" in html
