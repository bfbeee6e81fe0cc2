"""Collaborative rating estimate for the rating verbaliser (`model.rating_prior`).

Rating prompts write the user's rating next to each history item (`{history_rated}`, RecSysLLM-style
textualised behaviour), and the same numbers reach the model per item slot (`Batch.item_ratings`). The
estimate is the classic baseline predictor with a recency window, plus the history path's affinity:

    r̂ = μ + b(item) + Σ_a w_a · (r_(a) − μ − b(item_(a))) + β · s

* μ: a learned global mean (initialised to the training mean);
* b(item): a learned linear function of the item's fused vector (detached: this head never moves the item
  representation) plus a free per-item offset for items seen in training — cold items get the content part;
* r_(a), item_(a): the a-th most recent rated history item (a = 0 the latest), w_a learned per recency rank
  for the last `window` of them (the shrinkage and the recency decay of a user offset, learned instead of
  tuned; why a recency window: docs/experiments.md, "Rating: recent ratings vs MF");
* s: the next-item score the history path gives the item (`UniversalRecModel.answer_scores`), β learned.

The collaborative warm-up fits it on every position of its training windows (`warmup.warmup_loss`: the
target item's rating given the rated items before it), as cheaply as it fits next-item prediction; the
rating verbaliser then reads `r̂ − μ` through `VerbaliserPrior` (components/model/verbaliser.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from components.model.history import item_table

if TYPE_CHECKING:  # universal.py imports this module
    from components.model.universal import UniversalRecModel


class RatingEstimator(nn.Module):
    """`forward(...)` → `(R,)` rating estimates; see the module docstring for the formula.

    Args:
        hidden_size: H, width of the fused item vectors.
        n_items: N (the per-item offsets).
        window: K, rated history items the user offset reads (most recent first).
        mean: initial μ (the mean training rating).
    """

    def __init__(self, hidden_size: int, n_items: int, window: int, mean: float = 0.0) -> None:
        super().__init__()
        if window < 1:
            raise ValueError(f"rating window must be >= 1, got {window}")
        self.window = window
        self.mean = nn.Parameter(torch.tensor(float(mean)))
        self.content_bias = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.content_bias.weight)
        nn.init.zeros_(self.content_bias.bias)
        self.item_offsets = nn.Embedding(n_items, 1)
        nn.init.zeros_(self.item_offsets.weight)
        self.recency = nn.Parameter(torch.full((window,), 1.0 / (window + 3)))  # ≈ the hand-tuned shrinkage
        self.affinity = nn.Parameter(torch.zeros(()))

    def item_bias(self, fused: Tensor, item_ids: Tensor, use_id: Tensor) -> Tensor:
        """`(..., H)` fused vectors, `(...)` item ids and ID mask → `(...)` item offsets b(item)."""
        offsets = torch.where(use_id, self.item_offsets(item_ids).squeeze(-1), 0.0)
        return self.content_bias(fused.detach().float()).squeeze(-1) + offsets

    def user_offsets(self, residuals: Tensor, present: Tensor) -> Tensor:
        """`(B, W)` residuals r − μ − b of rated items in time order, `(B, W)` bool mask of real ones →
        `(B, W)`: at position t, Σ_a w_a · residual[t − a] over the last `window` rated items ≤ t (a counts
        rated items only, so unrated slots in between are skipped)."""
        b, w = residuals.shape
        rank = torch.cumsum(present.long(), 1) - 1  # (B, W) ordinal of each rated item in its row
        packed = residuals.new_zeros((b, w + 1))
        packed.scatter_(1, torch.where(present, rank, w), torch.where(present, residuals, 0.0))  # rated items, left
        kernel = self.recency.flip(0).view(1, 1, -1).to(packed.dtype)  # conv1d correlates: reverse the recency
        offsets = F.conv1d(F.pad(packed[:, :w].unsqueeze(1), (self.window - 1, 0)), kernel).squeeze(1)  # (B, W)
        return offsets.gather(1, rank.clamp(min=0)) * (rank >= 0)  # at t: the latest rated item ≤ t

    def forward(self, target_bias: Tensor, residual_table: Tensor, present: Tensor, read_at: Tensor,
                affinity: Tensor | None = None) -> Tensor:
        """`(R,)` b(target), `(R, W)` residual table and mask of each row's rated history items (time order),
        `(R,)` long: how many table columns precede the read position (0 = none), `(R,)` next-item scores s
        or None → `(R,)` r̂."""
        offsets = self.user_offsets(residual_table, present)  # (R, W)
        picked = offsets.gather(1, (read_at - 1).clamp(min=0).unsqueeze(1)).squeeze(1) * (read_at > 0)
        estimate = self.mean + target_bias + picked
        return estimate if affinity is None else estimate + self.affinity * affinity.float()

    def from_slots(self, fused: Tensor, item_ids: Tensor, use_id: Tensor, ratings: Tensor, rows: Tensor,
                   cols: Tensor, n_rows: int, read_rows: Tensor, read_cols: Tensor, target_bias: Tensor,
                   affinity: Tensor | None = None) -> Tensor:
        """r̂ for read positions of a batch of prompts: `(P, H)` fused vectors of the history slots with their
        ids, ID mask, ratings (nan = not shown), rows and cols in (row, col) order; `(R,)` read rows / cols and
        the asked-about items' b → `(R,)`. Only rated slots at or before the read position count."""
        rated = ~torch.isnan(ratings)
        residual = ratings.float() - self.mean - self.item_bias(fused, item_ids, use_id)  # (P,)
        residual = torch.where(rated, residual, 0.0)
        keep = rated.nonzero(as_tuple=True)[0]
        table, table_cols, counts = item_table(residual[keep].unsqueeze(-1), rows[keep], cols[keep], n_rows)
        width = table.shape[1]
        present = torch.arange(width, device=table.device).unsqueeze(0) < counts.unsqueeze(1)  # (B, W)
        upto = (table_cols[read_rows] <= read_cols.unsqueeze(1)).sum(1)  # (R,) rated slots before the read
        return self.forward(target_bias, table[read_rows, :, 0], present[read_rows], upto, affinity)


def rating_loss(model: UniversalRecModel, inputs: torch.Tensor, targets: torch.Tensor, fused_all: torch.Tensor,
                use_id: torch.Tensor, ratings: tuple[torch.Tensor, torch.Tensor], affinity: torch.Tensor) -> torch.Tensor:
    """Squared error of r̂ (`RatingEstimator`) for every rated target of the windows, given the rated inputs at
    or before its position, + the cross-entropy of the rating verbaliser's prior alone (LM logits left out) on
    the same targets, so LoRA training starts from a calibrated prior. fused_all `(N, H)` and use_id `(N,)`:
    the step's catalogue pass; affinity `(P,)`."""
    estimator, prior = model.rating_estimator, model.verbaliser_prior
    if estimator is None:
        raise ValueError("train.collab_warmup.rating_weight > 0 needs model.rating_prior_window > 0")
    valid = inputs >= 0
    in_ratings, out_ratings = ratings
    bias = estimator.item_bias(fused_all, torch.arange(model.n_items, device=inputs.device), use_id)  # (N,)
    residual = torch.zeros(inputs.shape, device=inputs.device)
    residual[valid] = in_ratings[valid].float() - estimator.mean - bias[inputs[valid]]
    rated_in = valid & ~torch.isnan(in_ratings)
    offsets = estimator.user_offsets(torch.where(rated_in, residual, 0.0), rated_in)[valid]  # (P,)
    estimate = estimator.mean + bias[targets[valid]] + offsets + estimator.affinity * affinity
    truth = out_ratings[valid].float()
    rated = ~torch.isnan(truth)
    if not rated.any():
        return estimate.sum() * 0.0
    loss = F.mse_loss(estimate[rated], truth[rated])
    if prior is not None and "rating" in prior.scale:
        k = prior.scale["rating"].numel()
        answer = (torch.floor(truth[rated] + 0.5).long() - 1).clamp(0, k - 1)  # the verbaliser word index
        logits = prior("rating", (estimate[rated] - estimator.mean).detach())
        loss = loss + F.cross_entropy(logits, answer)
    return loss
