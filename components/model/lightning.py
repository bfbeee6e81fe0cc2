"""Lightning wrappers: `RecDataModule` (task mixture, dynamic padding, seeded, resumable) and
`LitUniversalRec` (one step handles every task; per-task losses logged; checkpoints hold only the
trainable weights), plus `ThroughputMonitor` (tokens/s, examples/s, per-task loss curves).

Multi-process data parallelism (DDP, `train.strategy: ddp`, `train.devices: W`): step k's global batch is split
across the W ranks (`MixtureBatches`), each rank weights its per-task mean losses by its share of the global
batch's units (`objective.loss_units`), so DDP's averaged gradient is the one-process gradient of the same
global batch; the logged losses, the loss curves and the throughput are the global batch's (one all-reduce per
step). Rank 0's whole mutable state (its collaborative warm-up, which the other ranks skip) is broadcast when
training starts (docs/design.md §7).
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

import lightning as L
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from components.config import TASKS, TrainParams
from components.model.batching import Batch
from components.model.data import MixtureBatches, SequentialBatches
from components.model.objective import loss_units
from components.model.prompting import EncodedExample
from components.model.universal import UniversalRecModel
from components.model.warmup import lr_factor, warmup_parameters

LEARNED_BUFFER_PREFIXES = ("user_head.standardise.", "user_head.history_standardise.", "item_head.standardise.",
                           "neighbours.weight")
"""Buffers that training changes (the heads' running statistics; the item-neighbourhood β the warm-up chose, which
a resumed run does not re-choose): checkpointed with the trainable tensors."""


def trainable_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """What training changes: every trainable parameter and the learned buffers, by name (no copies).

    The frozen backbone weights are left out (they are rebuilt from the cached backbone), so this is
    what a checkpoint holds.
    """
    state = {n: p for n, p in model.named_parameters() if p.requires_grad}
    return state | {n: b for n, b in model.named_buffers() if n.startswith(LEARNED_BUFFER_PREFIXES)}


def freeze_warmed_statistics(model: UniversalRecModel) -> None:
    """Keep the running statistics of the modules the collaborative warm-up fitted (the history path's and
    the item head's standardisation) as fitted, like their weights at `lr_scale: 0`. Left free, the history
    path's statistics drift to the mix of set-out prompts LoRA training reads (candidate lists, short query
    histories) within ~1/momentum steps, and the frozen MLP behind them no longer sees what it was fitted on."""
    for norm in (model.user_head.history_standardise, model.item_head.standardise):
        if norm is not None:
            norm.frozen = True


class RecDataModule(L.LightningDataModule):
    def __init__(self, train: dict[str, list[EncodedExample]], val: dict[str, list[EncodedExample]],
                 cfg: TrainParams, seed: int, pad_id: int) -> None:
        super().__init__()
        self.train, self.val, self.cfg, self.seed, self.pad_id = train, val, cfg, seed, pad_id

    def train_dataloader(self) -> DataLoader:
        # Batch k is a pure function of (seed, k): after a resume, start at the restored global step. Under DDP
        # this rank takes its shard of it (the Trainer runs with use_distributed_sampler=False).
        trainer = self.trainer
        start = trainer.global_step if trainer is not None else 0
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        data = MixtureBatches(self.train, self.cfg.task_weights, self.cfg.batch_size, self.cfg.max_steps,
                              self.seed, self.pad_id, start=start, rank=rank, world_size=world)
        return DataLoader(data, batch_size=None, shuffle=False, num_workers=0)

    def val_dataloader(self) -> DataLoader:
        # every rank validates on the whole (small, fixed) subset: the same figures on every rank
        return DataLoader(SequentialBatches(self.val, self.cfg.batch_size, self.pad_id), batch_size=None)

    def transfer_batch_to_device(self, batch: Batch, device: torch.device, dataloader_idx: int) -> Batch:
        return batch.to(device)


class LitUniversalRec(L.LightningModule):
    def __init__(self, model: UniversalRecModel, cfg: TrainParams, seed: int) -> None:
        super().__init__()
        self.model, self.cfg, self.seed = model, cfg, seed
        if cfg.collab_warmup.steps and cfg.collab_warmup.lr_scale == 0:
            freeze_warmed_statistics(model)
        self.strict_loading = False  # checkpoints carry only the trainable tensors
        self.last_losses: dict[str, float] = {}
        """Per-task losses of the last step's GLOBAL batch (all ranks)."""
        self.last_batch: tuple[int, int] = (0, 0)
        """(tokens, examples) of the last step's global batch (all ranks)."""
        self._pending: dict[str, list[float]] = defaultdict(list)

    def _generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed * 1_000_003 + int(self.global_step))

    def on_fit_start(self) -> None:
        """Under DDP, every rank starts from rank 0's state: only rank 0 ran the collaborative warm-up, and its
        trainable tensors and buffers (the learned statistics, β) are what a checkpoint holds. (DDP's wrapper also
        broadcasts rank 0's parameters and buffers; this does not rely on it.)"""
        if self.trainer.world_size > 1:
            for tensor in [*(p for p in self.model.parameters() if p.requires_grad), *self.model.buffers()]:
                dist.broadcast(tensor.data, src=0)

    def on_train_start(self) -> None:
        self.model.train()  # the backbone is loaded in eval mode; dropout (LoRA, modality) must be live

    def _global_losses(self, losses: dict[str, torch.Tensor], batch: Batch) -> torch.Tensor:
        """The loss to back-propagate; sets `last_losses` / `last_batch` to the GLOBAL batch's figures.

        One process: the sum of the per-task means. W ranks: each per-task mean is weighted by units_r · W / N
        (N = the global batch's units of the task), so DDP's average over ranks of the gradients is the gradient
        of the per-task means over the whole global batch — the one-process gradient."""
        world = self.trainer.world_size if self._trainer is not None else 1
        tokens, examples = batch.num_tokens, int(batch.input_ids.shape[0])
        if world == 1:
            self.last_losses = {task: float(loss.detach()) for task, loss in losses.items()}
            self.last_batch = (tokens, examples)
            return torch.stack(list(losses.values())).sum()
        units = loss_units(batch)
        n = len(TASKS)
        stats = torch.zeros(2 * n + 2, dtype=torch.float64, device=batch.input_ids.device)
        for task, loss in losses.items():
            i = TASKS.index(task)
            stats[i], stats[n + i] = units[task], float(loss.detach()) * units[task]
        stats[2 * n], stats[2 * n + 1] = tokens, examples
        dist.all_reduce(stats)
        total = sum(loss * (units[task] * world / float(stats[TASKS.index(task)])) for task, loss in losses.items())
        self.last_losses = {task: float(stats[n + i] / stats[i]) for i, task in enumerate(TASKS) if stats[i] > 0}
        self.last_batch = (int(stats[2 * n]), int(stats[2 * n + 1]))
        return total  # type: ignore[return-value]

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        # Every random draw of step k (dropout, negatives) is seeded by k: a resumed run replays it exactly.
        torch.manual_seed(self.seed * 1_000_003 + int(self.global_step))
        losses = self.model.losses(batch, self._generator())
        total = self._global_losses(losses, batch)
        for task, value in self.last_losses.items():
            self._pending[task].append(value)
        if (self.global_step + 1) % self.cfg.log_every_n_steps == 0:
            # mean loss of each task over the batches since the last log (tasks absent from them: no point)
            means = {f"train/loss_{t}": sum(v) / len(v) for t, v in self._pending.items() if v}
            for key, value in means.items():
                self.log(key, value, on_step=True, on_epoch=False, batch_size=self.last_batch[1])
            self._pending.clear()
        self.log("train/loss", sum(self.last_losses.values()), on_step=True, on_epoch=False, prog_bar=True,
                 batch_size=self.last_batch[1])
        return total

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        losses = self.model.losses(batch, torch.Generator().manual_seed(self.seed + batch_idx))
        size = int(batch.input_ids.shape[0])
        for task, loss in losses.items():
            # every rank validates on the same batches: sync_dist averages equal figures (no DDP warning)
            self.log(f"val/loss_{task}", loss, on_step=False, on_epoch=True, batch_size=size, sync_dist=True)

    def configure_optimizers(self):  # noqa: ANN201 - Lightning's union return type
        params = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        special = self.model.special_rows
        # after the collaborative warm-up, the modules it fitted learn at lr × `collab_warmup.lr_scale` (0 = kept
        # as fitted): the same 8-prompt batches at the full rate undo the warm-up (measured: docs/experiments.md, "Collaborative warm-up")
        prior = {id(p) for n, p in params if n.startswith("verbaliser_prior.")}
        warmed = {id(p) for p in warmup_parameters(self.model)} - prior if self.cfg.collab_warmup.steps else set()
        rest = [p for _, p in params if p is not special and id(p) not in warmed | prior]
        groups = [
            {"params": [p for _, p in params if p is special], "lr": self.cfg.embedding_lr, "weight_decay": 0.0},
            # a few scalars (scale and offset per verbaliser word): a larger rate than the network's
            {"params": [p for _, p in params if id(p) in prior], "lr": self.cfg.prior_lr, "weight_decay": 0.0},
            {"params": rest, "lr": self.cfg.lr, "weight_decay": self.cfg.weight_decay},
            {"params": [p for _, p in params if id(p) in warmed], "lr": self.cfg.lr * self.cfg.collab_warmup.lr_scale,
             "weight_decay": self.cfg.weight_decay},
        ]
        optimizer = torch.optim.AdamW([g for g in groups if g["params"]])
        warmup, total = self.cfg.warmup_steps, self.cfg.max_steps
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, warmup, total))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        trainable = {f"model.{n}" for n in trainable_tensors(self.model)}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}


class ThroughputMonitor(L.Callback):
    """Measures training throughput and keeps every per-task loss for the curves in metrics/train.json."""

    def __init__(self) -> None:
        self.tokens = 0
        self.examples = 0
        self.batches = 0
        self.seconds = 0.0
        self.curves: dict[str, list[tuple[int, float]]] = defaultdict(list)
        self._start = 0.0

    def on_train_batch_start(self, trainer: L.Trainer, module: L.LightningModule, batch: Batch, idx: int) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, outputs: object, batch: Batch,
                           idx: int) -> None:
        self.seconds += time.perf_counter() - self._start
        tokens, examples = getattr(module, "last_batch", (0, 0)) or (0, 0)
        if not examples:  # a module that does not report its global batch: this process's batch
            tokens, examples = batch.num_tokens, int(batch.input_ids.shape[0])
        self.tokens += tokens  # under DDP the global batch's (every rank's), so tokens/s is the run's
        self.examples += examples
        self.batches += 1
        step = int(trainer.global_step)
        for task, value in getattr(module, "last_losses", {}).items():
            self.curves[task].append((step, value))

    def state_dict(self) -> dict[str, Any]:
        """The loss curves travel in the checkpoint, so a resumed run reports every step, not only its own."""
        return {"curves": {task: list(points) for task, points in self.curves.items()}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.curves = defaultdict(list, {task: [tuple(p) for p in points]
                                         for task, points in state_dict.get("curves", {}).items()})

    def summary(self) -> dict[str, float]:
        """Throughput of the batches this process ran (a resumed run counts only its own)."""
        secs = max(self.seconds, 1e-9)
        return {"tokens_per_s": self.tokens / secs, "examples_per_s": self.examples / secs,
                "train_seconds": self.seconds, "tokens": self.tokens, "examples": self.examples,
                "batches": self.batches}
