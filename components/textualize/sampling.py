"""Seeded sampling: RNG streams, RecSysLLM behaviour horizons, positions, negatives, entity masking.

Every draw comes from `rng_for(seed, *keys)`, one independent stream per (task, split, user), so an
example never depends on other users or other tasks and two runs give identical files.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np


def rng_for(seed: int, *keys: int) -> np.random.Generator:
    """An independent generator for the stream `keys` (e.g. task no., split no., user idx)."""
    return np.random.default_rng([int(seed), *(int(k) for k in keys)])


def sample_horizon(rng: np.random.Generator, weights: Mapping[str, float]) -> str:
    """Draw a horizon name (long|medium|short) with probability `weights[name]` (keys sorted first)."""
    names = sorted(weights)
    p = np.array([weights[n] for n in names], dtype=float)
    return names[int(rng.choice(len(names), p=p / p.sum()))]


def horizon_length(horizon: str, horizons: Mapping[str, int], max_history: int) -> int:
    """Items a history of `horizon` keeps: `horizons[horizon]`, capped at `max_history`."""
    return min(int(horizons[horizon]), int(max_history))


def history_window(seq: np.ndarray, end: int, length: int) -> np.ndarray:
    """The last `length` items before position `end` of `seq` (chronological): seq[end-length:end]."""
    return seq[max(0, end - length):end]


def choose(rng: np.random.Generator, pool: np.ndarray, n: int) -> np.ndarray:
    """min(n, len(pool)) distinct elements of `pool`, in the order drawn (empty when n <= 0)."""
    if n <= 0 or len(pool) == 0:
        return pool[:0]
    return rng.choice(pool, size=min(n, len(pool)), replace=False)


def sample_items(rng: np.random.Generator, n_items: int, exclude: np.ndarray, k: int) -> np.ndarray:
    """`k` distinct item indices from 0..n_items-1 that are not in `exclude` (sorted unique array)."""
    pool = np.setdiff1d(np.arange(n_items, dtype=np.int64), exclude, assume_unique=False)
    if len(pool) < k:
        raise ValueError(f"only {len(pool)} items available, {k} needed")
    return rng.choice(pool, size=k, replace=False)


def n_masked(n_entities: int, fraction: float) -> int:
    """Entities to mask: round-half-up of fraction × n, at least 1 and at most n."""
    if n_entities <= 0:
        return 0
    return min(n_entities, max(1, int(np.floor(fraction * n_entities + 0.5))))


def mask_positions(rng: np.random.Generator, n_entities: int, fraction: float) -> list[int]:
    """Sorted (chronological) entity positions to mask, drawn without replacement."""
    k = n_masked(n_entities, fraction)
    return sorted(int(i) for i in rng.choice(n_entities, size=k, replace=False)) if k else []


@dataclass(frozen=True)
class Behaviour:
    """One behaviour in an infill passage: an item's name entity and its genre entities."""

    name: str
    genres: tuple[str, ...]

    @property
    def entities(self) -> tuple[str, ...]:
        return (self.name, *self.genres)


def fit_behaviours(behaviours: Sequence[Behaviour], budget: int, from_end: bool) -> list[Behaviour]:
    """Consecutive behaviours holding at most `budget` entities (chronological order kept).

    `from_end` keeps the most recent ones, otherwise the earliest. The first behaviour taken is cut
    to the budget (its genres dropped) if it alone is too large; entities are never split.
    """
    order = list(reversed(behaviours)) if from_end else list(behaviours)
    taken: list[Behaviour] = []
    used = 0
    for b in order:
        size = len(b.entities)
        if used + size > budget:
            if not taken:
                taken.append(Behaviour(b.name, b.genres[:max(0, budget - 1)]))
            break
        taken.append(b)
        used += size
    return list(reversed(taken)) if from_end else taken


def mask_passage(behaviours: Sequence[Behaviour], positions: Sequence[int], fmt: Mapping[str, str]
                 ) -> tuple[str, str, list[str]]:
    """Render a behaviour passage with the entities at `positions` (flat, chronological) masked.

    Returns (passage, target_text, masked entities): the k-th masked entity becomes `format.mask`
    with k in chronological order, and the target lists "[MASK_k] entity" pairs in that order.
    """
    masked = set(positions)
    spans: list[str] = []
    parts: list[str] = []
    flat = 0

    def show(entity: str) -> str:
        nonlocal flat
        out = entity
        if flat in masked:
            out = fmt["mask"].format(k=len(spans))
            spans.append(entity)
        flat += 1
        return out

    for b in behaviours:
        name = show(b.name)
        genres = [show(g) for g in b.genres]
        parts.append(fmt["passage_item"].format(name=name, genres=fmt["genre_sep"].join(genres)) if genres
                     else name)
    target = " ".join(f"{fmt['mask'].format(k=k)} {e}" for k, e in enumerate(spans))
    return fmt["passage_sep"].join(parts), target, spans
