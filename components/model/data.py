"""Task-mixture batches from the textualised examples.

Training batches are single-task (per-task losses are exact) and length-bucketed (padding stays
tight): batch k draws its task from the mixture weights, then a random window of `batch_size`
consecutive examples of that task's pool sorted by token length, with an RNG seeded by (seed, k). So batch k is the same whatever happened before it, which makes a resumed run replay exactly
the batches an uninterrupted run would have seen.

Under DDP (world size W > 1) `batch_size` stays the GLOBAL batch: rank r of W trains on examples r, r + W, … of
global batch k (interleaved, so the ranks' shards have similar lengths), and each shard carries the whole global
batch's positives for the candidate pools (`Batch.pool_positives`). With the losses weighted by their share of
the global batch's units (`components/model/lightning.py`), the all-reduced gradient is the gradient of the
unsharded batch: W processes train the same model on the same data as one (docs/design.md §7).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from torch.utils.data import Dataset
from tqdm import tqdm
from transformers import PreTrainedTokenizerBase

from components.artifacts import read_parquet
from components.model.batching import Batch, collate, pool_positives
from components.model.prompting import EncodedExample, PromptSpec, encode_example


def examples_file(examples_dir: Path, task: str, split: str) -> Path:
    return examples_dir / task / f"{split}.parquet"


def load_examples(examples_dir: Path, tasks: Sequence[str], split: str,
                  limit_per_task: int | None = None, seed: int = 0) -> dict[str, pd.DataFrame]:
    """Read `data/examples/<task>/<split>.parquet` per task (optionally a seeded subsample)."""
    out: dict[str, pd.DataFrame] = {}
    for task in tasks:
        path = examples_file(examples_dir, task, split)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: not found; run `unirec textualize` first")
        frame = read_parquet(path, "textualize")
        if limit_per_task is not None and len(frame) > limit_per_task:
            frame = frame.sample(n=limit_per_task, random_state=seed).sort_index()
        out[task] = frame.reset_index(drop=True)
    return out


def encode_frames(frames: dict[str, pd.DataFrame], tokenizer: PreTrainedTokenizerBase, spec: PromptSpec,
                  progress: bool = True) -> dict[str, list[EncodedExample]]:
    """Tokenise every example once (cached for the whole run)."""
    out: dict[str, list[EncodedExample]] = {}
    for task, frame in frames.items():
        rows = frame.to_dict("records")
        out[task] = [encode_example(r, tokenizer, spec)
                     for r in tqdm(rows, desc=f"encode {task}", leave=False, disable=None if progress else True)]
    return out


class MixtureBatches(Dataset):
    """Map-style dataset whose item k is the whole collated batch k (use DataLoader(batch_size=None))."""

    def __init__(self, encoded: dict[str, list[EncodedExample]], weights: dict[str, float], batch_size: int,
                 num_batches: int, seed: int, pad_id: int, start: int = 0, rank: int = 0,
                 world_size: int = 1) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")
        self.rank, self.world_size = rank, world_size
        self.tasks = [t for t in encoded if weights.get(t, 0.0) > 0 and encoded[t]]
        if not self.tasks:
            raise ValueError("no task has both a positive mixture weight and training examples")
        w = np.array([weights[t] for t in self.tasks], dtype=np.float64)
        self.probs = w / w.sum()
        self.encoded, self.batch_size, self.seed, self.pad_id = encoded, batch_size, seed, pad_id
        self.start, self.num_batches = start, num_batches
        # example indices of each task sorted by length (stable, so ties keep file order)
        self.by_length = {t: np.argsort([len(e.input_ids) for e in encoded[t]], kind="stable") for t in self.tasks}
        small = {t: len(encoded[t]) for t in self.tasks if min(batch_size, len(encoded[t])) < world_size}
        if small:
            raise ValueError(f"{world_size} processes need at least {world_size} examples per batch: train.batch_size "
                             f"is {batch_size} and tasks {small} have fewer training examples")

    def __len__(self) -> int:
        return max(0, self.num_batches - self.start)

    def batch_plan(self, k: int) -> tuple[str, np.ndarray]:
        """(task, example indices) of global batch k — a pure function of (seed, k)."""
        rng = np.random.default_rng([self.seed, k])
        task = self.tasks[int(rng.choice(len(self.tasks), p=self.probs))]
        order = self.by_length[task]
        size = min(self.batch_size, len(order))
        first = int(rng.integers(len(order) - size + 1))
        return task, order[first:first + size]

    def __getitem__(self, i: int) -> Batch:
        """This rank's shard of global batch `start + i` (the whole batch when the world size is 1)."""
        task, idx = self.batch_plan(self.start + i)
        examples = [self.encoded[task][j] for j in idx]
        if self.world_size == 1:
            return collate(examples, self.pad_id)
        batch = collate(examples[self.rank::self.world_size], self.pad_id)
        batch.pool_positives = pool_positives(examples)
        return batch


class SequentialBatches(Dataset):
    """Evaluation batches: every example of every task once, in order, single-task batches."""

    def __init__(self, encoded: dict[str, list[EncodedExample]], batch_size: int, pad_id: int) -> None:
        self.plan = [(t, list(range(s, min(s + batch_size, len(ex)))))
                     for t, ex in encoded.items() for s in range(0, len(ex), batch_size)]
        self.encoded, self.pad_id = encoded, pad_id

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, i: int) -> Batch:
        task, idx = self.plan[i]
        return collate([self.encoded[task][j] for j in idx], self.pad_id)
