"""Daily evaluation of the registered champion: download the version behind the champion alias,
run the same `evaluate` component on it (current splits and expert baselines), log the figures to
MLflow experiment `<experiment>.champion-eval`, one run per evaluation, tagged with the version.

Files go to `orchestration.champion_eval_dir` (model/, eval.json, eval.html, plots/, per_user/); the pipeline's
own metrics/eval.json is never touched. Nothing is cached: re-evaluating is the point.
Run: `make champion-eval`, `unirec flow champion-eval`, or the `daily-champion-eval`
deployment of prefect.yaml.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

import flows  # noqa: F401  (offline Prefect defaults, before prefect is imported)
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from components.config import Params, load_params
from flows.pipeline import env_overrides, one_line
from flows.tasks import Overrides, retry_if_transient


def eval_overrides(params: Params, model_dir: Path) -> dict[str, Any]:
    """Point `evaluate` at the downloaded champion (its model/ and item tables; the splits, examples and
    baselines are the project's current ones) and keep every output under champion_eval_dir."""
    out = params.resolve(params.orchestration.champion_eval_dir)
    bundle = model_dir.parent  # the registered bundle: model/ + the frozen item tables it was trained with
    return {"train.out_dir": str(model_dir), "embed_items.out_dir": str(bundle / "data" / "embeddings"),
            "select_gates.out_file": str(bundle / "gates.json"),
            "train.checkpoint_dir": str(out / "checkpoints"),
            "paths.metrics_dir": str(out), "evaluate.metrics_file": str(out / "eval.json"),
            "evaluate.report_file": str(out / "eval.html"), "evaluate.plots_dir": str(out / "plots"),
            "evaluate.per_user_dir": str(out / "per_user"),
            "mlflow.experiment": f"{params.experiment_name()}.champion-eval"}


@task(name="fetch-champion", cache_policy=NO_CACHE, retries=3, retry_delay_seconds=[10, 20, 40],
      retry_condition_fn=retry_if_transient)
def fetch_champion_task(params_path: str, overrides: Overrides, alias: str) -> dict[str, Any]:
    from mlflow.tracking import MlflowClient

    from components.registry import fetch_model_version

    params = load_params(params_path, overrides)
    name = params.registry.model_name
    version = MlflowClient(tracking_uri=params.tracking_uri()).get_model_version_by_alias(name, alias)
    dst = params.resolve(params.orchestration.champion_eval_dir) / "model"
    shutil.rmtree(dst, ignore_errors=True)
    model_dir = fetch_model_version(params, alias, dst)
    get_run_logger().info("%s@%s = version %s (run %s) → %s", name, alias, version.version, version.run_id, model_dir)
    return {"model": name, "alias": alias, "version": str(version.version), "run_id": version.run_id,
            "model_dir": str(model_dir)}


@task(name="evaluate-champion", cache_policy=NO_CACHE)
def evaluate_champion_task(params_path: str, overrides: Overrides, champion: dict[str, Any]) -> dict[str, Any]:
    from mlflow.tracking import MlflowClient

    from components.evaluation import evaluate

    base = load_params(params_path, overrides)
    params = load_params(params_path, {**(overrides or {}), **eval_overrides(base, Path(champion["model_dir"]))})
    report = evaluate(params)
    client = MlflowClient(tracking_uri=params.tracking_uri())
    for key, value in (("unirec.step", "champion-eval"), ("unirec.model", champion["model"]),
                       ("unirec.alias", champion["alias"]), ("unirec.model_version", champion["version"]),
                       ("unirec.model_run_id", champion["run_id"])):
        client.set_tag(report.mlflow_run_id, key, value)
    summary = report.summary()
    get_run_logger().info(summary)
    return {"summary": summary, "mlflow_run_id": report.mlflow_run_id, "files": report.files, **champion}


@flow(name="unirec-champion-eval", validate_parameters=True)
def champion_eval(params_path: str = "params.yaml", overrides: dict[str, Any] | None = None,
                  alias: str | None = None) -> dict[str, Any]:
    """Evaluate the registered version behind `alias` (default registry.champion_alias).

    Args:
        params_path: the params.yaml to read (relative to the working directory).
        overrides: dotted params keys → values, e.g. {"evaluate.users_per_task.next_item": 100}.
        alias: registry alias to evaluate; None = the champion.
    """
    merged = {**env_overrides(), **(overrides or {})}
    path = str(Path(params_path).resolve())
    params = load_params(path, merged)
    alias = alias or params.registry.champion_alias
    champion = fetch_champion_task(path, merged, alias)
    result = evaluate_champion_task(path, merged, champion)
    get_run_logger().info("champion evaluation of %s@%s (version %s) logged to MLflow run %s",
                          champion["model"], alias, champion["version"], result["mlflow_run_id"])
    return result


def run(params_path: str, overrides: dict[str, Any], alias: str | None) -> int:
    """`unirec flow champion-eval`: run the flow, print its summary; the exit code."""
    try:
        result = champion_eval(params_path=params_path, overrides=overrides, alias=alias)
    except Exception as exc:  # noqa: BLE001 - one clear line; the Prefect log holds the traceback
        print(f"unirec champion-eval failed: {one_line(exc)}", file=sys.stderr)
        return 1
    print(result["summary"])
    return 0
