"""Set-out inference: one forward pass per batch of prompts, then `CandidateIndex.topk`.

No autoregressive decoding of item ids: the M user vectors of each prompt are searched against the
output vectors of the whole catalogue, so every recommended id is a real item, the K ids are
distinct, and the user's seen items are excluded by the index contract.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from components.config import IndexParams
from components.model.batching import Batch
from components.model.index import CandidateIndex, build_index
from components.model.modes import eval_mode
from components.model.universal import UniversalRecModel


@torch.no_grad()
def user_queries(model: UniversalRecModel, batch: Batch) -> np.ndarray:
    """`(S, M, D)` float32 user vectors of the set-out rows of `batch` (eval mode, no dropout)."""
    with eval_mode(model):
        return model.user_vectors(model.hidden_states(batch), batch).float().cpu().numpy()


@torch.no_grad()
def catalogue_index(model: UniversalRecModel, params: IndexParams) -> CandidateIndex:
    """An index over the output vectors of every item (cold items: text-only vectors)."""
    with eval_mode(model):
        vectors = model.item_vectors().float().cpu().numpy()
    return build_index(vectors, params)


def recommend(model: UniversalRecModel, index: CandidateIndex, batch: Batch, k: int,
              exclude: Sequence[Sequence[int]] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-`k` item ids `(S, k)` and scores `(S, k)` for the set-out rows of `batch`, `exclude` per row."""
    return index.topk(user_queries(model, batch), k, exclude)
