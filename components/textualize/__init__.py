"""Pipeline step `textualize`: canonical tables + splits + prompt registry → prompt examples per task.

Outputs (``paths.examples_dir``):
* ``item_text.parquet`` (item_idx, text) and ``user_text.parquet`` (user_idx, text);
* ``tail_items.parquet`` (item_idx, train_count) — the long-tail set used by the long_tail task;
* ``<task>/<split>.parquet`` for every task of `components.config.TASKS` and split train/valid/test,
  columns `examples.EXAMPLE_SCHEMA`. Train: seen templates only, one seeded template per instance;
  valid/test: every instance rendered with EVERY template (seen and unseen) of its task;
* ``manifest.json``: registry version and sha256, counts per task/split and per template kind.

Deterministic (seeded per task, split and user); training examples never contain a user's valid/test
item nor any cold item (see `data.Corpus.clean`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from components.config import TASKS, Params
from components.textualize.data import Corpus, TextualizeError, build_corpus, read_inputs
from components.textualize.examples import RenderContext, make_context, render, to_frame, write_examples
from components.textualize.registry import Registry, RegistryError, Template, load_registry
from components.textualize.tasks import SPLITS, TaskConfig, eval_instances, train_instances

__all__ = ["TextualizeReport", "TextualizeError", "RegistryError", "textualize", "build_examples",
           "examples_path", "load_registry"]
log = logging.getLogger(__name__)


@dataclass
class TextualizeReport:
    registry_version: str
    registry_sha256: str
    counts: dict[str, dict[str, int]]
    """task → split → examples."""
    counts_by_kind: dict[str, dict[str, dict[str, int]]]
    """task → split → template kind (seen|unseen) → examples."""
    users: dict[str, int]
    """Users with train sequences / valid rows / test rows."""
    items: int
    tail_items: int
    cold_items: int
    dropped: dict[str, int]
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"textualize: registry v{self.registry_version} ({self.registry_sha256[:12]}), "
                 f"{self.items} items ({self.tail_items} tail, {self.cold_items} cold), users "
                 + ", ".join(f"{k} {v}" for k, v in self.users.items()) + f", {self.seconds:.1f}s",
                 f"  {'task':<17}" + "".join(f"{s:>9}" for s in SPLITS) + "   eval seen/unseen (test)"]
        for task, per in self.counts.items():
            kinds = self.counts_by_kind[task]["test"]
            lines.append(f"  {task:<17}" + "".join(f"{per[s]:>9}" for s in SPLITS)
                         + f"   {kinds['seen']}/{kinds['unseen']}")
        lines += [f"  dropped {k}: {v}" for k, v in self.dropped.items() if v]
        return "\n".join(lines + [f"  note: {n}" for n in self.notes])

    def manifest(self) -> dict:
        """The deterministic part of the report (no wall time) written to manifest.json."""
        out = asdict(self)
        out.pop("seconds")
        return out


def examples_path(examples_dir: Path, task: str, split: str) -> Path:
    """Where the examples of (task, split) live: ``<examples_dir>/<task>/<split>.parquet``."""
    return examples_dir / task / f"{split}.parquet"


def window_templates(registry: Registry, task: str, ids: Sequence[str]) -> tuple[Template, ...]:
    """The seen templates of `task` named in `textualize.window_templates` (the next-item windows' pool).

    Raises ValueError for an id that is not a seen template of the task (unseen ones stay held out)."""
    known = {t.id: t for t in registry.templates}
    unknown = [i for i in ids if i not in known]
    if unknown:
        raise ValueError(f"textualize.window_templates: unknown template ids {unknown} (not in the prompt registry)")
    chosen = tuple(known[i] for i in ids if known[i].task == task)
    wrong = [t.id for t in chosen if t.kind != "seen"]
    if wrong:
        raise ValueError(f"textualize.window_templates: {wrong} are not seen templates (unseen ones are held out)")
    return chosen


def build_examples(task: str, split: str, corpus: Corpus, registry: Registry, cfg: TaskConfig,
                   ctx: RenderContext, progress: bool = True) -> pd.DataFrame:
    """All examples of (task, split) as a typed frame (see `examples.EXAMPLE_SCHEMA`)."""
    rows: list[dict] = []
    if split == "train":
        seen = registry.for_task(task, "seen")
        window = window_templates(registry, task, cfg.tx.window_templates) or seen
        for user in tqdm(corpus.users.tolist(), desc=f"{task}/train", leave=False, disable=None if progress else True):
            rng = cfg.rng(task, "train", user)
            for inst in train_instances(task, user, corpus, registry, cfg, rng):
                pool = window if inst.horizon == "window" else seen
                rows.append(render(inst, pool[int(rng.integers(len(pool)))], task, split, ctx))
    else:
        templates = registry.for_task(task)
        for inst in tqdm(eval_instances(task, split, corpus, registry, cfg), desc=f"{task}/{split}",
                         leave=False, disable=None if progress else True):
            cache: dict[str, str] = {}
            rows.extend(render(inst, t, task, split, ctx, cache) for t in templates)
    return to_frame(rows, task, split)


def _write_texts(out: Path, corpus: Corpus) -> None:
    pd.DataFrame({"item_idx": np.arange(corpus.n_items, dtype=np.int64),
                  "text": pd.array(corpus.item_text, dtype="string")}).to_parquet(out / "item_text.parquet",
                                                                                   index=False)
    users = sorted(corpus.user_text)
    pd.DataFrame({"user_idx": np.array(users, dtype=np.int64),
                  "text": pd.array([corpus.user_text[u] for u in users], dtype="string")}).to_parquet(
        out / "user_text.parquet", index=False)
    tail = np.flatnonzero(corpus.is_tail)
    pd.DataFrame({"item_idx": tail.astype(np.int64), "train_count": corpus.train_count[tail].astype(np.int64)}
                 ).to_parquet(out / "tail_items.parquet", index=False)


def textualize(params: Params, progress: bool = True) -> TextualizeReport:
    """Build every task's examples for train/valid/test; write them, the texts and manifest.json."""
    start = time.perf_counter()
    registry = load_registry(params.resolve(params.textualize.registry))
    tables, frames = read_inputs(params)
    corpus = build_corpus(params, tables, frames, registry.format)
    cfg = TaskConfig.from_params(params)
    ctx = make_context(registry, corpus.item_name, corpus.user_text, params.textualize.like_threshold,
                       corpus.history_ratings())
    out = params.resolve(params.paths.examples_dir)
    out.mkdir(parents=True, exist_ok=True)
    _write_texts(out, corpus)
    counts: dict[str, dict[str, int]] = {}
    by_kind: dict[str, dict[str, dict[str, int]]] = {}
    notes: list[str] = []
    for task in TASKS:
        counts[task], by_kind[task] = {}, {}
        for split in SPLITS:
            frame = build_examples(task, split, corpus, registry, cfg, ctx, progress)
            write_examples(frame, examples_path(out, task, split))
            counts[task][split] = len(frame)
            kinds = frame["template_kind"].value_counts()
            by_kind[task][split] = {k: int(kinds.get(k, 0)) for k in ("seen", "unseen")}
            if len(frame) == 0 and (split != "train" or params.textualize.train_examples_per_user.get(task, 0)):
                notes.append(f"{task}/{split}: no eligible examples")
    report = TextualizeReport(
        registry_version=registry.version, registry_sha256=registry.sha256, counts=counts, counts_by_kind=by_kind,
        users={"train": len(corpus.users), "valid": len(corpus.held["valid"]), "test": len(corpus.held["test"])},
        items=corpus.n_items, tail_items=int(corpus.is_tail.sum()), cold_items=int(corpus.is_cold.sum()),
        dropped=corpus.dropped, notes=notes)
    (out / "manifest.json").write_text(json.dumps(report.manifest(), indent=2) + "\n", encoding="utf-8")
    report.seconds = time.perf_counter() - start
    return report
