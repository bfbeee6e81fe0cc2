"""Section `baselines`: the expert models, each tuned on the validation split by a small grid (docs/design.md §9)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from components.config.base import _Strict


PositiveInt = Annotated[int, Field(ge=1)]
Positive = Annotated[float, Field(gt=0.0)]
Dropout = Annotated[float, Field(ge=0.0, lt=1.0)]
Ints = Annotated[list[int], Field(min_length=1)]
Floats = Annotated[list[float], Field(min_length=1)]
"""Grid axes: the values tried (at least one)."""


class _SasrecShared(_Strict):
    """What the RecBole-default SASRec and the tuned one share (architecture depth, optimiser, stopping)."""

    num_layers: PositiveInt
    num_heads: PositiveInt
    layer_norm_eps: Positive
    initializer_range: Positive
    lr: Positive
    eval_batch_size: PositiveInt
    max_epochs: PositiveInt
    patience: PositiveInt


class SasrecParams(_SasrecShared):
    """One SASRec architecture and its training (the RecBole-default expert; a point of the tuned grid)."""

    hidden_size: PositiveInt
    inner_size: PositiveInt
    hidden_dropout: Dropout
    attn_dropout: Dropout
    max_len: PositiveInt
    train_stride: PositiveInt
    batch_size: PositiveInt

    @model_validator(mode="after")
    def _shapes(self) -> "SasrecParams":
        if self.hidden_size % self.num_heads:
            raise ValueError("baselines.sasrec*: hidden_size must be divisible by num_heads")
        if self.train_stride > self.max_len:
            raise ValueError("baselines.sasrec*: train_stride must be <= max_len")
        return self


class SasrecGrid(_Strict):
    dropout: Floats
    max_len: Ints
    hidden_size: Ints


class SasrecTunedParams(_SasrecShared):
    """The tuned SASRec: trained on every prefix, full cross-entropy, a grid chosen by successive halving."""

    inner_factor: PositiveInt
    stride_fraction: float = Field(gt=0.0, le=1.0)
    batch_targets: PositiveInt
    grid: SasrecGrid
    halving_epochs: list[int] = []
    halving_eta: int = Field(ge=2)

    @model_validator(mode="after")
    def _grid(self) -> "SasrecTunedParams":
        if any(h < 1 or h % self.num_heads for h in self.grid.hidden_size):
            raise ValueError("baselines.sasrec.grid.hidden_size: every value must be >= 1 and divisible by num_heads")
        if any(not 0.0 <= d < 1.0 for d in self.grid.dropout) or any(n < 1 for n in self.grid.max_len):
            raise ValueError("baselines.sasrec.grid: dropout values must be in [0, 1), max_len values >= 1")
        if self.halving_epochs != sorted(set(self.halving_epochs)) or any(e < 1 for e in self.halving_epochs):
            raise ValueError("baselines.sasrec.halving_epochs must be increasing positive epochs")
        return self

    def config(self, dropout: float, max_len: int, hidden_size: int) -> SasrecParams:
        """The architecture and training of one grid point: one dropout for embeddings, sub-layers and attention;
        train_stride = round(stride_fraction × max_len) (≥ 1); batch_size counts targets (`batch_targets`)."""
        shared = {k: getattr(self, k) for k in _SasrecShared.model_fields}
        return SasrecParams(**shared, hidden_size=hidden_size, inner_size=self.inner_factor * hidden_size,
                            hidden_dropout=dropout, attn_dropout=dropout, max_len=max_len,
                            train_stride=max(1, round(self.stride_fraction * max_len)), batch_size=self.batch_targets)


class ItemKnnParams(_Strict):
    neighbours: Ints
    shrinkage: Floats
    recency_decay: Floats
    batch_size: PositiveInt

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
    weights: Floats


class ContentParams(_Strict):
    window: Ints
    center: Annotated[list[bool], Field(min_length=1)]


class MfGrid(_Strict):
    dim: Ints
    l2: Floats
    lr: Floats


class MfParams(_Strict):
    dim: PositiveInt
    init_std: float = Field(gt=0.0)
    lr: float = Field(gt=0.0)
    l2: float = Field(ge=0.0)
    batch_size: PositiveInt
    max_epochs: PositiveInt
    patience: PositiveInt
    grid: MfGrid | None = None


class RatingKnnParams(_Strict):
    neighbours: Ints
    shrinkage: Floats
    bias_reg: float = Field(ge=0.0)


class RatingRecencyParams(_Strict):
    window: Ints
    item_reg: Floats


class CtrParams(_Strict):
    model: Literal["logistic_crosses"]
    popularity_buckets: PositiveInt
    lr: float = Field(gt=0.0)
    l2: float = Field(ge=0.0)
    batch_size: PositiveInt
    max_epochs: PositiveInt
    patience: PositiveInt


class GbdtGrid(_Strict):
    learning_rate: Floats
    max_leaf_nodes: Ints
    min_samples_leaf: Ints


class CtrGbdtParams(_Strict):
    recent_items: PositiveInt
    trees_per_round: PositiveInt
    max_trees: PositiveInt
    patience: PositiveInt
    l2_regularization: float = Field(ge=0.0)
    grid: GbdtGrid


class BaselinesParams(_Strict):
    out_dir: str
    metrics_file: str
    seed_offset: int
    num_threads: int = Field(ge=0)
    eval_k: PositiveInt
    report_ks: Ints
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
