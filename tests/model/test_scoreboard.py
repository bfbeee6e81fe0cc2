"""The scoreboard on one tiny trained model: ablation switches against their definitions, shared-prefix decoding
against the full pass, rows unchanged by all-user / shared-prefix / ablation evaluation, and eval.json's
comparisons, ablations, validation-chosen best expert and per-user files (recomputable)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from components.config import TASKS, load_params
from components.evaluation.bootstrap import UserScores, comparison, statistic
from components.evaluation.pipeline import ABLATED_TASKS, _view_vectors, run_model
from components.evaluation.scoreboard import seen_rows
from components.evaluation.rows import load_eval_data
from components.evaluation.scoring import MetricContext, headline_metric, task_metrics
from components.model.ablations import ABLATIONS, FULL, ablation
from components.model.batching import collate
from components.model.build import load_trained
from components.model.inference import InferenceConfig, decoder_states
from components.model.prefix import prefix_lengths, shared_prefix_states
from components.model.prompting import encode_example
from components.model.verbaliser import verbaliser_logits
from tests.conftest import REPO

OUTPUTS = {"rank", "cand_scores", "score", "pred", "generated"}


@pytest.fixture(scope="module")
def built(evaluated):
    params, _ = evaluated
    out = load_trained(params, gates_file=params.resolve(params.select_gates.out_file))
    out.model.eval()
    return out


def _batch(params, built, task: str, n: int):
    frame = load_eval_data(params).frames[task].sort_values(["user_idx", "template_id"], kind="stable").head(n)
    encoded = [encode_example(r, built.backbone.tokenizer, built.spec) for r in frame.to_dict("records")]
    groups = torch.from_numpy(pd.factorize((frame["user_idx"].astype(str) + frame["template_id"]).to_numpy())[0])
    return collate(encoded, built.backbone.tokenizer.pad_token_id), groups


def test_every_ablation_is_its_definition_and_restores_the_model(evaluated, built) -> None:
    params, _ = evaluated
    model = built.model
    batch, _ = _batch(params, built, "next_item", 6)
    cfg = InferenceConfig(8, 10, 1, False)
    gates = model.user_head.task_gate.clone()
    with torch.inference_mode():
        hidden = decoder_states(model, batch, cfg)
        full = model.user_vectors(hidden, batch)
        with ablation(model, "llm_off"):
            assert torch.allclose(model.user_vectors(hidden, batch), model.user_vectors(hidden, batch, gate=0.0))
        assert torch.equal(model.user_head.task_gate, gates)
        with ablation(model, "history_off"):
            alone = model.user_vectors(hidden, batch)
        states = model.user_token_states(hidden, batch)
        head = model.user_head
        expected = F.normalize(head.mlp(head.standardise(states)), dim=-1)
        expected = torch.cat([expected, 1 + head.bias_scale(head.standardise(states))], dim=-1)
        assert torch.allclose(alone[..., : expected.shape[-1]], expected, atol=1e-6)
        assert not alone[..., expected.shape[-1]:].any()  # the neighbourhood block is 0
        with ablation(model, "neighbours_off"):
            items, users = model.item_vectors(), model.user_vectors(hidden, batch)
        with model.without_neighbours():
            assert torch.equal(items, model.item_vectors()) and torch.equal(users, model.user_vectors(hidden, batch))
        assert items.shape[1] < model.item_vectors().shape[1] and model.neighbours is not None
        known = model.fusion.id_known.clone()
        ids = torch.arange(model.n_items)
        with ablation(model, "id_modality_off"):
            fused, out = model.fusion(ids), model.item_vectors()
        assert torch.equal(fused, model.fusion(ids, drop_id=True)) and torch.equal(out, model.item_vectors(drop_id=True))
        assert torch.equal(model.fusion.id_known, known) and known.any()
        assert torch.equal(model.user_vectors(hidden, batch), full)
        answers, _ = _batch(params, built, "ctr", 5)
        h = decoder_states(model, answers, cfg)
        rows = torch.arange(answers.answer_rows.numel())
        lm = verbaliser_logits(h[answers.answer_rows, answers.answer_cols], model.lm_head().weight, model.verbaliser("ctr"))
        prior = model.verbaliser_prior("ctr", model.answer_scores(answers, rows))
        with ablation(model, "llm_off"):
            assert torch.allclose(model.answer_logits(h, answers, "ctr", rows), prior)
        with ablation(model, "history_off"):
            assert torch.allclose(model.answer_logits(h, answers, "ctr", rows), lm)
        assert torch.allclose(model.answer_logits(h, answers, "ctr", rows), lm + prior, atol=1e-5)
    with pytest.raises(ValueError, match="unknown ablation"):
        ablation(model, "nothing_off")


def test_shared_prefix_states_equal_the_full_pass(evaluated, built) -> None:
    params, _ = evaluated
    batch, groups = _batch(params, built, "ctr", 12)
    plen = prefix_lengths(batch, groups)
    assert (plen > 0).any() and (plen < batch.attention_mask.sum(1)).all()
    cfg = InferenceConfig(16, 10, 1, False)
    with torch.inference_mode():
        full, shared = decoder_states(built.model, batch, cfg), shared_prefix_states(built.model, batch, groups, cfg)
    real = batch.attention_mask.bool()
    assert torch.allclose(full[real], shared[real], atol=1e-5)


def _unchanged(task: str, before: pd.DataFrame, after: pd.DataFrame) -> None:
    key = ["user_idx", "template_id"]
    after = after[after["user_idx"].isin(before["user_idx"])].reset_index(drop=True)
    assert after[key].equals(before[key]), task
    for column in OUTPUTS & set(before):
        for a, b in zip(before[column], after[column]):
            if column == "generated":
                assert a == b, task
            else:
                assert np.allclose(a, b, atol=1e-5), (task, column)


def test_rows_evaluated_before_are_unchanged_by_all_users_shared_prefix_and_ablations(evaluated, built) -> None:
    """The default of before (user subsets, every row through its own full pass, no ablation) and the default now
    (every user, shared prefixes, larger generation batches, every ablation) give the same outputs on the rows both
    evaluate."""
    params, _ = evaluated
    cfg = dict(batch_size=8, top_k=10, max_new_tokens=4, autocast_bf16=False)
    before, _, _ = run_model(built, load_eval_data(params), InferenceConfig(**cfg), [])
    every = params.model_copy(update={"evaluate": params.evaluate.model_copy(
        update={"users_per_task": {t: None for t in TASKS}})})
    data = load_eval_data(every)
    assert all(data.frames[t]["user_idx"].nunique() == data.eligible[t] for t in data.frames)
    now = InferenceConfig(**cfg, shared_prefix=True, generation_batch_size=24)
    after, ablated, seconds = run_model(built, data, now, list(ABLATIONS))
    for task in TASKS:
        _unchanged(task, before[task], after[task])
    assert set(ablated) == set(ABLATIONS) and all(set(per) == set(ABLATED_TASKS) for per in ablated.values())
    assert set(seconds["ablations"]) == set(ABLATED_TASKS)
    for variant, per in ablated.items():  # the seen-template rows of every user
        for task, rows in per.items():
            assert set(rows["template_kind"]) == {"seen"} and rows["user_idx"].nunique() == data.eligible[task]


def test_default_params_evaluate_every_user_of_every_task() -> None:
    cfg = load_params(REPO / "params.yaml").evaluate
    assert set(cfg.users_per_task) == set(TASKS) and all(v is None for v in cfg.users_per_task.values())
    assert cfg.bootstrap_resamples >= 1000 and list(cfg.ablations) == list(ABLATIONS)


def test_eval_json_comparisons_ablations_best_expert_and_recomputable_per_user_files(evaluated) -> None:
    params, report = evaluated
    payload = report.payload
    top_k = params.evaluate.top_k
    expert_tasks = {t for per in payload["baselines"].values() for t in per}
    assert set(payload["comparisons"]) == expert_tasks
    for task, per in payload["comparisons"].items():
        metric = headline_metric(task, top_k)
        assert set(per) == {e for e, tasks in payload["baselines"].items() if task in tasks}
        for expert, rec in per.items():
            assert rec["metric"] == metric and rec["verdict"] in ("beats", "ties", "loses")
            assert rec["model"] == pytest.approx(payload["model"][task][metric])  # the pooled seen-template figure
            assert rec["expert"] == pytest.approx(payload["baselines"][expert][task][metric])
            assert rec["diff"] == pytest.approx(rec["model"] - rec["expert"])
            assert rec["ci95"][0] <= rec["ci95"][1] and rec["users"] == payload["meta"]["users"][task]["evaluated"]
    assert set(payload["ablations"]) == set(params.evaluate.ablations)
    for variant, per in payload["ablations"].items():
        assert set(per) == set(ABLATED_TASKS)
        for task, rec in per.items():
            assert rec["full"] == pytest.approx(payload["model"][task][headline_metric(task, top_k)])
            assert rec["diff"] == pytest.approx(rec["ablated"] - rec["full"]) and rec["ci95"][0] <= rec["ci95"][1]
    assert set(payload["best_expert"]) == expert_tasks
    for task, best in payload["best_expert"].items():
        figures = payload["best_expert_valid"][task]
        pick = min if headline_metric(task, top_k) in ("rmse", "mae", "logloss") else max
        assert figures[best] == pick(figures.values())
    folder = Path(params.resolve(params.evaluate.per_user_dir))
    assert {p.stem for p in folder.glob("*.parquet")} == set(TASKS)
    seed = params.seed + params.evaluate.bootstrap_seed_offset
    for task in ("next_item", "rating", "ctr"):  # the interval again, from the file alone
        table, metric = pd.read_parquet(folder / f"{task}.parquet"), headline_metric(task, top_k)
        sides = {}
        for name in ("unirec", next(iter(payload["comparisons"][task]))):
            rows = table[table[f"{name}.rows"] > 0].reset_index(drop=True)
            extra = {}
            if metric == "auc":
                extra = {"row_user": np.repeat(np.arange(len(rows)), rows[f"{name}.rows"]),
                         "labels": np.concatenate(rows[f"{name}.labels"].to_numpy()),
                         "scores": np.concatenate(rows[f"{name}.scores"].to_numpy())}
            sides[name] = UserScores(metric, rows["user_idx"].to_numpy(), rows[name].to_numpy(),
                                     rows[f"{name}.rows"].to_numpy(), **extra)
        model, other = sides.values()
        assert statistic(model, np.ones((1, len(model.users))))[0] == pytest.approx(payload["model"][task][metric])
        again = comparison(model, other, params.evaluate.bootstrap_resamples, seed)
        saved = payload["comparisons"][task][next(iter(payload["comparisons"][task]))]
        assert again["ci95"] == pytest.approx(saved["ci95"]) and again["diff"] == pytest.approx(saved["diff"])
        assert again["verdict"] == saved["verdict"] and again["users"] == saved["users"]
    metrics = mlflow.MlflowClient(tracking_uri=params.tracking_uri()).get_run(report.mlflow_run_id).data.metrics
    assert metrics["cmp.rating.mf.diff"] == pytest.approx(payload["comparisons"]["rating"]["mf"]["diff"])
    assert "cmp.next_item.sasrec.ci_lo" in metrics and "abl.llm_off.ctr.ci_hi" in metrics


def test_a_gate_0_task_skips_the_decoder_with_the_same_rows(evaluated, built, monkeypatch) -> None:
    params, _ = evaluated
    model = built.model
    data = load_eval_data(params)
    cfg = InferenceConfig(8, 10, 1, False)
    held = model.user_head.task_gate.clone()
    from components.evaluation import universal
    from components.model.inference import catalogue_vectors

    try:
        model.user_head.set_task_gates({"query": 0.0})
        vectors = catalogue_vectors(model)
        ran = universal.predict_views(model, built.backbone.tokenizer, built.spec, "query", data, {FULL: vectors},
                                      cfg)[FULL]
        monkeypatch.setattr(universal, "decoder_states", lambda *a, **k: pytest.fail("the decoder ran"))
        skipped = universal.predict_views(model, built.backbone.tokenizer, built.spec, "query", data, {FULL: vectors},
                                          cfg)[FULL]
    finally:
        model.user_head.task_gate.copy_(held)
    assert ran["rank"].tolist() == skipped["rank"].tolist()
    ctx = MetricContext(ks=(10,), top_k=10, tail_items=frozenset(), genres=(), mask_format="[MASK_{k}]")
    assert task_metrics("query", ran, ctx) == task_metrics("query", skipped, ctx)


def test_a_gate_0_task_runs_the_decoder_on_the_seen_rows_only_for_history_off(evaluated, built, monkeypatch) -> None:
    """At gate 0 the full model reads no decoder state; `history_off` does, and it is read on the seen rows only:
    the decoder sees exactly the seen rows, and the full rows (all templates) and the ablated ones are unchanged."""
    params, _ = evaluated
    model = built.model
    data = load_eval_data(params)
    data = dataclasses.replace(data, frames={"query": data.frames["query"]})
    cfg = InferenceConfig(8, 10, 1, False)
    held = model.user_head.task_gate.clone()
    from components.evaluation import universal

    decoded: list[int] = []
    real = universal.decoder_states

    def counting(model_, batch, cfg_):
        decoded.append(int(batch.input_ids.shape[0]))
        return real(model_, batch, cfg_)

    try:
        model.user_head.set_task_gates({"query": 0.0})
        views = {name: _view_vectors(model, name) for name in (FULL, "llm_off", "history_off")}
        reference = universal.predict_views(model, built.backbone.tokenizer, built.spec, "query", data, views, cfg)
        monkeypatch.setattr(universal, "decoder_states", counting)
        rows, ablated, _ = run_model(built, data, cfg, ["llm_off", "history_off"])
    finally:
        model.user_head.task_gate.copy_(held)
    frame = data.frames["query"]
    assert sum(decoded) == int((frame["template_kind"] == "seen").sum()) < len(frame)
    assert rows["query"][["user_idx", "template_id"]].equals(frame[["user_idx", "template_id"]].reset_index(drop=True))
    assert rows["query"]["rank"].tolist() == reference[FULL]["rank"].tolist()
    for name in ("llm_off", "history_off"):
        assert ablated[name]["query"]["rank"].tolist() == seen_rows(reference[name])["rank"].tolist()
