"""`evaluate(params)`: the orchestration of the evaluation step.

Runs the trained universal model on every task for its users (`evaluate.users_per_task`; default all), each
user on its assigned seen and unseen templates (`evaluate.seen_templates_per_user`; default one of each kind, in
rotation), its inference-time ablations (`evaluate.ablations`) on the seen-template rows, and the expert
baselines on the same users and rows (and on the validation rows, to choose each task's best expert); then the
paired bootstrap over users of every model-vs-expert and ablated-vs-full difference (scoreboard.py) and the steering
tests (`evaluate.steering`: objective swap, query swap, paraphrased templates; steering.py). Writes
`evaluate.metrics_file` (eval.json), the per-user scores under `evaluate.per_user_dir`, the plot CSVs under
`evaluate.plots_dir` and the HTML report `evaluate.report_file`; figures and files are logged to MLflow
(the training run when known).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from components.config import TASKS, Params
from components.evaluation.experts import POP_JITTER, expert_rows
from components.evaluation.report import render_html, series, write_plots
from components.evaluation.rows import EvalData, load_eval_data
from components.evaluation.scoring import (MetricContext, by_kind, by_template, headline_metric, sensitivity,
                                           task_metrics)
from components.evaluation.tracking import log_evaluation, open_run
from components.evaluation.scoreboard import best_experts, scoreboard, seen_rows
from components.evaluation.steering import run_steering, summary_lines
from components.evaluation.universal import SET_OUT_TASKS, needs_decoder, predict_views
from components.manifest import verify_manifest
from components.model.ablations import FULL, SHARES_DECODER, ablation
from components.model.inference import InferenceConfig, catalogue_vectors

log = logging.getLogger(__name__)

__all__ = ["EvalReport", "evaluate", "build_payload"]

ABLATED_TASKS = (*SET_OUT_TASKS, "ctr", "rating")
"""Tasks the ablations are measured on (every set-out task, ctr, rating)."""

CONVENTIONS = {
    "ranking": "full ranking over all items; the user's earlier items (train, + valid for the test split) excluded "
               "except the target; ties pessimistic (the target ranks below every item with an equal score)",
    "cold_start": "ranked among the cold (never trained on) items only; the user's earlier cold interactions "
                  "are excluded too",
    "set_out_scores": "max over the M user vectors of the inner product with each item's output vector",
    "seen_unseen": "model = pooled over the rows of the seen (training) templates; unseen = pooled over the "
                   "held-out templates; each user on evaluate.seen_templates_per_user seen and "
                   "unseen_templates_per_user unseen templates, assigned in rotation over a seeded user order",
    "ctr": "p(yes) = softmax over the yes/no verbaliser logits at the answer slot; GAUC groups rows by "
           "(user, template), weighted by rows",
    "rating": "prediction = expectation of 1..5 under the softmax of the five verbaliser logits",
    "text": "greedy generation after [LM]; attribute_f1 = F1 of the genres named in the output vs the target; "
            "rouge_l = ROUGE-L F1; infill span_accuracy = masked spans reproduced exactly",
    "baselines": "template-free experts, each (user, target) scored once on the same users as the model; "
                 f"popularity on cold_start breaks its all-zero ties by a seeded U[0, {POP_JITTER}) jitter "
                 "(expected random-order rank, not the pessimistic worst); pop on ctr = AUC/GAUC of train counts",
    "per_user": "a user's score = the mean over the user's rows of the headline metric's per-row term (NDCG@K: "
                "1/log2(rank+1) within K, else 0; RMSE: the squared error; attribute F1 / ROUGE-L: the row's value); "
                "the model's rows are its seen-template rows (every seen template x every target), an expert's its "
                "template-free rows; the row-weighted mean over users (then sqrt for RMSE) is the pooled metric. "
                "ctr (AUC) keeps each user's rows (labels, scores): AUC pools rows across users",
    "comparisons": "paired bootstrap over users: the same resampled users (with replacement) for both sides, the "
                   "metric recomputed on their rows; diff = model - expert on all users, ci95 = 2.5/97.5 % "
                   "percentiles of the resampled diffs; verdict from the interval alone (above 0 = beats for a "
                   "higher-is-better metric, = loses for rmse/mae/logloss; containing 0 = ties)",
    "ablations": "the same loaded model with one part switched off at inference (components/model/ablations.py), "
                 "on the seen-template rows; diff = ablated - full, paired bootstrap as for comparisons",
    "best_expert": "per task, the expert with the best headline metric on the VALIDATION rows (never test)",
    "steering": "the same model on the evaluated users' seen-template rows, each re-rendered on the same instance with "
                "one change (components/evaluation/steering.py); paired bootstrap over users as for comparisons. "
                "objective_swap (multi_objective): liked targets (rating >= like_threshold) diff = NDCG(like prompt) - "
                "NDCG(watch prompt), not-liked diff = watch - like; holds = both intervals above 0. query_swap: diff = "
                "HR(true query) - HR(query of a user whose target shares no genre); holds = interval above 0. "
                "paraphrase[task]: headline metric of the held-out paraphrased templates "
                "(evaluate.steering.paraphrase_templates, one per user in rotation) vs the seen ones, ratio = "
                "paraphrased / seen, diff = paraphrased - seen; holds = ratio >= paraphrase_min_ratio. gate = the "
                "task's selected gate: at 0 the prompt cannot change the answer (diff 0)",
}


@dataclass
class EvalReport:
    payload: dict[str, Any]
    files: dict[str, str] = field(default_factory=dict)
    mlflow_run_id: str | None = None

    def summary(self) -> str:
        meta, top_k = self.payload["meta"], self.payload["meta"]["top_k"]
        names = ["unirec", "unirec_unseen", *self.payload["baselines"]]
        n_rows = sum(r["seen"] + r["unseen"] for r in meta["rows"].values())
        lines = [f"evaluate on {self.payload['dataset']} ({meta['split']} split): {n_rows} model rows in "
                 f"{meta['wall_seconds']['total']:.0f} s; MLflow run {self.mlflow_run_id}",
                 f"  {'task':<17}{'metric':<14}" + "".join(f"{n:>14}" for n in names)]
        for task in TASKS:
            metric = headline_metric(task, top_k)
            per = series(self.payload, task)
            cells = "".join(f"{per[n][metric]:>14.4f}" if metric in per.get(n, {}) else f"{'-':>14}" for n in names)
            lines.append(f"  {task:<17}{metric:<14}{cells}")
        for task, per in self.payload.get("comparisons", {}).items():
            best = self.payload.get("best_expert", {}).get(task)
            if best in per:
                rec = per[best]
                lines.append(f"  {task}: unirec − {best} (best on validation) {rec['metric']} {rec['diff']:+.4f} "
                             f"[{rec['ci95'][0]:+.4f}, {rec['ci95'][1]:+.4f}] {rec['verdict']}")
        lines += summary_lines(self.payload.get("steering"))
        lines += [f"  {k}: {v}" for k, v in self.files.items()]
        return "\n".join(lines)


def build_payload(dataset: str, data: EvalData, model_rows: dict[str, pd.DataFrame],
                  expert: dict[str, dict[str, pd.DataFrame]], ctx: MetricContext, meta: dict[str, Any]
                  ) -> dict[str, Any]:
    """The eval.json content from the row frames (pure: no I/O)."""
    payload: dict[str, Any] = {"dataset": dataset, "model": {}, "unseen": {}, "baselines": {},
                               "prompt_sensitivity": {}, "per_template": {}}
    rows_meta: dict[str, dict[str, int]] = {}
    for task, rows in model_rows.items():
        kinds = by_kind(task, rows, ctx)
        payload["model"][task], payload["unseen"][task] = kinds["seen"], kinds["unseen"]
        per_template = by_template(task, rows, ctx)
        payload["per_template"][task] = per_template
        payload["prompt_sensitivity"][task] = sensitivity(task, rows, per_template, ctx)
        rows_meta[task] = {k: int((rows["template_kind"] == k).sum()) for k in ("seen", "unseen")}
        rows_meta[task]["templates"] = int(rows["template_id"].nunique())
    for name, per_task in expert.items():
        payload["baselines"][name] = {task: task_metrics(task, rows, ctx) for task, rows in per_task.items()}
        for task, rows in per_task.items():
            rows_meta.setdefault(task, {})["baseline"] = len(rows)
    users = {task: {"evaluated": int(f["user_idx"].nunique()), "eligible": data.eligible[task]}
             for task, f in data.frames.items()}
    payload["meta"] = {**meta, "split": data.split, "users": users, "rows": rows_meta, "top_k": ctx.top_k,
                       "ks": list(ctx.ks), "ranking": CONVENTIONS["ranking"], "conventions": CONVENTIONS,
                       "skipped_tasks": [t for t in TASKS if t not in data.frames]}
    return payload


def _check_inputs(params: Params) -> None:
    """Every model and expert file present and unchanged (sha256 against its step's manifest), before any work."""
    from components.baselines.store import verify_baselines

    model_dir = params.resolve(params.train.out_dir)
    if not (model_dir / "modules.safetensors").is_file():
        raise FileNotFoundError(f"{model_dir}: no trained model (modules.safetensors); run `unirec train` first")
    gates = params.resolve(params.select_gates.out_file)
    if not gates.is_file():
        raise FileNotFoundError(f"{gates}: no gates file; run `unirec select-gates` first")
    verify_manifest(model_dir, "train")
    verify_baselines(params)


def _view_vectors(model, name: str) -> torch.Tensor:
    """Output item vectors `(N, D)` of the model under view `name` (FULL or an ablation)."""
    with ablation(model, name):
        return catalogue_vectors(model)


def run_model(built, data: EvalData, cfg: InferenceConfig, ablations: list[str]
              ) -> tuple[dict[str, pd.DataFrame], dict[str, dict[str, pd.DataFrame]], dict[str, dict[str, float]]]:
    """(model rows per task, the ablated model's seen-template rows `{variant: {task: rows}}` of the set-out tasks,
    ctr and rating, seconds `{"model": {task: s}, "ablations": {task: s}}`). The ablations that act after the
    decoder share the full model's pass (`predict_views`); the others run their own pass over the seen rows."""
    model, tokenizer, spec = built.model, built.backbone.tokenizer, built.spec
    shared = [a for a in ablations if SHARES_DECODER[a]]
    vectors = {name: _view_vectors(model, name) for name in (FULL, *shared)}
    rows, ablated, seconds = {}, {a: {} for a in ablations}, {"model": {}, "ablations": {}}
    for task in (t for t in TASKS if t in data.frames):
        views = {n: v for n, v in vectors.items() if n == FULL or task in ABLATED_TASKS}
        t0 = time.perf_counter()
        out = _predict_full_and_shared(model, tokenizer, spec, task, data, views, cfg)
        rows[task] = out.pop(FULL)
        seconds["model"][task] = time.perf_counter() - t0
        log.info("evaluate %s: %d rows (+ %s) in %.1f s", task, len(rows[task]), list(out), seconds["model"][task])
        for name, frame in out.items():
            ablated[name][task] = seen_rows(frame)
        if task not in ABLATED_TASKS:
            continue
        t0 = time.perf_counter()
        for name in (a for a in ablations if not SHARES_DECODER[a]):
            own = {name: _view_vectors(model, name)}
            ablated[name][task] = predict_views(model, tokenizer, spec, task, data, own, cfg,
                                                frame=seen_rows(data.frames[task]))[name]
        seconds["ablations"][task] = time.perf_counter() - t0
    return rows, ablated, seconds


def _predict_full_and_shared(model, tokenizer, spec, task: str, data: EvalData, views: dict[str, torch.Tensor],
                             cfg: InferenceConfig) -> dict[str, pd.DataFrame]:
    """`predict_views` of the full model on all rows and of the decoder-sharing ablations, which are read on the
    seen-template rows only. When the full model reads no decoder state (a set-out task at gate 0) but an ablation
    does (`history_off`), only the seen rows run the decoder: the unseen rows are answered without it (the same
    outputs, `needs_decoder`), so a gate-0 task costs one decoder pass over half its rows, not all of them."""
    frame = data.frames[task]
    if len(views) == 1 or task not in SET_OUT_TASKS or needs_decoder(model, task, {FULL: views[FULL]}) \
            or not needs_decoder(model, task, views):
        return predict_views(model, tokenizer, spec, task, data, views, cfg)
    seen = (frame["template_kind"] == "seen").to_numpy()
    on_seen = predict_views(model, tokenizer, spec, task, data, views, cfg, frame=frame[seen])
    unseen = predict_views(model, tokenizer, spec, task, data, {FULL: views[FULL]}, cfg, frame=frame[~seen])[FULL]
    order = np.concatenate([np.flatnonzero(seen), np.flatnonzero(~seen)])
    full = pd.concat([on_seen.pop(FULL), unseen], ignore_index=True)
    full.index = order
    return {FULL: full.sort_index().reset_index(drop=True), **on_seen}


def _validation_data(params: Params) -> EvalData:
    cfg = params.evaluate
    return load_eval_data(params.model_copy(update={"evaluate": cfg.model_copy(update={"split": "valid"})}))


def evaluate(params: Params) -> EvalReport:
    """Evaluate the trained model, its ablations and the experts; write eval.json, the per-user scores, plot CSVs
    and the HTML report; log to MLflow."""
    from components.baselines import load_baselines
    from components.model.build import load_trained

    start = time.perf_counter()
    cfg = params.evaluate
    _check_inputs(params)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    torch.manual_seed(params.seed + cfg.seed_offset)
    data = load_eval_data(params)
    built = load_trained(params, gates_file=params.resolve(params.select_gates.out_file))
    experts = load_baselines(params)  # before the model's predictions (every file's sha256 was checked above)
    loaded = time.perf_counter()
    ctx = MetricContext(ks=tuple(cfg.ks), top_k=cfg.top_k, tail_items=frozenset(int(i) for i in data.tail_items),
                        genres=data.genres, mask_format=data.mask_format)
    inference = InferenceConfig(batch_size=cfg.batch_size, top_k=cfg.top_k, max_new_tokens=cfg.max_new_tokens,
                                autocast_bf16=cfg.autocast_bf16, shared_prefix=cfg.shared_prefix,
                                generation_batch_size=cfg.generation_batch_size)
    model_rows, ablated, seconds = run_model(built, data, inference, list(cfg.ablations))
    t0 = time.perf_counter()
    steering, steering_tasks = run_steering(params, data, model_rows, built, inference) if cfg.steering.enabled \
        else (None, {})
    steering_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    seed = params.seed + cfg.seed_offset
    expert = expert_rows(experts, data, cfg.top_k, seed)
    best, valid_figures = best_experts(expert_rows(experts, _validation_data(params), cfg.top_k, seed), ctx)
    baseline_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    comparisons, ablations, per_user = scoreboard(model_rows, expert, ablated, ctx, cfg.bootstrap_resamples,
                                                  params.seed + cfg.bootstrap_seed_offset)
    bootstrap_s = time.perf_counter() - t0
    client, run_id, created = open_run(params)
    meta = {"model_dir": str(params.train.out_dir), "baselines_dir": str(params.baselines.out_dir),
            "mlflow_run_id": run_id, "seed": seed,
            "inference": {"batch_size": cfg.batch_size, "generation_batch_size": cfg.generation_batch_size,
                          "autocast_bf16": cfg.autocast_bf16,
                          "shared_prefix": cfg.shared_prefix, "max_new_tokens": cfg.max_new_tokens,
                          "threads": torch.get_num_threads(),
                          "generation": "greedy after [LM], batched (left padding), "
                                        + ("bf16 autocast" if cfg.autocast_bf16 else "float32")},
            "bootstrap": {"resamples": cfg.bootstrap_resamples, "seed": params.seed + cfg.bootstrap_seed_offset},
            "wall_seconds": {"load": loaded - start, **seconds, "baselines": baseline_s, "bootstrap": bootstrap_s,
                             "steering": steering_s, "steering_tasks": steering_tasks}}
    payload = build_payload(params.dataset.name, data, model_rows, expert, ctx, meta)
    payload.update(comparisons=comparisons, ablations=ablations, best_expert=best, best_expert_valid=valid_figures)
    if steering is not None:
        payload["steering"] = steering
    per_user_dir = params.resolve(cfg.per_user_dir)
    per_user_dir.mkdir(parents=True, exist_ok=True)
    for task, frame in per_user.items():
        frame.to_parquet(per_user_dir / f"{task}.parquet", index=False)
    payload["meta"]["wall_seconds"]["total"] = time.perf_counter() - start
    metrics_file, report_file = params.resolve(cfg.metrics_file), params.resolve(cfg.report_file)
    for path in (metrics_file, report_file):
        path.parent.mkdir(parents=True, exist_ok=True)
    metrics_file.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    plots = write_plots(payload, params.resolve(cfg.plots_dir), cfg.top_k)
    report_file.write_text(render_html(payload, cfg.top_k, _validation_curves(params)), encoding="utf-8")
    n_logged = log_evaluation(client, run_id, created, payload, [metrics_file, report_file])
    log.info("logged %d metrics to MLflow run %s", n_logged, run_id)
    files = {"metrics": str(metrics_file), "report": str(report_file), "per_user": str(per_user_dir),
             **{k: str(v) for k, v in plots.items()}}
    return EvalReport(payload=payload, files=files, mlflow_run_id=run_id)


def _validation_curves(params: Params) -> dict[str, Any] | None:
    """The experts' training records (`baselines.metrics_file`: validation curves), when present."""
    path = params.resolve(params.baselines.metrics_file)
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    except json.JSONDecodeError:
        log.warning("%s is not valid JSON; the report shows no validation curves", path)
        return None
