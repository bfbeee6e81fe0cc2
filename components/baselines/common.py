"""Shared pieces of the expert baselines: split loading, next-item tasks, ranking metrics, early stopping.

Ranking convention (the project's, DESIGN.md §3): full ranking over all N items; the user's earlier
items (train, plus valid for the test split) are excluded from the ranking except the target itself;
ties are broken pessimistically (the target ranks below every item with an equal score).
`rank_metrics` is a private stand-in for the shared evaluator in components/evaluation/metrics.py.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np
import pandas as pd
import torch
from torch import nn

from components.config import Params
from components.split import load_split_frame
from components.tables import id_map_path

log = logging.getLogger(__name__)


class NextItemScorer(Protocol):
    """Common interface of the next-item experts: one score per (user, item), higher = better."""

    def score_users(self, user_idx: np.ndarray, histories: Sequence[np.ndarray]) -> np.ndarray:
        """`user_idx` (U,), `histories` U chronological item_idx arrays → float32 scores (U, N)."""
        ...


@dataclass(frozen=True)
class SplitData:
    """The split files one expert trains on. Frames are sorted by (user_idx, order)."""

    n_users: int
    n_items: int
    train: pd.DataFrame
    valid: pd.DataFrame
    test: pd.DataFrame

    def train_sequences(self) -> list[np.ndarray]:
        """Chronological train item_idx per user (index = user_idx; empty for users without train rows)."""
        seqs = [np.empty(0, dtype=np.int64) for _ in range(self.n_users)]
        for user, items in self.train.groupby("user_idx", sort=True)["item_idx"]:
            seqs[int(user)] = items.to_numpy(dtype=np.int64)
        return seqs


@dataclass(frozen=True)
class NextItemTask:
    """E evaluation rows: `user_idx` (E,), `histories` (E arrays), `targets` (E,), `exclude` (E arrays)."""

    user_idx: np.ndarray
    histories: list[np.ndarray]
    targets: np.ndarray
    exclude: list[np.ndarray]


def load_split_data(params: Params) -> SplitData:
    """Read train/valid/test of `paths.splits_dir`; sizes from the canonical id maps."""
    splits = params.resolve(params.paths.splits_dir)
    canonical = params.resolve(params.paths.canonical_dir)
    frames = {name: load_split_frame(splits, name).sort_values(["user_idx", "order"], kind="stable")
              .reset_index(drop=True) for name in ("train", "valid", "test")}
    n_users = len(pd.read_parquet(id_map_path(canonical, "users")))
    n_items = len(pd.read_parquet(id_map_path(canonical, "items")))
    return SplitData(n_users=n_users, n_items=n_items, **frames)


def next_item_task(data: SplitData, split: Literal["valid", "test"]) -> NextItemTask:
    """Valid: history = train sequence. Test: history = train sequence + the valid item (if any)."""
    seqs = data.train_sequences()
    valid_item = dict(zip(data.valid["user_idx"].to_numpy(), data.valid["item_idx"].to_numpy()))
    frame = data.valid if split == "valid" else data.test
    users = frame["user_idx"].to_numpy(dtype=np.int64)
    histories = []
    for u in users:
        hist = seqs[int(u)]
        if split == "test" and int(u) in valid_item:
            hist = np.append(hist, np.int64(valid_item[int(u)]))
        histories.append(hist)
    return NextItemTask(user_idx=users, histories=histories, targets=frame["item_idx"].to_numpy(dtype=np.int64),
                        exclude=[np.unique(h) for h in histories])


def rank_of_targets(scores: np.ndarray | torch.Tensor, targets: np.ndarray,
                    exclude: Sequence[np.ndarray]) -> np.ndarray:
    """0-based pessimistic rank of each target among the non-excluded items. scores (E, N) → (E,)."""
    s = torch.as_tensor(scores, dtype=torch.float32).clone()
    if not torch.isfinite(s).all():
        raise ValueError("scores contain NaN or inf")
    rows = np.repeat(np.arange(len(exclude)), [len(e) for e in exclude])
    cols = np.concatenate(list(exclude)) if len(exclude) else np.empty(0, dtype=np.int64)
    t = torch.as_tensor(np.asarray(targets, dtype=np.int64).copy())
    target_score = s[torch.arange(len(t)), t].clone()
    s[torch.as_tensor(rows, dtype=torch.long), torch.as_tensor(cols, dtype=torch.long)] = float("-inf")
    s[torch.arange(len(t)), t] = target_score  # a repeated target is still ranked
    above = (s > target_score[:, None]).sum(1)
    ties = (s == target_score[:, None]).sum(1) - 1
    return (above + ties).numpy()


def rank_metrics(ranks: np.ndarray, ks: Sequence[int]) -> dict[str, float]:
    """HR@k and NDCG@k (one relevant item) from 0-based ranks (E,)."""
    out: dict[str, float] = {}
    for k in ks:
        hit = ranks < k
        out[f"hr@{k}"] = float(hit.mean()) if len(ranks) else 0.0
        out[f"ndcg@{k}"] = float(np.where(hit, 1.0 / np.log2(ranks + 2.0), 0.0).mean()) if len(ranks) else 0.0
    return out


def evaluate_scorer(scorer: NextItemScorer, task: NextItemTask, ks: Sequence[int], batch_size: int) -> dict[str, float]:
    """Full-ranking HR/NDCG of `scorer` on `task`, scoring `batch_size` users at a time."""
    ranks = []
    for start in range(0, len(task.targets), batch_size):
        sl = slice(start, start + batch_size)
        scores = scorer.score_users(task.user_idx[sl], task.histories[sl])
        ranks.append(rank_of_targets(scores, task.targets[sl], task.exclude[sl]))
    return rank_metrics(np.concatenate(ranks) if ranks else np.empty(0), ks)


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
