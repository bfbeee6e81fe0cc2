"""Set-out retrieval heads: `[UM]` hidden states → M user vectors, fused items → output item vectors.

Both heads are `RunningStandardise → Linear(H, H) → GELU → Linear(H, D)` (D = `retrieval_dim`), applied position-wise
(shared across the M `[UM]` tokens, resp. across items). With `l2_normalize` (params `model.`)
both outputs are L2-normalised, so an inner product is a cosine in [-1, 1]; this keeps the scale
of the logits fixed by the softmax temperature alone (URM/two-tower practice with τ ≈ 0.05–0.1)
and makes faiss inner-product search equal to cosine search. Without it the raw projection is used.
An item's score for a user is the max over the user's M vectors (`set_scores`).

With `model.item_bias` both heads append one column: the user side a constant 1, the item side a
learned linear function of the item's fused vector, so every score is `cos(u, v) + b(item)`. The bias
carries popularity (or, for a cold item, what its content predicts of it): without it, unit vectors
at temperature τ can only express popularity by pulling every item towards one shared direction,
which collapses all users onto the same vector in the first hundred steps (measured). Inner
products, faiss inner-product indexes and the max over M all stay exact with the extra column.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from components.config import ModelParams


class RunningStandardise(nn.Module):
    """`(..., H) -> (..., H)`: each coordinate centred and scaled by running (EMA) statistics.

    LLM hidden states share a large common component (on SmolLM2 the mean over users is ~10x the
    spread between users), so a randomly initialised head maps every user to nearly the same vector
    and retrieval training barely moves it. Removing the common component first makes user (and
    item) vectors differ from step 0. The statistics are buffers updated in training mode from the
    detached batch (first batch: copied, then EMA with `momentum`), and the update happens BEFORE
    normalising, so training and evaluation apply the same function of the stored statistics —
    no dependence on other rows of a batch at inference.
    """

    def __init__(self, width: int, momentum: float = 0.05, eps: float = 1e-5) -> None:
        super().__init__()
        self.momentum, self.eps = momentum, eps
        self.register_buffer("mean", torch.zeros(width))
        self.register_buffer("var", torch.ones(width))
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))

    def forward(self, x: Tensor) -> Tensor:
        if self.training and x.numel():
            with torch.no_grad():
                flat = x.detach().float().reshape(-1, x.shape[-1])
                mean, var = flat.mean(0), flat.var(0, unbiased=False)
                m = 1.0 if int(self.updates) == 0 else self.momentum
                self.mean.lerp_(mean, m)
                self.var.lerp_(var, m)
                self.updates += 1
        return (x.float() - self.mean) * torch.rsqrt(self.var + self.eps)


class _Projection(nn.Module):
    """`(..., H) -> (..., D [+ 1])`: running standardisation, two-layer MLP, optionally L2-normalised,
    optionally followed by the score-bias column (see `SetQueryHead` / `ItemProjection`)."""

    def __init__(self, hidden_size: int, retrieval_dim: int, l2_normalize: bool, bias_column: bool = False) -> None:
        super().__init__()
        self.l2_normalize, self.bias_column = l2_normalize, bias_column
        self.standardise = RunningStandardise(hidden_size)
        self.mlp = nn.Sequential(
            nn.Linear(hidden_size, hidden_size), nn.GELU(), nn.Linear(hidden_size, retrieval_dim)
        )

    def _last_column(self, standardised: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, hidden: Tensor) -> Tensor:
        x = self.standardise(hidden)
        out = self.mlp(x)
        out = F.normalize(out, dim=-1) if self.l2_normalize else out
        return torch.cat([out, self._last_column(x).to(out.dtype)], dim=-1) if self.bias_column else out


class SetQueryHead(_Projection):
    """User vectors from backbone hidden states.

    `forward(hidden)`: `(B, M, H)` hidden states of the M `[UM]` tokens → `(B, M, D)` user vectors;
    equally `(B, T, H) → (B, T, D)` to read a user vector at every item position (dense training),
    or any `(..., H) → (..., D)`.
    """

    def _last_column(self, standardised: Tensor) -> Tensor:
        return standardised.new_ones((*standardised.shape[:-1], 1))  # (..., 1) multiplies the item bias

    @classmethod
    def from_params(cls, model: ModelParams, hidden_size: int) -> "SetQueryHead":
        """Build from `params.model` (retrieval_dim, l2_normalize, item_bias) and the backbone width H."""
        return cls(hidden_size, model.retrieval_dim, model.l2_normalize, model.item_bias)


class ItemProjection(_Projection):
    """Output item vectors used for scoring: fused item vectors `(N, H)` → `(N, D)` (any `(..., H)`)."""

    def __init__(self, hidden_size: int, retrieval_dim: int, l2_normalize: bool, bias_column: bool = False) -> None:
        super().__init__(hidden_size, retrieval_dim, l2_normalize, bias_column)
        self.bias = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.bias.weight)
        nn.init.zeros_(self.bias.bias)

    def _last_column(self, standardised: Tensor) -> Tensor:
        return self.bias(standardised)  # (..., 1) content-based item bias (cold items get one too)

    @classmethod
    def from_params(cls, model: ModelParams, hidden_size: int) -> "ItemProjection":
        """Build from `params.model` (retrieval_dim, l2_normalize, item_bias) and the backbone width H."""
        return cls(hidden_size, model.retrieval_dim, model.l2_normalize, model.item_bias)


def set_scores(user_vecs: Tensor, item_vecs: Tensor) -> Tensor:
    """Set-out scores: `(B, M, D)` user vectors × `(C, D)` items → `(B, C)`, max over M of inner products."""
    if user_vecs.ndim != 3 or item_vecs.ndim != 2 or user_vecs.shape[-1] != item_vecs.shape[-1]:
        raise ValueError(f"expected (B, M, D) and (C, D), got {tuple(user_vecs.shape)} and {tuple(item_vecs.shape)}")
    return torch.einsum("bmd,cd->bmc", user_vecs, item_vecs).amax(dim=1)
