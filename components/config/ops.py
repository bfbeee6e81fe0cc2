"""Sections of tracking and operations: MLflow, evaluate, registry and serving, orchestration."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from components.config.base import TASKS, _Strict
from components.hardware import resolve_autocast


class MlflowParams(_Strict):
    tracking_uri: str
    experiment: str | None = None
    artifact_root: str = "mlruns"


class SteeringParams(_Strict):
    """`evaluate.steering`: the steering tests of eval.json (components/evaluation/steering.py)."""

    enabled: bool
    users: int | None = Field(ge=1)
    seed_offset: int
    paraphrase_templates: str = Field(min_length=1)
    paraphrase_min_ratio: float = Field(gt=0.0)


class EvaluateParams(_Strict):
    split: Literal["valid", "test"]
    users_per_task: dict[str, int | None]
    seen_templates_per_user: int | None = Field(ge=1)
    unseen_templates_per_user: int | None = Field(ge=1)
    batch_size: int = Field(ge=1)
    generation_batch_size: int = Field(ge=1)
    ks: list[int] = Field(min_length=1)
    top_k: int = Field(ge=1)
    max_new_tokens: int = Field(ge=1)
    autocast_bf16: bool | Literal["auto"]
    num_threads: int = Field(ge=0)
    seed_offset: int
    shared_prefix: bool
    bootstrap_resamples: int = Field(ge=1)
    bootstrap_seed_offset: int
    ablations: list[Literal["llm_off", "history_off", "neighbours_off", "id_modality_off"]]
    steering: SteeringParams

    _autocast = field_validator("autocast_bf16", mode="after")(lambda v: resolve_autocast(v))
    metrics_file: str
    report_file: str
    plots_dir: str
    per_user_dir: str

    @field_validator("users_per_task")
    @classmethod
    def _known_tasks(cls, v: dict[str, int | None]) -> dict[str, int | None]:
        unknown = set(v) - set(TASKS)
        if unknown:
            raise ValueError(f"unknown tasks {sorted(unknown)}")
        if any(n is not None and n < 1 for n in v.values()):
            raise ValueError("values must be >= 1 or null (all users)")
        return v

    @field_validator("ks")
    @classmethod
    def _positive_ks(cls, v: list[int]) -> list[int]:
        if any(k < 1 for k in v) or len(set(v)) != len(v):
            raise ValueError("cut-offs must be distinct integers >= 1")
        return v


def _metric_spec(spec: str) -> str:
    """`<task>.<metric>` (e.g. ``next_item.ndcg@10``, ``multi_objective.like/ndcg@10``) with a known task."""
    task, _, metric = spec.partition(".")
    if task not in TASKS or not metric:
        raise ValueError(f"metric '{spec}' must be <task>.<metric> with a task of {list(TASKS)}")
    return spec


class ServingParams(_Strict):
    default_task: str
    default_k: int = Field(ge=1)
    max_k: int = Field(ge=1)
    max_rows: int = Field(ge=1)
    max_items: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    max_new_tokens: int = Field(ge=1)
    max_request_prompt_tokens: int = Field(ge=1)
    max_request_new_tokens: int = Field(ge=1)
    autocast_bf16: bool | Literal["auto"]
    num_threads: int = Field(ge=0)

    _autocast = field_validator("autocast_bf16", mode="after")(lambda v: resolve_autocast(v))

    @model_validator(mode="after")
    def _defaults(self) -> "ServingParams":
        if self.default_task not in TASKS:
            raise ValueError(f"registry.serving.default_task must be one of {list(TASKS)}")
        if self.default_k > self.max_k:
            raise ValueError("registry.serving.default_k must be <= max_k")
        return self


class RegistryParams(_Strict):
    model_name: str = Field(min_length=1)
    challenger_alias: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_-]*$")
    champion_alias: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_-]*$")
    gate_metric: str
    gate_margin: float = Field(ge=0.0)
    tracked_metrics: list[str]
    regression_tolerance: float = Field(ge=0.0)
    metrics_file: str
    promotion_file: str
    serving: ServingParams

    @field_validator("gate_metric")
    @classmethod
    def _gate(cls, v: str) -> str:
        return _metric_spec(v)

    @field_validator("tracked_metrics")
    @classmethod
    def _tracked(cls, v: list[str]) -> list[str]:
        return [_metric_spec(s) for s in v]

    @model_validator(mode="after")
    def _distinct_aliases(self) -> "RegistryParams":
        if self.challenger_alias == self.champion_alias:
            raise ValueError("registry.challenger_alias and registry.champion_alias must differ")
        return self


class OrchestrationParams(_Strict):
    results_dir: str
    fetch_retries: int = Field(ge=0)
    registry_retries: int = Field(ge=0)
    retry_delay_s: int = Field(ge=0)
    champion_eval_dir: str
