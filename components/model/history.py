"""Recent-history pooling: the mean fused input vector of the last L items before a read position.

Used by `SetQueryHead`'s history path (`model.history_skip_items`): next to the LLM hidden state at a
read position (a `[UM]` slot, or an item slot for the dense next-item targets), the head also sees
the average of the fused vectors of the last L `[ITEM]` slots at or before that position in the same
prompt. It is an input-embedding residual: the decoder's residual stream carries those vectors too,
but buried under the backbone's own activations (~10x larger), so a freshly adapted LLM needs many
steps to route them; the pooled path gives the head the recent history from step 0.
"""

from __future__ import annotations

import torch
from torch import Tensor


def recent_item_mean(fused: Tensor, item_rows: Tensor, item_cols: Tensor, n_rows: int, read_rows: Tensor,
                     read_cols: Tensor, window: int) -> Tensor:
    """Mean of the last `window` item vectors at or before each read position.

    Args:
        fused: `(P, H)` fused input vectors of the batch's item slots, in (row, col) order as `collate` writes them.
        item_rows, item_cols: `(P,)` long, row and token position of each item slot.
        n_rows: B, rows of the batch.
        read_rows, read_cols: `(R,)` long, the read positions.
        window: L ≥ 1.
    Returns:
        `(R, H)`: the mean over the (at most L) most recent item slots with col ≤ read col; 0 for a read
        position with no item before it.
    """
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    hidden = fused.shape[-1]
    if read_rows.numel() == 0 or fused.shape[0] == 0:
        return fused.new_zeros((read_rows.numel(), hidden))
    if fused.shape[0] > 1 and bool(((item_rows[1:] < item_rows[:-1]) |
                                    ((item_rows[1:] == item_rows[:-1]) & (item_cols[1:] <= item_cols[:-1]))).any()):
        raise ValueError("item slots must be in (row, col) order")
    counts = torch.bincount(item_rows, minlength=n_rows)  # (B,)
    starts = torch.cumsum(counts, 0) - counts
    ordinal = torch.arange(item_rows.numel(), device=fused.device) - starts[item_rows]  # (P,)
    width = int(counts.max())
    table = fused.new_zeros((n_rows, width, hidden))
    table[item_rows, ordinal] = fused
    cols = torch.full((n_rows, width), torch.iinfo(torch.long).max, dtype=torch.long, device=fused.device)
    cols[item_rows, ordinal] = item_cols
    prefix = torch.cat([fused.new_zeros((n_rows, 1, hidden)), torch.cumsum(table, dim=1)], dim=1)  # (B, W+1, H)
    upto = (cols[read_rows] <= read_cols.unsqueeze(1)).sum(1)  # (R,) items at or before the read position
    first = (upto - window).clamp(min=0)
    total = prefix[read_rows, upto] - prefix[read_rows, first]  # (R, H)
    return total / (upto - first).clamp(min=1).unsqueeze(1).to(total.dtype)
