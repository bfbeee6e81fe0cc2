"""The one evaluator: per-row outputs of any predictor → task metrics.

Both the universal model (universal.py) and the experts (experts.py) return, per task, a frame with
``template_id``, ``template_kind``, ``user_idx`` and the task's output columns:

* set-out ranking tasks: ``rank`` (1-based, pessimistic ties), ``top`` (top-K item ids), ``objective``;
* candidate_choice: ``cand_scores`` (one score per listed item) and ``positive_col``;
* ctr: ``label``, ``score`` (ranks rows for AUC/GAUC) and ``prob`` (p(yes), NaN when not a probability);
* rating: ``rating`` and ``pred``; text / infill: ``generated`` and ``target_text``.

`task_metrics` turns any subset of such rows into the task's metrics, so seen-template rows, unseen ones,
one template, or an expert's rows all go through the same code. GAUC groups rows by (user, template).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from components.evaluation.metrics import (attribute_f1, auc, candidate_metrics, gauc, genres_in_text, logloss,
                                           mae, metrics_from_ranks, prompt_sensitivity, rmse, rouge_l_f1,
                                           tail_coverage, tail_share)
from components.evaluation.rows import SET_OUT_RANKING, span_matches

LOWER_IS_BETTER = frozenset({"rmse", "mae", "logloss"})


@dataclass(frozen=True)
class MetricContext:
    ks: tuple[int, ...]
    top_k: int
    tail_items: frozenset[int]
    genres: tuple[str, ...]
    mask_format: str


def headline_metric(task: str, top_k: int) -> str:
    """The metric the prompt-sensitivity table and the report charts use for `task`."""
    if task in SET_OUT_RANKING:
        return f"ndcg@{top_k}"
    return {"candidate_choice": "ndcg@5", "ctr": "auc", "rating": "rmse", "text": "attribute_f1",
            "infill": "rouge_l"}[task]


def _ranking(ranks: np.ndarray, ctx: MetricContext) -> dict[str, float]:
    ks = tuple(sorted({*ctx.ks, ctx.top_k}))
    out = metrics_from_ranks(ranks.astype(np.int64), ks=ks, mrr_k=ctx.top_k)
    return {k: v for k, v in out.items() if not k.startswith("recall@")}  # one target: recall@k == hr@k


def _ctr(rows: pd.DataFrame) -> dict[str, float]:
    y = rows["label"].to_numpy(dtype=np.float64)
    s = rows["score"].to_numpy(dtype=np.float64)
    out: dict[str, float] = {}
    if 0 < y.sum() < len(y):
        out["auc"] = auc(y, s)
    groups = pd.factorize(rows["user_idx"].astype(str) + "|" + rows["template_id"].astype(str))[0]
    try:
        out["gauc"] = gauc(groups, y, s).gauc
    except ValueError:  # every group holds one class: GAUC undefined
        pass
    p = rows["prob"].to_numpy(dtype=np.float64)
    if not np.isnan(p).any():
        out["logloss"] = logloss(y, p)
    return out


def task_metrics(task: str, rows: pd.DataFrame, ctx: MetricContext) -> dict[str, float]:
    """Metrics of `task` over `rows` (empty dict for no rows; undefined metrics are left out)."""
    if rows.empty:
        return {}
    if task in SET_OUT_RANKING:
        out = _ranking(rows["rank"].to_numpy(), ctx)
        if task == "multi_objective":
            for objective in sorted(rows["objective"].dropna().unique()):
                sub = rows[rows["objective"] == objective]
                out.update({f"{objective}/{k}": v for k, v in _ranking(sub["rank"].to_numpy(), ctx).items()})
        if task == "long_tail" and ctx.tail_items:
            top = np.stack(rows["top"].to_numpy())[:, :ctx.top_k]
            out[f"tail_coverage@{ctx.top_k}"] = tail_coverage(top, set(ctx.tail_items))
            out[f"tail_share@{ctx.top_k}"] = tail_share(top, set(ctx.tail_items))
        return out
    if task == "candidate_choice":
        return candidate_metrics(np.stack(rows["cand_scores"].to_numpy()), rows["positive_col"].to_numpy(np.int64))
    if task == "ctr":
        return _ctr(rows)
    if task == "rating":
        y, p = rows["rating"].to_numpy(np.float64), rows["pred"].to_numpy(np.float64)
        return {"rmse": rmse(y, p), "mae": mae(y, p)}
    generated, target = rows["generated"].astype(str).tolist(), rows["target_text"].astype(str).tolist()
    out = {"rouge_l": float(np.mean([rouge_l_f1(g, t) for g, t in zip(generated, target)]))}
    if task == "text":
        out["attribute_f1"] = float(np.mean([attribute_f1(genres_in_text(g, ctx.genres), genres_in_text(t, ctx.genres))
                                             for g, t in zip(generated, target)]))
    elif task == "infill":
        hits, total = np.sum([span_matches(g, t, ctx.mask_format) for g, t in zip(generated, target)], axis=0)
        if total:
            out["span_accuracy"] = float(hits / total)
    else:
        raise ValueError(f"unknown task {task!r}")
    return out


def by_kind(task: str, rows: pd.DataFrame, ctx: MetricContext) -> dict[str, dict[str, float]]:
    """Metrics pooled over the seen-template rows and over the unseen-template rows."""
    return {kind: task_metrics(task, rows[rows["template_kind"] == kind], ctx) for kind in ("seen", "unseen")}


def by_template(task: str, rows: pd.DataFrame, ctx: MetricContext) -> dict[str, dict[str, float]]:
    """Metrics per template id (sorted)."""
    return {str(t): task_metrics(task, g, ctx) for t, g in rows.groupby("template_id", sort=True)}


def sensitivity(task: str, rows: pd.DataFrame, per_template: dict[str, dict[str, float]],
                ctx: MetricContext) -> dict[str, object]:
    """Spread of the task's headline metric across its templates (`metrics.prompt_sensitivity`)."""
    metric = headline_metric(task, ctx.top_k)
    kinds = rows.drop_duplicates("template_id").set_index("template_id")["template_kind"].to_dict()
    values = {t: m[metric] for t, m in per_template.items() if metric in m}
    out: dict[str, object] = {"metric": metric, "lower_is_better": metric in LOWER_IS_BETTER,
                              "templates": {t: {"kind": str(kinds[t]), "value": v} for t, v in values.items()}}
    if values:
        out.update(prompt_sensitivity(values))
    return out
