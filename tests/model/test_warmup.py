"""Collaborative warm-up: window sampling, what it trains and leaves alone, and the hand-over to LoRA training."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from components.collab import user_sequences
from components.evaluation.ranking import evaluate_scorer, load_split_data, next_item_task
from components.model.build import build_model
from components.model.warmup import HistoryPathScorer, collab_warmup, sample_windows, warmup_loss
from components.train import train


@settings(max_examples=40, deadline=None)
@given(lengths=st.lists(st.integers(1, 30), min_size=1, max_size=6).filter(lambda ls: max(ls) >= 2),
       max_len=st.integers(1, 12), batch=st.integers(1, 9), seed=st.integers(0, 10_000))
def test_windows_pair_each_input_with_the_next_item_of_its_sequence(lengths, max_len, batch, seed) -> None:
    sequences = [np.arange(100 * u, 100 * u + n, dtype=np.int64) for u, n in enumerate(lengths)]  # item = 100u + pos
    inputs, targets = sample_windows(sequences, batch, max_len, np.random.default_rng(seed))
    assert inputs.shape == targets.shape == (batch, max_len)
    again = sample_windows(sequences, batch, max_len, np.random.default_rng(seed))
    assert (again[0] == inputs).all() and (again[1] == targets).all()
    for row_in, row_t in zip(inputs, targets):
        n = int((row_in >= 0).sum())
        assert n >= 1 and (row_in[:n] >= 0).all() and (row_in[n:] == -1).all() and (row_t[n:] == -1).all()
        assert (row_t[:n] == row_in[:n] + 1).all()  # the target is the very next item of the same user
        assert len({int(i) // 100 for i in row_in[:n]} | {int(i) // 100 for i in row_t[:n]}) == 1
        assert lengths[int(row_in[0]) // 100] >= 2


def test_windows_never_use_a_single_item_sequence() -> None:
    sequences = [np.array([5]), np.array([1, 2, 3])]
    inputs, _ = sample_windows(sequences, 50, 4, np.random.default_rng(0))
    assert set(inputs[inputs >= 0].tolist()) <= {1, 2}


def _sequences(params) -> list[np.ndarray]:
    frame = pd.read_parquet(params.resolve(params.paths.splits_dir) / "train.parquet",
                            columns=["user_idx", "item_idx", "order"])
    return user_sequences(frame)


def _ratings(params) -> list[np.ndarray]:
    """The training ratings aligned with `_sequences` (the default warm-up also fits the rating estimate)."""
    frame = pd.read_parquet(params.resolve(params.paths.splits_dir) / "train.parquet",
                            columns=["user_idx", "order", "rating"])
    return user_sequences(frame, "rating")


def test_warmup_lowers_the_loss_trains_only_the_item_side_and_hands_over_exactly(model_params) -> None:
    params = model_params({"train.collab_warmup.steps": 40, "train.collab_warmup.batch_size": 16,
                           "train.collab_warmup.lr": 0.005, "train.collab_warmup.eval_every": 0})
    built = build_model(params)
    model = built.model
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    report = collab_warmup(model, _sequences(params), params.train.collab_warmup, seed=3, log_every=10,
                           ratings=_ratings(params))
    assert report.steps == 40 and len(report.curve) == 4 and report.targets > 40 * 16
    assert report.last_loss < report.first_loss - 0.05, report.curve
    changed = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert any(n.startswith("fusion.id_embedding") for n in changed)
    assert any(n.startswith("user_head.history_mlp") for n in changed)
    assert any(n.startswith("item_head.output_ids") for n in changed)
    assert any(n.startswith("user_head.history_reader.encoder") for n in changed)  # the causal encoder
    assert any(n.startswith("rating_estimator.") for n in changed)  # the rating estimate (rating_weight > 0)
    untouched = [n for n in changed if n.startswith(("llm.", "special_rows", "user_head.bias_scale"))]
    assert not untouched, untouched
    # the hidden-state path is silenced: the full head equals the history path alone, whatever the hidden state
    model.eval()
    hidden = torch.randn(5, model.fusion.hidden_size)
    history = torch.randn(5, model.user_head.history_reader.out_dim + model.user_head.passthrough)  # + β's block
    torch.testing.assert_close(model.user_head(hidden, history), model.user_head.history_vectors(history))


@pytest.mark.parametrize("kind", ["mean", "attention", "attention_neighbours"])
def test_warmup_loss_matches_a_naive_full_softmax(model_params, kind: str) -> None:
    params = model_params({"model.history_encoder.kind": kind.split("_")[0],
                           "model.item_neighbours.window": 2 if kind.endswith("_neighbours") else 0,
                           "model.item_neighbours.weight": 1.5})
    model = build_model(params).model.eval()
    inputs = torch.tensor([[3, 4, 5, -1], [7, 8, -1, -1]])
    targets = torch.tensor([[4, 5, 6, -1], [8, 9, -1, -1]])

    loss, n = warmup_loss(model, inputs, targets)
    with torch.no_grad():
        items = model.item_vectors()
        nll = []
        for r, c in [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]:
            if kind == "mean":  # by hand: the mean of the last history_window items up to position c
                window = inputs[r, max(0, c - model.history_window + 1): c + 1]
                hist = model.fusion(window).float().mean(0)
            else:  # the encoder over the prefix 0..c of this row alone, read at c
                prefix = model.fusion(inputs[r, : c + 1]).float()
                hist = model.user_head.history_reader.encoder(prefix.unsqueeze(0), torch.tensor([c + 1]))[0, c]
            nb = model.neighbours
            if nb is None:
                user = model.user_head.history_vectors(hist)
            else:  # + β Σ_q decay^q f(item at c - q) over the last 2 positions (items with a trained ID)
                recent = [int(i) for i in inputs[r, max(0, c - 1): c + 1].flip(0)]
                block = 1.5 * sum(nb.decay ** q * nb.factors[i] * float(model.fusion.id_known[i])
                                  for q, i in enumerate(recent))
                no_block = model.user_head.history_vectors(torch.cat([hist, torch.zeros(nb.dim)]))
                user = torch.cat([no_block[: -nb.dim], block])
            logits = items @ user / model.temperature
            nll.append(-torch.log_softmax(logits, 0)[targets[r, c]])
    assert n == 5
    torch.testing.assert_close(loss.detach(), torch.stack(nll).mean(), rtol=1e-4, atol=1e-5)


@pytest.mark.filterwarnings("ignore:Total length of `(Combined|Data)Loader` across ranks is zero")  # the finished
# run's resume has no batches left, by design
def test_train_runs_the_warmup_once_and_reports_it(model_params) -> None:
    params = model_params({"train.max_steps": 2, "train.checkpoint_every_n_steps": 2, "train.resume": True})
    report = train(params)
    assert report.collab_warmup is not None and report.collab_warmup["steps"] == 3
    assert "collab warm-up: 3 steps" in report.summary()
    again = train(params)  # resumes the finished checkpoint: the warm-up is not run over trained weights ...
    assert again.resumed_from is not None
    # ... and the report is the first process's record, read back (a re-run would have measured its own seconds)
    assert again.collab_warmup == report.collab_warmup
    assert "collab warm-up: 3 steps" in again.summary()


@pytest.mark.parametrize("neighbours", [0, 3])
def test_lora_training_keeps_the_warmed_modules_at_lr_scale_zero(model_params, tmp_path, neighbours: int) -> None:
    from safetensors.torch import load_file

    params = model_params({"train.max_steps": 3, "train.resume": False, "train.precision": "32-true",
                           "train.collab_warmup.lr_scale": 0.0, "model.item_neighbours.window": neighbours})
    train(params)
    trained = load_file(params.resolve(params.train.out_dir) / "modules.safetensors")
    # the same build and warm-up by hand (train seeds both with seed + seed_offset)
    built = build_model(params)
    collab_warmup(built.model, _sequences(params), params.train.collab_warmup, params.seed + params.train.seed_offset,
                  valid=next_item_task(load_split_data(params), "valid"), ratings=_ratings(params),
                  neighbour_grid=params.model.item_neighbours.weight_grid)
    warmed = {n: p for n, p in built.model.named_parameters()
              if n.startswith(("fusion.", "item_head.", "user_head.history_mlp.", "user_head.history_reader.",
                               "rating_estimator."))}
    warmed |= {n: b for n, b in built.model.named_buffers() if n == "neighbours.weight"}  # β chosen after the warm-up
    assert ("neighbours.weight" in warmed) == bool(neighbours)
    # ... and the running statistics in front of them (frozen too: `freeze_warmed_statistics`)
    warmed |= {n: b for n, b in built.model.named_buffers()
               if n.startswith(("user_head.history_standardise.", "item_head.standardise."))}
    assert warmed and "user_head.history_standardise.mean" in warmed
    for name, value in warmed.items():
        torch.testing.assert_close(trained[name], value.detach(), rtol=0, atol=0, msg=name)
    # what LoRA training does train still moves: the hidden-state path starts at zero and leaves it
    assert trained["user_head.mlp.2.weight"].abs().sum() > 0


def test_warmup_early_stopping_keeps_the_best_validation_state(model_params) -> None:
    """eval_every: the validation curve is measured, the best state is restored and reproduces its figure."""
    params = model_params({"train.collab_warmup.steps": 24, "train.collab_warmup.batch_size": 16,
                           "train.collab_warmup.lr": 0.01, "train.collab_warmup.eval_every": 3,
                           "train.collab_warmup.patience": 2})
    model = build_model(params).model
    valid = next_item_task(load_split_data(params), "valid")
    report = collab_warmup(model, _sequences(params), params.train.collab_warmup, seed=3, log_every=3, valid=valid,
                           ratings=_ratings(params))
    steps = [s for s, _ in report.valid_curve]
    values = [v for _, v in report.valid_curve]
    assert steps == list(range(3, report.steps + 1, 3)) and report.steps <= 24
    assert report.best_step == steps[int(np.argmax(values))]
    if report.steps < 24:  # stopped early: exactly `patience` evaluations after the best one
        assert len(steps) - 1 - steps.index(report.best_step) == 2
    with model.without_neighbours():  # the curve is of the neural path (the term is chosen after, on its own)
        again = evaluate_scorer(HistoryPathScorer(model), valid, ks=(10,), batch_size=512)["ndcg@10"]
    assert again == max(values)


def test_neighbour_term_is_left_out_of_the_fit_and_its_weight_chosen_on_validation(model_params) -> None:
    """`model.item_neighbours`: the warm-up fits the neural path exactly as without the term (β = 0 while fitting:
    the targets are in the factors), then sets β to the grid value with the best validation NDCG@10 of the
    history path (ties to the smaller), which the kept model reproduces."""
    states, reports = {}, {}
    for window in (0, 3):
        params = model_params({"train.collab_warmup.steps": 6, "train.collab_warmup.batch_size": 8,
                               "train.collab_warmup.eval_every": 3, "model.item_neighbours.window": window,
                               "model.item_neighbours.weight_grid": [0.0, 0.5, 2.0, 50.0]})
        model = build_model(params).model
        valid = next_item_task(load_split_data(params), "valid")
        reports[window] = collab_warmup(model, _sequences(params), params.train.collab_warmup, seed=3, valid=valid,
                                        ratings=_ratings(params), neighbour_grid=params.model.item_neighbours.weight_grid)
        states[window] = {n: p.detach().clone() for n, p in model.named_parameters()}
    for name, value in states[0].items():
        torch.testing.assert_close(states[3][name], value, rtol=1e-4, atol=1e-5, msg=name)
    assert reports[0].neighbour_weight is None and reports[0].neighbour_curve == []
    curve = reports[3].neighbour_curve
    assert [w for w, _ in curve] == [0.0, 0.5, 2.0, 50.0]
    assert curve[0][1] == pytest.approx(max(v for _, v in reports[0].valid_curve), abs=1e-4)  # β = 0: the neural path
    best = max(v for _, v in curve)
    assert reports[3].neighbour_weight == min(w for w, v in curve if v == best)
    assert float(model.neighbours.weight) == reports[3].neighbour_weight
    again = evaluate_scorer(HistoryPathScorer(model), valid, ks=(10,), batch_size=512)["ndcg@10"]
    assert again == pytest.approx(best, abs=1e-6)
