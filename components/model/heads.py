"""Set-out retrieval heads: `[UM]` hidden states → M user vectors, fused items → output item vectors.

Both heads are `Linear(H, H) → GELU → Linear(H, D)` (D = `retrieval_dim`), applied position-wise
(shared across the M `[UM]` tokens, resp. across items). With `l2_normalize` (params `model.`)
both outputs are L2-normalised, so an inner product is a cosine in [-1, 1]; this keeps the scale
of the logits fixed by the softmax temperature alone (URM/two-tower practice with τ ≈ 0.05–0.1)
and makes faiss inner-product search equal to cosine search. Without it the raw projection is used.
An item's score for a user is the max over the user's M vectors (`set_scores`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from components.config import ModelParams


class _Projection(nn.Module):
    """`(..., H) -> (..., D)`: two-layer MLP, optionally L2-normalised."""

    def __init__(self, hidden_size: int, retrieval_dim: int, l2_normalize: bool) -> None:
        super().__init__()
        self.l2_normalize = l2_normalize
        self.mlp = nn.Sequential(
            nn.Linear(hidden_size, hidden_size), nn.GELU(), nn.Linear(hidden_size, retrieval_dim)
        )

    def forward(self, hidden: Tensor) -> Tensor:
        out = self.mlp(hidden)
        return F.normalize(out, dim=-1) if self.l2_normalize else out


class SetQueryHead(_Projection):
    """User vectors from backbone hidden states.

    `forward(hidden)`: `(B, M, H)` hidden states of the M `[UM]` tokens → `(B, M, D)` user vectors;
    equally `(B, T, H) → (B, T, D)` to read a user vector at every item position (dense training),
    or any `(..., H) → (..., D)`.
    """

    @classmethod
    def from_params(cls, model: ModelParams, hidden_size: int) -> "SetQueryHead":
        """Build from `params.model` (retrieval_dim, l2_normalize) and the backbone width H."""
        return cls(hidden_size, model.retrieval_dim, model.l2_normalize)


class ItemProjection(_Projection):
    """Output item vectors used for scoring: fused item vectors `(N, H)` → `(N, D)` (any `(..., H)`)."""

    @classmethod
    def from_params(cls, model: ModelParams, hidden_size: int) -> "ItemProjection":
        """Build from `params.model` (retrieval_dim, l2_normalize) and the backbone width H."""
        return cls(hidden_size, model.retrieval_dim, model.l2_normalize)


def set_scores(user_vecs: Tensor, item_vecs: Tensor) -> Tensor:
    """Set-out scores: `(B, M, D)` user vectors × `(C, D)` items → `(B, C)`, max over M of inner products."""
    if user_vecs.ndim != 3 or item_vecs.ndim != 2 or user_vecs.shape[-1] != item_vecs.shape[-1]:
        raise ValueError(f"expected (B, M, D) and (C, D), got {tuple(user_vecs.shape)} and {tuple(item_vecs.shape)}")
    return torch.einsum("bmd,cd->bmc", user_vecs, item_vecs).amax(dim=1)
