"""Example instances, their rendering through a registry template, and the examples Parquet schema.

An `Instance` holds the task inputs of one example (history, target, candidates, ...) before a
template is chosen; `render` turns (instance, template) into one output row. Training picks one seen
template per instance; evaluation renders every instance with every template of its task.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from components.textualize.registry import Registry, Template, placeholder, placeholders_in, render_template

EXAMPLE_SCHEMA = pa.schema([
    ("example_id", pa.string()),        # "<task>/<split>/<n>", n in file order
    ("task", pa.string()),
    ("split", pa.string()),             # train | valid | test
    ("template_id", pa.string()),
    ("template_kind", pa.string()),     # seen | unseen
    ("user_idx", pa.int64()),
    ("prompt", pa.string()),            # rendered text with <item:IDX> placeholders
    ("items", pa.list_(pa.int64())),    # placeholder item indices, in order of appearance
    ("target_text", pa.string()),       # null for set-out tasks
    ("target_items", pa.list_(pa.int64())),  # retrieval target(s) / the item asked about
    ("candidates", pa.list_(pa.int64())),    # candidate list (candidate_choice), else empty
    ("label", pa.int64()),              # ctr 1/0, else null
    ("rating", pa.float64()),           # rating of the target interaction when known
    ("objective", pa.string()),         # multi_objective: watch | like
    ("query", pa.string()),             # query task: the text query
    ("horizon", pa.string()),           # long | medium | short at train; null at eval (full history)
    ("n_history", pa.int64()),          # items in the history shown
])
_DTYPES = {"example_id": "string", "task": "string", "split": "string", "template_id": "string",
           "template_kind": "string", "user_idx": "int64", "prompt": "string", "target_text": "string",
           "label": "Int64", "rating": "Float64", "objective": "string", "query": "string",
           "horizon": "string", "n_history": "int64"}


@dataclass
class Instance:
    """Inputs of one example, independent of the template wording."""

    user: int
    history: Sequence[int] = ()
    target: int | None = None
    """Item asked about (ctr, rating): rendered by {target} / {target_title}."""
    target_items: Sequence[int] = ()
    candidates: Sequence[int] = ()
    objective: str | None = None
    query: str | None = None
    passage: str | None = None
    answers: Mapping[str, str] = field(default_factory=dict)
    """Values of the target-template fields ({answer}, {rating}, {genres}, {spans})."""
    label: int | None = None
    rating: float | None = None
    horizon: str | None = None


@dataclass(frozen=True)
class RenderContext:
    """What rendering needs besides the instance; build it with `make_context`."""

    registry: Registry
    user_text: Mapping[int, str]
    like_threshold: float
    mention: Sequence[str]
    """Per item index: its placeholder ``<item:IDX>``."""
    titled: Sequence[str]
    """Per item index: `format.titled_item`, e.g. ``<item:12> Toy Story (1995)``."""


def make_context(registry: Registry, item_name: Sequence[str], user_text: Mapping[int, str],
                 like_threshold: float) -> RenderContext:
    """Precompute every item's mention strings once (rendering is the hot loop)."""
    mention = [placeholder(i) for i in range(len(item_name))]
    titled = [registry.format["titled_item"].format(placeholder=m, name=n) for m, n in zip(mention, item_name)]
    return RenderContext(registry=registry, user_text=user_text, like_threshold=like_threshold,
                         mention=mention, titled=titled)


def field_value(name: str, inst: Instance, ctx: RenderContext) -> str:
    """The rendered text of prompt field `name` for `inst`."""
    fmt = ctx.registry.format
    if name == "user":
        return ctx.user_text.get(inst.user, fmt["unnamed_user"].format(raw_id=inst.user))
    if name in ("history", "candidates"):
        return fmt["list_sep"].join([ctx.mention[i] for i in getattr(inst, name)])
    if name == "history_titles":
        return fmt["titled_list_sep"].join([ctx.titled[i] for i in inst.history])
    if name == "candidate_titles":
        return fmt["titled_list_sep"].join([ctx.titled[i] for i in inst.candidates])
    if name == "target":
        return ctx.mention[inst.target]
    if name == "target_title":
        return ctx.titled[inst.target]
    if name == "objective":
        return ctx.registry.objectives[inst.objective].format(threshold=f"{ctx.like_threshold:g}")
    if name in ("query", "passage"):
        return str(getattr(inst, name))
    raise KeyError(name)


def render(inst: Instance, template: Template, task: str, split: str, ctx: RenderContext,
           cache: dict[str, str] | None = None) -> dict:
    """One output row (without example_id) for `inst` rendered with `template`.

    `cache` (one dict per instance) reuses field texts when an instance is rendered with several templates.
    """
    cache = {} if cache is None else cache
    for f in template.fields - cache.keys():
        cache[f] = field_value(f, inst, ctx)
    prompt = render_template(template.template, cache)
    target_text = None if template.target is None else render_template(template.target, inst.answers)
    return {
        "task": task, "split": split, "template_id": template.id, "template_kind": template.kind,
        "user_idx": int(inst.user), "prompt": prompt, "items": placeholders_in(prompt),
        "target_text": target_text, "target_items": [int(i) for i in inst.target_items],
        "candidates": [int(i) for i in inst.candidates], "label": inst.label,
        "rating": None if inst.rating is None or inst.rating != inst.rating else float(inst.rating),
        "objective": inst.objective, "query": inst.query, "horizon": inst.horizon,
        "n_history": len(inst.history),
    }


def to_frame(rows: list[dict], task: str, split: str) -> pd.DataFrame:
    """Rows → a typed DataFrame with example ids `<task>/<split>/<n>` in row order."""
    frame = pd.DataFrame(rows, columns=[c for c in EXAMPLE_SCHEMA.names if c != "example_id"])
    frame.insert(0, "example_id", [f"{task}/{split}/{n:07d}" for n in range(len(frame))])
    return frame.astype(_DTYPES)


def write_examples(frame: pd.DataFrame, path: Path) -> None:
    """Write with the fixed `EXAMPLE_SCHEMA` (list columns stay list<int64> even when empty)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pandas(frame, schema=EXAMPLE_SCHEMA, preserve_index=False)
    pq.write_table(table, path)
