"""Per-user scores of a task's headline metric and the paired bootstrap over users (numpy only).

**Per-user score** (`user_scores`). Every headline metric but AUC is the mean of a per-row term over the rows
it is computed on: NDCG@K of a ranking row = 1/log2(rank + 1) if rank ≤ K else 0 (candidate_choice: the rank of
the positive in its list, pessimistic ties); RMSE → the squared error (the metric is the square root of the
mean); MAE → |error|; LogLoss → the row's cross-entropy; attribute F1 / ROUGE-L → the row's value. A user's score
is the mean of that term over the user's rows (for the model: its SEEN-template rows, i.e. every seen template
× every target of the user; for an expert: its template-free rows, one per target), kept with the row count, so
the row-weighted mean over users reproduces the pooled metric exactly. AUC pools rows of different users (a
user's rows alone do not give the pooled AUC), so for ctr a user also keeps its rows' labels and scores; its
`value` is then the AUC within the user's own rows (NaN when they hold one class), for reading only.

**Paired bootstrap** (`paired_bootstrap`). One matrix of user multiplicities `(B, U)` is drawn (B resamples of
U users with replacement, seeded), and both systems' statistics are recomputed on every resample with the SAME
multiplicities — the metric of the resampled users' rows (row-weighted mean, then √ for RMSE; for AUC the
Mann-Whitney AUC of the resampled rows, ties counted ½). `diff = a − b` on all users; `ci95` the 2.5 / 97.5 %
percentiles of the resampled differences. The verdict reads the interval alone: above 0 is a win for a
higher-is-better metric and a loss for a lower-is-better one (RMSE, MAE, LogLoss), and an interval holding 0 is a tie.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from components.evaluation.metrics import attribute_f1, genres_in_text, rank_of_target, rouge_l_f1
from components.evaluation.scoring import LOWER_IS_BETTER, MetricContext

CHUNK = 100
"""Resamples per vectorised AUC block (memory: CHUNK × rows floats)."""


@dataclass(frozen=True)
class UserScores:
    """Per-user scores of one system on one task's headline metric (see the module docstring)."""

    metric: str
    users: np.ndarray  # (U,) int64, ascending
    value: np.ndarray  # (U,) float64: mean per-row term (ctr: the user's own AUC or NaN)
    rows: np.ndarray  # (U,) int64 rows per user
    row_user: np.ndarray | None = None  # (R,) position in `users` of each row (AUC only)
    labels: np.ndarray | None = None  # (R,) 0/1 (AUC only)
    scores: np.ndarray | None = None  # (R,) float64 (AUC only)

    def subset(self, users: np.ndarray) -> "UserScores":
        """The same scores restricted to `users` (a sorted subset of `self.users`)."""
        pos = np.searchsorted(self.users, users)
        if not np.array_equal(self.users[np.minimum(pos, len(self.users) - 1)], users):
            raise ValueError("subset: users missing from the scores")
        if self.row_user is None:
            return UserScores(self.metric, users, self.value[pos], self.rows[pos])
        remap = np.full(len(self.users), -1)
        remap[pos] = np.arange(len(users))
        keep = remap[self.row_user] >= 0
        return UserScores(self.metric, users, self.value[pos], self.rows[pos], remap[self.row_user][keep],
                          self.labels[keep], self.scores[keep])  # type: ignore[index]


def _gain(ranks: np.ndarray, metric: str) -> np.ndarray:
    name, k = metric.split("@")
    r = ranks.astype(np.float64)
    inside = r <= int(k)
    if name == "ndcg":
        return np.where(inside, 1.0 / np.log2(r + 1.0), 0.0)
    if name == "hr":
        return inside.astype(np.float64)
    if name == "mrr":
        return np.where(inside, 1.0 / r, 0.0)
    raise ValueError(f"no per-row term for {metric!r}")


def row_terms(task: str, metric: str, rows: pd.DataFrame, ctx: MetricContext) -> np.ndarray:
    """`(R,)` per-row term of `metric` (the metric = its mean, √ of it for RMSE); not defined for AUC / GAUC."""
    if "@" in metric and "rank" in rows:
        return _gain(rows["rank"].to_numpy(), metric)
    if "@" in metric and "cand_scores" in rows:
        scores = np.stack(rows["cand_scores"].to_numpy())
        ranks = rank_of_target(scores, rows["positive_col"].to_numpy(np.int64), [()] * len(scores))
        return _gain(ranks, metric)
    if metric in ("rmse", "mae"):
        err = rows["rating"].to_numpy(np.float64) - rows["pred"].to_numpy(np.float64)
        return err ** 2 if metric == "rmse" else np.abs(err)
    if metric == "logloss":
        y = rows["label"].to_numpy(np.float64)
        p = np.clip(rows["prob"].to_numpy(np.float64), 1e-7, 1 - 1e-7)
        return -(y * np.log(p) + (1 - y) * np.log(1 - p))
    if metric == "rouge_l":
        return np.array([rouge_l_f1(str(g), str(t)) for g, t in zip(rows["generated"], rows["target_text"])])
    if metric == "attribute_f1":
        return np.array([attribute_f1(genres_in_text(str(g), ctx.genres), genres_in_text(str(t), ctx.genres))
                         for g, t in zip(rows["generated"], rows["target_text"])])
    raise ValueError(f"{task}: no per-row term for metric {metric!r}")


def _finish(metric: str, mean: np.ndarray) -> np.ndarray:
    return np.sqrt(mean) if metric == "rmse" else mean


def user_scores(task: str, metric: str, rows: pd.DataFrame, ctx: MetricContext) -> UserScores:
    """Per-user scores of `metric` over `rows` (one system's rows of `task`; see the module docstring)."""
    if rows.empty:
        raise ValueError(f"{task}: no rows to score")
    users, row_user = np.unique(rows["user_idx"].to_numpy(np.int64), return_inverse=True)
    counts = np.bincount(row_user, minlength=len(users)).astype(np.int64)
    if metric != "auc":
        terms = row_terms(task, metric, rows, ctx)
        return UserScores(metric, users, np.bincount(row_user, weights=terms, minlength=len(users)) / counts, counts)
    labels = rows["label"].to_numpy(np.int64)
    scores = rows["score"].to_numpy(np.float64)
    value = np.full(len(users), np.nan)
    for u in range(len(users)):
        sel = row_user == u
        value[u] = weighted_auc(labels[sel], scores[sel], np.ones((1, int(sel.sum()))))[0]
    return UserScores(metric, users, value, counts, row_user, labels, scores)


def weighted_auc(labels: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """`(B,)` AUC of `(R,)` labels / scores with row weights `(B, R)` (ties ½; NaN when a class has no weight).
    With unit weights it is `metrics.auc`."""
    order = np.argsort(scores, kind="stable")
    y, s, w = labels[order].astype(np.float64), scores[order], weights[:, order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])  # tie groups of the sorted scores
    pos = np.add.reduceat(w * y, starts, axis=1)  # (B, G)
    neg = np.add.reduceat(w * (1 - y), starts, axis=1)
    below = np.cumsum(neg, axis=1) - neg
    n_pos, n_neg = pos.sum(1), neg.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (pos * (below + 0.5 * neg)).sum(1) / (n_pos * n_neg)
    return np.where((n_pos > 0) & (n_neg > 0), out, np.nan)


def statistic(scores: UserScores, weights: np.ndarray) -> np.ndarray:
    """`(B,)` the metric of the resampled users (user multiplicities `weights` `(B, U)`)."""
    if scores.row_user is None:
        w = weights * scores.rows
        return _finish(scores.metric, (w * scores.value).sum(1) / w.sum(1))
    out = [weighted_auc(scores.labels, scores.scores, weights[i:i + CHUNK][:, scores.row_user])  # type: ignore[arg-type]
           for i in range(0, len(weights), CHUNK)]
    return np.concatenate(out)


def multiplicities(n_users: int, resamples: int, seed: int) -> np.ndarray:
    """`(B, U)` how often each of U users is drawn in each of B resamples (U draws with replacement each)."""
    draws = np.random.default_rng(seed).integers(0, n_users, size=(resamples, n_users))
    flat = (np.arange(resamples)[:, None] * n_users + draws).ravel()
    return np.bincount(flat, minlength=resamples * n_users).reshape(resamples, n_users).astype(np.float64)


def verdict(lo: float, hi: float, lower_is_better: bool) -> str:
    """beats / ties / loses for system a against b from the interval of a − b alone."""
    if lo > 0 or hi < 0:
        better = (hi < 0) if lower_is_better else (lo > 0)
        return "beats" if better else "loses"
    return "ties"


def paired_bootstrap(a: UserScores, b: UserScores, resamples: int, seed: int) -> dict[str, object]:
    """`{metric, a, b, diff, ci95, users}` of a − b over the users both systems scored (see the module docstring)."""
    if a.metric != b.metric:
        raise ValueError(f"paired_bootstrap: metrics differ ({a.metric} vs {b.metric})")
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    users = np.intersect1d(a.users, b.users)
    if not len(users):
        raise ValueError("paired_bootstrap: the two systems share no user")
    a, b = a.subset(users), b.subset(users)
    ones = np.ones((1, len(users)))
    point_a, point_b = float(statistic(a, ones)[0]), float(statistic(b, ones)[0])
    weights = multiplicities(len(users), resamples, seed)
    diffs = statistic(a, weights) - statistic(b, weights)
    lo, hi = (float(v) for v in np.nanquantile(diffs, [0.025, 0.975]))
    return {"metric": a.metric, "a": point_a, "b": point_b, "diff": point_a - point_b, "ci95": [lo, hi],
            "users": int(len(users))}


def comparison(model: UserScores, expert: UserScores, resamples: int, seed: int) -> dict[str, object]:
    """eval.json `comparisons[task][expert]`: `{metric, model, expert, diff = model − expert, ci95, users, verdict}`."""
    out = paired_bootstrap(model, expert, resamples, seed)
    lo, hi = out["ci95"]  # type: ignore[misc]
    return {"metric": out["metric"], "model": out["a"], "expert": out["b"], "diff": out["diff"], "ci95": out["ci95"],
            "users": out["users"], "verdict": verdict(lo, hi, model.metric in LOWER_IS_BETTER)}


def ablation_effect(full: UserScores, ablated: UserScores, resamples: int, seed: int) -> dict[str, object]:
    """eval.json `ablations[variant][task]`: `{metric, full, ablated, diff = ablated − full, ci95, users}`."""
    out = paired_bootstrap(ablated, full, resamples, seed)
    return {"metric": out["metric"], "full": out["b"], "ablated": out["a"], "diff": out["diff"], "ci95": out["ci95"],
            "users": out["users"]}


def per_user_frame(systems: dict[str, UserScores]) -> pd.DataFrame:
    """One row per user (the union), per system `<name>` (the user's score) and `<name>.rows`; for AUC also
    `<name>.labels` / `<name>.scores` (the user's rows), so the intervals can be recomputed from the file."""
    users = np.unique(np.concatenate([s.users for s in systems.values()])) if systems else np.empty(0, np.int64)
    out = pd.DataFrame({"user_idx": users})
    for name, s in systems.items():
        pos = np.searchsorted(users, s.users)
        value, count = np.full(len(users), np.nan), np.zeros(len(users), dtype=np.int64)
        value[pos], count[pos] = s.value, s.rows
        out[name], out[f"{name}.rows"] = value, count
        if s.row_user is not None:
            labels, scores = [np.empty(0, np.int64)] * len(users), [np.empty(0)] * len(users)
            for u, p in enumerate(pos):
                sel = s.row_user == u
                labels[p], scores[p] = s.labels[sel], s.scores[sel]  # type: ignore[index]
            out[f"{name}.labels"], out[f"{name}.scores"] = labels, scores
    return out
