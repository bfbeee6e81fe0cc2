"""The universal model trains on every task, LoRA leaves the base frozen, artefacts reload exactly,
and an interrupted Lightning run resumes from its last checkpoint to the same end state."""

from __future__ import annotations

import json
import warnings

import lightning as L
import mlflow
import numpy as np
import pytest
import torch

from components.config import TASKS
from components.model.batching import collate
from components.model.build import build_model, load_trained, save_artifacts
from components.model.data import encode_frames, load_examples
from components.model.lightning import LEARNED_BUFFER_PREFIXES
from components.train import train


def _batch(built, params, task: str, n: int = 4):
    frames = load_examples(params.resolve(params.paths.examples_dir), [task], "train")
    enc = encode_frames(frames, built.backbone.tokenizer, built.spec, progress=False)[task][:n]
    return collate(enc, built.backbone.tokenizer.pad_token_id)


@pytest.mark.parametrize("task", TASKS)
def test_two_steps_per_task_reduce_nothing_to_nan_and_update_weights(model_params, task: str) -> None:
    params = model_params()
    built = build_model(params)
    model = built.model.train()
    batch = _batch(built, params, task)
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.0)
    values = []
    for _ in range(2):  # the same dropout draws both times (global RNG and generator): the change is the step's
        torch.manual_seed(0)
        losses = model.losses(batch, torch.Generator().manual_seed(0))
        assert set(losses) == {task}
        loss = losses[task]
        assert torch.isfinite(loss)
        values.append(float(loss.detach()))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    changed = [n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p, trainable[n])]
    assert any("lora_" in n for n in changed), "LoRA weights did not move"
    if task not in ("text", "infill", "ctr", "rating"):
        assert any(n.startswith(("user_head", "item_head")) for n in changed)
    assert values[1] < values[0] + 1.0  # one step on the same batch does not blow up


def test_lora_leaves_frozen_base_weights_unchanged(model_params) -> None:
    params = model_params()
    built = build_model(params)
    model = built.model.train()
    base = {n: p.detach().clone() for n, p in model.llm.named_parameters() if "lora_" not in n}
    special = model.special_rows.detach().clone()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.0)
    for task in ("next_item", "text"):
        loss = model.losses(_batch(built, params, task))[task]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    for name, p in model.llm.named_parameters():
        if "lora_" not in name:
            assert not p.requires_grad and torch.equal(p, base[name]), f"frozen base weight {name} changed"
    assert not torch.equal(model.special_rows.detach(), special), "special-token rows did not train"


def test_saved_artefacts_reload_to_identical_scores(model_params) -> None:
    params = model_params()
    built = build_model(params)
    model = built.model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.0)
    loss = model.losses(_batch(built, params, "next_item"))["next_item"]
    loss.backward()
    optimizer.step()
    out = params.resolve(params.train.out_dir)
    save_artifacts(built, params, out)
    model.eval()
    batch = _batch(built, params, "candidate_choice")
    with torch.no_grad():
        before = model.score_candidates(batch)
        vectors = model.item_vectors().numpy()
    reloaded = load_trained(params, out)
    with torch.no_grad():
        after = reloaded.model.score_candidates(batch)
    assert torch.equal(before, after)
    assert np.array_equal(np.load(out / "item_vectors.npy"), vectors)
    assert np.array_equal(reloaded.model.item_vectors().detach().numpy(), vectors)


class _Crash(L.Callback):
    def __init__(self, at_step: int) -> None:
        self.at_step = at_step

    def on_train_batch_start(self, trainer, module, batch, idx) -> None:
        if trainer.global_step == self.at_step:
            raise RuntimeError("simulated crash")


def _trainable(params) -> dict[str, torch.Tensor]:
    """Every parameter and the buffers training sets (running statistics, the item-neighbourhood β)."""
    model = load_trained(params).model
    return {n: p.detach().clone() for n, p in model.named_parameters()} | \
        {n: b.detach().clone() for n, b in model.named_buffers() if n.startswith(LEARNED_BUFFER_PREFIXES)}


def test_killed_run_resumes_from_last_checkpoint_and_matches(model_params, tmp_path) -> None:
    overrides = {"train.max_steps": 4, "train.checkpoint_every_n_steps": 2, "train.precision": "32-true"}
    straight = model_params({**overrides, "train.out_dir": str(tmp_path / "straight"),
                             "train.checkpoint_dir": str(tmp_path / "straight_ckpt")})
    report = train(straight)
    assert report.steps == 4 and report.throughput["batches"] == 4 and report.resumed_from is None
    metrics = json.loads((straight.resolve(straight.paths.metrics_dir) / "train.json").read_text())
    assert metrics["steps"] == 4 and metrics["throughput"]["tokens_per_s"] > 0

    resumed = model_params({**overrides, "train.out_dir": str(tmp_path / "resumed"),
                            "train.checkpoint_dir": str(tmp_path / "resumed_ckpt")})
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(resumed, callbacks=[_Crash(at_step=3)])
    assert (tmp_path / "resumed_ckpt" / "last.ckpt").is_file()
    assert not (tmp_path / "resumed" / "modules.safetensors").exists()
    report = train(resumed)
    # it really resumed: only the two remaining batches ran in this process
    assert report.steps == 4 and report.throughput["batches"] == 2
    assert report.resumed_from is not None and report.resumed_from.endswith("last.ckpt")
    # ... yet its train.json reports the whole run: the warm-up (run by the crashed process) and every step's loss
    resumed_metrics = json.loads((resumed.resolve(resumed.paths.metrics_dir) / "train.json").read_text())
    assert metrics["collab_warmup"] and resumed_metrics["collab_warmup"]
    for key in ("steps", "targets", "curve", "valid_curve", "best_step", "last_loss"):
        assert resumed_metrics["collab_warmup"][key] == metrics["collab_warmup"][key], key
    assert resumed_metrics["curves"].keys() == metrics["curves"].keys()
    for task, points in metrics["curves"].items():
        assert [s for s, _ in resumed_metrics["curves"][task]] == [s for s, _ in points], task
        assert [v for _, v in resumed_metrics["curves"][task]] == pytest.approx([v for _, v in points], rel=1e-3)
    a, b = _trainable(straight), _trainable(resumed)
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-5, rtol=1e-4, msg=lambda m, n=name: f"{n}: {m}")


def test_text_generation_after_lm_token(model_params) -> None:
    from components.model.prompting import encode_example

    params = model_params()
    built = build_model(params)
    model = built.model.eval()
    tok = built.backbone.tokenizer
    rows = load_examples(params.resolve(params.paths.examples_dir), ["text"], "test")["text"].head(2)
    enc = [encode_example(r, tok, built.spec, with_target=False) for r in rows.to_dict("records")]
    assert all(e.input_ids[-1] == built.spec.lm_id and not e.labels for e in enc)
    batch = collate(enc, tok.pad_token_id)
    first = model.generate_ids(batch, max_new_tokens=5, eos_id=built.spec.eos_id)
    again = model.generate_ids(batch, max_new_tokens=5, eos_id=built.spec.eos_id)
    assert first == again and len(first) == 2
    assert all(0 < len(ids) <= 5 or len(ids) == 0 for ids in first)
    assert all(isinstance(tok.decode(ids), str) for ids in first)


def test_full_fine_tuning_when_lora_is_disabled(model_params) -> None:
    params = model_params({"lora.enabled": False})
    built = build_model(params)
    model = built.model.train()
    assert not any("lora_" in n for n, _ in model.named_parameters())
    layer = next(p for n, p in model.llm.named_parameters() if "q_proj.weight" in n)
    assert layer.requires_grad
    before = layer.detach().clone()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.0)
    model.losses(_batch(built, params, "next_item"))["next_item"].backward()
    optimizer.step()
    assert not torch.equal(layer, before)


def test_checkpoint_of_another_configuration_is_not_resumed(model_params, tmp_path) -> None:
    base = {"train.max_steps": 2, "train.checkpoint_every_n_steps": 2, "train.precision": "32-true",
            "train.out_dir": str(tmp_path / "out"), "train.checkpoint_dir": str(tmp_path / "ckpt")}
    train(model_params(base))
    assert (tmp_path / "ckpt" / "last.ckpt").is_file()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = train(model_params({**base, "lora.r": 4}))  # another configuration: must start fresh
    assert report.resumed_from is None and report.throughput["batches"] == 2
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["fingerprint.txt", "last.ckpt", "mlflow_run_id.txt",
                                                                     "step-step=2.ckpt", "warmup_report.json"]
    # the folder held only our bookkeeping when Lightning set up: its "directory not empty" alarm is not raised
    assert not [w for w in caught if "exists and is not empty" in str(w.message)]
    # a different step budget is another configuration too (the LR schedule depends on it): a LOWER
    # max_steps must retrain from scratch, not resume a checkpoint that is already past it
    report = train(model_params({**base, "lora.r": 4, "train.max_steps": 1}))
    assert report.resumed_from is None and report.steps == 1 and report.throughput["batches"] == 1


@pytest.mark.parametrize("kind", ["torch", "flat", "hnsw"])
def test_set_out_recommends_k_distinct_valid_unseen_items(model_params, kind: str) -> None:
    from components.model.inference import catalogue_index, recommend

    params = model_params({"index.kind": kind})
    built = build_model(params)
    batch = _batch(built, params, "next_item")
    index = catalogue_index(built.model, params.index)
    seen = [list(range(i, i + 7)) for i in range(batch.user_rows.numel())]
    ids, scores = recommend(built.model, index, batch, k=10, exclude=seen)
    assert ids.shape == scores.shape == (batch.user_rows.numel(), 10)
    for row, excluded in zip(ids.tolist(), seen):
        assert len(set(row)) == 10 and all(0 <= i < built.model.n_items for i in row)
        assert not set(row) & set(excluded)
    assert (np.diff(scores, axis=1) <= 1e-6).all()  # best first


def test_retrieval_learning_curve_is_measured_and_written(model_params) -> None:
    """train.curve_every_n_steps: points at step 0, every N steps and the last step, in train.json."""
    params = model_params({"train.curve_every_n_steps": 2, "train.max_steps": 3, "train.resume": False})
    report = train(params)
    payload = json.loads((params.resolve(params.paths.metrics_dir) / "train.json").read_text())
    points = payload["retrieval_curve"]
    assert [p["step"] for p in points] == [0, 2, 3] and report.steps == 3
    for point in points:
        assert set(point) - {"step", "seconds"} == set(params.train.curve_templates)
        for figures in (v for k, v in point.items() if k not in ("step", "seconds")):
            assert 0.0 <= figures["ndcg@10"] <= figures["hr@10"] <= 1.0


def test_run_artifacts_stay_in_the_project_not_the_working_directory(model_params, tmp_path, monkeypatch) -> None:
    """mlflow.artifact_root is anchored at the params folder: training from another directory writes no ./mlruns."""
    params = model_params({"train.max_steps": 1, "train.resume": False, "mlflow.experiment": "artifact-root-check"})
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    report = train(params)
    client = mlflow.MlflowClient(tracking_uri=params.tracking_uri())
    experiment = client.get_experiment_by_name("artifact-root-check")
    assert experiment.artifact_location == (params.root / "mlruns").resolve().as_uri()
    assert client.get_run(report.mlflow_run_id).info.artifact_uri.startswith(experiment.artifact_location + "/")
    assert not (elsewhere / "mlruns").exists()


def test_curve_points_survive_a_resume(model_params) -> None:
    """The learning curve travels in the checkpoint: after a crash at step 3 and a resume, train.json holds every
    point of the run, and they equal an uninterrupted run's (the curve never changes training)."""
    overrides = {"train.curve_every_n_steps": 1, "train.max_steps": 4, "train.checkpoint_every_n_steps": 2,
                 "train.precision": "32-true"}
    straight = model_params({**overrides, "train.resume": False})
    train(straight)
    expected = json.loads((straight.resolve(straight.paths.metrics_dir) / "train.json").read_text())["retrieval_curve"]
    resumed = model_params({**overrides, "train.resume": True, "train.out_dir": straight.train.out_dir + "_r",
                            "train.checkpoint_dir": straight.train.checkpoint_dir + "_r"})
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(resumed, callbacks=[_Crash(at_step=3)])
    report = train(resumed)
    assert report.resumed_from is not None and report.throughput["batches"] == 2
    points = json.loads((resumed.resolve(resumed.paths.metrics_dir) / "train.json").read_text())["retrieval_curve"]
    assert [p["step"] for p in points] == [0, 1, 2, 3, 4]  # the points before the crash came with the checkpoint
    for got, want in zip(points, expected):
        for template in resumed.train.curve_templates:
            assert got[template] == pytest.approx(want[template], abs=1e-4), (got["step"], template)


def test_curve_ranks_equal_the_evaluators_on_the_same_rows(model_params) -> None:
    """The learning curve (components/model/curve.py, shared ranking helpers only) ranks each validation row's
    target exactly as `unirec evaluate`'s evaluator does on the same rows (1-based there, 0-based here)."""
    from components.evaluation.rows import load_eval_data
    from components.evaluation.universal import predict_task
    from components.model.curve import RetrievalCurve, curve_rows
    from components.model.inference import InferenceConfig, catalogue_vectors

    params = model_params({"train.curve_every_n_steps": 1, "train.curve_users": 5, "train.precision": "32-true"})
    built = build_model(params)
    curve = RetrievalCurve(params, built)
    rows = curve_rows(params)
    evaluate_params = params.model_copy(update={"evaluate": params.evaluate.model_copy(
        update={"split": "valid", "users_per_task": {t: None for t in TASKS}, "seen_templates_per_user": None,
                "unseen_templates_per_user": None})})
    data = load_eval_data(evaluate_params)
    keys = ["user_idx", "template_id"]
    frame = data.frames["next_item"].merge(rows[keys], on=keys).reset_index(drop=True)
    assert len(frame) == len(rows) > 0
    data = type(data)(**{**data.__dict__, "frames": {"next_item": frame}})
    cfg = InferenceConfig(batch_size=4, top_k=10, max_new_tokens=1, autocast_bf16=False)
    expected = predict_task(built.model, built.backbone.tokenizer, built.spec, "next_item", data,
                            catalogue_vectors(built.model), cfg)
    got = dict(zip(zip(rows["user_idx"], rows["template_id"]), curve.ranks() + 1))
    want = dict(zip(zip(expected["user_idx"], expected["template_id"]), expected["rank"]))
    assert got == want
