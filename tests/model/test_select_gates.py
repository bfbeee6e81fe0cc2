"""Per-task hidden-state gate (step `select-gates`, components/select_gates.py): the head's algebra, the
choice rule, the validation sweep after `unirec train`, and the gates file every consumer applies."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from components.config import TASKS
from components.evaluation.scoring import MetricContext, headline_metric, task_metrics
from components.evaluation.universal import predict_task
from components.model.build import load_trained, read_gates
from components.model.heads import SetQueryHead
from components.model.history import HistoryReader
from components.model.inference import InferenceConfig, catalogue_vectors
from components.select_gates import choose_gate, gate_data, select_gates
from components.train import train

GRID = [0.0, 0.5, 1.0]


def _head(bias: bool) -> SetQueryHead:
    head = SetQueryHead(16, 8, l2_normalize=True, bias_column=bias, history_reader=HistoryReader("mean", 16, 3))
    torch.nn.init.normal_(head.mlp[-1].weight)  # a live hidden-state path (the warm-up would have zeroed it)
    if head.bias_scale is not None:
        torch.nn.init.normal_(head.bias_scale.weight)
    return head.eval()


@settings(max_examples=20, deadline=None)
@given(s=st.integers(1, 4), m=st.integers(1, 3), bias=st.booleans(), seed=st.integers(0, 2**16))
def test_gate_one_is_the_trained_head_and_gate_zero_the_history_path(s: int, m: int, bias: bool, seed: int) -> None:
    torch.manual_seed(seed)
    head = _head(bias)
    hidden, history = torch.randn(s, m, 16), torch.randn(s, m, 16)
    with torch.no_grad():
        plain = head(hidden, history)  # (S, M, D [+ 1])
        torch.testing.assert_close(head(hidden, history, torch.ones(s, 1, 1)), plain)
        torch.testing.assert_close(head(hidden, history, torch.zeros(s, 1, 1)), head.history_vectors(history))
        half = head(hidden, history, torch.full((s, 1, 1), 0.5))
    assert half.shape == plain.shape == (s, m, 8 + int(bias))
    if bias:  # the bias factor moves halfway from 1 to the trained 1 + a(prompt)
        torch.testing.assert_close(half[..., -1], 0.5 * (1.0 + plain[..., -1]))


def test_task_gates_per_row_and_their_validation() -> None:
    head = _head(bias=False)
    assert head.gates_for(["next_item", "cold_start"]) is None  # all 1: the exact trained computation
    head.set_task_gates({"cold_start": 0.25})
    gates = head.gates_for(["next_item", "cold_start", "cold_start"])
    assert gates is not None and gates.flatten().tolist() == [1.0, 0.25, 0.25]
    assert head.task_gate[TASKS.index("cold_start")] == 0.25
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        head.set_task_gates({"nope": 0.5})
    with pytest.raises(ValueError, match=r"gate 1.5 is not in \[0, 1\]"):
        head.set_task_gates({"query": 1.5})


def test_choose_gate_takes_the_best_and_breaks_ties_towards_the_trained_head() -> None:
    assert choose_gate({0.0: 0.10, 0.5: 0.12, 1.0: 0.11}) == 0.5
    assert choose_gate({0.0: 0.2, 0.5: 0.2, 1.0: 0.1}) == 0.5
    assert choose_gate({0.0: 0.3}) == 0.0
    with pytest.raises(ValueError, match="no scores"):
        choose_gate({})


def test_grid_and_tasks_are_validated(model_params) -> None:
    with pytest.raises(ValueError, match="distinct values in"):
        model_params({"select_gates.grid": [0.0, 1.2]})
    with pytest.raises(ValueError, match="only set-out tasks have a hidden-state gate"):
        model_params({"select_gates.tasks": ["ctr"]})
    assert model_params({"select_gates.grid": [1.0, 0.0]}).select_gates.grid == [0.0, 1.0]


def test_select_gates_chooses_on_validation_and_every_consumer_applies_the_file(model_params) -> None:
    """The sweep's figure at the chosen gate is what the evaluator measures with the model loaded with the gates
    file on the same validation rows; the rows are seen templates of validation users only; the metrics file,
    the gates file and the loaded model agree; training itself saves no gate."""
    params = model_params({"select_gates.grid": GRID, "select_gates.users": 3, "select_gates.autocast_bf16": False,
                           "train.max_steps": 2, "train.resume": False, "train.precision": "32-true"})
    train(params)
    assert "hidden_gate" not in json.loads((params.resolve(params.paths.metrics_dir) / "train.json").read_text())
    ungated = load_trained(params)
    assert bool((ungated.model.user_head.task_gate == 1.0).all())
    select_gates(params)
    gates = json.loads(params.resolve(params.select_gates.metrics_file).read_text())
    assert set(gates["selected"]) == set(params.select_gates.tasks)
    assert read_gates(params.resolve(params.select_gates.out_file)) == gates["selected"]
    for task, scores in gates["scores"].items():
        assert list(scores) == ["0", "0.5", "1"] and all(0.0 <= v <= 1.0 for v in scores.values())
        assert gates["selected"][task] == choose_gate({float(g): v for g, v in scores.items()})
        assert gates["rows"][task] > 0 and 0 < gates["users"][task] <= 3

    data = gate_data(params)
    assert data.split == "valid"
    assert all(set(f["template_kind"]) == {"seen"} for f in data.frames.values())
    built = load_trained(params, gates_file=params.resolve(params.select_gates.out_file))
    saved = {t: float(built.model.user_head.task_gate[TASKS.index(t)]) for t in gates["selected"]}
    assert saved == gates["selected"]
    cfg = InferenceConfig(batch_size=params.select_gates.batch_size, top_k=params.select_gates.top_k,
                          max_new_tokens=params.evaluate.max_new_tokens, autocast_bf16=False)
    ctx = MetricContext(ks=(cfg.top_k,), top_k=cfg.top_k, tail_items=frozenset(), genres=data.genres,
                        mask_format=data.mask_format)
    vectors = catalogue_vectors(built.model)
    for task, chosen in gates["selected"].items():
        rows = predict_task(built.model, built.backbone.tokenizer, built.spec, task, data, vectors, cfg)
        measured = task_metrics(task, rows, ctx)[headline_metric(task, cfg.top_k)]
        assert np.isclose(measured, gates["scores"][task][f"{chosen:g}"], atol=1e-4), task


def test_gate_needs_the_history_path(model_params) -> None:
    no_history = {"model.history_skip_items": 0, "model.verbaliser_prior": False, "model.rating_prior_window": 0,
                  "model.item_neighbours.window": 0,
                  "train.collab_warmup.steps": 0}
    with pytest.raises(ValueError, match="select_gates needs the history path"):
        model_params({**no_history, "select_gates.grid": GRID})
    assert model_params({**no_history, "select_gates.grid": []}).select_gates.grid == []


def test_gates_file_errors_name_the_file(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="run `unirec select-gates` first"):
        read_gates(tmp_path / "gates.json")
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="bad.json: not a gates file"):
        read_gates(tmp_path / "bad.json")
