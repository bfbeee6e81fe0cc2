"""Retrieval learning curve during training: next-item HR@K / NDCG@K on a fixed validation subset.

Every `train.curve_every_n_steps` optimizer steps (and before the first and after the last), the
model ranks every item for the same seeded subset of validation users (`train.curve_users`) with the
templates `train.curve_templates` — full ranking, the user's train items excluded, as `unirec
evaluate` does — and the figures go to MLflow (`curve/<template>/ndcg_at_10`, step = optimizer step)
and to `metrics/train.json` (`retrieval_curve`). This is the curve that says whether a longer run
would pay, without touching the test split.

With `train.select_best` the curve is also the early-stopping signal the experts get: each point whose
mean NDCG@10 over the curve templates beats every earlier one snapshots the trainable state
(`trainable_state`), and after the last step the best snapshot is loaded back, so the saved model is
the best validation point (step 0 = the model right after the collaborative warm-up). The snapshot
travels in Lightning checkpoints (`state_dict`), so a resumed run selects over the whole curve.
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
from components.model.lightning import trainable_state, trainable_tensors

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
        self.select_best = params.train.select_best
        self.points: list[dict[str, Any]] = []
        self.best_step: int | None = None
        self.best_score = float("-inf")
        self.best_state: dict[str, Any] = {}
        self.selected_step: int | None = None
        """Step whose state the saved model holds (set after the last step when `select_best`)."""

    @staticmethod
    def score(point: dict[str, Any]) -> float:
        """Selection score of a curve point: mean NDCG@10 over its templates."""
        values = [m["ndcg@10"] for m in point.values() if isinstance(m, dict)]
        return sum(values) / len(values)

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
        score = self.score(point)
        if self.select_best and score > self.best_score:
            self.best_step, self.best_score, self.best_state = step, score, trainable_state(model)
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
        if self.select_best:
            self.restore_best(step, trainer)

    def restore_best(self, last_step: int, trainer: L.Trainer | None = None) -> None:
        """Load the best point's trainable state into the model (a no-op when the last step is the best)."""
        if self.best_step is None:
            raise RuntimeError("train.select_best: no curve point was measured, nothing to select")
        if self.best_step != last_step:
            missing = set(trainable_tensors(self.built.model)) - set(self.best_state)
            if missing:
                raise RuntimeError(f"train.select_best: the snapshot of step {self.best_step} lacks {sorted(missing)[:5]}")
            result = self.built.model.load_state_dict(self.best_state, strict=False)
            if result.unexpected_keys:
                raise RuntimeError(f"train.select_best: unknown tensors in the snapshot: {result.unexpected_keys[:5]}")
        self.selected_step = self.best_step
        log.info("select_best: keeping step %d (mean curve NDCG@10 %.4f; last step %d: %.4f)", self.best_step,
                 self.best_score, last_step, self.score(self.points[-1]))
        if trainer is not None and trainer.logger is not None:
            trainer.logger.log_metrics({"curve/selected_step": float(self.best_step),
                                        "curve/selected_mean_ndcg_at_10": self.best_score}, step=last_step)

    def state_dict(self) -> dict[str, Any]:
        return {"points": self.points, "best_step": self.best_step, "best_score": self.best_score,
                "best_state": self.best_state}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.points = list(state_dict.get("points", []))
        self.best_step = state_dict.get("best_step")
        self.best_score = float(state_dict.get("best_score", float("-inf")))
        self.best_state = dict(state_dict.get("best_state", {}))
