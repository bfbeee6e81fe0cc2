"""Model-tier fixtures: the real data steps and embed-items run ONCE per session on the tiny fixture
with the tiny random Llama backbone; tests then build models from these files."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from components.config import TASKS, Params
from components.embed_items import embed_items
from components.ingest import ingest
from components.split import split
from components.textualize import textualize
from components.validate import validate
from tests.conftest import params_in

TINY_MODEL: dict[str, object] = {
    "backbone.source": "tiny",
    "model.num_negatives": 16,
    "train.max_prompt_tokens": 96,
    "train.batch_size": 4,
    "train.max_steps": 4,
    "train.val_examples_per_task": 2,
    "train.val_check_interval": 2,
    "train.checkpoint_every_n_steps": 2,
    "train.log_every_n_steps": 1,
    "train.num_threads": 1,
    "train.collab_warmup.steps": 3,
    "train.collab_warmup.batch_size": 8,
    "model.history_encoder.width": 16,  # the attention history encoder at test size
    "select_gates.users": 3,  # the validation sweep at test size (test_select_gates.py checks it)
}

TINY_EXPERTS: dict[str, object] = {
    "baselines.sasrec.grid.dropout": [0.1, 0.5], "baselines.sasrec.grid.max_len": [10],
    "baselines.sasrec.grid.hidden_size": [16], "baselines.sasrec.max_epochs": 3, "baselines.sasrec.patience": 2,
    "baselines.sasrec.halving_epochs": [1], "baselines.sasrec.batch_targets": 64,
    "baselines.sasrec_recbole.max_epochs": 3, "baselines.sasrec_recbole.batch_size": 16,
    "baselines.sasrec_recbole.hidden_size": 16, "baselines.sasrec_recbole.inner_size": 32,
    "baselines.sasrec_recbole.max_len": 10, "baselines.sasrec_recbole.train_stride": 5,
    "baselines.mf.max_epochs": 10, "baselines.mf.batch_size": 64, "baselines.mf.grid.dim": [4, 8],
    "baselines.mf.grid.l2": [0.05], "baselines.mf.grid.lr": [0.005], "baselines.ctr.max_epochs": 10,
    "baselines.ctr.batch_size": 256, "baselines.ctr_gbdt.max_trees": 20, "baselines.ctr_gbdt.trees_per_round": 10,
    "baselines.ctr_gbdt.grid.max_leaf_nodes": [7, 15], "baselines.ctr_gbdt.grid.min_samples_leaf": [5],
    "baselines.num_threads": 1,
}
"""Every expert at test size: two SASRec configurations (halved after one epoch), two MF and two GBDT ones."""


def prepare_tiny_project(folder: Path) -> Params:
    """The real data steps and embed-items on the tiny fixture in `folder` (tiny backbone); returns its Params."""
    params = params_in(folder, TINY_MODEL)
    ingest(params)
    validate(params)
    split(params)
    textualize(params, progress=False)
    embed_items(params, progress=False)
    return params


@pytest.fixture(scope="session")
def model_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("model_project")
    prepare_tiny_project(folder)
    return folder


@pytest.fixture
def model_params(model_project: Path, tmp_path: Path):
    """Factory of Params reading the session's tiny project and writing models/metrics under tmp_path."""

    def factory(overrides: dict[str, object] | None = None) -> Params:
        return params_in(model_project, {**TINY_MODEL, "train.out_dir": str(tmp_path / "unirec"),
                                         "train.checkpoint_dir": str(tmp_path / "checkpoints"),
                                         "paths.metrics_dir": str(tmp_path / "metrics"),
                                         "select_gates.out_file": str(tmp_path / "gates.json"),
                                         "select_gates.metrics_file": str(tmp_path / "metrics" / "gates.json"),
                                         "mlflow.tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
                                         **(overrides or {})})

    return factory


# ------------------------------------------------------------------ one trained tiny model, evaluated (session)
FAST_EXPERTS = TINY_EXPERTS
USERS = {t: 3 for t in TASKS} | {"next_item": None, "rating": None, "ctr": 4}  # all users: compare with the experts


@contextlib.contextmanager
def inside(folder: Path) -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)  # MLflow's default artifact root (./mlruns) lands in the test folder
        yield


def eval_params(project: Path, out: Path, **extra: object) -> Params:
    """Params of the tiny project with the model, experts and every evaluation output under `out`."""
    return params_in(project, {**TINY_MODEL, **FAST_EXPERTS, "train.out_dir": str(out / "unirec"),
                               "train.checkpoint_dir": str(out / "checkpoints"),
                               "paths.metrics_dir": str(out / "metrics"),
                               "select_gates.out_file": str(out / "gates.json"),
                               "select_gates.metrics_file": str(out / "metrics" / "gates.json"),
                               "mlflow.tracking_uri": f"sqlite:///{out / 'mlflow.db'}",
                               "baselines.out_dir": str(out / "baselines"),
                               "baselines.metrics_file": str(out / "metrics" / "baselines_train.json"),
                               "evaluate.users_per_task": USERS, "evaluate.batch_size": 8,
                               "evaluate.max_new_tokens": 4, "evaluate.num_threads": 1,
                               "evaluate.metrics_file": str(out / "eval" / "eval.json"),
                               "evaluate.report_file": str(out / "eval" / "eval.html"),
                               "evaluate.plots_dir": str(out / "eval" / "plots"),
                               "evaluate.per_user_dir": str(out / "eval" / "per_user"), **extra})


@pytest.fixture(scope="session")
def evaluated(model_project: Path, tmp_path_factory: pytest.TempPathFactory):
    """(Params, EvalReport): a tiny model trained, its gates selected, the experts trained, then `evaluate`."""
    from components.baselines import train_baselines
    from components.evaluation import evaluate
    from components.select_gates import select_gates
    from components.train import train

    out = tmp_path_factory.mktemp("evaluate")
    params = eval_params(model_project, out)
    with inside(out):
        train(params)
        select_gates(params)
        train_baselines(params)
        return params, evaluate(params)
