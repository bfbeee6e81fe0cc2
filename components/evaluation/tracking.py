"""MLflow logging of the evaluation: into the training run when its id is known, else a new run.

Metric names are MLflow-legal (`@` is not allowed): ``eval.<task>.<metric>`` (seen templates),
``eval_unseen.<task>.<metric>``, ``eval_baseline.<expert>.<task>.<metric>`` and
``eval_sensitivity.<task>.<mean|std|min|max>``, ``cmp.<task>.<expert>.<diff|ci_lo|ci_hi|model|expert>`` (model vs
expert, paired bootstrap), ``abl.<variant>.<task>.<diff|ci_lo|ci_hi|full|ablated>`` (ablations) and
``steer.<objective_swap.liked|objective_swap.not_liked|query_swap|paraphrase.<task>>.<diff|ci_lo|ci_hi|ratio>`` (the
steering tests), with ``@k`` written ``_at_k`` and ``/`` as ``.``
(``like/ndcg@10`` → ``like.ndcg_at_10``). eval.json and eval.html are logged as artifacts.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from pathlib import Path
from typing import Any

from mlflow.entities import Metric
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from components.config import Params

log = logging.getLogger(__name__)
_ILLEGAL = re.compile(r"[^A-Za-z0-9_\-. :/]")
BATCH = 500


def metric_name(*parts: str) -> str:
    """Join name parts with '.', writing '@' as '_at_', '/' as '.', any other illegal character as '_'."""
    joined = ".".join(p.replace("@", "_at_").replace("/", ".") for p in parts)
    return _ILLEGAL.sub("_", joined)


def flatten_metrics(payload: dict[str, Any]) -> dict[str, float]:
    """Every finite figure of the eval payload under its MLflow name (see the module docstring)."""
    out: dict[str, float] = {}

    def put(prefix: tuple[str, ...], metrics: dict[str, Any]) -> None:
        for name, value in metrics.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                out[metric_name(*prefix, name)] = float(value)

    for task, metrics in payload["model"].items():
        put(("eval", task), metrics)
    for task, metrics in payload["unseen"].items():
        put(("eval_unseen", task), metrics)
    for expert, per_task in payload["baselines"].items():
        for task, metrics in per_task.items():
            put(("eval_baseline", expert, task), metrics)
    for task, table in payload["prompt_sensitivity"].items():
        put(("eval_sensitivity", task), {k: table[k] for k in ("mean", "std", "min", "max") if k in table})
    for task, per_expert in payload.get("comparisons", {}).items():
        for expert, rec in per_expert.items():
            put(("cmp", task, expert), _interval(rec))
    for variant, per_task in payload.get("ablations", {}).items():
        for task, rec in per_task.items():
            put(("abl", variant, task), _interval(rec))
    for name, rec in _steering_records(payload.get("steering") or {}).items():
        if rec.get("ci95"):
            put(("steer", name), {"diff": rec["diff"], "ci_lo": rec["ci95"][0], "ci_hi": rec["ci95"][1],
                                  **({"ratio": rec["ratio"]} if rec.get("ratio") is not None else {})})
    return out


def _steering_records(steering: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The paired records of eval.json `steering` by MLflow name part."""
    out = {f"objective_swap.{g}": steering["objective_swap"][g] for g in ("liked", "not_liked")
           if "objective_swap" in steering}
    if "query_swap" in steering:
        out["query_swap"] = steering["query_swap"]
    return {**out, **{f"paraphrase.{task}": rec for task, rec in steering.get("paraphrase", {}).items()}}


def _interval(rec: dict[str, Any]) -> dict[str, Any]:
    """A comparison / ablation record as metrics: diff, ci_lo, ci_hi (and its two sides' figures)."""
    lo, hi = rec["ci95"]
    sides = {k: rec[k] for k in ("model", "expert", "full", "ablated") if k in rec}
    return {"diff": rec["diff"], "ci_lo": lo, "ci_hi": hi, **sides}


def training_run_id(params: Params, client: MlflowClient) -> str | None:
    """The MLflow run of `unirec train` (metrics/train.json, else `<train.checkpoint_dir>/mlflow_run_id.txt`),
    when it exists in the tracking store."""
    candidates: list[str] = []
    train_json = params.resolve(params.paths.metrics_dir) / "train.json"
    if train_json.is_file():
        try:
            candidates.append(str(json.loads(train_json.read_text(encoding="utf-8")).get("mlflow_run_id") or ""))
        except json.JSONDecodeError:
            log.warning("%s is not valid JSON; ignoring its MLflow run id", train_json)
    run_file = params.resolve(params.train.checkpoint_dir) / "mlflow_run_id.txt"
    if run_file.is_file():
        candidates.append(run_file.read_text(encoding="utf-8").strip())
    for run_id in filter(None, candidates):
        try:
            client.get_run(run_id)
            return run_id
        except MlflowException:
            continue
    return None


def experiment_id(params: Params, client: MlflowClient) -> str:
    """The id of experiment `params.experiment_name()`, created (at `params.artifact_location()`) if missing."""
    experiment = client.get_experiment_by_name(params.experiment_name())
    return experiment.experiment_id if experiment else \
        client.create_experiment(params.experiment_name(), params.artifact_location())


def open_run(params: Params) -> tuple[MlflowClient, str, bool]:
    """(client, run id, created): the training run if known, else a new run named "evaluate"."""
    client = MlflowClient(tracking_uri=params.tracking_uri())
    run_id = training_run_id(params, client)
    if run_id is not None:
        return client, run_id, False
    run = client.create_run(experiment_id(params, client), run_name="evaluate", tags={"unirec.step": "evaluate"})
    return client, run.info.run_id, True


def log_evaluation(client: MlflowClient, run_id: str, created: bool, payload: dict[str, Any],
                   files: list[Path]) -> int:
    """Log the flattened metrics and the artifact files into `run_id`; returns the number of metrics."""
    stamp = int(time.time() * 1000)
    metrics = [Metric(k, v, stamp, 0) for k, v in sorted(flatten_metrics(payload).items())]
    for start in range(0, len(metrics), BATCH):
        client.log_batch(run_id, metrics=metrics[start:start + BATCH])
    client.set_tag(run_id, "unirec.evaluated_split", payload["meta"]["split"])
    for path in files:
        client.log_artifact(run_id, str(path), artifact_path="evaluation")
    if created:
        client.set_terminated(run_id)
    return len(metrics)
