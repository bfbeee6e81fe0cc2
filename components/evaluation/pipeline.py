"""`evaluate(params)`: the orchestration of the evaluation step.

Runs the trained universal model on every template of every task for a seeded subset of users
(`evaluate.users_per_task`), runs the expert baselines on the same users and rows, and writes
`evaluate.metrics_file` (eval.json), the plot CSVs under `evaluate.plots_dir` and the HTML report
`evaluate.report_file`; figures and files are logged to MLflow (the training run when known).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from components.config import TASKS, Params
from components.evaluation.experts import POP_JITTER, expert_rows
from components.evaluation.report import render_html, series, write_plots
from components.evaluation.rows import EvalData, load_eval_data
from components.evaluation.scoring import (MetricContext, by_kind, by_template, headline_metric, sensitivity,
                                           task_metrics)
from components.evaluation.tracking import log_evaluation, open_run
from components.evaluation.universal import predict_task
from components.model.inference import InferenceConfig, catalogue_vectors

log = logging.getLogger(__name__)

__all__ = ["EvalReport", "evaluate", "build_payload"]

BASELINE_FILES = ("popularity.npy", "sasrec.pt", "mf.pt", "ctr.pt")
CONVENTIONS = {
    "ranking": "full ranking over all items; the user's earlier items (train, + valid for the test split) excluded "
               "except the target; ties pessimistic (the target ranks below every item with an equal score)",
    "cold_start": "ranked among the cold (never trained on) items only; the user's earlier cold interactions "
                  "are excluded too",
    "set_out_scores": "max over the M user vectors of the inner product with each item's output vector",
    "seen_unseen": "model = pooled over the rows of the seen (training) templates; unseen = pooled over the "
                   "held-out templates; every template is evaluated on the same users",
    "ctr": "p(yes) = softmax over the yes/no verbaliser logits at the answer slot; GAUC groups rows by "
           "(user, template), weighted by rows",
    "rating": "prediction = expectation of 1..5 under the softmax of the five verbaliser logits",
    "text": "greedy generation after [LM]; attribute_f1 = F1 of the genres named in the output vs the target; "
            "rouge_l = ROUGE-L F1; infill span_accuracy = masked spans reproduced exactly",
    "baselines": "template-free experts, each (user, target) scored once on the same users as the model; "
                 f"popularity on cold_start breaks its all-zero ties by a seeded U[0, {POP_JITTER}) jitter "
                 "(expected random-order rank, not the pessimistic worst); pop on ctr = AUC/GAUC of train counts",
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
    model_dir = params.resolve(params.train.out_dir)
    if not (model_dir / "modules.safetensors").is_file():
        raise FileNotFoundError(f"{model_dir}: no trained model (modules.safetensors); run `unirec train` first")
    gates = params.resolve(params.select_gates.out_file)
    if not gates.is_file():
        raise FileNotFoundError(f"{gates}: no gates file; run `unirec select-gates` first")
    out = params.resolve(params.baselines.out_dir)
    missing = [n for n in BASELINE_FILES if not (out / n).is_file()]
    if missing:
        raise FileNotFoundError(f"{out}: missing baseline weights {missing}; run `unirec baselines` first")


def evaluate(params: Params) -> EvalReport:
    """Evaluate the trained model and the experts; write eval.json, plot CSVs and the HTML report; log to MLflow."""
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
    experts = load_baselines(params)  # before the model's predictions: an unreadable expert file fails at once
    loaded = time.perf_counter()
    ctx = MetricContext(ks=tuple(cfg.ks), top_k=cfg.top_k, tail_items=frozenset(int(i) for i in data.tail_items),
                        genres=data.genres, mask_format=data.mask_format)
    inference = InferenceConfig(batch_size=cfg.batch_size, top_k=cfg.top_k, max_new_tokens=cfg.max_new_tokens,
                                autocast_bf16=cfg.autocast_bf16)
    item_vecs = catalogue_vectors(built.model)
    model_rows, seconds = {}, {}
    for task in (t for t in TASKS if t in data.frames):
        t0 = time.perf_counter()
        model_rows[task] = predict_task(built.model, built.backbone.tokenizer, built.spec, task, data, item_vecs,
                                        inference)
        seconds[task] = time.perf_counter() - t0
        log.info("evaluate %s: %d rows in %.1f s", task, len(model_rows[task]), seconds[task])
    t0 = time.perf_counter()
    expert = expert_rows(experts, data, cfg.top_k, params.seed + cfg.seed_offset)
    baseline_s = time.perf_counter() - t0
    client, run_id, created = open_run(params)
    meta = {"model_dir": str(params.train.out_dir), "baselines_dir": str(params.baselines.out_dir),
            "mlflow_run_id": run_id, "seed": params.seed + cfg.seed_offset,
            "inference": {"batch_size": cfg.batch_size, "autocast_bf16": cfg.autocast_bf16,
                          "max_new_tokens": cfg.max_new_tokens, "threads": torch.get_num_threads(),
                          "generation": "greedy after [LM], batched (left padding), float32"},
            "wall_seconds": {"load": loaded - start, "model": seconds, "baselines": baseline_s}}
    payload = build_payload(params.dataset.name, data, model_rows, expert, ctx, meta)
    payload["meta"]["wall_seconds"]["total"] = time.perf_counter() - start
    metrics_file, report_file = params.resolve(cfg.metrics_file), params.resolve(cfg.report_file)
    for path in (metrics_file, report_file):
        path.parent.mkdir(parents=True, exist_ok=True)
    metrics_file.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    plots = write_plots(payload, params.resolve(cfg.plots_dir), cfg.top_k)
    report_file.write_text(render_html(payload, cfg.top_k), encoding="utf-8")
    n_logged = log_evaluation(client, run_id, created, payload, [metrics_file, report_file])
    log.info("logged %d metrics to MLflow run %s", n_logged, run_id)
    files = {"metrics": str(metrics_file), "report": str(report_file), **{k: str(v) for k, v in plots.items()}}
    return EvalReport(payload=payload, files=files, mlflow_run_id=run_id)
