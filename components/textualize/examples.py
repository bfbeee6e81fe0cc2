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

from components.textualize.registry import (HISTORY_FIELDS, RATED_HISTORY, Registry, Template, placeholder,
                                           placeholders_in, render_template)

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
    ("n_history", pa.int64()),          # items in the history shown (0 when the template writes none)
    ("history_start", pa.int64()),      # index in `items` of the first history placeholder (history is one contiguous run)
    ("history_ratings", pa.list_(pa.float64())),  # the user's rating of each history item, when the prompt writes them ({history_rated*}), else empty
])
_DTYPES = {"example_id": "string", "task": "string", "split": "string", "template_id": "string",
           "template_kind": "string", "user_idx": "int64", "prompt": "string", "target_text": "string",
           "label": "Int64", "rating": "Float64", "objective": "string", "query": "string",
           "horizon": "string", "n_history": "int64", "history_start": "int64"}


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
    ratings: Mapping[int, Mapping[int, float]] = field(default_factory=dict)
    """user → item → the user's rating of it (the interactions a history can show: train, valid); what
    `{history_rated}` / `{history_rated_titles}` write. A re-consumed item shows its latest rating."""


def make_context(registry: Registry, item_name: Sequence[str], user_text: Mapping[int, str],
                 like_threshold: float, ratings: Mapping[int, Mapping[int, float]] | None = None) -> RenderContext:
    """Precompute every item's mention strings once (rendering is the hot loop)."""
    mention = [placeholder(i) for i in range(len(item_name))]
    titled = [registry.format["titled_item"].format(placeholder=m, name=n) for m, n in zip(mention, item_name)]
    return RenderContext(registry=registry, user_text=user_text, like_threshold=like_threshold,
                         mention=mention, titled=titled, ratings=ratings or {})


def history_ratings(inst: Instance, ctx: RenderContext) -> list[float]:
    """The user's rating of each history item (nan where unknown)."""
    known = ctx.ratings.get(int(inst.user), {})
    return [float(known.get(int(i), float("nan"))) for i in inst.history]


def _rated(mentions: Sequence[str], ratings: Sequence[float], fmt: Mapping[str, str]) -> list[str]:
    """`format.rated_item` per mention; a mention whose rating is unknown is written plain."""
    return [m if r != r else fmt["rated_item"].format(item=m, rating=f"{r:g}") for m, r in zip(mentions, ratings)]


def field_value(name: str, inst: Instance, ctx: RenderContext) -> str:
    """The rendered text of prompt field `name` for `inst`."""
    fmt = ctx.registry.format
    if name == "user":
        return ctx.user_text.get(inst.user, fmt["unnamed_user"].format(raw_id=inst.user))
    if name in ("history", "candidates"):
        return fmt["list_sep"].join([ctx.mention[i] for i in getattr(inst, name)])
    if name == "history_titles":
        return fmt["titled_list_sep"].join([ctx.titled[i] for i in inst.history])
    if name == "history_rated":
        return fmt["titled_list_sep"].join(_rated([ctx.mention[i] for i in inst.history], history_ratings(inst, ctx), fmt))
    if name == "history_rated_titles":
        return fmt["titled_list_sep"].join(_rated([ctx.titled[i] for i in inst.history], history_ratings(inst, ctx), fmt))
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
    shown = len(inst.history) if template.fields & HISTORY_FIELDS else 0  # a template may leave the history out
    target_text = None if template.target is None else render_template(template.target, inst.answers)
    return {
        "task": task, "split": split, "template_id": template.id, "template_kind": template.kind,
        "user_idx": int(inst.user), "prompt": prompt, "items": placeholders_in(prompt),
        "target_text": target_text, "target_items": [int(i) for i in inst.target_items],
        "candidates": [int(i) for i in inst.candidates], "label": inst.label,
        "rating": None if inst.rating is None or inst.rating != inst.rating else float(inst.rating),
        "objective": inst.objective, "query": inst.query, "horizon": inst.horizon,
        "n_history": shown,
        "history_start": history_start(template.template, len(placeholders_in(prompt)), shown),
        "history_ratings": history_ratings(inst, ctx) if template.fields & RATED_HISTORY else [],
    }


_HISTORY_FIELDS = tuple("{" + f + "}" for f in sorted(HISTORY_FIELDS))
_OTHER_ITEM_FIELDS = ("{candidates}", "{candidate_titles}", "{target}", "{target_title}")


def history_start(template: str, n_items: int, n_history: int) -> int:
    """Index of the first history placeholder among a rendered prompt's `n_items` placeholders: 0 when the
    history is written before the other item fields (candidates, the asked-about item), else after them
    (`n_items - n_history`). The history is always one contiguous run of `n_history` placeholders."""
    first_history = min((template.find(f) for f in _HISTORY_FIELDS if f in template), default=-1)
    others = [template.find(f) for f in _OTHER_ITEM_FIELDS if f in template]
    if first_history < 0 or not others or first_history < min(others):
        return 0
    return n_items - n_history


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
