"""The scoreboard of eval.json: model vs every expert and the ablations, as paired bootstrap intervals over users,
the best expert of each task chosen on VALIDATION rows, and the per-user scores behind every interval (pure).

* `comparisons[task][expert]` = `bootstrap.comparison` of the model's SEEN-template rows against the expert's rows
  on the task's headline metric (`scoring.headline_metric`): diff = model − expert, its 95 % interval, verdict;
* `ablations[variant][task]` = `bootstrap.ablation_effect` of the ablated model's seen-template rows against the
  full model's: diff = ablated − full;
* `best_expert[task]`: the expert with the best headline metric on the validation rows (`expert_rows` run on
  `evaluate.split: valid` data), never on test; `best_expert_valid[task][expert]` keeps the validation figures;
* `per_user_frames(...)[task]`: one row per user, a column per system (`unirec`, each expert, `unirec/<variant>`)
  with the user's score and row count (`bootstrap.per_user_frame`), written to `<evaluate.per_user_dir>/<task>.parquet`.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from components.evaluation.bootstrap import UserScores, ablation_effect, comparison, per_user_frame, user_scores
from components.evaluation.scoring import LOWER_IS_BETTER, MetricContext, headline_metric, task_metrics

MODEL = "unirec"
"""The model's column in the per-user files; an ablation's is `unirec/<variant>`."""


def seen_rows(rows: pd.DataFrame) -> pd.DataFrame:
    """The rows of the seen (training) templates: what every comparison and ablation reads of the model."""
    return rows[rows["template_kind"] == "seen"].reset_index(drop=True)


def best_experts(valid_rows: dict[str, dict[str, pd.DataFrame]], ctx: MetricContext
                 ) -> tuple[dict[str, str], dict[str, dict[str, float]]]:
    """(task → the expert with the best validation headline metric, task → expert → that figure); ties go to the
    expert listed first. `valid_rows` is `expert_rows` on the validation data."""
    figures: dict[str, dict[str, float]] = {}
    for expert, per_task in valid_rows.items():
        for task, rows in per_task.items():
            metric = headline_metric(task, ctx.top_k)
            value = task_metrics(task, rows, ctx).get(metric)
            if value is not None:
                figures.setdefault(task, {})[expert] = float(value)
    best = {}
    for task, values in figures.items():
        sign = -1.0 if headline_metric(task, ctx.top_k) in LOWER_IS_BETTER else 1.0
        best[task] = max(values, key=lambda e: sign * values[e])
    return best, figures


def scoreboard(model_rows: dict[str, pd.DataFrame], expert: dict[str, dict[str, pd.DataFrame]],
               ablated: dict[str, dict[str, pd.DataFrame]], ctx: MetricContext, resamples: int, seed: int
               ) -> tuple[dict[str, Any], dict[str, Any], dict[str, pd.DataFrame]]:
    """(comparisons, ablations, per-user frames) from the model's rows per task, the experts' rows
    `{expert: {task: rows}}` and the ablated model's seen-template rows `{variant: {task: rows}}`."""
    comparisons: dict[str, Any] = {}
    ablations: dict[str, Any] = {}
    frames: dict[str, pd.DataFrame] = {}
    for task, rows in model_rows.items():
        metric = headline_metric(task, ctx.top_k)
        seen = seen_rows(rows)
        if seen.empty:
            continue
        systems: dict[str, UserScores] = {MODEL: user_scores(task, metric, seen, ctx)}
        for name, per_task in expert.items():
            if task in per_task and not per_task[task].empty:
                systems[name] = user_scores(task, metric, per_task[task], ctx)
                comparisons.setdefault(task, {})[name] = comparison(systems[MODEL], systems[name], resamples, seed)
        for variant, per_task in ablated.items():
            if task in per_task and not per_task[task].empty:
                scores = user_scores(task, metric, per_task[task], ctx)
                systems[f"{MODEL}/{variant}"] = scores
                ablations.setdefault(variant, {})[task] = ablation_effect(systems[MODEL], scores, resamples, seed)
        frames[task] = per_user_frame(systems)
    return comparisons, ablations, frames
