"""URM item fusion: every item modality → its own MLP → sum → RMSNorm → MLP → the LLM's input width.

Modalities of item `i`:
- `id`: a trainable embedding row of width `id_dim`, used only when `id_known[i]` (items seen in
  training); cold items, dropped items and items with `drop_id` use the frozen modalities alone;
- frozen tables `(N, d_m)` given as tensors (`text` always, optionally e.g. `image`), registered
  as buffers so they never receive gradients and never appear in `parameters()`;
- behavioural frozen tables (`collab`: vectors learned from training interactions) follow the ID's
  mask: unknown for cold items, dropped with the ID (modality dropout, cold-start prompts), so the
  text-only path is what a cold item always gets.

Every modality MLP is `Linear(d_in, fusion_dim) → GELU → Linear(fusion_dim, fusion_dim)`; the
output MLP is `Linear(fusion_dim, fusion_dim) → GELU → Linear(fusion_dim, hidden_size) → RMSNorm`.

Scale matters: a fused vector replaces a token embedding inside the LLM, so the final RMSNorm's
gain starts at `output_rms`, the per-coordinate RMS of the backbone's token embeddings (a fused
item enters at the scale of a word). Frozen tables are standardised per coordinate at construction
(mean 0, std 1 over the items that have the modality): encoder embeddings are highly anisotropic
(mean-pooled LLM states of different titles have cosine ≈ 0.95), and without centring every item
would enter the LLM as nearly the same vector.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from components.collab import COLLAB_MODALITY
from components.config import ModelParams

ID_MODALITY = "id"
"""Name of the trainable item-ID modality (reserved; frozen modalities use other names)."""
BEHAVIOURAL_MODALITIES: tuple[str, ...] = (COLLAB_MODALITY,)
"""Frozen modalities derived from interactions: used exactly where the ID is used."""


def standardise(table: Tensor, present: Tensor) -> Tensor:
    """`(N, d)` table with each coordinate at mean 0 / std 1 over the `present` rows; absent rows are 0."""
    rows = table[present]
    if rows.shape[0] < 2:
        return torch.where(present.unsqueeze(1), table, 0.0)
    mean, std = rows.mean(0), rows.std(0)
    out = (table - mean) / torch.where(std > 1e-8, std, 1.0)
    return torch.where(present.unsqueeze(1), out, 0.0)


def _mlp(d_in: int, d_hidden: int, d_out: int) -> nn.Sequential:
    """Two-layer MLP `(..., d_in) -> (..., d_out)` with a GELU between."""
    return nn.Sequential(nn.Linear(d_in, d_hidden), nn.GELU(), nn.Linear(d_hidden, d_out))


class ItemFusion(nn.Module):
    """Fused item vectors `(..., hidden_size)` that replace `[ITEM]` placeholders in `inputs_embeds`.

    Args:
        n_items: N, catalogue size (row i of every table is item index i).
        id_dim: width of the trainable ID embedding.
        fusion_dim: common width every modality MLP maps to.
        hidden_size: H, the backbone's hidden width.
        frozen_modalities: name -> `(N, d_m)` float tensor (at least one, e.g. `{"text": ...}`).
        id_known: `(N,)` bool, True where the ID embedding is trained (False for cold items).
        modality_dropout: training-mode probability of dropping an item's ID modality.
        output_rms: initial per-coordinate RMS of the output (the backbone's token-embedding RMS).
    """

    def __init__(
        self,
        n_items: int,
        id_dim: int,
        fusion_dim: int,
        hidden_size: int,
        frozen_modalities: dict[str, Tensor],
        id_known: Tensor,
        modality_dropout: float,
        output_rms: float = 1.0,
    ) -> None:
        super().__init__()
        if not set(frozen_modalities) - set(BEHAVIOURAL_MODALITIES):
            raise ValueError("ItemFusion needs at least one frozen modality (e.g. 'text'), else an item "
                             "with a dropped or unknown ID would have no vector")
        if not 0.0 <= modality_dropout < 1.0:
            raise ValueError(f"modality_dropout must be in [0, 1), got {modality_dropout}")
        if id_known.shape != (n_items,) or id_known.dtype != torch.bool:
            raise ValueError(f"id_known must be a bool tensor of shape ({n_items},), "
                             f"got {tuple(id_known.shape)} {id_known.dtype}")
        self.n_items = n_items
        self.hidden_size = hidden_size
        self.modality_dropout = modality_dropout
        self.frozen_names: tuple[str, ...] = tuple(frozen_modalities)

        self.id_embedding = nn.Embedding(n_items, id_dim)
        self.modality_mlps = nn.ModuleDict({ID_MODALITY: _mlp(id_dim, fusion_dim, fusion_dim)})
        for name, table in frozen_modalities.items():
            if name == ID_MODALITY or "." in name or not name:
                raise ValueError(f"invalid frozen modality name {name!r} ('{ID_MODALITY}' is reserved, no dots)")
            if table.ndim != 2 or table.shape[0] != n_items:
                raise ValueError(f"modality {name!r} must be ({n_items}, d), got {tuple(table.shape)}")
            if not torch.is_floating_point(table):
                raise ValueError(f"modality {name!r} must be a float tensor, got {table.dtype}")
            present = id_known if name in BEHAVIOURAL_MODALITIES else torch.ones(n_items, dtype=torch.bool)
            self.register_buffer(self._buffer_name(name), standardise(table.detach().float(), present))
            self.modality_mlps[name] = _mlp(table.shape[1], fusion_dim, fusion_dim)
        self.register_buffer("id_known", id_known.detach().clone())
        self.norm = nn.RMSNorm(fusion_dim)
        self.output_mlp = nn.Sequential(*_mlp(fusion_dim, fusion_dim, hidden_size), nn.RMSNorm(hidden_size))
        with torch.no_grad():
            self.output_mlp[-1].weight.fill_(output_rms)

    @classmethod
    def from_params(
        cls,
        model: ModelParams,
        modalities: dict[str, Tensor],
        n_items: int,
        hidden_size: int,
        id_known: Tensor,
        output_rms: float = 1.0,
    ) -> "ItemFusion":
        """Build from `params.model` (id_dim, fusion_dim, modality_dropout) and the frozen tables."""
        return cls(
            n_items=n_items,
            id_dim=model.id_dim,
            fusion_dim=model.fusion_dim,
            hidden_size=hidden_size,
            frozen_modalities=modalities,
            id_known=id_known,
            modality_dropout=model.modality_dropout,
            output_rms=output_rms,
        )

    @staticmethod
    def _buffer_name(name: str) -> str:
        return f"frozen_{name}"

    def frozen_table(self, name: str) -> Tensor:
        """The frozen `(N, d_m)` table of modality `name`."""
        return getattr(self, self._buffer_name(name))

    def id_mask(self, item_idx: Tensor, drop_id: Tensor | bool | None = None) -> Tensor:
        """Which items use their ID modality: `(...)` bool, same shape as `item_idx`.

        True iff the ID is known, not forced off by `drop_id` (bool tensor broadcastable to
        `item_idx`, or a Python bool for all), and — in training mode only — not randomly dropped
        with probability `modality_dropout`.
        """
        use_id = self.id_known[item_idx]
        if drop_id is not None:
            drop = torch.as_tensor(drop_id, dtype=torch.bool, device=item_idx.device)
            use_id = use_id & ~torch.broadcast_to(drop, item_idx.shape)
        if self.training and self.modality_dropout > 0.0:
            kept = torch.rand(item_idx.shape, device=item_idx.device) >= self.modality_dropout
            use_id = use_id & kept
        return use_id

    def forward(self, item_idx: Tensor, drop_id: Tensor | bool | None = None, use_id: Tensor | None = None) -> Tensor:
        """Fuse the modalities of `item_idx` `(...)` long → `(..., hidden_size)`.

        Frozen modalities are always present, so no item ever loses every modality. An item whose
        ID is not used gets exactly zero ID contribution (its embedding row is never read into the
        result, so untrained or even non-finite rows of cold items cannot leak in). `use_id` `(...)`
        bool: a mask already drawn with `id_mask` (then `drop_id` is ignored), so a caller can apply
        the same ID mask elsewhere (the output ID rows of `ItemProjection`).
        """
        if item_idx.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"item_idx must be an integer tensor, got {item_idx.dtype}")
        use_id = (self.id_mask(item_idx, drop_id) if use_id is None else use_id).unsqueeze(-1)  # (..., 1)
        id_rows = torch.where(use_id, self.id_embedding(item_idx), 0.0)  # (..., id_dim)
        id_part = self.modality_mlps[ID_MODALITY](id_rows)  # (..., fusion_dim)
        total = torch.where(use_id, id_part, 0.0)
        weight_dtype = self.output_mlp[0].weight.dtype
        for name in self.frozen_names:
            rows = self.frozen_table(name)[item_idx].to(weight_dtype)  # (..., d_m)
            part = self.modality_mlps[name](rows)  # (..., fusion_dim)
            total = total + (torch.where(use_id, part, 0.0) if name in BEHAVIOURAL_MODALITIES else part)
        hidden = self.output_mlp[:-1](self.norm(total.float()))  # (..., hidden_size)
        return self.output_mlp[-1](hidden.float())  # both RMSNorms in float32 (autocast-safe)

    def all_items(self, drop_id: Tensor | bool | None = None) -> Tensor:
        """Fused vectors of the whole catalogue `(N, hidden_size)` (call in eval mode for an index)."""
        return self(torch.arange(self.n_items, device=self.id_known.device), drop_id)
