"""Dynamic padding of `EncodedExample`s into one `Batch` of flat index tensors.

Everything the model reads is addressed by (row, column) pairs into the padded `(B, T)` grid, so a
batch may mix tasks: item slots, [UM] query slots, dense retrieval slots, verbaliser answer slots and
LM label slots are all flat lists. Padding is on the right; `attention_mask` marks real tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from components.model.prompting import EncodedExample


@dataclass
class Batch:
    input_ids: torch.Tensor  # (B, T) long
    attention_mask: torch.Tensor  # (B, T) long
    task_ids: torch.Tensor  # (B,) long, index into `tasks`
    item_rows: torch.Tensor  # (P,) long
    item_cols: torch.Tensor  # (P,) long
    item_ids: torch.Tensor  # (P,) long — item index placed in each [ITEM] slot
    item_drop_id: torch.Tensor  # (P,) bool — drop the ID modality for this slot (cold-start prompts)
    user_rows: torch.Tensor  # (S,) long — rows of set-out examples
    user_cols: torch.Tensor  # (S, M) long — their [UM] positions
    positives: torch.Tensor  # (S,) long — first target item of each set-out row
    positive_sets: torch.Tensor  # (S, K) long, -1 padded — all target items (multi-positive tasks)
    candidates: torch.Tensor  # (S, C) long, -1 padded — candidate lists (candidate_choice), else empty
    dense_rows: torch.Tensor  # (Q,) long
    dense_cols: torch.Tensor  # (Q,) long
    dense_targets: torch.Tensor  # (Q,) long
    answer_rows: torch.Tensor  # (A,) long — rows of verbalised examples
    answer_cols: torch.Tensor  # (A,) long — their answer positions
    answer_index: torch.Tensor  # (A,) long — index of the right verbaliser word
    answer_items: torch.Tensor  # (A,) long — the item each verbalised row asks about
    item_is_answer: torch.Tensor  # (P,) bool — the item slot is that asked-about item (not history)
    item_is_history: torch.Tensor  # (P,) bool — the slot belongs to the user's history (what the history path reads)
    item_ratings: torch.Tensor  # (P,) float32 — the user's rating the prompt writes next to the slot, nan if none
    label_rows: torch.Tensor  # (L,) long
    label_cols: torch.Tensor  # (L,) long
    labels: torch.Tensor  # (L,) long — next-token targets at (row, col)
    tasks: tuple[str, ...]
    pool_positives: torch.Tensor | None = None
    """`(R,)` long: the positives (target sets of the catalogue-wide set-out rows + dense targets) of the WHOLE
    global batch this batch is one rank's shard of (`pool_positives` below); the retrieval losses build their
    candidate pools from it, so every rank scores against the pool the unsharded batch has. None = this batch's own."""

    def to(self, device: torch.device | str) -> "Batch":
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        for name, value in moved.items():
            if isinstance(value, torch.Tensor):
                moved[name] = value.to(device, non_blocking=True)
        return Batch(**moved)

    @property
    def num_tokens(self) -> int:
        return int(self.attention_mask.sum())


def _long(values: list[int]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.long)


def _padded(rows: list[list[int]]) -> torch.Tensor:
    width = max((len(r) for r in rows), default=0)
    out = torch.full((len(rows), width), -1, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    return out


def pool_positives(examples: list[EncodedExample]) -> torch.Tensor:
    """`(R,)` the item ids the retrieval losses build candidate pools from (`components/model/objective.py`): the
    targets of every set-out example except candidate_choice (which scores its own list) and every dense target."""
    ids = [t for e in examples if e.user_positions and e.task != "candidate_choice" for t in e.targets]
    return _long(ids + [t for e in examples for t in e.dense_targets])


def collate(examples: list[EncodedExample], pad_id: int) -> Batch:
    """Pad to the longest example and flatten every read position into (row, col) index tensors."""
    if not examples:
        raise ValueError("cannot collate an empty batch")
    tasks = tuple(sorted({e.task for e in examples}))
    width = max(len(e.input_ids) for e in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(examples), width), dtype=torch.long)
    acc: dict[str, list] = {k: [] for k in (
        "item_rows", "item_cols", "item_ids", "item_drop_id", "user_rows", "user_cols", "positives",
        "positive_sets", "candidates", "dense_rows", "dense_cols", "dense_targets", "answer_rows", "answer_cols",
        "answer_index", "answer_items", "item_is_answer", "item_is_history", "item_ratings", "label_rows", "label_cols", "labels")}
    for row, ex in enumerate(examples):
        input_ids[row, : len(ex.input_ids)] = torch.tensor(ex.input_ids, dtype=torch.long)
        attention[row, : len(ex.input_ids)] = 1
        acc["item_rows"] += [row] * len(ex.item_positions)
        acc["item_cols"] += ex.item_positions
        acc["item_ids"] += ex.item_ids
        acc["item_drop_id"] += [ex.drop_id] * len(ex.item_positions)
        acc["item_is_answer"] += [k == ex.answer_slot for k in range(len(ex.item_positions))]
        acc["item_is_history"] += ex.history_slots if ex.history_slots else [True] * len(ex.item_positions)
        acc["item_ratings"] += ex.slot_ratings if ex.slot_ratings else [float("nan")] * len(ex.item_positions)
        if ex.user_positions:
            if not ex.targets:
                raise ValueError(f"set-out example of task {ex.task} has no target item")
            acc["user_rows"].append(row)
            acc["user_cols"].append(ex.user_positions)
            acc["positives"].append(ex.targets[0])
            acc["positive_sets"].append(ex.targets)
            acc["candidates"].append(ex.candidates)
        acc["dense_rows"] += [row] * len(ex.dense_positions)
        acc["dense_cols"] += ex.dense_positions
        acc["dense_targets"] += ex.dense_targets
        if ex.answer_position >= 0:
            acc["answer_rows"].append(row)
            acc["answer_cols"].append(ex.answer_position)
            acc["answer_index"].append(ex.answer_index)
            acc["answer_items"].append(ex.answer_item)
        acc["label_rows"] += [row] * len(ex.label_positions)
        acc["label_cols"] += ex.label_positions
        acc["labels"] += ex.labels
    m = max((len(c) for c in acc["user_cols"]), default=0)
    return Batch(
        input_ids=input_ids, attention_mask=attention,
        task_ids=_long([tasks.index(e.task) for e in examples]),
        item_rows=_long(acc["item_rows"]), item_cols=_long(acc["item_cols"]), item_ids=_long(acc["item_ids"]),
        item_drop_id=torch.tensor(acc["item_drop_id"], dtype=torch.bool),
        user_rows=_long(acc["user_rows"]),
        user_cols=torch.tensor(acc["user_cols"], dtype=torch.long).reshape(len(acc["user_rows"]), m),
        positives=_long(acc["positives"]), positive_sets=_padded(acc["positive_sets"]),
        candidates=_padded(acc["candidates"]) if any(acc["candidates"]) else torch.empty(
            (len(acc["user_rows"]), 0), dtype=torch.long),
        dense_rows=_long(acc["dense_rows"]), dense_cols=_long(acc["dense_cols"]),
        dense_targets=_long(acc["dense_targets"]),
        answer_rows=_long(acc["answer_rows"]), answer_cols=_long(acc["answer_cols"]),
        answer_index=_long(acc["answer_index"]), answer_items=_long(acc["answer_items"]),
        item_is_answer=torch.tensor(acc["item_is_answer"], dtype=torch.bool),
        item_is_history=torch.tensor(acc["item_is_history"], dtype=torch.bool) & ~torch.tensor(
            acc["item_is_answer"], dtype=torch.bool),
        item_ratings=torch.tensor(acc["item_ratings"], dtype=torch.float32),
        label_rows=_long(acc["label_rows"]), label_cols=_long(acc["label_cols"]), labels=_long(acc["labels"]),
        tasks=tasks,
    )
