"""Shared fixtures. Tests use the REAL params.yaml, shrunk by dotted overrides — never a parallel config."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from components.config import Params, load_params

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "tests" / "fixtures" / "tiny"

os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")

TINY_OVERRIDES: dict[str, object] = {
    "dataset.name": "tiny",
    "dataset.path": "data/raw/tiny",
    "dataset.recbole.prefix": "tiny",
    "split.cold_item_fraction": 0.1,
    "backbone.num_layers": None,  # the tiny test Llama has its own depth (backbone.tiny.num_layers)
}

@pytest.fixture(autouse=True, scope="module")
def _mlflow_uris_restored_per_module():
    """MLflow's fluent tracking / registry URIs (and the MLFLOW_*_URI variables `mlflow.set_*_uri` export) as they
    were before the module: a module that points MLflow at its own server must not send a later module's calls
    (or the servers it starts, which inherit the environment) to that server."""
    import mlflow.tracking._model_registry.utils as registry_utils
    import mlflow.tracking._tracking_service.utils as tracking_utils

    keys = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
    env = {k: os.environ.get(k) for k in keys}
    held = (tracking_utils._tracking_uri, registry_utils._registry_uri)
    yield
    for key, value in env.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    tracking_utils._tracking_uri, registry_utils._registry_uri = held


PROMPT_FILES: dict[str, object] = {
    "textualize.registry": str(REPO / "prompts" / "registry.yaml"),
    "evaluate.steering.paraphrase_templates": str(REPO / "prompts" / "paraphrases.yaml"),
}
"""The repository's prompt files, for a project copied to a temporary folder (params name them relative)."""


def params_in(folder: Path, overrides: dict[str, object] | None = None, dataset_dir: Path | None = TINY) -> Params:
    """Params from the real params.yaml copied into `folder` (so every output lands there), shrunk by
    dotted `overrides`; the tiny RecBole fixture is copied to `data/raw/tiny` and used by default."""
    shutil.copy(REPO / "params.yaml", folder / "params.yaml")
    if dataset_dir is not None:
        target = folder / "data" / "raw" / "tiny"
        if not target.exists():
            shutil.copytree(dataset_dir, target)
    merged = {**TINY_OVERRIDES, **PROMPT_FILES, **(overrides or {})}
    return load_params(folder / "params.yaml", merged)


@pytest.fixture
def make_params(tmp_path: Path) -> Callable[..., Params]:
    """Factory: `make_params(overrides)` → Params whose outputs go under this test's `tmp_path`."""

    def factory(overrides: dict[str, object] | None = None, *, dataset_dir: Path | None = TINY) -> Params:
        return params_in(tmp_path, overrides, dataset_dir)

    return factory


@pytest.fixture
def tiny_params(make_params: Callable[..., Params]) -> Params:
    return make_params()
