"""Pure, deterministic metric functions of the evaluation step (numpy only, no RNG).

Ranking metrics follow RecBole's definitions (full ranking, means over users):
* ``hr@k``     1 if any target is in the top k;
* ``ndcg@k``   binary relevance, DCG = sum over hits of 1/log2(pos + 1) (pos 1-based), divided by the IDCG of
  min(|targets|, k) hits, so with one target NDCG = 1/log2(rank + 1);
* ``mrr@k``    1/rank of the first hit, 0 if it is beyond k;
* ``recall@k`` hits in the top k / |targets| (equals ``hr@k`` with one target).

Ties are broken PESSIMISTICALLY wherever a rank is derived from scores (`rank_of_target`,
`candidate_metrics`): every other item whose score equals the target's counts as ranked ahead of it, so a
constant scorer gets the worst rank, never a lucky one.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple

import numpy as np

Targets = Sequence[set[int] | frozenset[int] | int]  # per user: one target id or a set of them
Floats = Sequence[float] | np.ndarray
Ints = Sequence[int] | np.ndarray


# ----------------------------------------------------------------------------------------- validation
def _check_k(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    return int(k)


def _ranked_matrix(ranked: np.ndarray, k: int) -> np.ndarray:
    arr = np.asarray(ranked)
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"ranked must be a non-empty (U, K) array of item ids, got shape {arr.shape}")
    if arr.shape[1] < k:
        raise ValueError(f"ranked has only {arr.shape[1]} columns, cannot compute a metric @{k}")
    srt = np.sort(arr, axis=1)
    if np.any(srt[:, 1:] == srt[:, :-1]):
        raise ValueError("ranked lists must not repeat an item within a user's row")
    return arr


def _hits(ranked: np.ndarray, targets: Targets, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Boolean (U, k) hit matrix of the top k and the (U,) target counts."""
    arr = _ranked_matrix(ranked, _check_k(k))
    if len(targets) != arr.shape[0]:
        raise ValueError(f"targets has {len(targets)} entries but ranked has {arr.shape[0]} users")
    sets = [frozenset([int(t)]) if isinstance(t, (int, np.integer)) else frozenset(int(i) for i in t)
            for t in targets]
    if any(not t for t in sets):
        raise ValueError("every user needs at least one target item")
    hits = np.array([[int(i) in t for i in row[:k]] for row, t in zip(arr, sets, strict=True)], dtype=bool)
    return hits.reshape(arr.shape[0], k), np.array([len(t) for t in sets], dtype=np.int64)


def _vector(x: Floats, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr


def _pair(a: Floats, b: Floats, na: str, nb: str, binary_first: bool = False) -> tuple[np.ndarray, np.ndarray]:
    x, y = _vector(a, na), _vector(b, nb)
    if x.shape != y.shape:
        raise ValueError(f"shape mismatch: {na} {x.shape} vs {nb} {y.shape}")
    if binary_first and not np.all((x == 0) | (x == 1)):
        raise ValueError(f"{na} must be binary (0/1)")
    return x, y


# ------------------------------------------------------------------------------------------ ranking
def _from_hits(hits: np.ndarray, n_targets: np.ndarray) -> dict[str, np.ndarray]:
    discounts = 1.0 / np.log2(np.arange(2, hits.shape[1] + 2))
    idcg = np.cumsum(discounts)[np.minimum(n_targets, hits.shape[1]) - 1]
    any_hit = hits.any(axis=1)
    return {"hr": any_hit.astype(np.float64), "ndcg": (hits * discounts).sum(axis=1) / idcg,
            "mrr": np.where(any_hit, 1.0 / (hits.argmax(axis=1) + 1), 0.0),
            "recall": hits.sum(axis=1) / n_targets}


def hit_rate_at_k(ranked: np.ndarray, targets: Targets, k: int) -> float:
    """HR@k: mean over users of 1 if any target is among `ranked[:, :k]` (item ids, best first)."""
    return float(_from_hits(*_hits(ranked, targets, k))["hr"].mean())


def ndcg_at_k(ranked: np.ndarray, targets: Targets, k: int) -> float:
    """NDCG@k, binary relevance, log2 discount, IDCG over min(|targets|, k) ideal hits."""
    return float(_from_hits(*_hits(ranked, targets, k))["ndcg"].mean())


def mrr_at_k(ranked: np.ndarray, targets: Targets, k: int) -> float:
    """MRR@k: mean of 1/rank of the first hit in the top k (0 when no target is in the top k)."""
    return float(_from_hits(*_hits(ranked, targets, k))["mrr"].mean())


def recall_at_k(ranked: np.ndarray, targets: Targets, k: int) -> float:
    """Recall@k: mean over users of (targets in the top k) / |targets|."""
    return float(_from_hits(*_hits(ranked, targets, k))["recall"].mean())


def ranking_metrics(ranked: np.ndarray, targets: Targets, ks: Sequence[int] = (5, 10, 20), mrr_k: int = 10
                    ) -> dict[str, float]:
    """All ranking metrics: keys ``hr@k``, ``ndcg@k``, ``recall@k`` for each k in `ks`, then ``mrr@{mrr_k}``."""
    if not ks:
        raise ValueError("ks must not be empty")
    ks = [_check_k(k) for k in ks]
    hits, n_targets = _hits(ranked, targets, max(*ks, _check_k(mrr_k)))
    out: dict[str, float] = {}
    for k in ks:
        per = _from_hits(hits[:, :k], n_targets)
        out.update({f"{name}@{k}": float(per[name].mean()) for name in ("hr", "ndcg", "recall")})
    out[f"mrr@{mrr_k}"] = float(_from_hits(hits[:, :mrr_k], n_targets)["mrr"].mean())
    return out


def rank_of_target(scores: np.ndarray, targets: Ints, exclude: Sequence[Sequence[int]]) -> np.ndarray:
    """1-based rank (U,) of each user's target among all N items, under full ranking of `scores` (U, N).

    Items in ``exclude[u]`` (e.g. the user's earlier items) are removed from the ranking and never counted.
    Ties are pessimistic: rank = 1 + #{items j not excluded, j != target, scores[u, j] >= scores[u, target]}.
    Raises ValueError if a target is itself excluded or an id is out of range.
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 2 or s.shape[0] == 0 or s.shape[1] == 0:
        raise ValueError(f"scores must be a non-empty (U, N) array, got shape {s.shape}")
    if np.isnan(s).any():
        raise ValueError("scores contain NaN")
    n_users, n_items = s.shape
    t = np.asarray(targets)
    if t.shape != (n_users,) or not np.issubdtype(t.dtype, np.integer):
        raise ValueError(f"targets must be ({n_users},) integer item ids, got shape {t.shape} dtype {t.dtype}")
    if len(exclude) != n_users:
        raise ValueError(f"exclude has {len(exclude)} entries but scores has {n_users} users")
    if t.min() < 0 or t.max() >= n_items:
        raise ValueError(f"target ids must lie in [0, {n_items})")
    rows = np.arange(n_users)
    ahead = s >= s[rows, t][:, None]
    ahead[rows, t] = False
    lengths = np.array([len(e) for e in exclude], dtype=np.int64)
    if lengths.sum():
        cols = np.concatenate([np.asarray(e, dtype=np.int64).reshape(-1) for e in exclude])
        if cols.min() < 0 or cols.max() >= n_items:
            raise ValueError(f"excluded ids must lie in [0, {n_items})")
        ex_rows = np.repeat(rows, lengths)
        if np.any(cols == t[ex_rows]):
            raise ValueError("a user's target item is in its own exclude list")
        ahead[ex_rows, cols] = False
    return ahead.sum(axis=1) + 1


def metrics_from_ranks(ranks: Ints, ks: Sequence[int] = (5, 10, 20), mrr_k: int = 10) -> dict[str, float]:
    """The keys of `ranking_metrics` from 1-based ranks of a single target per user (no top-K lists needed)."""
    r = np.asarray(ranks)
    if r.ndim != 1 or r.size == 0 or not np.issubdtype(r.dtype, np.integer) or r.min() < 1:
        raise ValueError("ranks must be a non-empty 1-D integer array with values >= 1")
    if not ks:
        raise ValueError("ks must not be empty")
    gain = 1.0 / np.log2(r + 1.0)
    out: dict[str, float] = {}
    for k in ks:
        inside = r <= _check_k(k)
        out[f"hr@{k}"] = float(inside.mean())
        out[f"ndcg@{k}"] = float(np.where(inside, gain, 0.0).mean())
        out[f"recall@{k}"] = out[f"hr@{k}"]
    out[f"mrr@{mrr_k}"] = float(np.where(r <= _check_k(mrr_k), 1.0 / r, 0.0).mean())
    return out


def tail_coverage(ranked: np.ndarray, tail_items: set[int]) -> float:
    """Fraction of `tail_items` that appear in at least one user's recommended list."""
    if not tail_items:
        raise ValueError("tail_items must not be empty")
    shown = set(np.unique(_ranked_matrix(ranked, 1)).tolist())
    return len(shown & {int(i) for i in tail_items}) / len(tail_items)


def tail_share(ranked: np.ndarray, tail_items: set[int]) -> float:
    """Fraction of all recommended slots (U x K) filled by tail items."""
    arr = _ranked_matrix(ranked, 1)
    return float(np.isin(arr, np.fromiter((int(i) for i in tail_items), dtype=np.int64)).mean())


def candidate_metrics(scores: np.ndarray, positive_col: Ints) -> dict[str, float]:
    """Candidate-list choice (1 positive + negatives per row of `scores` (U, C)): ``hr@1`` and ``ndcg@5``.

    `positive_col[u]` is the column of the positive; ties are pessimistic (see module docstring)."""
    s = np.asarray(scores)
    ranks = rank_of_target(s, positive_col, [()] * (s.shape[0] if s.ndim == 2 else 0))
    full = metrics_from_ranks(ranks, ks=(1, 5), mrr_k=1)
    return {"hr@1": full["hr@1"], "ndcg@5": full["ndcg@5"]}


# ---------------------------------------------------------------------------------------------- CTR
def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of `values`, tied values sharing their average rank."""
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    starts = np.cumsum(counts) - counts
    return (starts + (counts + 1) / 2.0)[inverse]


def auc(labels: Floats, scores: Floats) -> float:
    """ROC AUC (Mann-Whitney U with average ranks for ties; equals sklearn's roc_auc_score).

    Raises ValueError when the labels hold a single class (AUC is undefined)."""
    y, s = _pair(labels, scores, "labels", "scores", binary_first=True)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUC is undefined: labels contain only one class")
    rank_sum = float(_average_ranks(s)[y == 1].sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


class GaucResult(NamedTuple):
    """GAUC and its bookkeeping: `weight` = impressions of the users that counted."""

    gauc: float
    weight: int
    users: int
    users_skipped: int


def gauc(user_ids: Ints, labels: Floats, scores: Floats) -> GaucResult:
    """Group AUC: per-user AUC averaged with weights = the user's number of impressions (rows).

    Users whose labels hold one class have no AUC and are skipped (counted in `users_skipped`, their rows
    excluded from `weight`). Raises ValueError if every user is skipped."""
    y, s = _pair(labels, scores, "labels", "scores", binary_first=True)
    u = np.asarray(user_ids)
    if u.shape != y.shape:
        raise ValueError(f"shape mismatch: user_ids {u.shape} vs labels {y.shape}")
    _, uidx = np.unique(u, return_inverse=True)
    uidx = uidx.reshape(-1)
    n_users = int(uidx.max()) + 1
    order = np.lexsort((s, uidx))  # by user, then score
    su, ss, sy = uidx[order], s[order], y[order]
    rows = np.bincount(uidx, minlength=n_users)
    pos = np.bincount(uidx, weights=y, minlength=n_users)
    neg = rows - pos
    # tie groups = runs of equal (user, score); their average within-user rank
    new_group = np.r_[True, (su[1:] != su[:-1]) | (ss[1:] != ss[:-1])]
    gid = np.cumsum(new_group) - 1
    gcount = np.bincount(gid)
    gstart = np.flatnonzero(new_group) - (np.cumsum(rows) - rows)[su[new_group]]
    avg_rank = (gstart + (gcount + 1) / 2.0)[gid]
    rank_sum = np.bincount(su, weights=avg_rank * sy, minlength=n_users)
    valid = (pos > 0) & (neg > 0)
    if not valid.any():
        raise ValueError("GAUC is undefined: every user's labels contain only one class")
    user_auc = (rank_sum[valid] - pos[valid] * (pos[valid] + 1) / 2.0) / (pos[valid] * neg[valid])
    weight = int(rows[valid].sum())
    return GaucResult(float((user_auc * rows[valid]).sum() / weight), weight, n_users, int((~valid).sum()))


def logloss(labels: Floats, probs: Floats, eps: float = 1e-7) -> float:
    """Binary cross-entropy (natural log), probabilities clipped to [eps, 1 - eps]."""
    if not 0.0 < eps < 0.5:
        raise ValueError(f"eps must be in (0, 0.5), got {eps}")
    y, p = _pair(labels, probs, "labels", "probs", binary_first=True)
    if p.min() < 0.0 or p.max() > 1.0:
        raise ValueError("probs must lie in [0, 1]")
    p = np.clip(p, eps, 1.0 - eps)
    return float(-(y * np.log(p) + (1.0 - y) * np.log(1.0 - p)).mean())


# ------------------------------------------------------------------------------------------- rating
def rmse(y_true: Floats, y_pred: Floats) -> float:
    """Root mean squared error."""
    a, b = _pair(y_true, y_pred, "y_true", "y_pred")
    return float(np.sqrt(np.mean((a - b) ** 2)))


def mae(y_true: Floats, y_pred: Floats) -> float:
    """Mean absolute error."""
    a, b = _pair(y_true, y_pred, "y_true", "y_pred")
    return float(np.mean(np.abs(a - b)))


# --------------------------------------------------------------------------------------------- text
def _tokens(text: str) -> list[str]:
    return re.findall(r"[^\W_]+", text.lower())


def rouge_l_f1(candidate: str, reference: str) -> float:
    """ROUGE-L F1 (beta = 1): LCS over lowercase tokens split on whitespace and punctuation.

    Returns 0.0 when either text has no tokens (as the `rouge-score` package does)."""
    cand, ref = _tokens(candidate), _tokens(reference)
    if not cand or not ref:
        return 0.0
    prev = [0] * (len(ref) + 1)
    for c in cand:
        cur = [0]
        for j, r in enumerate(ref):
            cur.append(prev[j] + 1 if c == r else max(prev[j + 1], cur[j]))
        prev = cur
    lcs = prev[-1]
    return 0.0 if lcs == 0 else 2.0 * lcs / (len(cand) + len(ref))


def attribute_f1(predicted: set[str], reference: set[str]) -> float:
    """F1 of predicted vs reference attribute values (case-insensitive). Both empty -> 1.0, one empty -> 0.0."""
    p, r = {x.casefold() for x in predicted}, {x.casefold() for x in reference}
    if not p and not r:
        return 1.0
    tp = len(p & r)
    return 0.0 if tp == 0 else 2.0 * tp / (len(p) + len(r))


def _term_pattern(term: str) -> re.Pattern[str]:
    """Whole-word, case-insensitive pattern; '-' and spaces match any run of them, apostrophes are optional."""
    parts = [re.escape(p).replace("'", "['’]?") for p in re.split(r"[\s\-]+", term.strip()) if p]
    return re.compile(r"(?<!\w)" + r"[\s\-]+".join(parts) + r"(?!\w)", re.IGNORECASE)


def genres_in_text(text: str, vocabulary: Iterable[str]) -> set[str]:
    """Known attribute values (canonical spelling from `vocabulary`) mentioned in `text` as whole words,
    case-insensitively; "Sci-Fi" also matches "sci fi", "Children's" also "childrens" / "children’s"."""
    return {term for term in vocabulary if term.strip() and _term_pattern(term).search(text)}


# ------------------------------------------------------------------------------- prompt sensitivity
def prompt_sensitivity(per_template: Mapping[str, float]) -> dict[str, float]:
    """Spread of one metric across prompt templates: mean, population std, min, max, n_templates."""
    if not per_template:
        raise ValueError("per_template must not be empty")
    vals = _vector(list(per_template.values()), "per_template values")
    return {"mean": float(vals.mean()), "std": float(vals.std(ddof=0)), "min": float(vals.min()),
            "max": float(vals.max()), "n_templates": len(vals)}

