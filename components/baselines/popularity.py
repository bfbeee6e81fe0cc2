"""Popularity expert: every user gets the same ranking, by number of train interactions."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd


class Popularity:
    """Train-count popularity over `n_items` items; `counts` (N,) int64."""

    def __init__(self, counts: np.ndarray) -> None:
        self.counts = np.asarray(counts, dtype=np.int64)

    @classmethod
    def fit(cls, train: pd.DataFrame, n_items: int) -> "Popularity":
        """Count train rows per item_idx (items never trained on, e.g. cold ones, count 0)."""
        return cls(np.bincount(train["item_idx"].to_numpy(dtype=np.int64), minlength=n_items))

    @property
    def n_items(self) -> int:
        return len(self.counts)

    def scores(self, user_idx: np.ndarray) -> np.ndarray:
        """`user_idx` (U,) → float32 (U, N): the same row (train counts) for every user."""
        row = self.counts.astype(np.float32)
        return np.broadcast_to(row, (len(user_idx), self.n_items)).copy()

    def score_users(self, user_idx: np.ndarray, histories: Sequence[np.ndarray]) -> np.ndarray:
        """NextItemScorer interface; histories are ignored. → (U, N)."""
        return self.scores(user_idx)

    def save(self, path: Path) -> None:
        np.save(path, self.counts)

    @classmethod
    def load(cls, path: Path) -> "Popularity":
        from components.artifacts import load_npy

        return cls(load_npy(path, "baselines"))
