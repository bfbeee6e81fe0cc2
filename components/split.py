"""Pipeline step `split`: leave-one-out by time, a cold-start item split, saved negatives.

Protocol (RecBole's, so figures compare with a RecBole run on the same data):
* each user's interactions are sorted by timestamp, ties broken by input-file order (stable sort on
  ``source_row``); the last one is ``test``, the second-to-last ``valid``, the rest ``train``.
  Users with fewer than ``split.min_user_interactions`` warm interactions get no valid/test row and
  keep all their interactions in train (reported, never dropped).
* cold-start items: a seeded ``split.cold_item_fraction`` of the items with interactions are held out of
  training entirely. All their interactions go to ``cold.parquet`` (per user: last → role ``test``,
  second-to-last → ``valid``, others ``extra``). With fraction 0 the split is exactly RecBole's.
* negatives are sampled ONCE here with fixed seeds and saved (CTR, candidate lists); evaluation never
  resamples. A negative is never an item the user interacted with (any split) and never a cold item.

Outputs (``paths.splits_dir``): train/valid/test/cold.parquet, cold_items.parquet,
ctr_{train,valid,test}.parquet, rating_{train,valid,test}.parquet, candidates_{valid,test}.parquet,
split_report.json.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from components.artifacts import read_parquet
from components.config import Params
from components.tables import id_map_path, table_path

log = logging.getLogger(__name__)

SPLIT_COLUMNS = ("user_idx", "item_idx", "timestamp", "rating", "label", "event", "source_row", "order")
# Independent RNG streams, so changing one sampler never shifts another's draws.
_STREAMS = {"cold_items": 0, "ctr_train": 1, "ctr_valid": 2, "ctr_test": 3, "cand_valid": 4, "cand_test": 5}


class SplitError(ValueError):
    """The canonical tables cannot be split (missing, or an invariant broke)."""


@dataclass
class SplitReport:
    users: int
    users_evaluated: int
    users_train_only: int
    items: int
    cold_items: int
    interactions: dict[str, int]
    cold_roles: dict[str, int]
    examples: dict[str, int]
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"split: {self.users} users ({self.users_evaluated} with valid/test, "
                 f"{self.users_train_only} train-only), {self.items} items ({self.cold_items} cold)",
                 "  interactions: " + ", ".join(f"{k} {v}" for k, v in self.interactions.items()),
                 "  cold roles: " + ", ".join(f"{k} {v}" for k, v in self.cold_roles.items()),
                 "  saved examples: " + ", ".join(f"{k} {v}" for k, v in self.examples.items())]
        return "\n".join(lines + [f"  note: {n}" for n in self.notes])


def _rng(params: Params, stream: str) -> np.random.Generator:
    return np.random.default_rng([params.seed + params.split.seed_offset, _STREAMS[stream]])


def choose_cold_items(item_idx: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """A sorted seeded sample of round(fraction × #items) of the distinct `item_idx`."""
    distinct = np.unique(item_idx)
    n_cold = int(round(fraction * len(distinct)))
    return np.sort(rng.choice(distinct, size=n_cold, replace=False)) if n_cold else np.array([], dtype=np.int64)


def leave_one_out(inter: pd.DataFrame, min_interactions: int) -> pd.DataFrame:
    """Add `order` (chronological position, ties by source_row) and `split` (train|valid|test)."""
    df = inter.sort_values(["user_idx", "timestamp", "source_row"], kind="stable").reset_index(drop=True)
    df["order"] = df.groupby("user_idx").cumcount().astype(np.int64)
    size = df.groupby("user_idx")["order"].transform("size")
    split = np.full(len(df), "train", dtype=object)
    eligible = (size >= min_interactions).to_numpy()
    split[eligible & (df["order"] == size - 1).to_numpy()] = "test"
    split[eligible & (df["order"] == size - 2).to_numpy()] = "valid"
    df["split"] = split
    return df


def _cold_roles(cold: pd.DataFrame) -> pd.DataFrame:
    cold = cold.sort_values(["user_idx", "timestamp", "source_row"], kind="stable").reset_index(drop=True)
    cold["order"] = cold.groupby("user_idx").cumcount().astype(np.int64)
    size = cold.groupby("user_idx")["order"].transform("size")
    role = np.full(len(cold), "extra", dtype=object)
    role[(cold["order"] == size - 1).to_numpy()] = "test"
    role[((cold["order"] == size - 2) & (size >= 2)).to_numpy()] = "valid"
    cold["role"] = role
    return cold


def sample_negatives(pool: np.ndarray, exclude: set[int], shape: tuple[int, int], rng: np.random.Generator,
                     distinct_rows: bool) -> np.ndarray:
    """Draw `shape` items from `pool` minus `exclude`; each row without repeats when `distinct_rows`."""
    available = np.setdiff1d(pool, np.fromiter(exclude, dtype=np.int64, count=len(exclude)))
    rows, k = shape
    if distinct_rows and len(available) < k:
        raise SplitError(f"only {len(available)} candidate negatives left for a user, {k} needed")
    if len(available) == 0 and rows * k:
        raise SplitError("no negative items left for a user (they interacted with every item)")
    if not distinct_rows:
        return rng.choice(available, size=shape, replace=True)
    return np.stack([rng.choice(available, size=k, replace=False) for _ in range(rows)]) if rows else \
        np.empty((0, k), dtype=np.int64)


def _ctr_and_candidates(params: Params, train: pd.DataFrame, evals: dict[str, pd.DataFrame],
                        interacted: dict[int, set[int]], pool: np.ndarray) -> dict[str, pd.DataFrame]:
    cfg, out = params.split, {}
    rng = _rng(params, "ctr_train")
    positives = train[train["order"] >= 1]
    parts = []
    for user, rows in positives.groupby("user_idx", sort=True):
        negs = sample_negatives(pool, interacted[int(user)], (len(rows), cfg.ctr_train_negatives), rng,
                                cfg.ctr_train_negatives > 1)
        hist = rows["order"].to_numpy()
        parts.append(pd.DataFrame({"user_idx": user, "item_idx": rows["item_idx"].to_numpy(), "label": 1,
                                   "history_len": hist}))
        for j in range(cfg.ctr_train_negatives):
            parts.append(pd.DataFrame({"user_idx": user, "item_idx": negs[:, j], "label": 0, "history_len": hist}))
    out["ctr_train"] = _concat(parts, {"user_idx": "int64", "item_idx": "int64", "label": "int64",
                                       "history_len": "int64"}).sort_values(
        ["user_idx", "history_len", "label"], ascending=[True, True, False], kind="stable").reset_index(drop=True)
    for name, frame in evals.items():
        rng_ctr, rng_cand = _rng(params, f"ctr_{name}"), _rng(params, f"cand_{name}")
        ctr_rows, cand_rows = [], []
        for user, item in zip(frame["user_idx"].to_numpy(), frame["item_idx"].to_numpy()):
            negs = sample_negatives(pool, interacted[int(user)], (1, cfg.ctr_eval_negatives), rng_ctr, True)[0]
            ctr_rows.append((user, item, 1))
            ctr_rows += [(user, int(n), 0) for n in negs]
            cand = sample_negatives(pool, interacted[int(user)], (1, cfg.candidate_negatives), rng_cand, True)[0]
            cand_rows.append((user, item, [int(n) for n in cand]))
        out[f"ctr_{name}"] = pd.DataFrame(ctr_rows, columns=["user_idx", "item_idx", "label"]).astype("int64")
        out[f"candidates_{name}"] = pd.DataFrame(cand_rows, columns=["user_idx", "target", "negatives"]).astype(
            {"user_idx": "int64", "target": "int64"})
    return out


def _concat(parts: list[pd.DataFrame], dtypes: dict[str, str]) -> pd.DataFrame:
    if not parts:
        return pd.DataFrame({c: pd.Series(dtype=t) for c, t in dtypes.items()})
    return pd.concat(parts, ignore_index=True).astype(dtypes)


def _rating_frames(train: pd.DataFrame, evals: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    rated = train[(train["order"] >= 1) & train["rating"].notna()]
    out = {"rating_train": rated.assign(history_len=rated["order"])[
        ["user_idx", "item_idx", "rating", "history_len"]].reset_index(drop=True)}
    for name, frame in evals.items():
        out[f"rating_{name}"] = frame.loc[frame["rating"].notna(), ["user_idx", "item_idx", "rating"]].reset_index(
            drop=True)
    return out


def split(params: Params) -> SplitReport:
    """Split the canonical interactions; write every split file and `split_report.json`."""
    canonical = params.resolve(params.paths.canonical_dir)
    path = table_path(canonical, "interactions")
    if not path.is_file():
        raise SplitError(f"{path}: not found; run `unirec validate` first")
    inter = read_parquet(path, "validate")
    n_items = len(read_parquet(id_map_path(canonical, "items"), "validate"))
    cfg, notes = params.split, []
    cold_items = choose_cold_items(inter["item_idx"].to_numpy(), cfg.cold_item_fraction, _rng(params, "cold_items"))
    is_cold = inter["item_idx"].isin(cold_items)
    warm = leave_one_out(inter[~is_cold], cfg.min_user_interactions)
    cold = _cold_roles(inter[is_cold].copy())
    if inter["label"].notna().any():
        notes.append(f"{int((inter['label'] == 0).sum())} interactions with label 0 are kept as events "
                     "(implicit-feedback protocol: every interaction is a positive)")
    frames = {name: warm.loc[warm["split"] == name, list(SPLIT_COLUMNS)].reset_index(drop=True)
              for name in ("train", "valid", "test")}
    frames["cold"] = cold[[*SPLIT_COLUMNS, "role"]]
    frames["cold_items"] = pd.DataFrame({"item_idx": cold_items.astype(np.int64)})
    interacted = inter.groupby("user_idx")["item_idx"].agg(lambda s: set(map(int, s))).to_dict()
    pool = np.setdiff1d(np.arange(n_items, dtype=np.int64), cold_items)
    evals = {"valid": frames["valid"], "test": frames["test"]}
    derived = {**_ctr_and_candidates(params, frames["train"], evals, interacted, pool),
               **_rating_frames(frames["train"], evals)}
    _check_invariants(frames, derived, cold_items)
    out = params.resolve(params.paths.splits_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, frame in {**frames, **derived}.items():
        frame.to_parquet(out / f"{name}.parquet", index=False)
    users_all = inter["user_idx"].nunique()
    evaluated = frames["test"]["user_idx"].nunique()
    train_only = warm.loc[~warm["user_idx"].isin(frames["test"]["user_idx"]), "user_idx"].nunique()
    if train_only:
        notes.append(f"{train_only} users have fewer than {cfg.min_user_interactions} warm interactions: train only")
    report = SplitReport(
        users=int(users_all), users_evaluated=int(evaluated), users_train_only=int(train_only), items=n_items,
        cold_items=len(cold_items),
        interactions={k: len(frames[k]) for k in ("train", "valid", "test", "cold")},
        cold_roles={k: int(v) for k, v in cold["role"].value_counts().sort_index().items()},
        examples={k: len(v) for k, v in derived.items()}, notes=notes)
    if sum(report.interactions.values()) != len(inter):
        raise SplitError(f"split lost rows: {report.interactions} do not add up to {len(inter)}")
    (out / "split_report.json").write_text(json.dumps(asdict(report), indent=2) + "\n", encoding="utf-8")
    return report


def _check_invariants(frames: dict[str, pd.DataFrame], derived: dict[str, pd.DataFrame], cold: np.ndarray) -> None:
    """Fail loudly if a valid/test event leaks into training inputs or a cold item into training."""
    train = frames["train"]
    held_out = pd.concat([frames["valid"], frames["test"]])
    leaked = train.merge(held_out, on="source_row")
    if len(leaked):
        raise SplitError(f"{len(leaked)} valid/test interactions also appear in train")
    if train["item_idx"].isin(cold).any() or derived["ctr_train"]["item_idx"].isin(cold).any():
        raise SplitError("a cold item appears in the training data")
    last_train = train.groupby("user_idx")["order"].max()
    for name in ("valid", "test"):
        first = frames[name].set_index("user_idx")["order"]
        common = first.index.intersection(last_train.index)
        if (first.loc[common] <= last_train.loc[common]).any():
            raise SplitError(f"a {name} interaction is not later than the user's training interactions")


def load_split_frame(splits_dir: Path, name: str) -> pd.DataFrame:
    path = splits_dir / f"{name}.parquet"
    if not path.is_file():
        raise SplitError(f"{path}: not found; run `unirec split` first")
    return read_parquet(path, "split")
