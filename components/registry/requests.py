"""Serving requests: the catalogue a served model knows, and the validation of every request field.

A request is a table of rows plus one set of options (the MLflow inference params):

* row fields: ``user_id`` (original dataset user id, optional), ``history`` (original item ids, oldest
  first, optional: the user's stored train + valid sequence when empty), ``items`` (original item ids:
  the targets of ctr / rating, the candidate list of candidate_choice; empty otherwise). Ids are JSON strings
  or numbers (``"50"`` and ``50`` name the same item); any other type, and any other field, is an error;
* options: ``task``, ``k``, ``query`` (the text query of task query, the masked passage of task infill),
  ``objective`` (multi_objective: one of the registry's objectives), ``template_id`` (empty: the task's
  first seen template).

Every violation raises `RequestError` whose message names the field and the rule, e.g.
``k must be in [1, 100], got 0``, ``row 0: history: unknown item id 'abc' (not in the catalogue of 1682 items)``
or ``row 0: history[1] must be an item id (a string or an integer), got the number 1.5``. `request_cost` checks
a request's size against the per-request cost caps (`registry.serving.max_request_prompt_tokens`,
`max_request_new_tokens`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from components.config import TASKS, Params, ServingParams
from components.tables import id_map_path, table_path
from components.textualize.registry import SET_OUT_TASKS, Registry
from components.textualize.text import item_tables

SCORED_TASKS = ("ctr", "rating")
"""One score per requested item: p(yes) for ctr, the expected rating for rating."""
GENERATING_TASKS = ("text", "infill")
ITEM_LIST_TASKS = ("ctr", "rating", "candidate_choice")
"""Tasks that read a row's `items`."""
QUERY_TASKS = ("query", "infill")
"""Tasks that read the `query` option (infill: the masked passage)."""
ANONYMOUS = -1
"""User index of rows without a user id (rendered with the registry's `unnamed_user` format)."""
FIELDS = ("user_id", "history", "items")
"""The request row fields; any other field is an error (not silently dropped)."""


class RequestError(ValueError):
    """A request violates a rule; the message names the field and the rule."""


@dataclass(frozen=True)
class Options:
    task: str
    k: int
    query: str
    objective: str
    template_id: str


@dataclass
class Row:
    """One validated request row (canonical indices)."""

    user: int
    """Canonical user index, or `ANONYMOUS`."""
    history: np.ndarray
    """`(L,)` int64 item indices, oldest first (L >= 1)."""
    seen: np.ndarray
    """Sorted distinct item indices never recommended to this row (its history, and the stored user's cold items)."""
    items: list[int]


@dataclass
class Catalogue:
    """Id maps, item names, stored user histories and profiles of the dataset a model was trained on."""

    dataset: str
    item_idx: dict[str, int]
    item_raw: list[str]
    item_name: list[str]
    user_idx: dict[str, int]
    user_text: dict[int, str]
    history: dict[int, np.ndarray]
    """Chronological train + valid item indices per user (test interactions stay held out)."""
    seen_cold: dict[int, np.ndarray]
    """Cold items each user interacted with before the test item (cold.parquet roles extra and valid)."""
    cold_items: np.ndarray
    ratings: dict[int, dict[int, float]]
    """user → item → the user's rating of it (train + valid; the later wins): what rating prompts write
    next to a stored history's items. A request's own `history` of an unknown user has none."""

    @property
    def n_items(self) -> int:
        return len(self.item_raw)

    @classmethod
    def load(cls, params: Params, registry: Registry) -> "Catalogue":
        canonical = params.resolve(params.paths.canonical_dir)
        splits = params.resolve(params.paths.splits_dir)
        item_map = pd.read_parquet(id_map_path(canonical, "items")).sort_values("idx")
        user_map = pd.read_parquet(id_map_path(canonical, "users"))
        names, _, _, _ = item_tables(pd.read_parquet(table_path(canonical, "items")), registry.format)
        sequence = pd.concat([pd.read_parquet(splits / f"{s}.parquet",
                                              columns=["user_idx", "item_idx", "order", "rating"])
                              for s in ("train", "valid")]).sort_values(["user_idx", "order"], kind="stable")
        ratings: dict[int, dict[int, float]] = {}
        values = sequence["rating"].astype("Float64").to_numpy(dtype=float, na_value=np.nan)
        for user, item, value in zip(sequence["user_idx"].tolist(), sequence["item_idx"].tolist(), values.tolist()):
            if value == value:
                ratings.setdefault(int(user), {})[int(item)] = float(value)
        cold = pd.read_parquet(splits / "cold.parquet", columns=["user_idx", "item_idx", "role"])
        cold = cold[cold["role"].isin(["extra", "valid"])]
        texts = pd.read_parquet(params.resolve(params.paths.examples_dir) / "user_text.parquet")
        unnamed = registry.format["unnamed_user"].format(raw_id="anonymous")
        return cls(
            dataset=params.dataset.name,
            item_idx={str(r): int(i) for r, i in zip(item_map["raw_id"], item_map["idx"])},
            item_raw=[str(r) for r in item_map["raw_id"]], item_name=list(names),
            user_idx={str(r): int(i) for r, i in zip(user_map["raw_id"], user_map["idx"])},
            user_text={**{int(u): str(t) for u, t in zip(texts["user_idx"], texts["text"])}, ANONYMOUS: unnamed},
            history={int(u): g.to_numpy(dtype=np.int64) for u, g in sequence.groupby("user_idx")["item_idx"]},
            seen_cold={int(u): np.unique(g.to_numpy(dtype=np.int64)) for u, g in cold.groupby("user_idx")["item_idx"]},
            cold_items=np.sort(pd.read_parquet(splits / "cold_items.parquet")["item_idx"].to_numpy(dtype=np.int64)),
            ratings=ratings)


def _missing(value: object) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def _text(value: object) -> str:
    return "" if _missing(value) else str(value).strip()


def _describe(value: object) -> str:
    """A JSON-ish name of a value's type, for error messages."""
    if isinstance(value, (bool, np.bool_)):
        return f"the boolean {str(bool(value)).lower()}"
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, (int, float, np.integer, np.floating)):
        return f"the number {value}"
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, (list, tuple, np.ndarray)):
        return "a list"
    return f"a {type(value).__name__}"


def _id(value: object) -> str | None:
    """An id given as a JSON string or number (an integral float is the JSON number pandas made of it) → its
    text; None for any other type."""
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)) and math.isfinite(value) and float(value).is_integer():
        return str(int(value))
    return None


def _user_id(value: object, where: str) -> str:
    """The `user_id` cell: a string or an integer (JSON numbers are ids too); missing → ''."""
    if _missing(value):
        return ""
    text = _id(value)
    if text is None:
        raise RequestError(f"{where}: user_id must be a user id (a string or an integer), got {_describe(value)}")
    return text


def _ids(value: object, field: str) -> list[str]:
    """A list cell (`history` / `items`: list / numpy array / None / NaN) → the ids as stripped strings;
    each id a string or an integer."""
    if _missing(value):
        return []
    if not isinstance(value, (list, tuple, np.ndarray)):
        raise RequestError(f"{field} must be a list of item ids (strings or integers), got {_describe(value)}")
    out = []
    for n, item in enumerate(list(value)):
        text = _id(item)
        if text is None:
            raise RequestError(f"{field}[{n}] must be an item id (a string or an integer), got {_describe(item)}")
        out.append(text)
    return out


def parse_options(raw: Mapping[str, object] | None, registry: Registry, limits: ServingParams) -> Options:
    """Validate the inference params (task, k, query, objective, template_id)."""
    raw = dict(raw or {})
    task = _text(raw.get("task")) or limits.default_task
    if task not in TASKS:
        raise RequestError(f"unknown task {task!r}; tasks: {list(TASKS)}")
    k_raw = raw.get("k", limits.default_k)
    if isinstance(k_raw, bool) or not isinstance(k_raw, (int, np.integer)):
        raise RequestError(f"k must be an integer in [1, {limits.max_k}], got {k_raw!r}")
    k = int(k_raw)
    if not 1 <= k <= limits.max_k:
        raise RequestError(f"k must be in [1, {limits.max_k}], got {k}")
    query = _text(raw.get("query"))
    if task in QUERY_TASKS and not query:
        what = "a text query" if task == "query" else "the masked passage"
        raise RequestError(f"task {task!r} needs a non-empty query param ({what})")
    if task not in QUERY_TASKS and query:
        raise RequestError(f"query is only read by tasks {list(QUERY_TASKS)}, not by {task!r}")
    objective = _text(raw.get("objective")) or next(iter(registry.objectives))
    if task == "multi_objective" and objective not in registry.objectives:
        raise RequestError(f"objective must be one of {sorted(registry.objectives)}, got {objective!r}")
    template_id = _text(raw.get("template_id"))
    templates = registry.for_task(task)
    if not template_id:
        template_id = registry.for_task(task, "seen")[0].id
    elif template_id not in {t.id for t in templates}:
        raise RequestError(f"template_id {template_id!r} is not a template of task {task!r}; choose from "
                           f"{[t.id for t in templates]}")
    return Options(task=task, k=k, query=query, objective=objective, template_id=template_id)


def _item_indices(ids: list[str], cat: Catalogue, where: str) -> list[int]:
    out = []
    for raw in ids:
        if raw not in cat.item_idx:
            raise RequestError(f"{where}: unknown item id {raw!r} (not in the catalogue of {cat.n_items} items)")
        out.append(cat.item_idx[raw])
    return out


def parse_rows(frame: pd.DataFrame, cat: Catalogue, options: Options, limits: ServingParams) -> list[Row]:
    """Validate every row of the request table against the catalogue and the task's rules."""
    if not isinstance(frame, pd.DataFrame):
        raise RequestError(f"the request must be a table of rows (user_id, history, items), got {type(frame).__name__}")
    unknown = sorted(str(c) for c in set(frame.columns) - set(FIELDS))
    if unknown:
        raise RequestError(f"unknown request fields {unknown}; fields: {list(FIELDS)}")
    if len(frame) == 0:
        raise RequestError("the request has no rows: send at least one row with a user_id or a non-empty history")
    if len(frame) > limits.max_rows:
        raise RequestError(f"at most {limits.max_rows} rows per request, got {len(frame)}")
    rows = []
    task = options.task
    for n, rec in enumerate(frame.to_dict("records")):
        where = f"row {n}"
        raw_user = _user_id(rec.get("user_id"), where)
        user = ANONYMOUS
        if raw_user:
            if raw_user not in cat.user_idx:
                raise RequestError(f"{where}: unknown user id {raw_user!r} (not among the {len(cat.user_idx)} users "
                                   f"of {cat.dataset})")
            user = cat.user_idx[raw_user]
        history_ids, item_ids = _ids(rec.get("history"), f"{where}: history"), _ids(rec.get("items"), f"{where}: items")
        if history_ids:
            history = np.asarray(_item_indices(history_ids, cat, f"{where}: history"), dtype=np.int64)
            seen = np.unique(history)
        elif user == ANONYMOUS:
            raise RequestError(f"{where}: give a user_id or a non-empty history")
        elif len(cat.history.get(user, ())) == 0:
            raise RequestError(f"{where}: user {raw_user!r} has no stored history; send a non-empty history")
        else:
            history = cat.history[user]
            seen = np.union1d(history, cat.seen_cold.get(user, np.empty(0, dtype=np.int64)))
        items = _item_indices(item_ids, cat, f"{where}: items")
        if task in ITEM_LIST_TASKS:
            if not items:
                raise RequestError(f"{where}: task {task!r} needs a non-empty items list "
                                   f"({'the candidates' if task == 'candidate_choice' else 'the items to score'})")
            if len(items) > limits.max_items:
                raise RequestError(f"{where}: at most {limits.max_items} items, got {len(items)}")
            if task == "candidate_choice" and len(set(items)) != len(items):
                raise RequestError(f"{where}: candidate items must be distinct")
            if task == "candidate_choice" and options.k > len(items):
                raise RequestError(f"{where}: k={options.k} exceeds the {len(items)} candidates")
        elif items:
            raise RequestError(f"{where}: items is only read by tasks {list(ITEM_LIST_TASKS)}, not by {task!r}")
        if task in SET_OUT_TASKS and task != "candidate_choice":
            pool = cat.cold_items if task == "cold_start" else np.arange(cat.n_items)
            if len(pool) == 0:
                raise RequestError(f"task {task!r}: the catalogue has no cold items")
            left = len(pool) - int(np.isin(pool, seen).sum())
            if options.k > left:
                raise RequestError(f"{where}: k={options.k} exceeds the {left} {'cold ' if task == 'cold_start' else ''}"
                                   f"items left after excluding the {len(seen)} seen items")
        rows.append(Row(user=user, history=history, seen=seen, items=items))
    return rows


def check_generation_cost(n_rows: int, limits: ServingParams) -> None:
    """A text / infill request generates up to `max_new_tokens` per row: rows × max_new_tokens must stay within
    `max_request_new_tokens`."""
    cost = n_rows * limits.max_new_tokens
    if cost > limits.max_request_new_tokens:
        raise RequestError(f"request too large: {n_rows} rows x {limits.max_new_tokens} new tokens = {cost} tokens to "
                           f"generate, over the cap registry.serving.max_request_new_tokens = "
                           f"{limits.max_request_new_tokens}; send at most "
                           f"{max(1, limits.max_request_new_tokens // limits.max_new_tokens)} rows per text request")


def check_prompt_cost(n_prompts: int, tokens: int, limits: ServingParams, complete: bool) -> None:
    """The prompts of a request (one per row; ctr / rating: one per requested item) must hold at most
    `max_request_prompt_tokens` tokens in all. `complete` False: `tokens` counts only the prompts encoded so far."""
    if tokens > limits.max_request_prompt_tokens:
        raise RequestError(f"request too large: its {n_prompts} prompts hold {'' if complete else 'more than '}"
                           f"{tokens} tokens, over the cap registry.serving.max_request_prompt_tokens = "
                           f"{limits.max_request_prompt_tokens}; send fewer rows (ctr / rating / candidate_choice: "
                           "fewer items per row)")
