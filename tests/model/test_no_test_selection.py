"""No selection on test, enforced: `unirec train`, `unirec select-gates` and `unirec baselines` give the same
artefacts whether the test split is intact or scrambled.

Two copies of the tiny project (data steps and embed-items done): in the second, every test-split file is
scrambled — test.parquet's targets, the ctr / rating / candidate test rows and the cold items' test rows are
permuted — and every `data/examples/<task>/test.parquet` is deleted. The three selection steps run on both; the
trained model's tensors, the chosen gates (and their validation figures), the experts' weights, their chosen
configurations and their validation figures must be identical. A step that read the test split and let it
decide anything would differ (or fail on a missing file).
"""

from __future__ import annotations

import json
import pickle
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from components.baselines import train_baselines
from components.config import Params
from components.model.build import read_gates
from components.select_gates import select_gates
from components.train import train
from tests.conftest import params_in
from tests.model.conftest import TINY_EXPERTS, TINY_MODEL

STEPS = {**TINY_MODEL, **TINY_EXPERTS, "train.max_steps": 3, "train.resume": False, "train.precision": "32-true",
         "select_gates.grid": [0.0, 0.5, 1.0], "select_gates.autocast_bf16": False}


def _permute(path: Path, columns: list[str], rng: np.random.Generator,
             rows: Callable[[pd.DataFrame], pd.Series] | None = None) -> None:
    frame = pd.read_parquet(path)
    mask = np.ones(len(frame), bool) if rows is None else rows(frame).to_numpy()
    order = rng.permutation(int(mask.sum()))
    for col in columns:
        values = frame.loc[mask, col].to_numpy()
        frame.loc[mask, col] = values[order]
    frame.to_parquet(path, index=False)


def scramble_test_split(project: Path, seed: int = 0) -> None:
    """Permute the test targets, labels and ratings in place; delete every test examples file."""
    rng, splits = np.random.default_rng(seed), project / "data" / "splits"
    _permute(splits / "test.parquet", ["item_idx", "rating"], rng)
    _permute(splits / "ctr_test.parquet", ["item_idx", "label"], rng)
    _permute(splits / "rating_test.parquet", ["item_idx", "rating"], rng)
    _permute(splits / "candidates_test.parquet", ["target"], rng)
    _permute(splits / "cold.parquet", ["item_idx", "rating"], rng, rows=lambda f: f["role"] == "test")
    for path in (project / "data" / "examples").glob("*/test.parquet"):
        path.unlink()


def _copy_project(source: Path, target: Path) -> Params:
    shutil.copytree(source / "data", target / "data")
    return params_in(target, STEPS)


def _run(params: Params) -> None:
    train(params)
    select_gates(params)
    train_baselines(params)


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for path in sorted(folder.rglob("*.safetensors")):
        out |= {f"{path.relative_to(folder)}:{k}": v for k, v in load_file(path).items()}
    for path in sorted(folder.rglob("*.npy")):
        out[str(path.relative_to(folder))] = torch.as_tensor(np.load(path))
    for path in sorted(folder.rglob("*.pt")):
        out |= {f"{path.relative_to(folder)}:{k}": v for k, v in torch.load(path, weights_only=True).items()}
    return out


def _without_times(node: object) -> object:
    if isinstance(node, dict):
        return {k: _without_times(v) for k, v in node.items() if "wall" not in k and k != "seconds"}
    if isinstance(node, list):
        return [_without_times(v) for v in node]
    return node


@pytest.fixture(scope="module")
def both(model_project: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Params, Params]:
    root = tmp_path_factory.mktemp("no_test_selection")
    intact, scrambled = _copy_project(model_project, root / "intact"), _copy_project(model_project, root / "scrambled")
    scramble_test_split(root / "scrambled")
    assert not (root / "scrambled" / "data" / "examples" / "next_item" / "test.parquet").exists()
    before = pd.read_parquet(root / "intact" / "data" / "splits" / "test.parquet")["item_idx"]
    after = pd.read_parquet(root / "scrambled" / "data" / "splits" / "test.parquet")["item_idx"]
    assert (before != after).any()
    for params in (intact, scrambled):
        _run(params)
    return intact, scrambled


def test_trained_model_is_identical(both: tuple[Params, Params]) -> None:
    a, b = (_tensors(p.resolve(p.train.out_dir)) for p in both)
    assert a.keys() == b.keys() and len(a) > 0
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_chosen_gates_are_identical(both: tuple[Params, Params]) -> None:
    a, b = (read_gates(p.resolve(p.select_gates.out_file)) for p in both)
    assert a == b and set(a) == set(both[0].select_gates.tasks)
    sa, sb = (json.loads(p.resolve(p.select_gates.metrics_file).read_text()) for p in both)
    assert sa["scores"] == sb["scores"] and sa["selected"] == sb["selected"]


def test_experts_and_their_chosen_configurations_are_identical(both: tuple[Params, Params]) -> None:
    outs = [p.resolve(p.baselines.out_dir) for p in both]
    chosen = [json.loads((o / "chosen.json").read_text()) for o in outs]
    assert chosen[0] == chosen[1] and "sasrec" in chosen[0]
    a, b = _tensors(outs[0]), _tensors(outs[1])
    assert a.keys() == b.keys() and any(k.startswith("sasrec.pt") for k in a)
    for name in a:
        assert torch.equal(a[name], b[name]), name
    gbdt = [pickle.loads((o / "ctr_gbdt.pkl").read_bytes()) for o in outs]
    x = np.random.default_rng(0).normal(size=(16, gbdt[0].n_features_in_))
    np.testing.assert_array_equal(gbdt[0].predict_proba(x), gbdt[1].predict_proba(x))
    assert (outs[0] / "bm25_texts.json").read_text() == (outs[1] / "bm25_texts.json").read_text()
    reports = [json.loads(p.resolve(p.baselines.metrics_file).read_text()) for p in both]
    assert _without_times(reports[0]["models"]) == _without_times(reports[1]["models"])
