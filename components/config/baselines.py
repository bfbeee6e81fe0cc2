"""Section `baselines`: the expert models, each tuned on the validation split by a small grid (docs/design.md §9)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from components.config.base import _Strict


class SasrecParams(_Strict):
    """One SASRec architecture and its training (the RecBole-default expert; a point of the tuned grid)."""

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
            raise ValueError("baselines.sasrec*: hidden_size must be divisible by num_heads")
        if self.train_stride > self.max_len:
            raise ValueError("baselines.sasrec*: train_stride must be <= max_len")
        return self


class SasrecGrid(_Strict):
    dropout: list[float] = Field(min_length=1)
    max_len: list[int] = Field(min_length=1)
    hidden_size: list[int] = Field(min_length=1)


class SasrecTunedParams(_Strict):
    """The tuned SASRec: trained on every prefix, full cross-entropy, a grid chosen by successive halving."""

    num_layers: int = Field(ge=1)
    num_heads: int = Field(ge=1)
    inner_factor: int = Field(ge=1)
    layer_norm_eps: float = Field(gt=0.0)
    initializer_range: float = Field(gt=0.0)
    stride_fraction: float = Field(gt=0.0, le=1.0)
    lr: float = Field(gt=0.0)
    batch_targets: int = Field(ge=1)
    eval_batch_size: int = Field(ge=1)
    max_epochs: int = Field(ge=1)
    patience: int = Field(ge=1)
    grid: SasrecGrid
    halving_epochs: list[int] = []
    halving_eta: int = Field(ge=2)

    @model_validator(mode="after")
    def _grid(self) -> "SasrecTunedParams":
        if any(h % self.num_heads for h in self.grid.hidden_size):
            raise ValueError("baselines.sasrec.grid.hidden_size: every value must be divisible by num_heads")
        if any(not 0.0 <= d < 1.0 for d in self.grid.dropout):
            raise ValueError("baselines.sasrec.grid.dropout: every value must be in [0, 1)")
        if self.halving_epochs != sorted(set(self.halving_epochs)) or any(e < 1 for e in self.halving_epochs):
            raise ValueError("baselines.sasrec.halving_epochs must be increasing positive epochs")
        return self

    def config(self, dropout: float, max_len: int, hidden_size: int) -> SasrecParams:
        """The architecture and training of one grid point: one dropout for embeddings, sub-layers and attention;
        train_stride = round(stride_fraction × max_len) (≥ 1); batch_size counts targets (`batch_targets`)."""
        return SasrecParams(hidden_size=hidden_size, num_layers=self.num_layers, num_heads=self.num_heads,
                            inner_size=self.inner_factor * hidden_size, hidden_dropout=dropout, attn_dropout=dropout,
                            layer_norm_eps=self.layer_norm_eps, initializer_range=self.initializer_range,
                            max_len=max_len, train_stride=max(1, round(self.stride_fraction * max_len)), lr=self.lr,
                            batch_size=self.batch_targets, eval_batch_size=self.eval_batch_size,
                            max_epochs=self.max_epochs, patience=self.patience)


class ItemKnnParams(_Strict):
    neighbours: list[int] = Field(min_length=1)
    shrinkage: list[float] = Field(min_length=1)
    recency_decay: list[float] = Field(min_length=1)
    batch_size: int = Field(ge=1)

    @model_validator(mode="after")
    def _ranges(self) -> "ItemKnnParams":
        if any(k < 0 for k in self.neighbours) or any(s < 0 for s in self.shrinkage):
            raise ValueError("baselines.item_knn: neighbours and shrinkage must be >= 0")
        if any(not 0.0 < d <= 1.0 for d in self.recency_decay):
            raise ValueError("baselines.item_knn.recency_decay: every value must be in (0, 1]")
        return self


class QueryParams(_Strict):
    k1: float = Field(gt=0.0)
    b: float = Field(ge=0.0, le=1.0)
    stopwords: str | None = None
    weights: list[float] = Field(min_length=1)


class ContentParams(_Strict):
    window: list[int] = Field(min_length=1)
    center: list[bool] = Field(min_length=1)


class MfGrid(_Strict):
    dim: list[int] = Field(min_length=1)
    l2: list[float] = Field(min_length=1)
    lr: list[float] = Field(min_length=1)


class MfParams(_Strict):
    dim: int = Field(ge=1)
    init_std: float = Field(gt=0.0)
    lr: float = Field(gt=0.0)
    l2: float = Field(ge=0.0)
    batch_size: int = Field(ge=1)
    max_epochs: int = Field(ge=1)
    patience: int = Field(ge=1)
    grid: MfGrid | None = None


class RatingKnnParams(_Strict):
    neighbours: list[int] = Field(min_length=1)
    shrinkage: list[float] = Field(min_length=1)
    bias_reg: float = Field(ge=0.0)


class RatingRecencyParams(_Strict):
    window: list[int] = Field(min_length=1)
    item_reg: list[float] = Field(min_length=1)


class CtrParams(_Strict):
    model: Literal["logistic_crosses"]
    popularity_buckets: int = Field(ge=1)
    lr: float = Field(gt=0.0)
    l2: float = Field(ge=0.0)
    batch_size: int = Field(ge=1)
    max_epochs: int = Field(ge=1)
    patience: int = Field(ge=1)


class GbdtGrid(_Strict):
    learning_rate: list[float] = Field(min_length=1)
    max_leaf_nodes: list[int] = Field(min_length=1)
    min_samples_leaf: list[int] = Field(min_length=1)


class CtrGbdtParams(_Strict):
    recent_items: int = Field(ge=1)
    trees_per_round: int = Field(ge=1)
    max_trees: int = Field(ge=1)
    patience: int = Field(ge=1)
    l2_regularization: float = Field(ge=0.0)
    grid: GbdtGrid


class BaselinesParams(_Strict):
    out_dir: str
    metrics_file: str
    seed_offset: int
    num_threads: int = Field(ge=0)
    eval_k: int = Field(ge=1)
    report_ks: list[int] = Field(min_length=1)
    sasrec: SasrecTunedParams
    sasrec_recbole: SasrecParams
    item_knn: ItemKnnParams
    query: QueryParams
    content: ContentParams
    mf: MfParams
    rating_knn: RatingKnnParams
    rating_recency: RatingRecencyParams
    ctr: CtrParams
    ctr_gbdt: CtrGbdtParams
