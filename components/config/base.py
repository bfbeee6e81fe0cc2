"""The strict base model and the task keys every section validates against."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

TASKS: tuple[str, ...] = (
    "next_item",
    "multi_objective",
    "query",
    "cold_start",
    "long_tail",
    "candidate_choice",
    "ctr",
    "rating",
    "text",
    "infill",
)
"""Task keys of the task table (docs/design.md §5), in table order (also the keys used in metrics)."""


GATED_TASKS: tuple[str, ...] = ("next_item", "multi_objective", "query", "cold_start", "long_tail", "candidate_choice")
"""The set-out tasks (answered by the `[UM]` user vectors), the ones a hidden-state gate applies to."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
