"""MLflow plumbing shared by register / promote / fetch / recommend: clients, provenance, figures as tags.

Figures of a version are stored as model-version tags named like the evaluation's run metrics
(`components.evaluation.tracking.metric_name`): ``eval.next_item.ndcg_at_10`` holds `next_item.ndcg@10` of
eval.json's `model` block (seen templates). `version_figures` reads them back (falling back to the metrics of
the version's run, where `unirec evaluate` logs the same names).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("MLFLOW_ENABLE_TELEMETRY", "false")

import mlflow  # noqa: E402
from mlflow.entities.model_registry import ModelVersion  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from components.config import Params  # noqa: E402
from components.evaluation.tracking import metric_name  # noqa: E402
from components.utils import sha256_of  # noqa: E402

FINGERPRINT_TAG = "unirec.fingerprint"
HISTORY_TAG = "champion_history"
"""Registered-model tag: JSON list of the versions that held the champion alias, oldest first — every move of the
alias, so a version a rollback restored appears again and a rolled-back version stays listed."""
EVENTS_TAG = "champion_events"
"""Registered-model tag: JSON list of the champion alias's moves, oldest first: {"at": UTC ISO time, "event":
promoted | rolled_back | adopted (the alias was found moved outside `unirec promote`), "version": the new
champion, "from": the previous one or null}."""
PREVIOUS_TAG = "previous_champion"
"""Registered-model tag: the version `unirec promote --rollback` would restore ("" when there is none)."""


class RegistryError(ValueError):
    """The registry is not in the state a command needs; the message says what to run."""


def check_store(uri: str) -> None:
    """A local SQLite tracking store that exists must be an SQLite file (else MLflow fails deep in SQLAlchemy)."""
    if not uri.startswith("sqlite:///"):
        return
    path = Path(uri[len("sqlite:///"):])
    if path.is_file() and path.stat().st_size > 0:
        with open(path, "rb") as f:
            head = f.read(16)
        if head != b"SQLite format 3\x00":
            raise RegistryError(f"{path}: not an SQLite database, so not an MLflow tracking store (truncated or "
                                "overwritten?): move it away to start a new store, or point mlflow.tracking_uri at "
                                "the right one")


def client_for(params: Params) -> MlflowClient:
    uri = params.tracking_uri()
    check_store(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


@contextlib.contextmanager
def fluent_uri(params: Params) -> Iterator[None]:
    """Point MLflow's fluent API (log_model, register_model, load_model) at the project's store, then restore."""
    check_store(params.tracking_uri())
    before_tracking, before_registry = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    mlflow.set_tracking_uri(params.tracking_uri())
    mlflow.set_registry_uri(params.tracking_uri())
    try:
        yield
    finally:
        mlflow.set_tracking_uri(before_tracking)
        mlflow.set_registry_uri(before_registry)


def git_state(root: Path) -> tuple[str, bool]:
    """(commit of HEAD, working tree dirty) of the repository holding `root`; ("unknown", False) outside git."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=30,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=30, check=True).stdout.strip() != ""
        return commit, dirty
    except (OSError, subprocess.SubprocessError):
        return "unknown", False


def optional_sha256(path: Path) -> str:
    return sha256_of(path) if path.is_file() else "absent"


def spec_parts(spec: str) -> tuple[str, str]:
    """``next_item.ndcg@10`` → (``next_item``, ``ndcg@10``)."""
    task, _, metric = spec.partition(".")
    return task, metric


def figure_tag(spec: str) -> str:
    return metric_name("eval", *spec_parts(spec))


def payload_figures(payload: dict[str, Any] | None, specs: Sequence[str]) -> dict[str, float]:
    """The figures `specs` of eval.json's `model` block that exist (missing ones are left out)."""
    out: dict[str, float] = {}
    for spec in specs:
        task, metric = spec_parts(spec)
        value = ((payload or {}).get("model", {}).get(task) or {}).get(metric)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[spec] = float(value)
    return out


def version_figures(client: MlflowClient, version: ModelVersion, specs: Sequence[str]) -> dict[str, float]:
    """Figures of a registered version: its `eval.*` tags, else its run's metrics of the same name."""
    run_metrics: dict[str, float] | None = None
    out: dict[str, float] = {}
    for spec in specs:
        tag = version.tags.get(figure_tag(spec))
        if tag is not None:
            out[spec] = float(tag)
            continue
        if run_metrics is None:
            try:
                run_metrics = client.get_run(version.run_id).data.metrics if version.run_id else {}
            except MlflowException:
                run_metrics = {}
        if figure_tag(spec) in run_metrics:
            out[spec] = float(run_metrics[figure_tag(spec)])
    return out


def registered_aliases(client: MlflowClient, name: str) -> dict[str, str]:
    """alias → version of registered model `name` (from get_registered_model: search results carry no aliases)."""
    try:
        model = client.get_registered_model(name)
    except MlflowException as exc:
        raise RegistryError(f"registered model {name!r} not found in the tracking store; run `unirec register` "
                            "first") from exc
    return {alias: str(version) for alias, version in model.aliases.items()}


def champion_events(client: MlflowClient, name: str) -> list[dict[str, Any]]:
    """The champion alias's moves (`EVENTS_TAG`), oldest first. A registry written before events were recorded
    has only `HISTORY_TAG`, then a stack of promotions: each entry becomes a `promoted` event without a time."""
    tags = client.get_registered_model(name).tags
    if tags.get(EVENTS_TAG):
        return list(json.loads(tags[EVENTS_TAG]))
    history = [str(v) for v in json.loads(tags[HISTORY_TAG])] if tags.get(HISTORY_TAG) else []
    return [{"at": None, "event": "promoted", "version": v, "from": history[i - 1] if i else None}
            for i, v in enumerate(history)]


def champion_stack(events: Sequence[dict[str, Any]]) -> list[str]:
    """The champions a rollback can return to, oldest first (the last is the current champion): the events
    replayed, a promotion or adoption pushing its version, a rollback popping the version it demoted."""
    stack: list[str] = []
    for event in events:
        if event["event"] == "rolled_back":
            if stack:
                stack.pop()
        else:
            stack.append(str(event["version"]))
    return stack


def champion_history(client: MlflowClient, name: str) -> list[str]:
    """Every version that held the champion alias, in order (`HISTORY_TAG`)."""
    return [str(e["version"]) for e in champion_events(client, name)]


def find_version(client: MlflowClient, name: str, fingerprint: str) -> ModelVersion | None:
    """The version of `name` whose fingerprint tag equals `fingerprint` (the newest, if several)."""
    try:
        versions = client.search_model_versions(f"name = '{name}'")
    except MlflowException:
        return None
    hits = [v for v in versions if v.tags.get(FINGERPRINT_TAG) == fingerprint]
    return max(hits, key=lambda v: int(v.version)) if hits else None


def write_json(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n", encoding="utf-8")
