"""Data-parallel training (Lightning DDP, 2 CPU processes over gloo) trains the model one process trains.

`unirec train --set train.strategy=ddp --set train.devices=2` is run as a subprocess (Lightning's `ddp` starts
rank 1 by rerunning that command line) next to the same command with one process. What must be equal, and why:
`train.batch_size` is the global batch of step k (a pure function of seed and k); each rank trains on its
interleaved half of it, weights its per-task mean losses by its share of the global batch's units, reads the
running statistics of the whole batch and builds the candidate pools from the whole batch's positives. So DDP's
averaged gradient is the one-process gradient of the same batch, and both runs follow the same trajectory up to
floating-point summation order. Dropout (LoRA, modality, history encoder) is off in both runs: its masks are
drawn per tensor shape, so a shard's masks are another sample than the whole batch's, not a wrong one; fp32,
because bf16 kernels round differently for other shapes.

Tolerance: per-step losses of the global batch within 1e-4 (train.json keeps 5 decimals) and every checkpointed
tensor within 1e-5. Measured on the 2-core CPU: the largest difference was 4.5e-7 (a running variance); a run
without the loss weighting (a plain mean per rank) is off by 2.7e-4, so 1e-5 separates the two by > 20× each way.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from components.model.batching import pool_positives
from components.model.build import build_model
from components.model.data import MixtureBatches, encode_frames, load_examples
from components.train import train
from tests.conftest import PROMPT_FILES, REPO, TINY_OVERRIDES
from tests.model.conftest import TINY_MODEL

EXACT = {"train.max_steps": 8, "train.precision": "32-true", "lora.dropout": 0.0, "model.modality_dropout": 0.0,
         "model.history_encoder.dropout": 0.0}
"""Both runs: no dropout, fp32 (see the module docstring)."""


def _cli_train(project: Path, out: Path, overrides: dict[str, object]) -> subprocess.CompletedProcess[str]:
    merged = {**TINY_OVERRIDES, **PROMPT_FILES, **TINY_MODEL, **EXACT,
              "train.out_dir": str(out / "unirec"), "train.checkpoint_dir": str(out / "checkpoints"),
              "paths.metrics_dir": str(out / "metrics"), "mlflow.tracking_uri": f"sqlite:///{out / 'mlflow.db'}",
              **overrides}
    command = [sys.executable, "-m", "unirec.cli", "train", "--params", str(project / "params.yaml")]
    for key, value in merged.items():
        command += ["--set", f"{key}={json.dumps(value)}"]
    env = {k: v for k, v in os.environ.items() if k not in {"LOCAL_RANK", "RANK", "WORLD_SIZE", "NODE_RANK"}}
    result = subprocess.run(command, cwd=REPO, env=env | {"MLFLOW_ENABLE_TELEMETRY": "false"}, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def test_two_process_ddp_follows_the_one_process_trajectory(model_project: Path, tmp_path: Path) -> None:
    one = _cli_train(model_project, tmp_path / "one", {})
    two = _cli_train(model_project, tmp_path / "two", {"train.strategy": "ddp", "train.devices": 2,
                                                        "train.accelerator": "cpu"})
    assert "Starting with 2 processes" in two.stdout + two.stderr  # Lightning's DDP really ran 2 ranks (gloo)
    reports = [json.loads((tmp_path / run / "metrics" / "train.json").read_text()) for run in ("one", "two")]
    assert reports[0]["steps"] == reports[1]["steps"] == 8
    curves = [r["curves"] for r in reports]
    assert curves[0].keys() == curves[1].keys()
    for task in curves[0]:  # the same tasks at the same steps, the global batch's loss at each
        steps = [[s for s, _ in c[task]] for c in curves]
        assert steps[0] == steps[1], task
        np.testing.assert_allclose([v for _, v in curves[1][task]], [v for _, v in curves[0][task]], rtol=0,
                                   atol=1e-4, err_msg=task)
    for key in ("tokens", "examples", "batches"):  # throughput counts every rank's share of the global batch
        assert reports[0]["throughput"][key] == reports[1]["throughput"][key], key
    # rank 0 alone wrote the artefacts, the checkpoints and the MLflow run; the end states agree tensor by tensor
    states = [torch.load(tmp_path / run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
              for run in ("one", "two")]
    assert states[0].keys() == states[1].keys()
    for name, value in states[0].items():
        torch.testing.assert_close(states[1][name].float(), value.float(), rtol=0, atol=1e-5, msg=name)
    assert (tmp_path / "two" / "checkpoints" / "mlflow_run_id.txt").read_text().strip() == reports[1]["mlflow_run_id"]
    warmups = [r["collab_warmup"] for r in reports]  # rank 0 ran it, as the single process did
    assert warmups[1] == warmups[0] | {"seconds": warmups[1]["seconds"]}


def test_ranks_partition_each_global_batch_and_share_its_candidate_pool(model_params) -> None:
    params = model_params()
    built = build_model(params)
    tasks = [t for t, w in params.train.task_weights.items() if w > 0]
    encoded = encode_frames(load_examples(params.resolve(params.paths.examples_dir), tasks, "train"),
                            built.backbone.tokenizer, built.spec, progress=False)
    args = (encoded, params.train.task_weights, 4, 12, 7, int(built.backbone.tokenizer.pad_token_id))
    whole = MixtureBatches(*args)
    shards = [MixtureBatches(*args, rank=r, world_size=2) for r in range(2)]
    for k in range(12):
        task, idx = whole.batch_plan(k)
        full = whole[k]
        parts = [s[k] for s in shards]
        assert sum(int(p.input_ids.shape[0]) for p in parts) == int(full.input_ids.shape[0])
        assert sum(p.num_tokens for p in parts) == full.num_tokens
        pool = pool_positives([encoded[task][j] for j in idx])
        for part in parts:
            assert part.tasks == (task,)
            assert torch.equal(part.pool_positives, pool)
    with pytest.raises(ValueError, match="at least 5 examples per batch"):
        MixtureBatches(*args[:2], 4, 12, 7, 0, rank=0, world_size=5)


def test_ddp_refuses_a_command_line_it_cannot_relaunch(model_params) -> None:
    """Lightning starts rank 1 by rerunning sys.argv: from pytest (or the Prefect flow) that would rerun it all."""
    params = model_params({"train.strategy": "ddp", "train.devices": 2, "train.collab_warmup.steps": 0,
                           "train.curve_every_n_steps": 0})
    with pytest.raises(RuntimeError, match="not `unirec train`"):
        train(params)
