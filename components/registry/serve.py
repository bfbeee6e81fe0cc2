"""Using registered versions: `recommend` (the `unirec recommend` table) and `fetch_model_version`.

`recommend` loads `models:/<registry.model_name>@<alias>` through MLflow (the same pyfunc the scoring server
runs) and asks it one request row; `fetch_model_version` downloads a version's artifacts and returns the
`model/` folder of its bundle, laid out like `train.out_dir`, so `unirec evaluate --set train.out_dir=<dir>`
evaluates the champion.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pandas as pd
import yaml
from mlflow.exceptions import MlflowException

from components.config import Params
from components.registry.pyfunc_model import BUNDLE_ARTIFACT
from components.registry.store import RegistryError, client_for, fluent_uri


@dataclass
class RecommendReport:
    model_uri: str
    version: str
    task: str
    answer: pd.DataFrame
    seconds: float

    def summary(self) -> str:
        head = f"{self.model_uri} (v{self.version}), task {self.task}: {len(self.answer)} rows in {self.seconds:.1f}s"
        if "text" in self.answer.columns:
            return "\n".join([head, *[f"  [{r.request}] {r.text}" for r in self.answer.itertuples()]])
        table = self.answer.assign(score=self.answer["score"].map(lambda v: f"{v:.4f}"))
        return head + "\n" + table[["rank", "item_id", "title", "score"]].to_string(index=False)


def _alias_version(params: Params, alias: str) -> str:
    try:
        return str(client_for(params).get_model_version_by_alias(params.registry.model_name, alias).version)
    except MlflowException as exc:
        raise RegistryError(f"registered model {params.registry.model_name!r} has no version with alias {alias!r} "
                            "(run `unirec register` and `unirec promote`)") from exc


def recommend(params: Params, user: str | None, history: list[str] | None, task: str, k: int,
              query: str | None, *, items: list[str] | None = None, objective: str = "", template_id: str = "",
              alias: str | None = None) -> RecommendReport:
    """Answer one request with the version behind `alias` (default: the champion) through MLflow's pyfunc."""
    start = time.perf_counter()
    alias = alias or params.registry.champion_alias
    version = _alias_version(params, alias)
    uri = f"models:/{params.registry.model_name}@{alias}"
    row = {"user_id": user or None, "history": list(history or []), "items": list(items or [])}
    options = {"task": task, "k": int(k), "query": query or "", "template_id": template_id}
    if objective:
        options["objective"] = objective
    with fluent_uri(params):
        model = mlflow.pyfunc.load_model(uri)
    try:
        answer = model.predict(pd.DataFrame([row]), params=options)
    except MlflowException as exc:
        raise ValueError(exc.message) from None
    return RecommendReport(model_uri=uri, version=version, task=task, answer=answer,
                           seconds=time.perf_counter() - start)


def fetch_model_version(params: Params, alias: str, dst: Path) -> Path:
    """Download the version behind `alias` into `dst` (replaced) → its bundle's `model/` folder."""
    version = _alias_version(params, alias)
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    with fluent_uri(params):
        local = Path(mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{params.registry.model_name}/{version}", dst_path=str(dst)))
    conf = yaml.safe_load((local / "MLmodel").read_text(encoding="utf-8"))
    bundle = local / conf["flavors"]["python_function"]["artifacts"][BUNDLE_ARTIFACT]["path"]
    model_dir = bundle / "model"
    if not (model_dir / "modules.safetensors").is_file():
        raise RegistryError(f"{model_dir}: the downloaded version v{version} has no model folder")
    return model_dir
