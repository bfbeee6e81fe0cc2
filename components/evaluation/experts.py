"""The expert baselines through the same evaluator, on the same users and rows as the universal model.

Experts are template-free, so each (user, target[, objective]) of a task is scored once:

* ``pop`` (train counts) and ``sasrec`` on the set-out ranking tasks, with the same seen-item exclusion,
  cold-item restriction and pessimistic ties as the model (`rows.rank_rows`), and on candidate_choice
  (their scores restricted to the saved list). On cold_start every cold item has a train count of 0, so
  popularity ties are broken by a seeded uniform jitter in [0, 0.5): its expected (random-order) value
  instead of the pessimistic worst rank. SASRec reads the user's train (+ valid) sequence;
* ``mf`` on rating; ``ctr_expert`` (logistic regression on crosses) on ctr, and ``pop`` on ctr (AUC and
  GAUC of the item's train count; no log loss, a count is not a probability).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from components.evaluation.rows import SET_OUT_RANKING, EvalData, first_target, rank_rows

CHUNK = 256
POP_JITTER = 0.5
"""Popularity tie-break on cold_start: + U[0, POP_JITTER) per (row, item); counts are integers, so only ties move."""
Scorer = Callable[[np.ndarray, list[np.ndarray]], np.ndarray]


def template_free(task: str, frame: pd.DataFrame) -> pd.DataFrame:
    """One row per (user, target[, objective]) — what a template-free expert is scored on."""
    key = pd.DataFrame({"user_idx": frame["user_idx"].to_numpy(),
                        "target": [first_target(t) if task not in ("text", "infill") else -1
                                   for t in frame["target_items"]],
                        "objective": frame["objective"].astype(str).to_numpy()})
    rows = frame[~key.duplicated().to_numpy()].reset_index(drop=True)
    return rows.assign(template_id="-", template_kind="baseline")


def _ranking(task: str, rows: pd.DataFrame, score: Scorer, data: EvalData, top_k: int) -> pd.DataFrame:
    out: list[dict[str, Any]] = []
    for start in range(0, len(rows), CHUNK):
        sub = rows.iloc[start:start + CHUNK]
        users = sub["user_idx"].to_numpy(dtype=np.int64)
        scores = score(users, [data.history.get(int(u), np.empty(0, np.int64)) for u in users])
        targets = [first_target(t) for t in sub["target_items"]]
        if task == "candidate_choice":
            for s, cands, target in zip(scores, sub["candidates"], targets):
                listed = np.asarray(cands, dtype=np.int64)
                out.append({"cand_scores": s[listed].astype(np.float64),
                            "positive_col": int(np.flatnonzero(listed == target)[0])})
            continue
        excludes = [data.exclude(task, int(u)) for u in users]
        ranks, top = rank_rows(scores, targets, excludes, top_k, data.allowed(task))
        out += [{"rank": int(k), "top": t, "objective": o} for k, t, o in zip(ranks, top, sub["objective"])]
    return pd.DataFrame(out)


def _frame(rows: pd.DataFrame, outputs: pd.DataFrame | dict[str, Any]) -> pd.DataFrame:
    base = rows[["template_id", "template_kind", "user_idx"]].reset_index(drop=True)
    return pd.concat([base, pd.DataFrame(outputs).reset_index(drop=True)], axis=1)


def expert_rows(models: dict[str, Any], data: EvalData, top_k: int, seed: int) -> dict[str, dict[str, pd.DataFrame]]:
    """Row frames `{expert: {task: frame}}` for `scoring.task_metrics` (see the module docstring).

    `models` is `components.baselines.load_baselines(params)`; `seed` drives the cold-start jitter."""
    pop, sasrec = models["popularity"], models["sasrec"]
    counts = pop.counts.astype(np.float64)

    def pop_scores(task: str) -> Scorer:
        if task != "cold_start":
            return lambda users, _: pop.scores(users).astype(np.float64)
        rng = np.random.default_rng(seed)
        return lambda users, _: counts[None, :] + rng.random((len(users), len(counts))) * POP_JITTER

    out: dict[str, dict[str, pd.DataFrame]] = {"pop": {}, "sasrec": {}, "mf": {}, "ctr_expert": {}}
    for task in (t for t in (*SET_OUT_RANKING, "candidate_choice") if t in data.frames):
        rows = template_free(task, data.frames[task])
        out["pop"][task] = _frame(rows, _ranking(task, rows, pop_scores(task), data, top_k))
        out["sasrec"][task] = _frame(rows, _ranking(task, rows, sasrec.score_users, data, top_k))
    if "ctr" in data.frames:
        rows = template_free("ctr", data.frames["ctr"])
        users = rows["user_idx"].to_numpy(dtype=np.int64)
        items = np.array([first_target(t) for t in rows["target_items"]], dtype=np.int64)
        labels = rows["label"].astype(int).to_numpy()
        p = models["ctr"].predict_proba(users, items)
        out["ctr_expert"]["ctr"] = _frame(rows, {"label": labels, "score": p, "prob": p})
        out["pop"]["ctr"] = _frame(rows, {"label": labels, "score": counts[items],
                                          "prob": np.full(len(items), np.nan)})
    if "rating" in data.frames:
        rows = template_free("rating", data.frames["rating"])
        items = np.array([first_target(t) for t in rows["target_items"]], dtype=np.int64)
        pred = models["mf"].predict(rows["user_idx"].to_numpy(dtype=np.int64), items).astype(np.float64)
        out["mf"]["rating"] = _frame(rows, {"rating": rows["rating"].to_numpy(dtype=np.float64), "pred": pred})
    return out
