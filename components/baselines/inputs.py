"""What the experts read, loaded once for training (`unirec baselines`) and for scoring (`load_baselines`).

Only the train and valid split files are read (`load_split_data(params, ("train", "valid"))`): no expert is
fitted, selected or given a rating from the test split. Ratings known for a user's history are train + valid
(`RatingTable`); a validation row's history is the train sequence, so its own valid rating is never read.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from components.baselines.content import unit_rows
from components.baselines.ctr import genre_matrix
from components.baselines.ctr_features import ItemUserTables, user_attributes
from components.baselines.knn import co_counts
from components.artifacts import load_npy
from components.baselines.rating import RatingTable
from components.config import Params
from components.evaluation.ranking import SplitData, load_split_data
from components.manifest import verify_manifest
from components.tables import table_path
from components.textualize.registry import load_registry
from components.textualize.text import item_tables

SPLITS = ("train", "valid")
"""The split files the experts read; `test` is never among them (tests/model/test_no_test_selection.py)."""


@dataclass(frozen=True)
class ExpertInputs:
    data: SplitData
    co: np.ndarray
    """(N, N) co-counts of items over training users (item_knn, ctr_gbdt)."""
    ratings: RatingTable
    """Train + valid ratings of every (user, item)."""
    counts: np.ndarray
    """(N,) training interactions per item (popularity)."""
    items: pd.DataFrame
    genres: np.ndarray
    genre_names: tuple[str, ...]
    text: np.ndarray
    """(N, D) frozen text embeddings (`embed_items.out_dir`/text.npy)."""
    users: pd.DataFrame | None
    rating_range: tuple[float, float]

    def ctr_tables(self) -> ItemUserTables:
        rated = self.data.train[self.data.train["rating"].notna()]
        items = rated["item_idx"].to_numpy(dtype=np.int64)
        n = self.data.n_items
        year = np.full(n, np.nan)
        year[self.items["idx"].to_numpy(dtype=np.int64)] = pd.to_numeric(self.items["year"], errors="coerce")
        text = np.asarray(self.text, dtype=np.float64)
        users = (user_attributes(self.users, self.data.n_users) if self.users is not None
                 else np.full((self.data.n_users, 3), np.nan))
        return ItemUserTables(co=self.co, rating_sum=np.bincount(items, rated["rating"].to_numpy(np.float64), n),
                              rating_cnt=np.bincount(items, minlength=n).astype(np.float64), year=year,
                              genres=self.genres.astype(np.float64), text=unit_rows(text - text.mean(0)),
                              users=users, genre_names=self.genre_names)


def item_texts(params: Params, items: pd.DataFrame) -> list[str]:
    """`Title (year) — genres` per item idx, as `unirec textualize` writes them (the registry's format)."""
    return item_tables(items, load_registry(params.resolve(params.textualize.registry)).format)[3]


def text_embeddings(params: Params) -> np.ndarray:
    path = params.resolve(params.embed_items.out_dir) / "text.npy"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; run `unirec embed-items` first (the content and CTR experts "
                                f"read the frozen text embeddings)")
    verify_manifest(path.parent, "embed-items", [path.name])
    return load_npy(path, "embed-items")


def load_inputs(params: Params) -> ExpertInputs:
    """The train / valid splits and the catalogue tables every expert reads (never the test split)."""
    data = load_split_data(params, SPLITS)
    canonical = params.resolve(params.paths.canonical_dir)
    items = pd.read_parquet(table_path(canonical, "items"))
    users_path = table_path(canonical, "users")
    genres, names = genre_matrix(items, data.n_items)
    return ExpertInputs(
        data=data, co=co_counts(data.train, data.n_users, data.n_items),
        ratings=RatingTable([data.train, data.valid], data.n_users, data.n_items),
        counts=np.bincount(data.train["item_idx"].to_numpy(dtype=np.int64), minlength=data.n_items),
        items=items, genres=genres, genre_names=tuple(names), text=text_embeddings(params),
        users=pd.read_parquet(users_path) if Path(users_path).is_file() else None,
        rating_range=(params.validate_.rating_min, params.validate_.rating_max))
