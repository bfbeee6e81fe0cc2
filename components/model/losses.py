"""Retrieval losses: sampled softmax with in-batch + uniform negatives and log-Q correction.

Score of candidate c for query u: s(u, c) = max_m <u_m, v_c> (set-out, see `heads.set_scores`).
Corrected logit (Yi et al. 2019, "sampling-bias-corrected" two-tower softmax):

    logit(u, c) = s(u, c) / τ − log q(c)

where q(c) is the probability that the candidate sampler proposes c. `build_candidates` mixes two
samplers: the B in-batch positives (drawn from the data distribution p) and S uniform draws (1/N
each). Treating the candidate set as B + S draws from the mixture, each proposal is c with

    q(c) = (B · p(c) + S / N) / (B + S)

for EVERY candidate, whichever sampler produced it (an in-batch item could also have been drawn
uniformly and vice versa; the union keeps one column per item). p is the supplied item probability
(`item_log_prob`, e.g. train frequency) or else the in-batch frequency count_batch(c) / B, which is
0 for purely uniform candidates (then q = S / (N (B + S))). Constant offsets of log q cancel in the
softmax, so sampled = full softmax when the candidates are all items and log q is constant.

All losses compute in float32 with autocast disabled and use logsumexp; `ignore_mask` removes false
negatives (other positives of the user, seen items) from the denominator, never the row's own
positive.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from components.model.heads import set_scores


def build_candidates(
    positives: Tensor,
    n_items: int,
    num_negatives: int,
    generator: torch.Generator | None = None,
    item_log_prob: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Candidate set = unique(in-batch positives) ∪ `num_negatives` uniform draws, with log q.

    Args:
        positives: `(...)` long item ids of the batch's positives; negative entries are padding.
        n_items: N, catalogue size (uniform draws from 0..N-1, with replacement, then deduplicated).
        num_negatives: S, uniform draws.
        generator: torch generator for the uniform draws (reproducibility).
        item_log_prob: `(N,)` log p(item) of the data distribution; None → in-batch frequency.
    Returns:
        candidate_ids `(C,)` long, sorted and unique; log_q `(C,)` float32 = log((B·p(c) + S/N) / (B + S)).
    """
    flat = positives.reshape(-1)
    flat = flat[flat >= 0]
    if flat.numel() == 0:
        raise ValueError("build_candidates needs at least one positive")
    if int(flat.max()) >= n_items:
        raise ValueError(f"positive id {int(flat.max())} out of range for n_items={n_items}")
    device = flat.device
    sample_device = generator.device if generator is not None else device
    negatives = torch.randint(n_items, (num_negatives,), generator=generator, device=sample_device).to(device)
    candidate_ids = torch.unique(torch.cat([flat, negatives]))  # sorted
    batch_size, n_uniform = flat.numel(), num_negatives
    if item_log_prob is None:
        columns, _ = candidate_columns(candidate_ids, flat)
        counts = torch.bincount(columns, minlength=candidate_ids.numel()).double()  # (C,) = B·p̂(c)
        log_batch_mass = torch.log(counts)
    else:
        if item_log_prob.shape != (n_items,):
            raise ValueError(f"item_log_prob must be ({n_items},), got {tuple(item_log_prob.shape)}")
        log_batch_mass = math.log(batch_size) + item_log_prob.to(device).double()[candidate_ids]
    log_uniform_mass = torch.full_like(log_batch_mass, math.log(n_uniform / n_items) if n_uniform else -math.inf)
    log_q = torch.logaddexp(log_batch_mass, log_uniform_mass) - math.log(batch_size + n_uniform)
    if not torch.isfinite(log_q).all():
        raise ValueError("a candidate has proposal probability 0 (item_log_prob is -inf for an in-batch item?)")
    return candidate_ids, log_q.float()


def candidate_columns(candidate_ids: Tensor, item_ids: Tensor) -> tuple[Tensor, Tensor]:
    """Column of each item in the candidate list: `(C,)` unique ids, `(...)` ids → (`(...)` long, `(...)` found).

    Columns of ids not in the list (or negative padding) are 0 with found = False.
    """
    sorted_ids, order = torch.sort(candidate_ids)
    if sorted_ids.numel() > 1 and bool((sorted_ids[1:] == sorted_ids[:-1]).any()):
        raise ValueError("candidate_ids must be unique")
    slot = torch.searchsorted(sorted_ids, item_ids).clamp(max=sorted_ids.numel() - 1)
    found = (sorted_ids[slot] == item_ids) & (item_ids >= 0)
    return torch.where(found, order[slot], 0), found


def membership_mask(candidate_ids: Tensor, item_lists: Tensor) -> Tensor:
    """`(Q, C)` bool: candidate c is in query q's list; `item_lists` `(Q, L)` long padded with -1.

    Use it to build `ignore_mask` (seen items, other positives); ids outside the candidates are skipped.
    """
    cols, found = candidate_columns(candidate_ids, item_lists)
    mask = torch.zeros(item_lists.shape[0], candidate_ids.numel(), dtype=torch.bool, device=candidate_ids.device)
    rows = torch.arange(item_lists.shape[0], device=item_lists.device).unsqueeze(1).expand_as(cols)
    mask[rows[found], cols[found]] = True
    return mask


def _corrected_logits(user_vecs: Tensor, candidate_vecs: Tensor, log_q: Tensor, temperature: float) -> Tensor:
    """`(Q, M, D)`, `(C, D)`, `(C,)` → `(Q, C)` float32 logits s/τ − log q."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return set_scores(user_vecs.float(), candidate_vecs.float()) / temperature - log_q.float().unsqueeze(0)


def _positive_nll(logits: Tensor, pos_cols: Tensor, positive_mask: Tensor, ignore_mask: Tensor | None) -> Tensor:
    """−log softmax of each positive over {that positive} ∪ non-positive, non-ignored candidates.

    logits `(Q, C)`, pos_cols `(Q, P)`, positive_mask `(Q, C)` (all positives of the row) → `(Q, P)`.
    Uses −log p = softplus(logsumexp(negatives) − positive); a row without negatives gives 0.
    """
    excluded = positive_mask if ignore_mask is None else positive_mask | ignore_mask
    negatives = logits.masked_fill(excluded, torch.finfo(logits.dtype).min)
    log_denominator_neg = torch.logsumexp(negatives, dim=-1, keepdim=True)  # (Q, 1)
    positive_logits = logits.gather(1, pos_cols)  # (Q, P)
    return F.softplus(log_denominator_neg - positive_logits)


def sampled_softmax_loss(
    user_vecs: Tensor,
    positives: Tensor,
    candidate_ids: Tensor,
    candidate_vecs: Tensor,
    log_q: Tensor,
    temperature: float,
    ignore_mask: Tensor | None = None,
) -> Tensor:
    """Mean over queries of −log softmax(s/τ − log q)[positive] over the candidates.

    Args:
        user_vecs: `(Q, M, D)`; positives: `(Q,)` long, each must be in `candidate_ids`;
        candidate_ids: `(C,)` unique long; candidate_vecs: `(C, D)`; log_q: `(C,)`;
        ignore_mask: `(Q, C)` bool, True = drop from the denominator (the row's positive is kept).
    Returns: scalar float32.
    """
    with torch.autocast(device_type=user_vecs.device.type, enabled=False):
        cols, found = candidate_columns(candidate_ids, positives)
        if not bool(found.all()):
            raise ValueError(f"positives not among candidate_ids: {positives[~found].tolist()}")
        logits = _corrected_logits(user_vecs, candidate_vecs, log_q, temperature)
        positive_mask = F.one_hot(cols, candidate_ids.numel()).bool()
        return _positive_nll(logits, cols.unsqueeze(1), positive_mask, ignore_mask).mean()


def multi_positive_loss(
    user_vecs: Tensor,
    positive_sets: Tensor,
    candidate_ids: Tensor,
    candidate_vecs: Tensor,
    log_q: Tensor,
    temperature: float,
    ignore_mask: Tensor | None = None,
) -> Tensor:
    """Set targets: each positive is scored against the non-positive candidates, the row's other
    positives masked out; mean over the row's positives, then mean over queries.

    Args:
        user_vecs: `(Q, M, D)`; positive_sets: `(Q, P)` long padded with -1, ≥ 1 positive per row,
        all in `candidate_ids`; candidate_ids `(C,)`, candidate_vecs `(C, D)`, log_q `(C,)`,
        ignore_mask `(Q, C)` bool as in `sampled_softmax_loss`.
    Returns: scalar float32.
    """
    with torch.autocast(device_type=user_vecs.device.type, enabled=False):
        valid = positive_sets >= 0
        if not bool(valid.any(dim=1).all()):
            raise ValueError("every row of positive_sets needs at least one positive")
        cols, found = candidate_columns(candidate_ids, positive_sets)
        if not bool(found[valid].all()):
            raise ValueError(f"positives not among candidate_ids: {positive_sets[valid & ~found].tolist()}")
        logits = _corrected_logits(user_vecs, candidate_vecs, log_q, temperature)
        positive_mask = membership_mask(candidate_ids, positive_sets)
        nll = _positive_nll(logits, cols, positive_mask, ignore_mask) * valid  # (Q, P)
        return (nll.sum(dim=1) / valid.sum(dim=1)).mean()


def full_softmax_loss(
    user_vecs: Tensor,
    positives: Tensor,
    all_item_vecs: Tensor,
    temperature: float,
    ignore_mask: Tensor | None = None,
) -> Tensor:
    """Exact softmax over the whole catalogue (small catalogues, checks): `(Q, M, D)`, `(Q,)`, `(N, D)`,
    ignore_mask `(Q, N)` → scalar float32."""
    n_items = all_item_vecs.shape[0]
    all_ids = torch.arange(n_items, device=all_item_vecs.device)
    zeros = torch.zeros(n_items, device=all_item_vecs.device)
    return sampled_softmax_loss(user_vecs, positives, all_ids, all_item_vecs, zeros, temperature, ignore_mask)
