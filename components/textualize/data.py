"""Load the canonical tables and split files into per-user arrays (`Corpus`) for the task builders.

Leakage guard: `Corpus.clean[u]` marks the positions of user u's train sequence usable in a
training example — never the user's valid/test item (re-consumptions are dropped) and never a cold
item. Training rows of saved CTR/rating files that point at such an item are dropped and counted.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from components.artifacts import read_parquet
from components.config import Params
from components.tables import id_map_path, table_path
from components.textualize.text import item_tables, user_tables

SPLIT_FILES: tuple[str, ...] = (
    "train", "valid", "test", "cold", "cold_items", "ctr_train", "ctr_valid", "ctr_test", "rating_train",
    "rating_valid", "rating_test", "candidates_valid", "candidates_test",
)


class TextualizeError(ValueError):
    """An input of the textualize step is missing or inconsistent."""


@dataclass
class Corpus:
    """Everything the example builders need, indexed by canonical user/item index."""

    n_items: int
    item_name: list[str]
    item_title: list[str | None]
    item_genres: list[tuple[str, ...]]
    item_text: list[str]
    user_text: dict[int, str]
    users: np.ndarray
    """Users with at least one train interaction, ascending."""
    train: dict[int, np.ndarray]
    """Chronological train item sequence per user (as saved by split)."""
    train_rating: dict[int, np.ndarray]
    clean: dict[int, np.ndarray]
    """Boolean mask over `train[u]`: positions allowed in training examples."""
    held: dict[str, dict[int, tuple[int, float]]]
    """'valid'/'test' → user → (item, rating or nan)."""
    cold_held: dict[str, dict[int, tuple[int, float]]]
    """'valid'/'test' → user → (cold item, rating or nan), from cold.parquet roles."""
    is_cold: np.ndarray
    train_count: np.ndarray
    is_tail: np.ndarray
    interacted: dict[int, np.ndarray]
    """Sorted distinct items of every interaction of the user (train, valid, test, cold)."""
    rows: dict[str, dict[int, pd.DataFrame]]
    """ctr_*, rating_*, candidates_* files grouped by user (row order kept)."""
    dropped: dict[str, int] = field(default_factory=dict)

    def clean_train(self, user: int) -> np.ndarray:
        """The user's train sequence restricted to positions allowed in training examples."""
        return self.train[user][self.clean[user]]

    def clean_prefix(self, user: int, length: int) -> np.ndarray:
        """Allowed items among the first `length` train items (a saved `history_len` prefix)."""
        return self.train[user][:length][self.clean[user][:length]]

    def history_ratings(self) -> dict[int, dict[int, float]]:
        """user → item → rating over what a history can show (train, then the valid item: the later wins);
        unrated interactions are left out."""
        out: dict[int, dict[int, float]] = {}
        for user, items in self.train.items():
            known = out.setdefault(int(user), {})
            for item, value in zip(items.tolist(), self.train_rating[user].tolist()):
                if value == value:
                    known[int(item)] = float(value)
        for user, (item, value) in self.held["valid"].items():
            if value == value:
                out.setdefault(int(user), {})[int(item)] = float(value)
        return out

    def eval_history(self, user: int, split: str) -> np.ndarray:
        """History at evaluation: train sequence (valid), plus the valid item for test."""
        seq = self.train.get(user, np.empty(0, dtype=np.int64))
        if split == "test" and user in self.held["valid"]:
            seq = np.append(seq, self.held["valid"][user][0])
        return seq


def tail_items(train_count: np.ndarray, is_cold: np.ndarray, quantile: float) -> np.ndarray:
    """Boolean mask of long-tail items: warm items whose train count is below the `quantile` of warm counts."""
    warm = ~is_cold
    if not warm.any():
        return np.zeros_like(is_cold)
    threshold = np.quantile(train_count[warm], quantile)
    return warm & (train_count < threshold)


def _by_user(frame: pd.DataFrame) -> dict[int, pd.DataFrame]:
    return {int(u): g.reset_index(drop=True) for u, g in frame.groupby("user_idx", sort=True)}


def _held(frame: pd.DataFrame) -> dict[int, tuple[int, float]]:
    ratings = frame["rating"].astype("Float64").to_numpy(dtype=float, na_value=np.nan)
    return {int(u): (int(i), float(r)) for u, i, r in zip(frame["user_idx"], frame["item_idx"], ratings)}


def read_inputs(params: Params) -> tuple[dict[str, pd.DataFrame], dict[str, pd.DataFrame]]:
    """(canonical items/users/item id map, split frames) — failing with the missing file's name."""
    canonical = params.resolve(params.paths.canonical_dir)
    splits = params.resolve(params.paths.splits_dir)
    tables: dict[str, pd.DataFrame] = {}
    for name, path in (("items", table_path(canonical, "items")), ("users", table_path(canonical, "users")),
                       ("item_map", id_map_path(canonical, "items"))):
        if not path.is_file():
            raise TextualizeError(f"{path}: not found; run `unirec validate` first")
        tables[name] = read_parquet(path, "validate")
    frames: dict[str, pd.DataFrame] = {}
    for name in SPLIT_FILES:
        path = Path(splits) / f"{name}.parquet"
        if not path.is_file():
            raise TextualizeError(f"{path}: not found; run `unirec split` first")
        frames[name] = read_parquet(path, "split")
    return tables, frames


def build_corpus(params: Params, tables: Mapping[str, pd.DataFrame], frames: Mapping[str, pd.DataFrame],
                 fmt: Mapping[str, str]) -> Corpus:
    """Assemble the per-user view of the split; see the module docstring for the leakage guard."""
    n_items = len(tables["item_map"])
    names, titles, genres, texts = item_tables(tables["items"], fmt)
    if len(names) != n_items:
        raise TextualizeError(f"items table covers {len(names)} indices, id map has {n_items}")
    train = frames["train"].sort_values(["user_idx", "order"], kind="stable")
    is_cold = np.zeros(n_items, dtype=bool)
    is_cold[frames["cold_items"]["item_idx"].to_numpy(dtype=np.int64)] = True
    held = {s: _held(frames[s]) for s in ("valid", "test")}
    cold = frames["cold"]
    cold_held = {s: _held(cold[cold["role"] == s]) for s in ("valid", "test")}
    seqs, ratings, clean = {}, {}, {}
    for user, group in train.groupby("user_idx", sort=True):
        u = int(user)
        seq = group["item_idx"].to_numpy(dtype=np.int64)
        seqs[u] = seq
        ratings[u] = group["rating"].astype("Float64").to_numpy(dtype=float, na_value=np.nan)
        forbidden = [held[s][u][0] for s in ("valid", "test") if u in held[s]]
        clean[u] = ~is_cold[seq] & ~np.isin(seq, forbidden)
    all_inter = pd.concat([frames[s][["user_idx", "item_idx"]] for s in ("train", "valid", "test", "cold")])
    interacted = {int(u): np.unique(g.to_numpy(dtype=np.int64))
                  for u, g in all_inter.groupby("user_idx", sort=True)["item_idx"]}
    train_count = np.bincount(train["item_idx"].to_numpy(dtype=np.int64), minlength=n_items)
    rows = {name: _by_user(frames[name]) for name in
            ("ctr_train", "ctr_valid", "ctr_test", "rating_train", "rating_valid", "rating_test",
             "candidates_valid", "candidates_test")}
    dropped = {"train positions (held-out or cold item)": int(sum((~m).sum() for m in clean.values()))}
    for name in ("ctr_train", "rating_train"):
        n_before = sum(len(g) for g in rows[name].values())
        for u, g in list(rows[name].items()):
            bad = list(held["valid"].get(u, (-1,))[:1]) + list(held["test"].get(u, (-1,))[:1])
            items = g["item_idx"].to_numpy(dtype=np.int64)
            rows[name][u] = g[~is_cold[items] & ~np.isin(items, bad)].reset_index(drop=True)
        dropped[f"{name} rows (held-out or cold item)"] = n_before - sum(len(g) for g in rows[name].values())
    return Corpus(
        n_items=n_items, item_name=names, item_title=titles, item_genres=genres, item_text=texts,
        user_text=user_tables(tables["users"], fmt), users=np.array(sorted(seqs), dtype=np.int64), train=seqs,
        train_rating=ratings, clean=clean, held=held, cold_held=cold_held, is_cold=is_cold,
        train_count=train_count, is_tail=tail_items(train_count, is_cold, params.textualize.tail_quantile),
        interacted=interacted, rows=rows, dropped=dropped)
