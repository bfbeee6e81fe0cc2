"""Shared pieces of the expert baselines' training: early stopping, minibatch epochs, seeding, grids.

Split loading and the ranking helpers the experts are validated with live in
`components/evaluation/ranking.py` (shared with the model's warm-up and learning curve).
"""

from __future__ import annotations

import copy
import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from pydantic import BaseModel
from torch import nn

log = logging.getLogger(__name__)


@dataclass
class TrainHistory:
    """What one iterative expert's training did (written to metrics_file)."""

    monitor: str
    higher_is_better: bool
    curve: list[float] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    epochs: int = 0
    best_epoch: int = 0
    best_value: float = float("nan")
    stopped_early: bool = False
    wall_s: float = 0.0


def fit_early_stopping(model: nn.Module, train_epoch: Callable[[int], float], validate: Callable[[], float],
                       *, monitor: str, higher_is_better: bool, max_epochs: int, patience: int) -> TrainHistory:
    """Run `train_epoch(epoch) -> mean loss` then `validate() -> value` per epoch (1-based); stop after
    `patience` epochs without improvement and load the best epoch's weights back into `model`."""
    hist = TrainHistory(monitor=monitor, higher_is_better=higher_is_better)
    best_state, start = copy.deepcopy(model.state_dict()), time.perf_counter()
    for epoch in range(1, max_epochs + 1):
        model.train()
        hist.train_loss.append(float(train_epoch(epoch)))
        model.eval()
        with torch.no_grad():
            value = float(validate())
        hist.curve.append(value)
        hist.epochs = epoch
        log.info("epoch %d: train loss %.4f, %s %.4f", epoch, hist.train_loss[-1], monitor, value)
        better = hist.best_epoch == 0 or (value > hist.best_value if higher_is_better else value < hist.best_value)
        if better:
            hist.best_epoch, hist.best_value = epoch, value
            best_state = copy.deepcopy(model.state_dict())
        elif epoch - hist.best_epoch >= patience:
            hist.stopped_early = True
            break
    model.load_state_dict(best_state)
    model.eval()
    hist.wall_s = time.perf_counter() - start
    return hist


def minibatch_epoch(n_rows: int, batch_size: int, generator: torch.Generator, optimizer: torch.optim.Optimizer,
                    batch_loss: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]) -> float:
    """One shuffled pass over `n_rows` rows in batches; `batch_loss(row_idx)` returns (loss to minimise,
    data loss to report). Returns the mean reported loss per row."""
    total = 0.0
    for batch in torch.randperm(n_rows, generator=generator).split(batch_size):
        loss, reported = batch_loss(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        total += reported.item() * len(batch)
    return total / max(n_rows, 1)


def seed_everything(seed: int) -> torch.Generator:
    """Seed torch's global RNG (initialisation, dropout); return a generator for batch order."""
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def grid_points(grid: BaseModel) -> list[dict[str, Any]]:
    """The Cartesian product of a grid section's lists, in field order (first field slowest)."""
    names = list(type(grid).model_fields)
    return [dict(zip(names, values)) for values in itertools.product(*(getattr(grid, n) for n in names))]


def config_key(config: dict[str, Any]) -> str:
    """A configuration as text, for the metrics file: `dim=16,l2=0.05`."""
    return ",".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in config.items())


def best_config(scores: dict[str, float], higher_is_better: bool = True) -> str:
    """The key with the best score; ties go to the earlier key (the grid's order)."""
    if not scores:
        raise ValueError("best_config: no scores")
    sign = 1.0 if higher_is_better else -1.0
    return max(scores, key=lambda k: (sign * scores[k], -list(scores).index(k)))
