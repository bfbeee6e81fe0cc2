"""Sections of training: collaborative warm-up, LoRA training, gate selection, benchmark (the experts: baselines.py)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationInfo, field_validator

from components.config.base import GATED_TASKS, TASKS, _Strict
from components.hardware import resolve_autocast, resolve_precision


class CollabWarmupParams(_Strict):
    steps: int = Field(default=0, ge=0)
    batch_size: int = Field(default=256, ge=1)
    max_len: int = Field(default=50, ge=1)
    lr: float = Field(default=0.002, gt=0.0)
    warmup_steps: int = Field(default=20, ge=0)
    lr_scale: float = Field(default=0.0, ge=0.0)
    eval_every: int = Field(default=0, ge=0)
    patience: int = Field(default=4, ge=1)
    rating_weight: float = Field(default=0.0, ge=0.0)


class SelectGatesParams(_Strict):
    grid: list[float] = []
    users: int = Field(default=100, ge=1)
    tasks: list[str] = list(GATED_TASKS)
    batch_size: int = Field(default=32, ge=1)
    top_k: int = Field(default=10, ge=1)
    autocast_bf16: bool | Literal["auto"] = "auto"
    seed_offset: int = 6
    out_file: str = "models/gates.json"
    metrics_file: str = "metrics/gates.json"

    _autocast = field_validator("autocast_bf16", mode="after")(lambda v: resolve_autocast(v))

    @field_validator("grid")
    @classmethod
    def _unit_interval(cls, v: list[float]) -> list[float]:
        if any(not 0.0 <= g <= 1.0 for g in v) or len(set(v)) != len(v):
            raise ValueError(f"gates must be distinct values in [0, 1], got {v}")
        return sorted(v)

    @field_validator("tasks")
    @classmethod
    def _set_out_tasks(cls, v: list[str]) -> list[str]:
        unknown = [t for t in v if t not in GATED_TASKS]
        if unknown:
            raise ValueError(f"{unknown}: only set-out tasks have a hidden-state gate ({list(GATED_TASKS)})")
        return v


class TrainParams(_Strict):
    task_weights: dict[str, float]
    collab_warmup: CollabWarmupParams = CollabWarmupParams()
    batch_size: int = Field(ge=1)
    max_steps: int = Field(ge=1)
    lr: float = Field(gt=0.0)
    embedding_lr: float = Field(ge=0.0)
    prior_lr: float = Field(default=0.02, gt=0.0)
    weight_decay: float = Field(ge=0.0)
    warmup_steps: int = Field(ge=0)
    grad_clip: float = Field(ge=0.0)
    max_prompt_tokens: int = Field(ge=8)
    max_target_tokens: int = Field(ge=1)
    accelerator: str
    devices: int = Field(ge=1)
    strategy: str
    precision: Literal["auto", "32-true", "bf16-mixed", "16-mixed", "bf16-true"]
    num_threads: int = Field(ge=0)
    val_examples_per_task: int = Field(ge=0)
    val_check_interval: int = Field(ge=1)
    curve_every_n_steps: int = Field(default=0, ge=0)
    curve_users: int = Field(default=200, ge=1)
    curve_templates: list[str] = []
    curve_batch_size: int = Field(default=32, ge=1)
    checkpoint_every_n_steps: int = Field(ge=1)
    resume: bool
    log_every_n_steps: int = Field(ge=1)
    out_dir: str
    checkpoint_dir: str
    seed_offset: int

    @field_validator("task_weights")
    @classmethod
    def _known_tasks(cls, v: dict[str, float]) -> dict[str, float]:
        unknown = set(v) - set(TASKS)
        if unknown:
            raise ValueError(f"unknown tasks {sorted(unknown)}")
        if any(w < 0 for w in v.values()) or not any(w > 0 for w in v.values()):
            raise ValueError("weights must be >= 0 with at least one > 0")
        return v

    @field_validator("precision", mode="after")
    @classmethod
    def _resolve_precision(cls, v: str, info: ValidationInfo) -> str:
        # `auto`: bf16-mixed only where bf16 is native (components/hardware.py); resolved once, here
        return resolve_precision(v, str(info.data.get("accelerator", "cpu")))


class BenchmarkParams(_Strict):
    examples_per_task: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    warmup_steps: int = Field(ge=0)
    naive_max_tokens: int = Field(ge=8)
    retrieval_users: int = Field(ge=1)
    retrieval_k: int = Field(ge=1)
    retrieval_template: str
    retrieval_warmup: int = Field(ge=0)
    retrieval_max_new_tokens: int = Field(ge=2)
    generator_steps: int | None = Field(default=None, ge=1)
    generator_dir: str
    serving_requests: int = Field(ge=1)
    serving_bad_fraction: float = Field(ge=0.0, le=1.0)
    serving_warmup: int = Field(ge=0)
    serving_timeout_s: int = Field(ge=1)
    index_items: int = Field(ge=1)
    index_clusters: int = Field(ge=1)
    index_super_clusters: int = Field(ge=1)
    index_topic_spread: float = Field(ge=0.0)
    index_noise: float = Field(ge=0.0)
    index_bias_std: float = Field(ge=0.0)
    index_queries: int = Field(ge=1)
    index_warmup: int = Field(ge=0)
    index_kinds: list[Literal["flat", "ivf", "hnsw"]]
    index_ivf_nlist: int = Field(ge=1)
    index_ivf_nprobe: list[int]
    index_hnsw_ef_search: list[int]
    index_query_threads: int = Field(ge=1)
    index_build_budget_s: float = Field(gt=0.0)
