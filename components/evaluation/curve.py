"""Retrieval learning curve during training: next-item HR@K / NDCG@K on a fixed validation subset.

Every `train.curve_every_n_steps` optimizer steps (and before the first and after the last), the
model ranks every item for the same seeded subset of validation users (`train.curve_users`) with the
templates `train.curve_templates` — full ranking, the user's train items excluded, as `unirec
evaluate` does — and the figures go to MLflow (`curve/<template>/ndcg_at_10`, step = optimizer step)
and to `metrics/train.json` (`retrieval_curve`). This is the curve that says whether a longer run
would pay, without touching the test split.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import lightning as L

from components.config import TASKS, Params
from components.evaluation.rows import EvalData, load_eval_data
from components.evaluation.scoring import MetricContext, task_metrics
from components.evaluation.universal import InferenceConfig, catalogue_vectors, predict_task

log = logging.getLogger(__name__)
CURVE_TASK = "next_item"
CURVE_METRICS = ("hr@10", "ndcg@10")


def curve_data(params: Params) -> EvalData:
    """The validation rows of the curve: `train.curve_users` seeded users, `train.curve_templates` only."""
    cfg = params.train
    users = {t: (cfg.curve_users if t == CURVE_TASK else 1) for t in TASKS}
    shrunk = params.model_copy(update={"evaluate": params.evaluate.model_copy(
        update={"split": "valid", "users_per_task": users})})
    data = load_eval_data(shrunk)
    frame = data.frames[CURVE_TASK]
    known = set(frame["template_id"])
    missing = [t for t in cfg.curve_templates if t not in known]
    if missing:
        raise ValueError(f"train.curve_templates: {missing} are not next_item templates of the examples")
    frames = {CURVE_TASK: frame[frame["template_id"].isin(cfg.curve_templates)].reset_index(drop=True)}
    return EvalData(**{**data.__dict__, "frames": frames})


class RetrievalCurve(L.Callback):
    """Lightning callback computing the curve points; `points` holds them for the train report."""

    def __init__(self, params: Params, built: Any) -> None:  # built: components.model.build.Built
        self.params, self.built = params, built
        self.every = params.train.curve_every_n_steps
        self.data = curve_data(params)
        self.ctx = MetricContext(ks=(10,), top_k=10, tail_items=frozenset(), genres=self.data.genres,
                                 mask_format=self.data.mask_format)
        self.inference = InferenceConfig(batch_size=params.evaluate.batch_size, top_k=10,
                                         max_new_tokens=params.evaluate.max_new_tokens,
                                         autocast_bf16=params.evaluate.autocast_bf16)
        self.points: list[dict[str, Any]] = []

    def measure(self, step: int, trainer: L.Trainer | None = None) -> dict[str, Any]:
        model = self.built.model
        was_training = model.training
        start = time.perf_counter()
        rows = predict_task(model, self.built.backbone.tokenizer, self.built.spec, CURVE_TASK, self.data,
                            catalogue_vectors(model), self.inference)
        model.train(was_training)
        point: dict[str, Any] = {"step": step, "seconds": round(time.perf_counter() - start, 2)}
        for template, group in rows.groupby("template_id", sort=True):
            metrics = task_metrics(CURVE_TASK, group, self.ctx)
            point[str(template)] = {k: round(metrics[k], 5) for k in CURVE_METRICS}
        self.points.append(point)
        if trainer is not None and trainer.logger is not None:
            flat = {f"curve/{t}/{k.replace('@', '_at_')}": v for t, m in point.items() if isinstance(m, dict)
                    for k, v in m.items()}
            trainer.logger.log_metrics(flat, step=step)
        log.info("retrieval curve step %d: %s", step,
                 ", ".join(f"{t} ndcg@10 {m['ndcg@10']:.4f}" for t, m in point.items() if isinstance(m, dict)))
        return point

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if not self.points and trainer.global_step == 0:
            self.measure(0, trainer)

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, outputs: object, batch: object,
                           idx: int) -> None:
        step = int(trainer.global_step)
        if step % self.every == 0 and step < trainer.max_steps:
            self.measure(step, trainer)

    def on_train_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        step = int(trainer.global_step)
        if not self.points or self.points[-1]["step"] != step:
            self.measure(step, trainer)
