"""Training losses of `UniversalRecModel`, one batch at a time (the model's `losses` calls `task_losses`).

Per task: softmax over candidates (the whole catalogue with `model.softmax: full`, else in-batch + uniform
negatives with log-Q) for retrieval — multi-positive for set targets, the dense history slots of next-item
rows added —, over the cold items (content-only) for cold_start, over the saved list for candidate_choice;
verbaliser cross-entropy for ctr / rating; next-token NLL at the label slots for text / infill.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from components.model.batching import Batch
from components.model.losses import build_candidates, multi_positive_loss, sampled_softmax_loss
from components.model.prompting import VERBALISED_TASKS
from components.model.verbaliser import verbaliser_loss

if TYPE_CHECKING:
    from components.model.universal import UniversalRecModel


def task_losses(model: UniversalRecModel, batch: Batch,
                generator: torch.Generator | None = None) -> dict[str, Tensor]:
    """Per-task losses `{task: scalar}` of one batch (sum them for the step loss)."""
    hidden, fused = model.encode(batch)
    row_task = [batch.tasks[int(t)] for t in batch.task_ids]
    out: dict[str, Tensor] = {}
    if batch.user_rows.numel():
        _retrieval_losses(model, hidden, fused, batch, row_task, generator, out)
    if batch.answer_rows.numel():
        answer_task = [row_task[int(r)] for r in batch.answer_rows]
        for task in VERBALISED_TASKS:
            sel = torch.tensor([t == task for t in answer_task], device=hidden.device)
            if sel.any():
                rows = sel.nonzero().squeeze(1)
                logits = model.answer_logits(hidden, batch, task, rows, fused)
                out[task] = verbaliser_loss(logits, batch.answer_index[rows])
    if batch.label_rows.numel():
        label_task = [row_task[int(r)] for r in batch.label_rows]
        for task in sorted(set(label_task)):
            sel = torch.tensor([t == task for t in label_task], device=hidden.device).nonzero().squeeze(1)
            h = hidden[batch.label_rows[sel], batch.label_cols[sel]]  # (L, H) only label positions
            logits = model.lm_head()(h).float()  # (L, V)
            out[task] = F.cross_entropy(logits, batch.labels[sel])
    return out


def loss_units(batch: Batch) -> dict[str, int]:
    """`{task: n}`: how many terms the mean of each loss of `task_losses` averages over — set-out rows (+ the dense
    slots of next_item), answer slots of the verbalised tasks, label tokens of the text tasks. Under DDP a rank's
    loss is weighted by its units' share of the global batch's, so the all-reduced gradient is the global mean's."""
    row_task = [batch.tasks[int(t)] for t in batch.task_ids]
    units: dict[str, int] = {}
    for rows in (batch.user_rows, batch.answer_rows, batch.label_rows):
        for r in rows.tolist():
            units[row_task[r]] = units.get(row_task[r], 0) + 1
    if batch.dense_rows.numel() and "next_item" in {row_task[int(r)] for r in batch.user_rows}:
        units["next_item"] += int(batch.dense_rows.numel())
    return units


def _retrieval_losses(model: UniversalRecModel, hidden: Tensor, fused: Tensor, batch: Batch, row_task: list[str],
                      generator: torch.Generator | None, out: dict[str, Tensor]) -> None:
    # one user_head call over the [UM] and the dense slots: the head's running statistics see
    # both read-outs in the same proportions every step
    um_hidden = model.user_token_states(hidden, batch)  # (S, M, H)
    s, m = um_hidden.shape[:2]
    read = torch.cat([um_hidden.reshape(s * m, -1), hidden[batch.dense_rows, batch.dense_cols]])
    history = model.recent_history(batch, fused, torch.cat([batch.user_rows.repeat_interleave(m), batch.dense_rows]),
                                   torch.cat([batch.user_cols[:, 0].repeat_interleave(m), batch.dense_cols]))
    vectors = model.user_head(read, history)  # (S*M + Q, D)
    users, dense_users = vectors[: s * m].reshape(s, m, -1), vectors[s * m:].unsqueeze(1)  # (S, M, D), (Q, 1, D)
    set_task = [row_task[int(r)] for r in batch.user_rows]
    is_choice = torch.tensor([t == "candidate_choice" for t in set_task], device=hidden.device)
    if is_choice.any():
        rows = is_choice.nonzero().squeeze(1)
        cands = batch.candidates[rows]  # (Sc, C)
        uniq, inverse = torch.unique(cands, return_inverse=True)
        vecs = model.output_vectors(uniq)[inverse.reshape(-1)].reshape(*cands.shape, -1)  # (Sc, C, D)
        scores = torch.einsum("smd,scd->smc", users[rows].float(), vecs.float()).amax(1) / model.temperature
        target = (cands == batch.positives[rows].unsqueeze(1)).float().argmax(1)
        out["candidate_choice"] = F.cross_entropy(scores, target)
    free = (~is_choice).nonzero().squeeze(1)
    if free.numel() == 0:
        return
    free_task = [set_task[int(i)] for i in free]
    pool: tuple[Tensor, Tensor, Tensor] | None = None
    for task in sorted(set(free_task)):
        sel = free[torch.tensor([t == task for t in free_task], device=hidden.device)]
        # a rank's shard of a global batch builds its pools from the whole batch's positives (Batch.pool_positives;
        # training batches are single-task, so for cold_start these are the cold_start targets)
        if task == "cold_start":
            cold_pool = batch.positive_sets[sel] if batch.pool_positives is None else batch.pool_positives
            cand_ids, cand_vecs, log_q = cold_candidates(model, cold_pool)
        else:
            if pool is None:  # one candidate pool for every catalogue-wide task of the batch
                positives = torch.cat([batch.positive_sets[free].reshape(-1), batch.dense_targets]) \
                    if batch.pool_positives is None else batch.pool_positives
                pool = catalogue_candidates(model, positives, generator)
            cand_ids, cand_vecs, log_q = pool
        loss = multi_positive_loss(users[sel], batch.positive_sets[sel], cand_ids, cand_vecs, log_q,
                                   model.temperature)
        if task == "next_item" and batch.dense_rows.numel():
            dense_loss = sampled_softmax_loss(dense_users, batch.dense_targets, cand_ids, cand_vecs, log_q,
                                              model.temperature)
            loss = (loss + dense_loss * batch.dense_rows.numel() / sel.numel()) / (
                1 + batch.dense_rows.numel() / sel.numel())
        out[task] = loss


def catalogue_candidates(model: UniversalRecModel, positives: Tensor,
                         generator: torch.Generator | None) -> tuple[Tensor, Tensor, Tensor]:
    """(ids `(C,)`, output vectors `(C, D)`, log q `(C,)`): the whole catalogue with `model.softmax: full`,
    else in-batch positives + uniform negatives with log-Q correction."""
    if model.full_softmax:  # every item is a candidate: the exact softmax (log q constant, so 0)
        ids = torch.arange(model.n_items, device=positives.device)
        log_q = torch.zeros(model.n_items, device=positives.device)
    else:
        ids, log_q = build_candidates(positives, model.n_items, model.num_negatives, generator, model.item_log_prob)
    return ids, model.output_vectors(ids), log_q


def cold_candidates(model: UniversalRecModel, positive_sets: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """cold_start: the exact softmax over the cold items (no training interactions) ∪ the positives —
    the candidate set `unirec evaluate` ranks them in — every candidate CONTENT-ONLY (ID and collaborative
    modalities dropped). A training positive is a warm item; with its ID it would stand out from the
    content-only cold items by its modality alone, and the task would learn that instead of ranking by
    content. Over the whole catalogue the task would teach the shared item bias that cold items are
    likely, for every task (measured: next-item NDCG@10 fell below popularity in a mixed run)."""
    cold = (~model.fusion.id_known).nonzero().squeeze(1)
    ids = torch.unique(torch.cat([cold, positive_sets[positive_sets >= 0]]))
    vectors = model.item_vectors(drop_id=True)[ids] if model.full_softmax and model.training else \
        model.item_vectors(ids, drop_id=True)
    return ids, vectors, torch.zeros(ids.numel(), device=ids.device)
