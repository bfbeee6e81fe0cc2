"""Shared ranking helpers: next-item rows of the split files, the target's rank, HR/NDCG from ranks.

The one part of the evaluation code that the model (the warm-up's early stopping, the training learning
curve, the item-neighbourhood β) and the expert baselines import, so that editing an evaluation metric
does not invalidate training. Everything else under `components/evaluation/` is `unirec evaluate`'s.

Ranking convention (docs/design.md §4): full ranking over all N items; the user's earlier items (train,
plus valid for the test split) are excluded from the ranking except the target itself; ties are broken
pessimistically (the target ranks below every item with an equal score).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import pandas as pd
import torch

from components.artifacts import read_parquet
from components.config import Params
from components.tables import id_map_path


class NextItemScorer(Protocol):
    """Common interface of next-item scorers: one score per (user, item), higher = better."""

    def score_users(self, user_idx: np.ndarray, histories: Sequence[np.ndarray]) -> np.ndarray:
        """`user_idx` (U,), `histories` U chronological item_idx arrays → float32 scores (U, N)."""
        ...


@dataclass(frozen=True)
class SplitData:
    """The train / valid / test split files. Frames are sorted by (user_idx, order)."""

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


def _split_frame(splits: Path, name: str) -> pd.DataFrame:
    path = splits / f"{name}.parquet"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; run `unirec split` first")
    return read_parquet(path, "split").sort_values(["user_idx", "order"], kind="stable").reset_index(drop=True)


def load_split_data(params: Params, splits: Sequence[str] = ("train", "valid", "test")) -> SplitData:
    """Read the split files of `paths.splits_dir` (those not in `splits` stay empty); sizes from the id maps.

    Training and the selection steps pass `("train", "valid")`: they never read the test split."""
    folder = params.resolve(params.paths.splits_dir)
    canonical = params.resolve(params.paths.canonical_dir)
    frames = {name: _split_frame(folder, name) if name in splits else pd.DataFrame(
        {"user_idx": pd.Series(dtype="int64"), "item_idx": pd.Series(dtype="int64")})
        for name in ("train", "valid", "test")}
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
    """HR@k and NDCG@k (one relevant item) from 0-based ranks (E,); 0 for no rows."""
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
