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
}


@pytest.fixture
def make_params(tmp_path: Path) -> Callable[..., Params]:
    """Build Params from the real params.yaml copied into `tmp_path` (so every output lands there).

    Call with dotted overrides; the tiny RecBole fixture is copied to `data/raw/tiny` and used by default.
    """

    def factory(overrides: dict[str, object] | None = None, *, dataset_dir: Path | None = TINY) -> Params:
        shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
        if dataset_dir is not None:
            target = tmp_path / "data" / "raw" / "tiny"
            if not target.exists():
                shutil.copytree(dataset_dir, target)
        merged = {**TINY_OVERRIDES, "textualize.registry": str(REPO / "prompts" / "registry.yaml"),
                  **(overrides or {})}
        return load_params(tmp_path / "params.yaml", merged)

    return factory


@pytest.fixture
def tiny_params(make_params: Callable[..., Params]) -> Params:
    return make_params()
