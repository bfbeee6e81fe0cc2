"""Shared-prefix decoding: prompts that begin with the same tokens and items run that prefix through the decoder once.

The rows of one user and template often differ only near the end: the five ctr rows of a (user, template) ask about
five items after the same history, multi_objective rows differ in the objective phrase. `group_buckets` keeps each
such group in one batch; `shared_prefix_states` then runs the groups' longest common prefix (tokens AND the item in
every `[ITEM]` slot, and its content-only flag) once per group with the KV cache on, and each row's remaining
suffix on top of its group's cache (explicit positions, the prefix's right padding masked). Causal attention makes
the states equal to those of the full rows (up to float rounding: other matrix shapes), at a fraction of the tokens:
ml-100k ctr, 5 rows of ~130 tokens sharing ~110 → ~0.3 of the decoder tokens.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from components.model.batching import Batch
from components.model.prompting import EncodedExample
from components.model.inference import InferenceConfig, autocast, decoder_states, length_buckets
from components.model.universal import UniversalRecModel


def example_key(ex: EncodedExample) -> list[int]:
    """The decoder input of one encoded prompt as ints: token ids, every `[ITEM]` slot as -(2·item + content_only + 1)."""
    key = list(ex.input_ids)
    for pos, item in zip(ex.item_positions, ex.item_ids):
        key[pos] = -(2 * item + int(ex.drop_id) + 1)
    return key


def shared_prefixes(encoded: Sequence[EncodedExample], groups: Sequence[object]) -> np.ndarray:
    """`(R,)` per row, the prefix it shares with every row of its group (at most its length − 1; 0 alone)."""
    members: dict[str, list[int]] = {}
    for row, group in enumerate(groups):
        members.setdefault(str(group), []).append(row)
    out = np.zeros(len(encoded), dtype=np.int64)
    for rows in (r for r in members.values() if len(r) > 1):
        keys = [example_key(encoded[r]) for r in rows]
        shortest = min(len(k) for k in keys)
        shared = 0
        while shared < shortest - 1 and all(k[shared] == keys[0][shared] for k in keys):
            shared += 1
        out[rows] = shared
    return out


def group_buckets(lengths: Sequence[int], groups: Sequence[object], prefixes: np.ndarray, batch_size: int
                  ) -> list[np.ndarray]:
    """Row indices in batches: rows that share no prefix with a group (`prefixes` 0) as `length_buckets` batches them
    (so those batches are the ones without groups), then the groups that share one, longest row last, packed whole
    into batches of at most `batch_size` rows (a larger group is a batch of its own). Every row appears once."""
    lengths = np.asarray(lengths, dtype=np.int64)
    alone = np.flatnonzero(prefixes == 0)
    out = [alone[b] for b in length_buckets(lengths[alone].tolist(), batch_size)] if len(alone) else []
    members: dict[str, list[int]] = {}
    for row in np.flatnonzero(prefixes > 0):
        members.setdefault(str(groups[row]), []).append(int(row))
    current: list[int] = []
    for rows in sorted(members.values(), key=lambda r: (int(lengths[r].max()), r[0])):
        if current and len(current) + len(rows) > batch_size:
            out.append(np.asarray(current, dtype=np.int64))
            current = []
        current += rows
    if current:
        out.append(np.asarray(current, dtype=np.int64))
    return out


def slot_keys(batch: Batch) -> Tensor:
    """`(B, T)` long: the token ids, with every `[ITEM]` slot replaced by -(2·item + content_only + 1) (< 0), so two
    rows have equal keys exactly where they feed the decoder the same input."""
    keys = batch.input_ids.clone()
    if batch.item_ids.numel():
        keys[batch.item_rows, batch.item_cols] = -(2 * batch.item_ids + batch.item_drop_id.long() + 1)
    return keys


def prefix_lengths(batch: Batch, groups: Tensor) -> Tensor:
    """`(B,)` long: the prefix every row shares with all rows of its group (`groups` `(B,)` long), at most its
    length − 1 (a row keeps at least its last token to itself); 0 for a row alone in its group."""
    keys, lengths = slot_keys(batch), batch.attention_mask.sum(1)
    out = torch.zeros_like(lengths)
    for g in torch.unique(groups):
        rows = torch.nonzero(groups == g).flatten()
        if rows.numel() < 2:
            continue
        shortest = int(lengths[rows].min())
        same = (keys[rows, :shortest] == keys[rows[0], :shortest]).all(0)  # (shortest,)
        shared = int(same.long().cumprod(0).sum())
        out[rows] = min(shared, shortest - 1)
    return out


def shared_prefix_states(model: UniversalRecModel, batch: Batch, groups: Tensor, cfg: InferenceConfig) -> Tensor:
    """Decoder states `(B, T, H)` float32 of `batch` (as `inference.decoder_states`) with each group's common prefix
    (`groups` `(B,)` long) decoded once; positions past a row's length are 0."""
    plen = prefix_lengths(batch, groups)
    if not bool((plen > 0).any()):
        return decoder_states(model, batch, cfg)
    _, row_group = torch.unique(groups, return_inverse=True)  # (B,) 0..G-1
    leader = torch.stack([torch.nonzero(row_group == g)[0, 0] for g in range(int(row_group.max()) + 1)])  # (G,)
    lengths = batch.attention_mask.sum(1)
    width = int(plen.max())
    with autocast(cfg.autocast_bf16):
        embeds, _ = model.embed(batch)  # (B, T, H)
        prefix_mask = (torch.arange(width)[None, :] < plen[leader][:, None]).long()  # (G, P)
        first = model.decoder()(inputs_embeds=embeds[leader, :width], attention_mask=prefix_mask, use_cache=True)
        cache = first.past_key_values
        cache.reorder_cache(row_group)  # (B, heads, P, d): each row reads its group's prefix
        rest = lengths - plen
        span = int(rest.max())
        pos = plen[:, None] + torch.arange(span)[None, :]  # (B, S) positions in the full row
        valid = torch.arange(span)[None, :] < rest[:, None]
        suffix = embeds.gather(1, pos.clamp(max=embeds.shape[1] - 1).unsqueeze(-1).expand(-1, -1, embeds.shape[-1]))
        mask = torch.cat([prefix_mask[row_group], valid.long()], dim=1)  # (B, P + S)
        second = model.decoder()(inputs_embeds=suffix, attention_mask=mask, position_ids=pos, past_key_values=cache,
                                 use_cache=True)
    head, tail = first.last_hidden_state.float(), second.last_hidden_state.float()
    hidden = tail.new_zeros((*batch.input_ids.shape, tail.shape[-1]))  # (B, T, H)
    cols = torch.arange(batch.input_ids.shape[1])[None, :]
    in_prefix = cols < plen[:, None]
    rows_p, cols_p = torch.nonzero(in_prefix, as_tuple=True)
    hidden[rows_p, cols_p] = head[row_group[rows_p], cols_p]
    rows_s, steps = torch.nonzero(valid, as_tuple=True)
    hidden[rows_s, pos[rows_s, steps]] = tail[rows_s, steps]
    return hidden
