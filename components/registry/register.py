"""Step `register`: log the trained, indexed, evaluated model as an MLflow pyfunc and register a version.

First, before anything is copied or logged, the model, index and item-table files are checked against the sha256
their steps recorded (`bundle.verify_sources`): a changed artefact is refused with one line naming it.
Into the MLflow run of `unirec train` (`metrics/train.json` / `<train.checkpoint_dir>/mlflow_run_id.txt`, see
`evaluation.tracking.training_run_id`; else the run eval.json names; else a new run "register" in the
dataset's experiment) it logs: the flattened effective params (keys already on the run are kept: MLflow
params are immutable), the git commit (`mlflow.source.git.commit`, + `unirec.git_dirty`), the sha256 of
`dvc.lock`, eval.json's figures (when `unirec evaluate` did not log them already), and eval.json plus the
validation summary as artifacts under `reports/` — after the pyfunc ("models from code":
components/registry/pyfunc_model.py, `code_paths` = the `components` package, the bundle of bundle.py as
artifact, an explicit signature with the output columns and params task / k / query / objective / template_id
but no input schema (the model validates request rows itself), an input example)
was logged, loaded back through MLflow and asked the input example — a model that cannot answer is never
registered. Then a version of `registry.model_name` is created with alias `registry.challenger_alias`.

A registration that fails once the logged model exists deletes it (its files in the artifact store, then its
record) and the run it created, so a failed attempt leaves no logged model behind.

Idempotent: a version is identified by its fingerprint (bundle files, serving-relevant params, eval.json);
registering an identical model again creates nothing and points the challenger alias at the existing version.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.entities import Metric, Param
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
from mlflow.tracking import MlflowClient
from mlflow.types import DataType
from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

from components.artifacts import read_json
from components.config import Params
from components.evaluation.tracking import experiment_id, flatten_metrics, training_run_id
from components.registry.bundle import build_bundle, fingerprint, verify_sources
from components.registry.pyfunc_model import BUNDLE_ARTIFACT
from components.registry.store import (FINGERPRINT_TAG, RegistryError, client_for, figure_tag, find_version,
                                       fluent_uri, git_state, optional_sha256, payload_figures, write_json)
from components.textualize.registry import load_registry

log = logging.getLogger(__name__)
PYFUNC_FILE = Path(__file__).with_name("pyfunc_model.py")
COMPONENTS_DIR = Path(__file__).resolve().parents[1]
MODEL_NAME_IN_RUN = "unirec"
REQUIREMENTS = ("mlflow", "torch", "transformers", "tokenizers", "peft", "safetensors", "faiss-cpu", "numpy",
                "pandas", "pyarrow", "pydantic", "PyYAML")
"""Distributions the served model imports; pinned to the versions installed at registration."""


@dataclass
class RegisterReport:
    model_name: str
    version: str
    run_id: str
    model_uri: str
    fingerprint: str
    created: bool
    aliases: list[str]
    figures: dict[str, float]
    challenger_alias: str
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> str:
        state = "registered new version" if self.created else "unchanged model: reusing version"
        lines = [f"register: {state} {self.model_name} v{self.version} (aliases {self.aliases}) from run "
                 f"{self.run_id}, fingerprint {self.fingerprint[:12]}, {self.seconds:.1f}s",
                 f"  model uri {self.model_uri}"]
        lines += [f"  {k} = {v:.4f}" for k, v in self.figures.items()]
        return "\n".join(lines + [f"  note: {n}" for n in self.notes])

    def record(self) -> dict[str, Any]:
        """The deterministic part written to `registry.metrics_file` (no timings, no created flag, no aliases
        other than the challenger's: promotion moves the others later)."""
        return {"model_name": self.model_name, "version": self.version, "run_id": self.run_id,
                "fingerprint": self.fingerprint, "alias": self.challenger_alias, "figures": self.figures}


def signature(params: Params) -> ModelSignature:
    """Answer rows and the inference params. No input schema: MLflow would enforce one before the model sees the
    request — turning `[{}]` into a table without rows, refusing item ids sent as JSON numbers ("Can not safely
    convert int64 to <U0") and dropping unknown fields silently — so the request rows (user_id, history, items)
    are validated by the model itself (requests.py), with a message per field."""
    serving = params.registry.serving
    registry = load_registry(params.resolve(params.textualize.registry))
    outputs = Schema([ColSpec(DataType.long, "request"), ColSpec(DataType.string, "task"),
                      ColSpec(DataType.long, "rank", required=False), ColSpec(DataType.string, "item_id", required=False),
                      ColSpec(DataType.string, "title", required=False), ColSpec(DataType.double, "score", required=False),
                      ColSpec(DataType.string, "text", required=False)])
    options = ParamSchema([ParamSpec("task", DataType.string, serving.default_task),
                           ParamSpec("k", DataType.long, serving.default_k), ParamSpec("query", DataType.string, ""),
                           ParamSpec("objective", DataType.string, next(iter(registry.objectives))),
                           ParamSpec("template_id", DataType.string, "")])
    return ModelSignature(inputs=None, outputs=outputs, params=options)


def input_example(params: Params) -> tuple[pd.DataFrame, dict[str, Any]]:
    """One request for the first user (by canonical index) with a stored history, task default_task."""
    splits = params.resolve(params.paths.splits_dir)
    users = pd.read_parquet(params.resolve(params.paths.canonical_dir) / "id_maps" / "users.parquet")
    first = int(pd.read_parquet(splits / "train.parquet", columns=["user_idx"])["user_idx"].min())
    raw = str(users.loc[users["idx"] == first, "raw_id"].iloc[0])
    return pd.DataFrame({"user_id": [raw]}), {"task": params.registry.serving.default_task,
                                               "k": params.registry.serving.default_k}


def flatten_params(params: Params) -> dict[str, str]:
    """Every key of the effective params as `section.key` → value text (lists / mappings as JSON)."""
    out: dict[str, str] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict) and node:
            for key, value in node.items():
                walk(f"{prefix}.{key}" if prefix else str(key), value)
        else:
            out[prefix] = node if isinstance(node, str) else json.dumps(node)

    walk("", params.model_dump(mode="json", by_alias=True, exclude={"root"}))
    return out


def _read_eval(params: Params) -> tuple[dict[str, Any] | None, Path]:
    path = params.resolve(params.evaluate.metrics_file)
    return (read_json(path, "evaluate") if path.is_file() else None), path


def _find_run(params: Params, client: MlflowClient, payload: dict[str, Any] | None) -> str | None:
    """The training run (or the run eval.json names); refuses eval figures of another run."""
    run_id = training_run_id(params, client)
    eval_run = ((payload or {}).get("meta") or {}).get("mlflow_run_id")
    if run_id and eval_run and eval_run != run_id:
        raise RegistryError(f"{params.evaluate.metrics_file} was computed for MLflow run {eval_run}, but the trained "
                            f"model is run {run_id}: run `unirec evaluate` before `unirec register`")
    if run_id is None and eval_run:
        try:
            run_id = client.get_run(eval_run).info.run_id
        except MlflowException:
            run_id = None
    return run_id


def _new_run(params: Params, client: MlflowClient) -> str:
    run_id = client.create_run(experiment_id(params, client), run_name="register",
                               tags={"unirec.step": "register"}).info.run_id
    client.set_terminated(run_id)
    return run_id


def _log_provenance(params: Params, client: MlflowClient, run_id: str, payload: dict[str, Any] | None,
                    eval_path: Path) -> tuple[dict[str, str], list[str]]:
    """Params, provenance tags, eval metrics and report artifacts into the run; returns (tags, notes)."""
    run = client.get_run(run_id)
    existing = run.data.params
    flat = flatten_params(params)
    conflicts = sorted(k for k, v in flat.items() if k in existing and existing[k] != v)
    todo = [Param(k, v) for k, v in flat.items() if k not in existing]
    for start in range(0, len(todo), 100):
        client.log_batch(run_id, params=todo[start:start + 100])
    commit, dirty = git_state(params.root)
    tags = {"mlflow.source.git.commit": commit, "unirec.git_dirty": str(dirty).lower(),
            "unirec.dvc_lock_sha256": optional_sha256(params.root / "dvc.lock"), "unirec.dataset": params.dataset.name}
    for key, value in tags.items():
        client.set_tag(run_id, key, value)
    if payload is not None:
        stamp = int(time.time() * 1000)
        blocks = {"model": {}, "unseen": {}, "baselines": {}, "prompt_sensitivity": {}, **payload}
        metrics = [Metric(k, v, stamp, 0) for k, v in sorted(flatten_metrics(blocks).items())
                   if run.data.metrics.get(k) != v]
        for start in range(0, len(metrics), 500):
            client.log_batch(run_id, metrics=metrics[start:start + 500])
        client.log_artifact(run_id, str(eval_path), artifact_path="reports")
    summary = params.resolve(params.paths.reports_dir) / "validation" / "summary.json"
    if summary.is_file():
        client.log_artifact(run_id, str(summary), artifact_path="reports/validation")
    notes = [f"run params kept from the first registration (MLflow params are immutable): {conflicts}"] if conflicts else []
    return tags, notes


def _log_and_check(params: Params, client: MlflowClient, run_id: str, bundle: Path, fp: str) -> tuple[str, str]:
    """Log the pyfunc into `run_id`, load it back and answer the input example; → (model URI, logged model id).
    On any failure the logged model is deleted before the error propagates."""
    frame, options = input_example(params)
    requirements = [f"{d}=={metadata.version(d)}" for d in REQUIREMENTS]
    run = client.get_run(run_id)
    model_id = client.create_logged_model(run.info.experiment_id, name=MODEL_NAME_IN_RUN, source_run_id=run_id,
                                          params={**flatten_params(params), **run.data.params}).model_id
    try:
        with fluent_uri(params), mlflow.start_run(run_id=run_id, nested=mlflow.active_run() is not None):
            info = mlflow.pyfunc.log_model(
                name=MODEL_NAME_IN_RUN, model_id=model_id, python_model=str(PYFUNC_FILE),
                artifacts={BUNDLE_ARTIFACT: str(bundle)}, code_paths=[str(COMPONENTS_DIR)], signature=signature(params),
                input_example=(frame, options), pip_requirements=requirements,
                metadata={"fingerprint": fp, "dataset": params.dataset.name})
            try:
                answer = mlflow.pyfunc.load_model(info.model_uri).predict(frame, params=options)
            except Exception as exc:
                raise RegistryError(f"the logged model {info.model_uri} cannot answer its input example: "
                                    f"{exc}") from exc
        if len(answer) == 0:
            raise RegistryError(f"the logged model {info.model_uri} answered its input example with no rows")
    except BaseException:
        _discard(params, client, model_id)
        raise
    return info.model_uri, model_id


def _discard(params: Params, client: MlflowClient, model_id: str | None, run_id: str | None = None) -> None:
    """Delete what a failed registration created: the logged model's files in the artifact store and its record,
    and `run_id` (a run created for this attempt). Never raises: a failure here is logged and the original error
    propagates."""
    try:
        if model_id is not None:
            with fluent_uri(params):  # mlflow-artifacts:/ locations resolve through the tracking server
                get_artifact_repository(client.get_logged_model(model_id).artifact_location).delete_artifacts()
            client.delete_logged_model(model_id)
        if run_id is not None:
            client.delete_run(run_id)
    except Exception as exc:  # noqa: BLE001 - cleanup must not hide the error that caused it
        log.warning("could not delete the logged model %s of the failed registration (`mlflow gc` removes deleted "
                    "models' files): %s", model_id, exc)


def register_model(params: Params) -> RegisterReport:
    """Check, log and register the trained model (see the module docstring); writes `registry.metrics_file`."""
    start = time.perf_counter()
    cfg = params.registry
    verify_sources(params)
    client = client_for(params)
    payload, eval_path = _read_eval(params)
    run_id, notes = _find_run(params, client, payload), []
    specs = [cfg.gate_metric, *cfg.tracked_metrics]
    figures = payload_figures(payload, specs)
    with tempfile.TemporaryDirectory(prefix="unirec-bundle-") as tmp:
        bundle = build_bundle(params, Path(tmp) / BUNDLE_ARTIFACT)
        fp = fingerprint(bundle, optional_sha256(eval_path) if payload is not None else None)
        existing = find_version(client, cfg.model_name, fp)
        if existing is None:
            new_run = None
            if run_id is None:
                run_id = new_run = _new_run(params, client)
                notes.append("no training run found in the tracking store: logged into a new run 'register'")
            if payload is None:
                notes.append(f"{params.evaluate.metrics_file} not found: registered without eval figures (the gate "
                             "refuses this version unless it is the first)")
            model_id = None
            try:
                model_uri, model_id = _log_and_check(params, client, run_id, bundle, fp)
                provenance, more = _log_provenance(params, client, run_id, payload, eval_path)
                notes += more
                tags = {FINGERPRINT_TAG: fp, "unirec.run_id": run_id, **provenance,
                        **{figure_tag(s): repr(v) for s, v in figures.items()}}
                with fluent_uri(params):
                    version = mlflow.register_model(model_uri, cfg.model_name, tags=tags)
            except BaseException:
                _discard(params, client, model_id, new_run)  # _log_and_check already discarded its own failure
                raise
            number, created = str(version.version), True
        else:
            number, created, model_uri = str(existing.version), False, str(existing.source)
            run_id = existing.run_id or run_id or ""
    client.set_registered_model_alias(cfg.model_name, cfg.challenger_alias, number)
    aliases = sorted(client.get_model_version(cfg.model_name, number).aliases)
    report = RegisterReport(model_name=cfg.model_name, version=number, run_id=run_id, model_uri=model_uri,
                            fingerprint=fp, created=created, aliases=aliases, figures=figures,
                            challenger_alias=cfg.challenger_alias, notes=notes,
                            seconds=time.perf_counter() - start)
    write_json(params.resolve(cfg.metrics_file), report.record())
    return report
