"""Verbaliser scoring: LM-head logits of a few answer tokens at the answer position only.

The full-vocabulary logits are never computed: the K verbaliser rows of the LM-head weight are
gathered and multiplied with the answer-position hidden states (one `(B, H) × (H, K)` matmul).
CTR uses K = 2 tokens (index 0 = "yes", 1 = "no"); rating uses K = 5 tokens ("1" … "5").
Probabilities and the loss are computed in float32.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

YES_INDEX = 0
"""Column of the "yes" token in CTR verbaliser logits `(B, 2)` (column 1 is "no")."""


def verbaliser_logits(
    hidden: Tensor, lm_head_weight: Tensor, token_ids: Tensor, lm_head_bias: Tensor | None = None
) -> Tensor:
    """`(B, H)` answer-position hidden states × `(V, H)` LM head, restricted to `(K,)` token ids → `(B, K)`.

    Equals `(hidden @ lm_head_weight.T + bias)[:, token_ids]` without materialising `(B, V)`.
    """
    if hidden.shape[-1] != lm_head_weight.shape[1]:
        raise ValueError(f"hidden width {hidden.shape[-1]} != LM head width {lm_head_weight.shape[1]}")
    rows = lm_head_weight.index_select(0, token_ids)  # (K, H)
    logits = hidden @ rows.T  # (B, K)
    if lm_head_bias is not None:
        logits = logits + lm_head_bias.index_select(0, token_ids)
    return logits


def ctr_probability(logits: Tensor) -> Tensor:
    """P(yes) from CTR verbaliser logits `(B, 2)` (column 0 = yes) → `(B,)` float32."""
    if logits.shape[-1] != 2:
        raise ValueError(f"CTR logits must be (B, 2), got {tuple(logits.shape)}")
    return torch.softmax(logits.float(), dim=-1)[..., YES_INDEX]


def rating_expectation(logits: Tensor, values: Sequence[float] | Tensor = (1.0, 2.0, 3.0, 4.0, 5.0)) -> Tensor:
    """Expected rating Σ_k softmax(logits)_k · values_k: `(B, K)` logits, K values → `(B,)` float32."""
    value_tensor = torch.as_tensor(values, dtype=torch.float32, device=logits.device)
    if value_tensor.shape != (logits.shape[-1],):
        raise ValueError(f"{logits.shape[-1]} logits per row but {tuple(value_tensor.shape)} values")
    return torch.softmax(logits.float(), dim=-1) @ value_tensor


def verbaliser_loss(logits: Tensor, target_index: Tensor) -> Tensor:
    """Mean cross-entropy over the K verbaliser tokens: `(B, K)` logits, `(B,)` long targets → scalar float32."""
    return F.cross_entropy(logits.float(), target_index)


class VerbaliserPrior(nn.Module):
    """Collaborative prior on the verbaliser logits (`model.verbaliser_prior`), CoLLM-style.

    `forward(task, scores)`: `(A,)` retrieval scores s of the asked-about items → `(A, K)` logit offsets
    `w_task · s / τ + b_task`, one learned scale and offset per verbaliser word (zero-initialised: the
    model starts as the pure LM verbaliser and learns how much of the prior to use). s is the score the
    collaborative history path gives the item (`UniversalRecModel.answer_scores`), detached, so the
    prior reads the retrieval model without the few ctr / rating batches pulling on it.
    """

    def __init__(self, sizes: dict[str, int], temperature: float) -> None:
        super().__init__()
        self.temperature = temperature
        self.scale = nn.ParameterDict({t: nn.Parameter(torch.zeros(k)) for t, k in sizes.items()})
        self.offset = nn.ParameterDict({t: nn.Parameter(torch.zeros(k)) for t, k in sizes.items()})

    def forward(self, task: str, scores: Tensor) -> Tensor:
        """`(A,)` scores → `(A, K)` float32 offsets for the K verbaliser words of `task`."""
        return scores.float().unsqueeze(-1) / self.temperature * self.scale[task] + self.offset[task]
