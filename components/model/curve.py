"""Retrieval learning curve during training: next-item HR@10 / NDCG@10 on a fixed validation subset.

Every `train.curve_every_n_steps` optimizer steps (and before the first and after the last), the model
ranks every item for the same seeded subset of validation users (`train.curve_users`) with the templates
`train.curve_templates` — full ranking, the user's train items excluded (`components/evaluation/ranking.py`,
the convention `unirec evaluate` uses) — and the figures go to MLflow (`curve/<template>/ndcg_at_10`, step =
optimizer step) and to `metrics/train.json` (`retrieval_curve`). It says whether a longer run would pay,
without touching the test split. It reads only the train and valid split files and never changes the
model (eval mode, no random draws), so turning it on or off leaves training identical.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch

from components.config import Params
from components.evaluation.ranking import load_split_data, rank_metrics, rank_of_targets
from components.model.batching import collate
from components.model.data import load_examples
from components.model.inference import InferenceConfig, catalogue_vectors, decoder_states, length_buckets
from components.model.prompting import encode_example

log = logging.getLogger(__name__)
CURVE_TASK = "next_item"
CURVE_METRICS = ("hr@10", "ndcg@10")


def curve_rows(params: Params) -> pd.DataFrame:
    """The validation next-item rows of the curve: `train.curve_users` seeded users, `train.curve_templates` only."""
    cfg = params.train
    frame = load_examples(params.resolve(params.paths.examples_dir), [CURVE_TASK], "valid")[CURVE_TASK]
    missing = sorted(set(cfg.curve_templates) - set(frame["template_id"]))
    if missing:
        raise ValueError(f"train.curve_templates: {missing} are not next_item templates of the examples")
    frame = frame[frame["template_id"].isin(cfg.curve_templates)]
    users = np.sort(frame["user_idx"].unique())
    if cfg.curve_users < len(users):
        users = np.sort(np.random.default_rng(params.seed + cfg.seed_offset).choice(users, cfg.curve_users,
                                                                                     replace=False))
    return frame[frame["user_idx"].isin(users)].reset_index(drop=True)


class RetrievalCurve(L.Callback):
    """Lightning callback computing the curve points; `points` holds them for the train report."""

    def __init__(self, params: Params, built: Any) -> None:  # built: components.model.build.Built
        self.params, self.built = params, built
        self.every = params.train.curve_every_n_steps
        rows = curve_rows(params)
        data = load_split_data(params, ("train",))
        seen = {int(u): np.unique(g.to_numpy(dtype=np.int64)) for u, g in data.train.groupby("user_idx")["item_idx"]}
        empty = np.empty(0, dtype=np.int64)
        self.templates = rows["template_id"].astype(str).tolist()
        self.targets = np.array([int(list(t)[0]) for t in rows["target_items"]], dtype=np.int64)
        self.exclude = [seen.get(int(u), empty) for u in rows["user_idx"]]
        spec, tokenizer = built.spec, built.backbone.tokenizer
        self.encoded = [encode_example(r, tokenizer, spec, with_target=True) for r in rows.to_dict("records")]
        self.pad_id = int(tokenizer.pad_token_id)
        self.inference = InferenceConfig(batch_size=params.train.curve_batch_size, top_k=10, max_new_tokens=0,
                                         autocast_bf16=params.train.precision.startswith("bf16"))
        self.points: list[dict[str, Any]] = []

    def ranks(self) -> np.ndarray:
        """0-based rank `(E,)` of each row's target (eval mode; the model's mode is restored)."""
        model = self.built.model
        was_training = model.training
        item_vecs = catalogue_vectors(model)
        ranks = np.empty(len(self.encoded), dtype=np.int64)
        with torch.inference_mode():
            for idx in length_buckets([len(e.input_ids) for e in self.encoded], self.inference.batch_size):
                batch = collate([self.encoded[i] for i in idx], self.pad_id)
                users = model.user_vectors(decoder_states(model, batch, self.inference), batch).float()  # (S, M, D)
                scores = torch.einsum("smd,nd->smn", users, item_vecs).amax(1)  # (S, N)
                ranks[idx] = rank_of_targets(scores, self.targets[idx], [self.exclude[i] for i in idx])
        model.train(was_training)
        return ranks

    def measure(self, step: int, trainer: L.Trainer | None = None) -> dict[str, Any]:
        start = time.perf_counter()
        ranks = self.ranks()
        point: dict[str, Any] = {"step": step, "seconds": round(time.perf_counter() - start, 2)}
        templates = np.asarray(self.templates)
        for template in sorted(set(self.templates)):
            metrics = rank_metrics(ranks[templates == template], (10,))
            point[template] = {k: round(metrics[k], 5) for k in CURVE_METRICS}
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

    def state_dict(self) -> dict[str, Any]:
        return {"points": self.points}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.points = list(state_dict.get("points", []))
