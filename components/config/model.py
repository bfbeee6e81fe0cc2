"""Sections of the model: backbone, item embeddings, fusion and heads, index, LoRA."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from components.config.base import _Strict
from components.hardware import resolve_autocast


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
    batch_tokens: int = Field(default=2048, ge=1)
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

    @model_validator(mode="after")
    def _heads_divide_width(self) -> "HistoryEncoderParams":
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
            raise ValueError("model.rating_prior_window > 0 feeds the verbaliser prior: "
                             "set model.verbaliser_prior: true")
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
