"""Task semantics: which instances each task yields for training and for evaluation.

Training (`train_instances`): per user, `textualize.train_examples_per_user[task]` instances drawn
from the user's allowed train positions (`Corpus.clean_train`) with RecSysLLM behaviour sampling:
a horizon is drawn with `horizon_weights` and the history is the last `horizons[h]` (≤ max_history)
items before the target. Evaluation (`eval_instances`): one instance per eligible user (per saved
row for ctr/rating), history = the last `max_history` items, no sampling; seeded draws (queries,
candidate order, infill masks) depend only on (task, split, user), so all templates see the same one.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from components.config import TASKS, Params, TextualizeParams
from components.textualize.data import Corpus
from components.textualize.examples import Instance
from components.textualize.registry import Registry
from components.textualize.sampling import (Behaviour, choose, fit_behaviours, history_window, horizon_length,
                                            mask_passage, mask_positions, rng_for, sample_horizon, sample_items)
from components.textualize.text import make_query, top_genres

CTR_ANSWERS: dict[int, str] = {1: "yes", 0: "no"}
"""Verbaliser words of the ctr task (the model scores exactly these tokens)."""
SPLITS: tuple[str, ...] = ("train", "valid", "test")


@dataclass(frozen=True)
class TaskConfig:
    """The parameters the task builders read (from params.yaml)."""

    seed: int
    tx: TextualizeParams
    candidate_negatives: int
    rating_min: float
    rating_max: float

    @classmethod
    def from_params(cls, params: Params) -> "TaskConfig":
        return cls(seed=params.seed + params.textualize.seed_offset, tx=params.textualize,
                   candidate_negatives=params.split.candidate_negatives,
                   rating_min=params.validate_.rating_min, rating_max=params.validate_.rating_max)

    def rng(self, task: str, split: str, user: int) -> np.random.Generator:
        return rng_for(self.seed, TASKS.index(task), SPLITS.index(split), user)


def rating_answer(rating: float, lo: float, hi: float) -> str:
    """The rating verbaliser word: round-half-up to an integer inside [ceil(lo), floor(hi)]."""
    value = int(np.floor(rating + 0.5))
    return str(min(int(np.floor(hi)), max(int(np.ceil(lo)), value)))


def _window(rng: np.random.Generator, seq: np.ndarray, end: int, cfg: TaskConfig) -> tuple[np.ndarray, str]:
    horizon = sample_horizon(rng, cfg.tx.horizon_weights)
    return history_window(seq, end, horizon_length(horizon, cfg.tx.horizons, cfg.tx.max_history)), horizon


def sequence_windows(length: int, max_history: int) -> list[tuple[int, int]]:
    """(start, end) of consecutive windows tiling positions `[0, length)` from the end: the window's
    history is `seq[start:end]` and its target is `seq[end]`; with the dense slots (slot p predicts
    p + 1) every position 1..length-1 is a target of exactly one window (windows meet: end_k = start_k+1)."""
    out: list[tuple[int, int]] = []
    end = length - 1
    while end >= 1:
        start = max(0, end - max_history)
        out.append((start, end))
        end = start
    return out[::-1]


def _behaviours(items: np.ndarray, corpus: Corpus) -> list[Behaviour]:
    return [Behaviour(corpus.item_name[int(i)], corpus.item_genres[int(i)]) for i in items]


def _infill(user: int, items: np.ndarray, from_end: bool, rng: np.random.Generator, corpus: Corpus,
            cfg: TaskConfig, fmt: dict) -> Instance:
    budget = cfg.tx.infill_max_entities
    chosen = fit_behaviours(_behaviours(items[-budget:] if from_end else items[:budget], corpus), budget, from_end)
    n_entities = sum(len(b.entities) for b in chosen)
    passage, target, _ = mask_passage(chosen, mask_positions(rng, n_entities, cfg.tx.infill_mask_fraction), fmt)
    return Instance(user=user, passage=passage, answers={"spans": target})


def _has_query(item: int, corpus: Corpus) -> bool:
    return bool(corpus.item_genres[item]) or corpus.item_title[item] is not None


def _next_like(user: int, task: str, seq: np.ndarray, t: int, hist: np.ndarray, horizon: str | None,
               rating: float, rng: np.random.Generator, corpus: Corpus, registry: Registry, cfg: TaskConfig,
               negatives: np.ndarray | None = None) -> Instance | None:
    """A set-out instance with target `seq[t]` (query / candidates added for those tasks)."""
    target = int(seq[t])
    inst = Instance(user=user, history=hist, target_items=(target,), rating=rating, horizon=horizon)
    if task == "query":
        inst.query = make_query(corpus.item_title[target], corpus.item_genres[target], rng, registry.queries)
        if inst.query is None:
            return None
    if task == "candidate_choice":
        if negatives is None:
            exclude = np.union1d(corpus.interacted[user], np.flatnonzero(corpus.is_cold))
            negatives = sample_items(rng, corpus.n_items, exclude, cfg.candidate_negatives)
        inst.candidates = tuple(int(i) for i in rng.permutation(np.append(target, negatives)))
    return inst


def train_instances(task: str, user: int, corpus: Corpus, registry: Registry, cfg: TaskConfig,
                    rng: np.random.Generator) -> list[Instance]:
    """The training instances of `task` for `user` (fewer than asked when too few positions qualify)."""
    n = cfg.tx.train_examples_per_user.get(task, 0)
    seq = corpus.clean_train(user)
    ratings = corpus.train_rating[user][corpus.clean[user]]
    if n <= 0 or len(seq) == 0:
        return []
    out: list[Instance] = []
    if task in ("ctr", "rating"):
        rows = corpus.rows[f"{task}_train"].get(user)
        if rows is None or rows.empty:
            return []
        lengths = rows["history_len"].to_numpy(dtype=np.int64)
        allowed_before = np.concatenate([[0], np.cumsum(corpus.clean[user])])
        usable = allowed_before[np.minimum(lengths, len(corpus.clean[user]))] > 0
        for r in choose(rng, np.flatnonzero(usable), n):
            prefix = corpus.clean_prefix(user, int(lengths[r]))
            hist, horizon = _window(rng, prefix, len(prefix), cfg)
            item = int(rows["item_idx"].iat[r])
            if task == "ctr":
                label = int(rows["label"].iat[r])
                out.append(Instance(user=user, history=hist, target=item, target_items=(item,), label=label,
                                    answers={"answer": CTR_ANSWERS[label]}, horizon=horizon))
            else:
                value = float(rows["rating"].iat[r])
                out.append(Instance(user=user, history=hist, target=item, target_items=(item,), rating=value,
                                    answers={"rating": rating_answer(value, cfg.rating_min, cfg.rating_max)},
                                    horizon=horizon))
        return out
    if task == "text":
        summary = top_genres(seq, corpus.item_genres, cfg.tx.summary_top_genres)
        if not summary:
            return []
        for _ in range(n):
            hist, horizon = _window(rng, seq, len(seq), cfg)
            out.append(Instance(user=user, history=hist, horizon=horizon,
                                answers={"genres": registry.format["genre_sep"].join(summary)}))
        return out
    if task == "infill":
        return [_infill(user, seq[int(rng.integers(len(seq))):], False, rng, corpus, cfg, dict(registry.format))
                for _ in range(n)]
    positions = np.arange(1, len(seq))
    if task == "long_tail":
        positions = positions[corpus.is_tail[seq[positions]]]
    elif task == "query":
        positions = np.array([t for t in positions if _has_query(int(seq[t]), corpus)], dtype=np.int64)
    plan: list[tuple[str | None, int]] = []
    if task == "multi_objective":
        liked = positions[ratings[positions] >= cfg.tx.like_threshold]
        pools = {"watch": positions, "like": liked}
        feasible = [o for o in ("watch", "like") if len(pools[o])]
        objectives = [feasible[int(rng.integers(len(feasible)))] for _ in range(n)] if feasible else []
        for o in ("watch", "like"):
            plan += [(o, int(t)) for t in choose(rng, pools[o], objectives.count(o))]
    else:
        plan = [(None, int(t)) for t in choose(rng, positions, n)]
    if task == "next_item" and cfg.tx.next_item_windows:
        for start, end in sequence_windows(len(seq), cfg.tx.max_history):
            out.append(Instance(user=user, history=seq[start:end], target_items=(int(seq[end]),),
                                rating=float(ratings[end]), horizon="window"))
    for objective, t in plan:
        hist, horizon = _window(rng, seq, t, cfg)
        inst = _next_like(user, task, seq, t, hist, horizon, float(ratings[t]), rng, corpus, registry, cfg)
        if inst is not None:
            inst.objective = objective
            out.append(inst)
    return out


def eval_instances(task: str, split: str, corpus: Corpus, registry: Registry, cfg: TaskConfig
                   ) -> Iterator[Instance]:
    """The evaluation instances of `task` for `split` (valid|test), users ascending."""
    cap = cfg.tx.max_history
    if task in ("ctr", "rating"):
        for user, rows in corpus.rows[f"{task}_{split}"].items():
            hist = corpus.eval_history(user, split)[-cap:]
            if len(hist) == 0:
                continue
            items = rows["item_idx"].to_numpy(dtype=np.int64)
            values = rows["label" if task == "ctr" else "rating"].to_numpy(dtype=float, na_value=np.nan)
            for item, value in zip(items.tolist(), values.tolist()):
                if task == "ctr":
                    label = int(value)
                    yield Instance(user=user, history=hist, target=item, target_items=(item,), label=label,
                                   answers={"answer": CTR_ANSWERS[label]})
                else:
                    yield Instance(user=user, history=hist, target=item, target_items=(item,), rating=value,
                                   answers={"rating": rating_answer(value, cfg.rating_min, cfg.rating_max)})
        return
    if task == "candidate_choice":
        for user, rows in corpus.rows[f"candidates_{split}"].items():
            hist = corpus.eval_history(user, split)[-cap:]
            if len(hist) == 0:
                continue
            seq = np.array([int(rows["target"].iat[0])], dtype=np.int64)
            negatives = np.asarray(rows["negatives"].iat[0], dtype=np.int64)
            rating = corpus.held[split].get(user, (0, np.nan))[1]
            yield _next_like(user, task, seq, 0, hist, None, rating, cfg.rng(task, split, user), corpus,
                             registry, cfg, negatives)
        return
    source = corpus.cold_held[split] if task == "cold_start" else corpus.held[split]
    for user in sorted(source):
        item, rating = source[user]
        if task in ("text", "infill"):
            seq = corpus.clean_train(user) if user in corpus.train else np.empty(0, dtype=np.int64)
            if len(seq) == 0:
                continue
            if task == "infill":
                yield _infill(user, seq, True, cfg.rng(task, split, user), corpus, cfg, dict(registry.format))
                continue
            summary = top_genres(seq, corpus.item_genres, cfg.tx.summary_top_genres)
            if summary:
                yield Instance(user=user, history=seq[-cap:],
                               answers={"genres": registry.format["genre_sep"].join(summary)})
            continue
        hist = (corpus.train.get(user, np.empty(0, dtype=np.int64)) if task == "cold_start"
                else corpus.eval_history(user, split))[-cap:]
        if len(hist) == 0 or (task == "long_tail" and not corpus.is_tail[item]):
            continue
        objectives = [None]
        if task == "multi_objective":
            objectives = ["watch"] + (["like"] if rating >= cfg.tx.like_threshold else [])
        for objective in objectives:
            inst = _next_like(user, task, np.array([item]), 0, hist, None, rating, cfg.rng(task, split, user),
                              corpus, registry, cfg)
            if inst is not None:
                inst.objective = objective
                yield inst
