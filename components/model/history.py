"""The user head's history path: a summary of the prompt's history items up to a read position.

Used by `SetQueryHead`'s history path (`model.history_skip_items > 0`): next to the LLM hidden state at a
read position (a `[UM]` slot, an item slot for the dense next-item targets, a verbaliser answer slot for the
collaborative prior), the head also reads the fused vectors of the prompt's HISTORY slots at or before that
position (never candidates or the asked-about item: `Batch.item_is_history`). It is an input-embedding
residual: the decoder's residual stream carries those vectors too, but buried under the backbone's own
activations (~10x larger), so a freshly adapted LLM needs many steps to route them; the history path gives
the head the history from step 0, and the collaborative warm-up (components/model/warmup.py) fits it first.

Two readers (`model.history_encoder.kind`): `mean` — the average fused vector of the last
`history_skip_items` history items (`recent_item_mean`); `attention` — a small causal transformer over all
of them (`CausalHistoryEncoder`, SASRec's encoder over the model's own fused item vectors), read at the last
history item before the read position.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


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
    table, cols, _ = item_table(fused, item_rows, item_cols, n_rows)
    prefix = torch.cat([fused.new_zeros((n_rows, 1, hidden)), torch.cumsum(table, dim=1)], dim=1)  # (B, W+1, H)
    upto = (cols[read_rows] <= read_cols.unsqueeze(1)).sum(1)  # (R,) items at or before the read position
    first = (upto - window).clamp(min=0)
    total = prefix[read_rows, upto] - prefix[read_rows, first]  # (R, H)
    return total / (upto - first).clamp(min=1).unsqueeze(1).to(total.dtype)


def item_table(fused: Tensor, item_rows: Tensor, item_cols: Tensor, n_rows: int) -> tuple[Tensor, Tensor, Tensor]:
    """The item slots of each row as a right-padded table.

    Args:
        fused: `(P, H)` item vectors in (row, col) order; item_rows, item_cols: `(P,)` long.
    Returns:
        table `(B, W, H)` (zeros where padded), cols `(B, W)` long (int64 max where padded), counts `(B,)`
        items per row; W = the largest count (≥ 1).
    """
    if fused.shape[0] > 1 and bool(((item_rows[1:] < item_rows[:-1]) |
                                    ((item_rows[1:] == item_rows[:-1]) & (item_cols[1:] <= item_cols[:-1]))).any()):
        raise ValueError("item slots must be in (row, col) order")
    counts, ordinal = slot_ordinals(item_rows, n_rows)
    width = max(int(counts.max()) if counts.numel() else 0, 1)
    table = fused.new_zeros((n_rows, width, fused.shape[-1]))
    table[item_rows, ordinal] = fused
    cols = torch.full((n_rows, width), torch.iinfo(torch.long).max, dtype=torch.long, device=fused.device)
    cols[item_rows, ordinal] = item_cols
    return table, cols, counts


def slot_ordinals(item_rows: Tensor, n_rows: int) -> tuple[Tensor, Tensor]:
    """(items per row `(B,)`, each slot's ordinal within its row `(P,)`) of item slots in (row, col) order."""
    counts = torch.bincount(item_rows, minlength=n_rows)  # (B,)
    starts = torch.cumsum(counts, 0) - counts
    return counts, torch.arange(item_rows.numel(), device=item_rows.device) - starts[item_rows]


class CausalHistoryEncoder(nn.Module):
    """`model.history_encoder.kind: attention`: a small causal transformer over a prompt's history slots.

    `(B, W, H)` fused item vectors (row-wise, oldest first, right-padded) → `(B, W, d)`: output t sees the
    items 0..t of its row. Input projection `H → d` + a learned position per item ordinal (ordinals ≥
    `max_items` share the last row), dropout, then `layers` pre-norm encoder layers (GELU feed-forward 4·d)
    and a final LayerNorm: SASRec's sequence encoder, reading the model's own fused item vectors (ID + text
    + collaborative modalities).
    """

    def __init__(self, in_dim: int, width: int, layers: int, heads: int, dropout: float, max_items: int) -> None:
        super().__init__()
        self.max_items = max_items
        self.project = nn.Linear(in_dim, width)
        self.positions = nn.Embedding(max_items, width)
        nn.init.normal_(self.positions.weight, std=0.02)
        self.dropout = nn.Dropout(dropout)
        layer = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout, activation="gelu", batch_first=True,
                                           norm_first=True)
        self.layers = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)

    def forward(self, table: Tensor, counts: Tensor) -> Tensor:
        """table `(B, W, H)`, counts `(B,)` (every count ≥ 1) → `(B, W, d)`; padded positions are undefined."""
        b, w, _ = table.shape
        ordinal = torch.arange(w, device=table.device)
        x = self.project(table) + self.positions(ordinal.clamp(max=self.max_items - 1)).unsqueeze(0)
        future = ordinal.unsqueeze(0) > ordinal.unsqueeze(1)  # (W, W): key j after query i
        padded = ordinal.unsqueeze(0) >= counts.unsqueeze(1)  # (B, W)
        # a float mask (-inf) for both, so the fused attention kernels see one mask type
        mask = torch.zeros((w, w), dtype=x.dtype, device=x.device).masked_fill(future, float("-inf"))
        pad = torch.zeros((b, w), dtype=x.dtype, device=x.device).masked_fill(padded, float("-inf"))
        return self.norm(self.layers(self.dropout(x), mask=mask, src_key_padding_mask=pad))


class HistoryReader(nn.Module):
    """The history path's input: a summary of the item slots at or before each read position.

    `kind` mean: `recent_item_mean` over the last `window` items, width H (no parameters).
    `kind` attention: `CausalHistoryEncoder` output at the last item slot at or before the read position,
    width d; 0 where no item precedes the read position.
    `context`: how many of a history's most recent items the reader can use (mean: `window`; attention:
    the encoder's `max_items`) — what a scorer outside a prompt (`warmup.HistoryPathScorer`) feeds it.
    """

    def __init__(self, kind: str, in_dim: int, window: int, encoder: CausalHistoryEncoder | None = None,
                 width: int | None = None) -> None:
        super().__init__()
        if kind not in ("mean", "attention") or (kind == "attention") != (encoder is not None):
            raise ValueError(f"HistoryReader: kind {kind!r} with encoder {encoder is not None}")
        self.kind, self.window, self.encoder = kind, window, encoder
        self.out_dim = in_dim if encoder is None else int(width)  # type: ignore[arg-type]
        self.context = window if encoder is None else encoder.max_items

    def forward(self, fused: Tensor, item_rows: Tensor, item_cols: Tensor, n_rows: int, read_rows: Tensor,
                read_cols: Tensor) -> Tensor:
        """fused `(P, H)` in (row, col) order, item_rows / item_cols `(P,)`, read_rows / read_cols `(R,)` → `(R, out_dim)`."""
        if self.encoder is None:
            return recent_item_mean(fused, item_rows, item_cols, n_rows, read_rows, read_cols, self.window)
        if read_rows.numel() == 0 or fused.shape[0] == 0:
            return fused.new_zeros((read_rows.numel(), self.out_dim))
        table, cols, counts = item_table(fused, item_rows, item_cols, n_rows)
        occupied = (counts > 0).nonzero(as_tuple=True)[0]  # rows without items never enter the encoder
        encoded = fused.new_zeros((n_rows, table.shape[1], self.out_dim))
        encoded[occupied] = self.encoder(table[occupied], counts[occupied]).to(encoded.dtype)
        upto = (cols[read_rows] <= read_cols.unsqueeze(1)).sum(1)  # (R,) items at or before the read position
        picked = encoded[read_rows, (upto - 1).clamp(min=0)]  # (R, d)
        return torch.where((upto > 0).unsqueeze(1), picked, 0.0)
