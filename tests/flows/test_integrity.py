"""Artefacts are verified before use (issue 26.4): every model, index and expert file a step loads is checked against
the sha256 its writer recorded (the folder's MANIFEST.json) before any long work, with one clear error; `unirec
register` refuses a changed artefact, and a registration that fails after logging leaves nothing in the MLflow store.

The real tiny stack of tests/flows/registry_stack.py (a trained model, its faiss index, an `mlflow server` with its
own artifact store); copies are altered, never the shared files. Long work is replaced by tripwires that fail the
test when reached, so "before" is checked, not assumed.
"""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from components.artifacts import ArtifactError
from components.baselines.store import BASELINE_FILES, load_baselines
from components.indexing import load_item_index
from components.manifest import write_manifest
from components.model.index import FaissIndex
from components.registry import register_model
from components.registry.store import RegistryError
from tests.flows.registry_stack import Stack, eval_figures, shared_stack

FIGURES = {"next_item.ndcg@10": 0.10, "next_item.hr@10": 0.20}


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Stack:
    return shared_stack(tmp_path_factory, request)


def _store(stack: Stack) -> tuple[int, int]:
    """(files in the server's artifact store, live logged models in its tracking store)."""
    root = stack.project.parent / "artifacts"
    files = sum(1 for p in root.rglob("*") if p.is_file()) if root.exists() else 0
    client = MlflowClient(tracking_uri=stack.server.url)
    ids = [e.experiment_id for e in client.search_experiments()]
    models, token = 0, None
    while True:
        page = client.search_logged_models(experiment_ids=ids, page_token=token)
        models += len(page)
        token = page.token
        if not token:
            return files, models


def _versions(stack: Stack, name: str) -> int:
    client = MlflowClient(tracking_uri=stack.server.url, registry_uri=stack.server.url)
    return len(client.search_model_versions(f"name = '{name}'"))


def _register_params(stack: Stack, out: Path, **overrides: object):
    params = stack.params(out, **{"registry.model_name": f"unirec_{uuid.uuid4().hex[:8]}", **overrides})
    eval_figures(params.resolve(params.evaluate.metrics_file), stack.run_id, FIGURES)
    return params


def _tripwire(what: str):
    def reached(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"{what} started before the artefacts were verified")

    return reached


def _flip_tail(path: Path) -> None:
    """Change the last 4 bytes of `path` (tensor data of a safetensors file): still readable, different weights."""
    data = bytearray(path.read_bytes())
    data[-4:] = bytes(b ^ 0x55 for b in data[-4:])
    path.write_bytes(bytes(data))


# ------------------------------------------------------------------------------------------ (a) the index file
def _reverse_rows(index_file: Path, n: int, dim: int) -> None:
    """Reverse the vector rows a flat faiss index stores at the end of its file: same size, same shape, a valid index
    of the same item vectors' sha256 in meta.json, but item i now answers with item n-1-i's vector."""
    data = bytearray(index_file.read_bytes())
    tail = n * dim * 4
    rows = np.frombuffer(bytes(data[-tail:]), dtype=np.float32).reshape(n, dim)
    data[-tail:] = rows[::-1].tobytes()
    index_file.write_bytes(bytes(data))


def test_an_index_whose_vectors_were_overwritten_is_refused_and_never_registered(stack: Stack, tmp_path: Path) -> None:
    index = Path(shutil.copytree(stack.shared / "index", tmp_path / "index"))
    meta = json.loads((index / "meta.json").read_text())
    _reverse_rows(index / "items.faiss", meta["n_items"], meta["dim"])
    assert FaissIndex.load(index / "items.faiss").n_items == meta["n_items"]  # still a readable index, right shape
    params = _register_params(stack, tmp_path, **{"index.out_dir": str(index)})
    changed = r"items\.faiss: sha256 mismatch with .*MANIFEST\.json.*re-run `unirec index`"
    with pytest.raises(ArtifactError, match=changed):
        load_item_index(index, stack.shared / "unirec" / "item_vectors.npy", params.index)

    before = _store(stack)
    with pytest.raises(ArtifactError, match=changed):
        register_model(params)
    assert _store(stack) == before and _versions(stack, params.registry.model_name) == 0


def test_an_index_without_its_manifest_is_refused(stack: Stack, tmp_path: Path) -> None:
    index = Path(shutil.copytree(stack.shared / "index", tmp_path / "index"))
    (index / "MANIFEST.json").unlink()
    params = stack.params(tmp_path, **{"index.out_dir": str(index)})
    with pytest.raises(ArtifactError, match=r"MANIFEST\.json: not found: run `unirec index` first"):
        load_item_index(index, stack.shared / "unirec" / "item_vectors.npy", params.index)


# ------------------------------------------------------------------------------------------ the model files
@pytest.mark.parametrize("rel", ["modules.safetensors", "adapter/adapter_model.safetensors"])
def test_load_trained_refuses_a_changed_model_file_before_loading_the_backbone(
        stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rel: str) -> None:
    from components.model import build

    model = Path(shutil.copytree(stack.shared / "unirec", tmp_path / "unirec"))
    _flip_tail(model / rel)
    params = stack.params(tmp_path, **{"train.out_dir": str(model)})
    monkeypatch.setattr(build, "load_backbone", _tripwire("loading the backbone"))
    with pytest.raises(ArtifactError, match=rf"{rel}: sha256 mismatch with .*re-run `unirec train`"):
        build.load_trained(params)


def test_register_refuses_a_changed_model_file_and_logs_nothing(stack: Stack, tmp_path: Path) -> None:
    model = Path(shutil.copytree(stack.shared / "unirec", tmp_path / "unirec"))
    _flip_tail(model / "modules.safetensors")
    params = _register_params(stack, tmp_path, **{"train.out_dir": str(model)})
    before = _store(stack)
    with pytest.raises(ArtifactError, match=r"modules\.safetensors: sha256 mismatch .*re-run `unirec train`"):
        register_model(params)
    assert _store(stack) == before and _versions(stack, params.registry.model_name) == 0


def test_a_bundle_registered_before_manifests_is_refused_with_a_clear_line(stack: Stack, tmp_path: Path) -> None:
    from components.registry.bundle import build_bundle
    from components.registry.engine import Recommender

    bundle = build_bundle(stack.params(tmp_path), tmp_path / "bundle")
    assert (bundle / "model" / "MANIFEST.json").is_file() and (bundle / "index" / "MANIFEST.json").is_file()
    assert (bundle / "data" / "embeddings" / "MANIFEST.json").is_file()
    (bundle / "model" / "MANIFEST.json").unlink()
    with pytest.raises(ArtifactError, match=r"bundle: registered before model files carried their sha256 "
                                            r"\(MANIFEST\.json\), so they cannot be verified: train and register"):
        Recommender.load(bundle)


# ------------------------------------------------------------------------------------------ (b) the experts
def _experts(stack: Stack, folder: Path) -> Path:
    """A baselines folder with every expert file name: a real popularity vector and chosen.json, the others empty."""
    folder.mkdir(parents=True)
    n_items = len(pd.read_parquet(stack.project / "data" / "canonical" / "id_maps" / "items.parquet"))
    for name in BASELINE_FILES:
        (folder / name).write_bytes(b"")
    np.save(folder / "popularity.npy", np.ones(n_items, dtype=np.int64))
    (folder / "chosen.json").write_text("{}", encoding="utf-8")
    return folder


def test_evaluate_verifies_every_expert_file_before_the_model_runs(
        stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from components.evaluation import evaluate, pipeline
    from components.model import build

    experts = _experts(stack, tmp_path / "baselines")
    out = tmp_path / "eval"
    params = stack.params(tmp_path, **{"baselines.out_dir": str(experts), "evaluate.report_file": str(out / "e.html"),
                                       "evaluate.plots_dir": str(out / "plots"),
                                       "evaluate.per_user_dir": str(out / "per_user")})
    monkeypatch.setattr(build, "load_trained", _tripwire("loading the model"))
    monkeypatch.setattr(pipeline, "load_eval_data", _tripwire("reading the evaluation rows"))
    with pytest.raises(ArtifactError, match=r"baselines/MANIFEST\.json: not found: run `unirec baselines` first"):
        evaluate(params)

    write_manifest(experts, [experts / n for n in BASELINE_FILES], "baselines")
    np.save(experts / "popularity.npy", np.arange(len(np.load(experts / "popularity.npy"))))  # readable, wrong
    changed = r"popularity\.npy: sha256 mismatch with .*re-run `unirec baselines`"
    with pytest.raises(ArtifactError, match=changed):
        evaluate(params)
    with pytest.raises(ArtifactError, match=changed):
        load_baselines(params)


# ------------------------------------------------------------------------------------------ (c) cleanup
def test_a_register_that_fails_after_logging_leaves_nothing_in_the_store(
        stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    params = _register_params(stack, tmp_path)
    before = _store(stack)

    def cannot_load(*args: object, **kwargs: object) -> None:
        raise RuntimeError("simulated: the logged model cannot be loaded")

    monkeypatch.setattr(mlflow.pyfunc, "load_model", cannot_load)
    with pytest.raises(RegistryError, match="cannot answer its input example"):
        register_model(params)
    assert _store(stack) == before and _versions(stack, params.registry.model_name) == 0
    monkeypatch.undo()

    report = register_model(params)  # the same inputs register once the model loads
    assert report.created and report.version == "1" and _store(stack)[1] == before[1] + 1
