"""The expert baselines through the same evaluator, on the same users and rows as the universal model.

Experts are template-free, so each (user, target[, objective]) of a task is scored once, with the same seen-item
exclusion, cold-item restriction and pessimistic ties as the model (`rows.rank_rows`); on candidate_choice their
scores are restricted to the saved list. Each reads the user's history of `EvalData.history` (train, + valid for
test rows), so `expert_rows` scores validation rows as well as test rows. The names, stable, and what they are
(`components/baselines/`, chosen on validation by `unirec baselines`):

* ``pop`` — training counts; every set-out ranking task, candidate_choice and ctr (the count is the score: AUC,
  GAUC, no log loss). On cold_start every cold item has count 0, so ties are broken by a seeded uniform jitter
  in [0, 0.5): its expected (random-order) value instead of the pessimistic worst rank;
* ``sasrec`` — SASRec trained on every prefix, tuned: next_item, multi_objective, query, long_tail,
  candidate_choice; ``sasrec_recbole`` — SASRec in RecBole's default configuration, untuned, and ``item_knn`` —
  recency-weighted cosine item-kNN: next_item, multi_objective, long_tail, candidate_choice;
* ``bm25`` — BM25 of the row's query over the item texts (popularity breaks ties) and ``bm25_sasrec`` — SASRec's
  log-softmax + w × BM25: query;
* ``content`` — cosine to the user's history centroid in the frozen text-embedding space: cold_start;
* ``ctr_gbdt`` — gradient-boosted trees on item, user and history features, ``ctr_expert`` — logistic regression
  on one-hots and user × genre crosses: ctr;
* ``mf`` — tuned biased matrix factorisation, ``rating_knn`` — item-kNN regressor on baseline residuals,
  ``rating_recency`` — item bias + the user's mean offset over their last ratings: rating.
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
Scorer = Callable[[pd.DataFrame, list[np.ndarray]], np.ndarray]
"""(rows of a chunk, their users' histories) → scores (R, N)."""
RANKING_EXPERTS: dict[str, tuple[str, ...]] = {
    "sasrec": ("next_item", "multi_objective", "query", "long_tail", "candidate_choice"),
    "sasrec_recbole": ("next_item", "multi_objective", "long_tail", "candidate_choice"),
    "item_knn": ("next_item", "multi_objective", "long_tail", "candidate_choice"),
    "bm25": ("query",),
    "bm25_sasrec": ("query",),
    "content": ("cold_start",),
}
"""Ranking experts (besides ``pop``, which ranks on every set-out task) and the tasks each is scored on."""
EXPERT_NAMES: tuple[str, ...] = ("pop", *RANKING_EXPERTS, "ctr_gbdt", "ctr_expert", "mf", "rating_knn",
                                 "rating_recency")


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
        scores = score(sub, [data.history.get(int(u), np.empty(0, np.int64)) for u in users])
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


def _scorers(models: dict[str, Any], task: str, seed: int) -> dict[str, Scorer]:
    """The ranking scorers of `task`, by expert name."""
    pop, query = models["popularity"], models["query"]
    counts = pop.counts.astype(np.float64)

    def by_user(model: Any) -> Scorer:
        return lambda sub, hist: np.asarray(model.score_users(sub["user_idx"].to_numpy(dtype=np.int64), hist),
                                            dtype=np.float64)

    if task == "cold_start":
        rng = np.random.default_rng(seed)
        scorers: dict[str, Scorer] = {"pop": lambda sub, _: counts[None, :] + rng.random((len(sub), len(counts)))
                                      * POP_JITTER}
    else:
        scorers = {"pop": lambda sub, _: pop.scores(sub["user_idx"].to_numpy()).astype(np.float64)}
    every: dict[str, Scorer] = {
        "sasrec": by_user(models["sasrec"]), "sasrec_recbole": by_user(models["sasrec_recbole"]),
        "item_knn": by_user(models["item_knn"]), "content": by_user(models["content"]),
        "bm25": lambda sub, _: query.bm25(sub["query"].astype(str).tolist()),
        "bm25_sasrec": lambda sub, hist: query.fused(sub["query"].astype(str).tolist(), hist)}
    scorers.update({name: every[name] for name, tasks in RANKING_EXPERTS.items() if task in tasks})
    return scorers


def expert_rows(models: dict[str, Any], data: EvalData, top_k: int, seed: int) -> dict[str, dict[str, pd.DataFrame]]:
    """Row frames `{expert: {task: frame}}` for `scoring.task_metrics` (see the module docstring).

    `models` is `components.baselines.load_baselines(params)`; `seed` drives the cold-start jitter."""
    counts = models["popularity"].counts.astype(np.float64)
    out: dict[str, dict[str, pd.DataFrame]] = {name: {} for name in EXPERT_NAMES}
    for task in (t for t in (*SET_OUT_RANKING, "candidate_choice") if t in data.frames):
        rows = template_free(task, data.frames[task])
        for name, score in _scorers(models, task, seed).items():
            out[name][task] = _frame(rows, _ranking(task, rows, score, data, top_k))
    if "ctr" in data.frames:
        rows = template_free("ctr", data.frames["ctr"])
        users = rows["user_idx"].to_numpy(dtype=np.int64)
        items = np.array([first_target(t) for t in rows["target_items"]], dtype=np.int64)
        labels = rows["label"].astype(int).to_numpy()
        for name, p in (("ctr_gbdt", models["ctr_gbdt"].predict_proba(users, items, data.history)),
                        ("ctr_expert", models["ctr"].predict_proba(users, items))):
            out[name]["ctr"] = _frame(rows, {"label": labels, "score": p, "prob": p})
        out["pop"]["ctr"] = _frame(rows, {"label": labels, "score": counts[items],
                                          "prob": np.full(len(items), np.nan)})
    if "rating" in data.frames:
        rows = template_free("rating", data.frames["rating"])
        users = rows["user_idx"].to_numpy(dtype=np.int64)
        items = np.array([first_target(t) for t in rows["target_items"]], dtype=np.int64)
        histories = [data.history.get(int(u), np.empty(0, np.int64)) for u in users]
        truth = rows["rating"].to_numpy(dtype=np.float64)
        out["mf"]["rating"] = _frame(rows, {"rating": truth,
                                            "pred": models["mf"].predict(users, items).astype(np.float64)})
        for name in ("rating_knn", "rating_recency"):
            out[name]["rating"] = _frame(rows, {"rating": truth, "pred": models[name].predict(users, items, histories)})
    return {name: per_task for name, per_task in out.items() if per_task}
