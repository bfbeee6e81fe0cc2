"""Evaluation step: metrics for every task (full-ranking retrieval, candidate lists, CTR, rating, text,
prompt sensitivity), computed under the RecBole protocol of docs/design.md §4 (leave-one-out, full ranking over
all items with the user's earlier items excluded). `metrics` holds the pure metric functions.

`evaluate(params) -> EvalReport` runs the trained universal model on every task for its users (by default
all), each user on one seen and one unseen template in rotation (`rows.rotate_templates`), the expert
baselines on the same users and rows, and writes eval.json, the plot CSVs and the HTML report (see `pipeline.py`). Modules: `rows` (inputs, user subsets, ranking of rows),
`universal` (model predictions), `experts` (baselines), `scoring` (rows → metrics, the one evaluator),
`steering` / `steering_rows` (do the prompt's objective, query and wording steer the model),
`report` (HTML, plot CSVs), `tracking` (MLflow). The heavy modules load on first use, so importing
`components.evaluation.metrics` stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from components.config import Params
    from components.evaluation.pipeline import EvalReport

__all__ = ["EvalReport", "evaluate"]


def evaluate(params: "Params") -> "EvalReport":
    """Evaluate the trained model and the experts (components/evaluation/pipeline.py)."""
    from components.evaluation.pipeline import evaluate as run

    return run(params)


def __getattr__(name: str) -> Any:
    if name in ("EvalReport", "build_payload"):
        from components.evaluation import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'components.evaluation' has no attribute {name!r}")
