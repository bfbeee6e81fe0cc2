"""Set-out retrieval heads: `[UM]` hidden states → M user vectors, fused items → output item vectors.

Both heads are `RunningStandardise → Linear(H, H) → GELU → Linear(H, D)` (D = `retrieval_dim`), applied position-wise
(shared across the M `[UM]` tokens, resp. across items). With `l2_normalize` (params `model.`)
both outputs are L2-normalised, so an inner product is a cosine in [-1, 1]; this keeps the scale
of the logits fixed by the softmax temperature alone (URM/two-tower practice with τ ≈ 0.05–0.1)
and makes faiss inner-product search equal to cosine search. Without it the raw projection is used.
An item's score for a user is the max over the user's M vectors (`set_scores`).

With `model.item_bias` both heads append one column: the user side `1 + a(prompt)` (a learned linear
function of the standardised hidden state, zero-initialised), the item side a learned linear function
of the item's fused vector, so every score is `cos(u, v) + (1 + a) · b(item)`. The bias
carries popularity (or, for a cold item, what its content predicts of it): without it, unit vectors
at temperature τ can only express popularity by pulling every item towards one shared direction,
which collapses all users onto the same vector in the first hundred steps (measured). Inner
products, faiss inner-product indexes and the max over M all stay exact with the extra column.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from components.config import TASKS, ModelParams
from components.model.history import CausalHistoryEncoder, HistoryReader


def synced_moments(flat: Tensor) -> tuple[Tensor, Tensor] | None:
    """Per-coordinate mean and biased variance of the rows `(R, H)` of EVERY process of a multi-process run (DDP):
    the statistics of the unsharded batch (SyncBatchNorm's rule), so each rank's running statistics stay those of
    a one-process run on the same global batch. A collective: every rank must call it (with R = 0 rows if it has
    none). None when no rank has a row."""
    stats = torch.cat([flat.new_full((1,), float(flat.shape[0])), flat.sum(0), (flat * flat).sum(0)]).double()
    dist.all_reduce(stats)
    count, width = stats[0], flat.shape[1]
    if count == 0:
        return None
    mean = stats[1:1 + width] / count
    var = (stats[1 + width:] / count - mean * mean).clamp_min(0.0)
    return mean.float(), var.float()


class RunningStandardise(nn.Module):
    """`(..., H) -> (..., H)`: each coordinate centred and scaled by running (EMA) statistics.

    LLM hidden states share a large common component (on SmolLM2 the mean over users is ~10x the
    spread between users), so a randomly initialised head maps every user to nearly the same vector
    and retrieval training barely moves it. Removing the common component first makes user (and
    item) vectors differ from step 0. The statistics are buffers updated in training mode from the
    detached batch (first batch: copied, then EMA with `momentum`), and the update happens BEFORE
    normalising, so training and evaluation apply the same function of the stored statistics —
    no dependence on other rows of a batch at inference. Under DDP the batch moments are those of every rank's rows
    (`synced_moments`), so the statistics do not depend on how a global batch is sharded. `frozen` (set by the LoRA phase for the modules
    the collaborative warm-up fitted, `train.collab_warmup.lr_scale: 0`) stops the updates in training mode too.
    """

    def __init__(self, width: int, momentum: float = 0.05, eps: float = 1e-5) -> None:
        super().__init__()
        self.momentum, self.eps = momentum, eps
        self.frozen = False
        self.register_buffer("mean", torch.zeros(width))
        self.register_buffer("var", torch.ones(width))
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))

    def forward(self, x: Tensor) -> Tensor:
        distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        if self.training and not self.frozen and (x.numel() or distributed):
            with torch.no_grad():
                flat = x.detach().float().reshape(-1, x.shape[-1])
                moments = synced_moments(flat) if distributed else (flat.mean(0), flat.var(0, unbiased=False))
                if moments is None:
                    return (x.float() - self.mean) * torch.rsqrt(self.var + self.eps)
                mean, var = moments
                m = 1.0 if int(self.updates) == 0 else self.momentum
                self.mean.lerp_(mean, m)
                self.var.lerp_(var, m)
                self.updates += 1
        return (x.float() - self.mean) * torch.rsqrt(self.var + self.eps)


class _Projection(nn.Module):
    """`(..., H) -> (..., D [+ 1])`: running standardisation, two-layer MLP, optionally L2-normalised,
    optionally followed by the score-bias column (see `SetQueryHead` / `ItemProjection`)."""

    def __init__(self, hidden_size: int, retrieval_dim: int, l2_normalize: bool, bias_column: bool = False,
                 momentum: float = 0.05) -> None:
        super().__init__()
        self.l2_normalize, self.bias_column = l2_normalize, bias_column
        self.standardise = RunningStandardise(hidden_size, momentum)
        self.mlp = nn.Sequential(
            nn.Linear(hidden_size, hidden_size), nn.GELU(), nn.Linear(hidden_size, retrieval_dim)
        )

    def _last_column(self, standardised: Tensor, scale: Tensor | None = None) -> Tensor:
        raise NotImplementedError

    def forward(self, hidden: Tensor, offset: Tensor | None = None, scale: Tensor | None = None) -> Tensor:
        """`(..., H)` → `(..., D [+ 1])`; `offset` `(..., D)` is added before the L2 normalisation, after the
        MLP's output was multiplied by `scale` `(..., 1)` (None = 1)."""
        x = self.standardise(hidden)
        out = self.mlp(x)
        out = out if scale is None else out * scale.to(out.dtype)
        out = out if offset is None else out + offset.to(out.dtype)
        out = F.normalize(out, dim=-1) if self.l2_normalize else out
        return torch.cat([out, self._last_column(x, scale).to(out.dtype)], dim=-1) if self.bias_column else out


class SetQueryHead(_Projection):
    """User vectors from backbone hidden states.

    `forward(hidden)`: `(B, M, H)` hidden states of the M `[UM]` tokens → `(B, M, D)` user vectors;
    equally `(B, T, H) → (B, T, D)` to read a user vector at every item position (dense training),
    or any `(..., H) → (..., D)`.

    With a `history_reader` (`model.history_skip_items > 0`) `forward(hidden, history)` also takes the
    reader's summary of the prompt's items up to the read position `(..., E)` (`history.HistoryReader`:
    the mean fused vector of the recent items, E = H, or a causal encoder's output, E = its width) through
    its own standardise → MLP, added to the hidden-state MLP's output before the normalisation. With
    `passthrough` p > 0 the last p columns of `history` are not read by the MLP but appended to the user
    vector as they are, after the bias column (`(..., D [+ 1] + p)`: the item-neighbourhood block,
    components/model/neighbours.py).
    """

    def __init__(self, hidden_size: int, retrieval_dim: int, l2_normalize: bool, bias_column: bool = False,
                 history_reader: HistoryReader | None = None, momentum: float = 0.05, passthrough: int = 0) -> None:
        super().__init__(hidden_size, retrieval_dim, l2_normalize, bias_column, momentum)
        if passthrough and history_reader is None:
            raise ValueError("SetQueryHead: passthrough columns ride on the history path (history_reader)")
        self.passthrough = passthrough
        self.bias_scale = nn.Linear(hidden_size, 1) if bias_column else None
        if self.bias_scale is not None:
            nn.init.zeros_(self.bias_scale.weight)
            nn.init.zeros_(self.bias_scale.bias)
        self.history_reader = history_reader
        self.history_on = True  # False: `forward` ignores `history` (the `history_off` ablation, ablations.py)
        width = history_reader.out_dim if history_reader is not None else 0
        self.history_standardise = RunningStandardise(width, momentum) if history_reader is not None else None
        self.history_mlp = nn.Sequential(nn.Linear(width, width), nn.GELU(),
                                         nn.Linear(width, retrieval_dim)) if history_reader is not None else None
        # (len(TASKS),) the hidden-state gate per task, in TASKS order: 1 = the trained head; chosen on
        # validation after training by the `select-gates` step and kept in its own file (select_gates.out_file,
        # applied by `load_trained`), not in the model's state
        self.register_buffer("task_gate", torch.ones(len(TASKS)), persistent=False)

    def _last_column(self, standardised: Tensor, scale: Tensor | None = None) -> Tensor:
        # (..., 1) multiplies the item bias: 1 + a learned function of the prompt (zero-initialised), so a
        # task (long-tail, cold-start) can turn the shared popularity bias down instead of fighting it
        if self.bias_scale is None:
            return standardised.new_ones((*standardised.shape[:-1], 1))
        prompt = self.bias_scale(standardised)
        return 1.0 + (prompt if scale is None else prompt * scale.to(prompt.dtype))

    def forward(self, hidden: Tensor, history: Tensor | None = None,  # type: ignore[override]
                gate: Tensor | None = None) -> Tensor:
        """hidden `(..., H)`, history `(..., E)` or None, gate `(..., 1)` or None → `(..., D [+ 1])`.

        `gate` scales everything the hidden state contributes (its MLP output and its bias factor term):
        0 gives `history_vectors(history)`, 1 (or None) the trained head."""
        if (history is None) != (self.history_mlp is None):
            raise ValueError("SetQueryHead: pass `history` exactly when the head has a history path")
        history, tail = self._split(history)
        if not self.history_on:  # the `history_off` ablation (ablations.py): the hidden-state path alone
            history, tail = None, (None if tail is None else torch.zeros_like(tail))
        offset = None if history is None else self.history_mlp(self.history_standardise(history))
        out = super().forward(hidden, offset, gate)
        return out if tail is None else torch.cat([out, tail.to(out.dtype)], dim=-1)

    def _split(self, history: Tensor | None) -> tuple[Tensor | None, Tensor | None]:
        """`(..., E + p)` → (the reader's summary `(..., E)`, the `passthrough` columns `(..., p)` or None)."""
        if history is None or not self.passthrough:
            return history, None
        return history[..., : -self.passthrough], history[..., -self.passthrough:]

    def history_vectors(self, history: Tensor) -> Tensor:
        """History path alone, `(..., H)` → `(..., D [+ 1])`: the user vector when the hidden-state MLP
        outputs zero (the collaborative warm-up trains it before the LLM is used; the bias factor is 1)."""
        if self.history_mlp is None:
            raise ValueError("SetQueryHead.history_vectors: the head has no history path (model.history_skip_items = 0)")
        history, tail = self._split(history)
        out = self.history_mlp(self.history_standardise(history))
        out = F.normalize(out, dim=-1) if self.l2_normalize else out
        out = torch.cat([out, out.new_ones((*out.shape[:-1], 1))], dim=-1) if self.bias_column else out
        return out if tail is None else torch.cat([out, tail.to(out.dtype)], dim=-1)

    def gates_for(self, tasks: list[str]) -> Tensor | None:
        """`(S, 1, 1)` gate of each row's task (`tasks`, one name per set-out row), or None when every gate
        is 1 (the trained head, computed exactly as without gates)."""
        gates = self.task_gate[[TASKS.index(t) for t in tasks]] if tasks else self.task_gate[:0]
        return None if bool((gates == 1.0).all()) else gates.view(-1, 1, 1)

    def set_task_gates(self, gates: dict[str, float]) -> None:
        """Set the gate of the named tasks (the others keep theirs)."""
        for task, value in gates.items():
            if task not in TASKS:
                raise ValueError(f"task_gate: unknown task {task!r} (tasks: {list(TASKS)})")
            if not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"task_gate: {task} gate {value} is not in [0, 1]")
            self.task_gate[TASKS.index(task)] = float(value)

    def silence_hidden_path(self) -> None:
        """Zero the hidden-state MLP's output layer (its first layer still learns from the next step on), so a
        head whose history path was warmed up starts LLM training at exactly the warm-up's user vectors."""
        with torch.no_grad():
            self.mlp[-1].weight.zero_()
            self.mlp[-1].bias.zero_()

    @classmethod
    def from_params(cls, model: ModelParams, hidden_size: int, passthrough: int = 0) -> "SetQueryHead":
        """Build from `params.model` (retrieval_dim, l2_normalize, item_bias, history_skip_items,
        history_encoder), the width H and the `passthrough` width p (the item-neighbourhood block,
        `model.item_neighbours`)."""
        reader = None
        if model.history_skip_items > 0:
            enc = model.history_encoder
            encoder = CausalHistoryEncoder(hidden_size, enc.width, enc.layers, enc.heads, enc.dropout,
                                           enc.max_items) if enc.kind == "attention" else None
            reader = HistoryReader(enc.kind, hidden_size, model.history_skip_items, encoder, enc.width)
        return cls(hidden_size, model.retrieval_dim, model.l2_normalize, model.item_bias, reader,
                   model.standardise_momentum, passthrough)


class ItemProjection(_Projection):
    """Output item vectors used for scoring: fused item vectors `(N, H)` → `(N, D)` (any `(..., H)`).

    With `n_output_ids > 0` (`model.output_id_embedding`) every item also has a free output row
    `(D,)`, zero-initialised, added to the content MLP's output before the normalisation for items
    whose ID is in use (`use_id`; the same mask as the input ID, so modality dropout trains the
    content-only vector that cold items always get). As in SASRec's output table, each row gets a
    direct gradient from every softmax it appears in, instead of only through shared MLP weights.
    """

    def __init__(self, hidden_size: int, retrieval_dim: int, l2_normalize: bool, bias_column: bool = False,
                 n_output_ids: int = 0, momentum: float = 0.05) -> None:
        super().__init__(hidden_size, retrieval_dim, l2_normalize, bias_column, momentum)
        self.bias = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.bias.weight)
        nn.init.zeros_(self.bias.bias)
        self.output_ids = nn.Embedding(n_output_ids, retrieval_dim) if n_output_ids else None
        if self.output_ids is not None:
            nn.init.zeros_(self.output_ids.weight)

    def _last_column(self, standardised: Tensor, scale: Tensor | None = None) -> Tensor:
        return self.bias(standardised)  # (..., 1) content-based item bias (cold items get one too)

    def forward(self, hidden: Tensor, item_ids: Tensor | None = None,  # type: ignore[override]
                use_id: Tensor | None = None) -> Tensor:
        """fused `(..., H)`, item_ids `(...)` long, use_id `(...)` bool → `(..., D [+ 1])`."""
        offset = None
        if self.output_ids is not None and item_ids is not None:
            keep = torch.ones_like(item_ids, dtype=torch.bool) if use_id is None else use_id
            offset = torch.where(keep.unsqueeze(-1), self.output_ids(item_ids), 0.0)  # (..., D)
        return super().forward(hidden, offset)

    @classmethod
    def from_params(cls, model: ModelParams, hidden_size: int, n_items: int = 0) -> "ItemProjection":
        """Build from `params.model` (retrieval_dim, l2_normalize, item_bias, output_id_embedding), the
        backbone width H and the catalogue size N (the output ID table has N rows when enabled)."""
        return cls(hidden_size, model.retrieval_dim, model.l2_normalize, model.item_bias,
                   n_items if model.output_id_embedding else 0, model.standardise_momentum)


def set_scores(user_vecs: Tensor, item_vecs: Tensor) -> Tensor:
    """Set-out scores: `(B, M, D)` user vectors × `(C, D)` items → `(B, C)`, max over M of inner products."""
    if user_vecs.ndim != 3 or item_vecs.ndim != 2 or user_vecs.shape[-1] != item_vecs.shape[-1]:
        raise ValueError(f"expected (B, M, D) and (C, D), got {tuple(user_vecs.shape)} and {tuple(item_vecs.shape)}")
    if user_vecs.shape[1] == 1:  # one vector per query (dense slots, the warm-up): a plain matmul, no max
        return user_vecs[:, 0] @ item_vecs.T
    return torch.einsum("bmd,cd->bmc", user_vecs, item_vecs).amax(dim=1)
