"""The history path's item-neighbourhood term (`model.item_neighbours`): a session-kNN inside the inner product.

Every set-out score of the history path gains

    β · Σ_{r < L} decay^r · sim(h_r, j)

over the user's L most recent history items h_0 (newest), h_1, … at or before the read position, where
`sim(i, j) = f_i · f_j` and `f` are frozen item factors from the training interactions alone
(`collab.neighbour_factors`: the truncated SVD of the user × item incidence with each item column scaled
to unit norm, so `f_i · f_j` is the cosine of the two items' user sets — item-kNN's similarity). Both
sides stay vectors, so retrieval is still ONE inner-product search: the user vector gains the block
`β Σ_r decay^r f_{h_r}` `(k,)`, every output item vector the block `f_j` `(k,)`.

β is NOT learned by gradient: the factors come from the training interactions, so on a training target
the similarity counts the user's own co-occurrence (measured: with β learned in the warm-up, validation
NDCG@10 peaked at step 100 and fell, and cold-start HR@10 dropped from ~0.40 to 0.12 as the neural part
stopped learning). The warm-up fits the neural path without the term and then picks β on the validation
rows, where the target is not in the factors (`model.item_neighbours.weight_grid`). The factors follow the ID's mask, as the other
behavioural modalities do: items without training interactions have zero rows, and an item that enters
content-only (a cold-start prompt's history, a dropped ID) adds nothing and scores nothing here.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from components.model.history import item_table


class ItemNeighbours(nn.Module):
    """Frozen `(N, k)` item factors + the weight β of the neighbourhood term (a buffer, set by `collab_warmup`).

    Args:
        factors: `(N, k)` float item factors (row i = item index i; zero rows for items without interactions).
        window: L ≥ 1, most recent history items that count.
        decay: in (0, 1], the weight of the r-th most recent one is decay^r.
        weight: β at construction (≥ 0).
    """

    def __init__(self, factors: Tensor, window: int, decay: float, weight: float) -> None:
        super().__init__()
        if factors.ndim != 2 or window < 1 or not 0.0 < decay <= 1.0 or weight < 0:
            raise ValueError(f"ItemNeighbours: factors {tuple(factors.shape)}, window {window}, decay {decay}, "
                             f"weight {weight}")
        self.window, self.decay = window, decay
        self.register_buffer("factors", factors.float().contiguous())
        self.register_buffer("weight", torch.tensor(float(weight)))

    @property
    def dim(self) -> int:
        """k, the width of both blocks."""
        return int(self.factors.shape[1])

    def item_block(self, item_ids: Tensor, use_id: Tensor) -> Tensor:
        """item_ids `(...)` long, use_id `(...)` bool (the ID mask of the same fusion pass) → `(..., k)`."""
        return torch.where(use_id.unsqueeze(-1), self.factors[item_ids], 0.0)

    def user_block(self, item_ids: Tensor, item_rows: Tensor, item_cols: Tensor, n_rows: int, read_rows: Tensor,
                   read_cols: Tensor) -> Tensor:
        """β · Σ_r decay^r f(h_r) over the last `window` history slots at or before each read position.

        Args:
            item_ids: `(P,)` long item of each history slot, -1 where it adds nothing (content-only, no trained ID).
            item_rows, item_cols: `(P,)` long row and token position of each slot, in (row, col) order.
            n_rows: B; read_rows, read_cols: `(R,)` long read positions.
        Returns:
            `(R, k)`; zeros where no history slot precedes the read position.
        """
        out = self.factors.new_zeros((read_rows.numel(), self.dim))
        if read_rows.numel() == 0 or item_ids.numel() == 0:
            return out
        known = (item_ids >= 0).unsqueeze(1)
        rows = torch.where(known, self.factors[item_ids.clamp(min=0)], 0.0)  # (P, k)
        table, cols, _ = item_table(rows, item_rows, item_cols, n_rows)  # (B, W, k), (B, W)
        upto = (cols[read_rows] <= read_cols.unsqueeze(1)).sum(1)  # (R,) slots at or before the read position
        for recency in range(min(self.window, table.shape[1])):
            slot = upto - 1 - recency
            present = (slot >= 0).unsqueeze(1)
            out = out + self.decay ** recency * torch.where(present, table[read_rows, slot.clamp(min=0)], 0.0)
        return self.weight * out
