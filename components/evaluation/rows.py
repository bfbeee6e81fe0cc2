"""Evaluation inputs and the pure per-row helpers shared by the universal model and the experts.

* `sample_users`: a seeded subset of a task's users; tasks with smaller budgets take the first users of the same
  seeded order (so their users nest);
* `rotate_templates`: each user's seen and unseen templates, in rotation over the same seeded order
  (`evaluate.seen_templates_per_user` / `unseen_templates_per_user`; null = every template);
* `rank_rows`: 1-based rank of each row's target (pessimistic ties, `metrics.rank_of_target`) and the
  row's top-K list, with the row's seen items excluded (never the target) and, for cold-start, the
  ranking restricted to the cold items;
* `parse_spans` / `span_matches`: the masked spans of an infilling answer;
* `EvalData` / `load_eval_data`: the example rows of every task plus what the metrics need.

Seen items (the RecBole convention of docs/design.md §4, as the experts' own evaluation): the user's train
items, plus the valid item when the split is test. Cold-start ranks among the cold items only and also
excludes the user's earlier cold interactions (cold.parquet rows of role `extra`, and `valid` for test).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from components.evaluation.ranking import load_split_data
from components.config import TASKS, Params
from components.evaluation.metrics import rank_of_target
from components.model.data import load_examples
from components.tables import table_path
from components.textualize.registry import load_registry

SET_OUT_RANKING = ("next_item", "multi_objective", "query", "cold_start", "long_tail")
"""Tasks ranked against the whole catalogue (cold_start: against the cold items)."""


def sample_users(eligible: Sequence[int] | np.ndarray, n: int | None, priority: np.ndarray) -> np.ndarray:
    """The `n` users of `eligible` with the lowest `priority[user]` (a seeded permutation of all users),
    ascending; all of them when `n` is None or not smaller than their number."""
    users = np.unique(np.asarray(eligible, dtype=np.int64))
    if n is None or n >= len(users):
        return users
    if n < 1:
        raise ValueError(f"n must be >= 1 or None, got {n}")
    if len(users) and users.max() >= len(priority):
        raise ValueError(f"user {int(users.max())} has no priority (only {len(priority)} users)")
    return np.sort(users[np.argsort(priority[users], kind="stable")[:n]])


def user_priority(params: Params, n_users: int) -> np.ndarray:
    """`(n_users,)` evaluate's seeded user order: `priority[user]` is the user's rank (seed + evaluate.seed_offset),
    behind every user subset (`sample_users`) and template rotation (`rotate_templates`)."""
    return np.random.default_rng(params.seed + params.evaluate.seed_offset).permutation(n_users)


def rotate_templates(frame: pd.DataFrame, rank: np.ndarray, per_kind: dict[str, int | None]) -> pd.DataFrame:
    """The rows of `frame` whose template is one of its user's assigned templates: for each template kind
    (seen / unseen) with `n = per_kind[kind]`, the user of rank `r` (`rank[user]`, a seeded order) gets the kind's
    templates `T[(r + j) % len(T)]`, j < n (T sorted), so the templates share the users near-equally (within one
    user for n = 1); every template when `n` is None or not smaller than `len(T)`. File order is kept."""
    keep = np.zeros(len(frame), dtype=bool)
    users = frame["user_idx"].to_numpy(dtype=np.int64)
    for kind, n in per_kind.items():
        of_kind = (frame["template_kind"] == kind).to_numpy()
        templates = sorted(frame.loc[of_kind, "template_id"].unique())
        if n is None or n >= len(templates):
            keep |= of_kind
            continue
        index = {t: i for i, t in enumerate(templates)}
        position = frame["template_id"].map(index).fillna(-1).to_numpy(dtype=np.int64)
        offset = (position - rank[users]) % len(templates)
        keep |= of_kind & (offset < n)
    return frame[keep].reset_index(drop=True)


def rank_rows(scores: np.ndarray, targets: Sequence[int] | np.ndarray, excludes: Sequence[np.ndarray], k: int,
              allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Ranks `(R,)` (1-based, pessimistic ties) and top-`k` item ids `(R, k')` of `scores` `(R, N)`.

    `excludes[r]` are removed from row r's ranking (the row's target never is); with `allowed` (sorted
    item ids) only those items are ranked and every target must be one of them. Top lists are best
    first, ties by item id, `k' = min(k, ranked items)`."""
    s = np.asarray(scores, dtype=np.float64)
    t = np.asarray(targets, dtype=np.int64)
    if s.ndim != 2 or len(t) != s.shape[0] or len(excludes) != s.shape[0]:
        raise ValueError(f"scores {s.shape}, {len(t)} targets and {len(excludes)} exclude lists do not match")
    if allowed is not None:
        allowed = np.asarray(allowed, dtype=np.int64)
        if len(allowed) == 0 or np.any(np.diff(allowed) <= 0):
            raise ValueError("allowed must be non-empty, sorted and distinct")
        if not np.isin(t, allowed).all():
            raise ValueError(f"targets {sorted(set(t[~np.isin(t, allowed)].tolist()))} are not allowed items")
        s = s[:, allowed]
        t = np.searchsorted(allowed, t)
        excludes = [np.searchsorted(allowed, e[np.isin(e, allowed)]) for e in
                    (np.asarray(x, dtype=np.int64) for x in excludes)]
    ex = [np.unique(np.asarray(e, dtype=np.int64)) for e in excludes]
    ex = [e[e != target] for e, target in zip(ex, t)]
    ranks = rank_of_target(s, t, ex)
    masked = s.copy()
    rows = np.repeat(np.arange(len(ex)), [len(e) for e in ex])
    if len(rows):
        masked[rows, np.concatenate(ex)] = -np.inf
    top = np.argsort(-masked, axis=1, kind="stable")[:, :min(k, s.shape[1])]
    return ranks.astype(np.int64), (allowed[top] if allowed is not None else top).astype(np.int64)


def _mask_pattern(mask_format: str) -> re.Pattern[str]:
    if mask_format.count("{k}") != 1:
        raise ValueError(f"mask format {mask_format!r} must contain {{k}} once")
    before, after = mask_format.split("{k}")
    return re.compile(re.escape(before) + r"(\d+)" + re.escape(after))


def parse_spans(text: str, mask_format: str) -> dict[int, str]:
    """`"[MASK_0] Heat (1995) [MASK_1] Drama"` → `{0: "Heat (1995)", 1: "Drama"}` (first occurrence wins)."""
    parts = _mask_pattern(mask_format).split(text)
    out: dict[int, str] = {}
    for i in range(1, len(parts) - 1, 2):
        out.setdefault(int(parts[i]), parts[i + 1].strip())
    return out


def span_matches(generated: str, target: str, mask_format: str) -> tuple[int, int]:
    """(target spans reproduced exactly (case-insensitive, trimmed) under the same mask, target spans)."""
    want, got = parse_spans(target, mask_format), parse_spans(generated, mask_format)
    hits = sum(1 for k, v in want.items() if k in got and got[k].casefold() == v.casefold())
    return hits, len(want)


def first_target(values: object) -> int:
    """The (single) target item of a set-out example row."""
    items = [] if values is None else list(values)  # type: ignore[call-overload]
    if not items:
        raise ValueError("a set-out example row has no target item")
    return int(items[0])


@dataclass(frozen=True)
class EvalData:
    """Rows and context of one evaluation (see the module docstring for the conventions)."""

    split: str
    n_users: int
    n_items: int
    frames: dict[str, pd.DataFrame]
    """Example rows of the evaluated users per task, each user's assigned templates, file order (tasks without rows
    absent)."""
    eligible: dict[str, int]
    """Users with rows per task before subsampling."""
    seen: dict[int, np.ndarray]
    seen_cold: dict[int, np.ndarray]
    history: dict[int, np.ndarray]
    """Chronological train (+ valid for test) items per user: the experts' input."""
    cold_items: np.ndarray
    tail_items: np.ndarray
    genres: tuple[str, ...]
    mask_format: str

    def exclude(self, task: str, user: int) -> np.ndarray:
        """Items removed from `user`'s ranking in `task` (the target is dropped later, by `rank_rows`)."""
        empty = np.empty(0, dtype=np.int64)
        warm = self.seen.get(user, empty)
        return np.union1d(warm, self.seen_cold.get(user, empty)) if task == "cold_start" else warm

    def allowed(self, task: str) -> np.ndarray | None:
        return self.cold_items if task == "cold_start" else None


def _per_user(frame: pd.DataFrame) -> dict[int, np.ndarray]:
    return {int(u): np.unique(g.to_numpy(dtype=np.int64)) for u, g in frame.groupby("user_idx")["item_idx"]}


def load_eval_data(params: Params) -> EvalData:
    """Read the split files and the example rows of `evaluate.split`; subsample users per task."""
    cfg = params.evaluate
    splits = params.resolve(params.paths.splits_dir)
    examples = params.resolve(params.paths.examples_dir)
    for path in (splits / "cold.parquet", splits / "cold_items.parquet", examples / "tail_items.parquet"):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: not found; run `unirec split` and `unirec textualize` first")
    data = load_split_data(params, ("train", "valid", "test") if cfg.split == "test" else ("train", "valid"))
    history = {u: s for u, s in enumerate(data.train_sequences())}
    earlier = data.train
    if cfg.split == "test":
        earlier = pd.concat([data.train, data.valid], ignore_index=True)
        for u, i in zip(data.valid["user_idx"].to_numpy(), data.valid["item_idx"].to_numpy()):
            history[int(u)] = np.append(history[int(u)], np.int64(i))
    cold = pd.read_parquet(splits / "cold.parquet")
    cold = cold[cold["role"].isin(["extra", "valid"] if cfg.split == "test" else ["extra"])]
    items = pd.read_parquet(table_path(params.resolve(params.paths.canonical_dir), "items"), columns=["categories"])
    genres = sorted({str(c) for cats in items["categories"] if cats is not None for c in cats if str(c).strip()})
    priority = user_priority(params, data.n_users)
    frames, eligible = {}, {}
    for task, frame in load_examples(examples, TASKS, cfg.split).items():
        eligible[task] = int(frame["user_idx"].nunique())
        if frame.empty:  # e.g. cold_start with split.cold_item_fraction 0: the task is skipped
            continue
        users = sample_users(frame["user_idx"].to_numpy(), cfg.users_per_task.get(task), priority)
        frame = frame[frame["user_idx"].isin(users)].reset_index(drop=True)
        frames[task] = rotate_templates(frame, priority, {"seen": cfg.seen_templates_per_user,
                                                          "unseen": cfg.unseen_templates_per_user})
    return EvalData(
        split=cfg.split, n_users=data.n_users, n_items=data.n_items, frames=frames, eligible=eligible,
        seen=_per_user(earlier), seen_cold=_per_user(cold), history=history,
        cold_items=np.sort(pd.read_parquet(splits / "cold_items.parquet")["item_idx"].to_numpy(dtype=np.int64)),
        tail_items=np.sort(pd.read_parquet(examples / "tail_items.parquet")["item_idx"].to_numpy(dtype=np.int64)),
        genres=tuple(genres), mask_format=load_registry(params.resolve(params.textualize.registry)).format["mask"])
