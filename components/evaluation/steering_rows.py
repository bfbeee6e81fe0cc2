"""The prompts of the steering tests (pure): an evaluated seen-template row re-rendered on the SAME instance with one
thing changed, so the model's answer to the pair isolates that change.

* `objective_rows`: a `watch` row of a user whose target was not liked, rendered with objective `like` (the
  registry's `phrases.objectives`, formatted with textualize.like_threshold): the same template and history;
* `query_rows`: a query row with the query of another user whose target shares no genre with this user's target
  (`pick_donors`, a seeded choice);
* `paraphrase_rows`: a seen row rendered with a held-out paraphrased template (components/textualize/paraphrase.py),
  the user's one in rotation over evaluate's seeded user order (`rows.rotate_templates`' rule, n = 1).

An instance is rebuilt from its row (user, target, candidates, objective, query) and its history
(`histories_of`: every template of a task renders the same history of a user's instance, so a row whose template
writes none takes it from one that does); `rerender` checks that the row's own template renders the row's prompt
again, so the changed prompt differs from the evaluated one in the changed field only. A new row's `template_kind`
names its arm (`ARMS`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from components.model.prompting import PromptSpec, encode_example
from components.textualize.examples import Instance, RenderContext, render
from components.textualize.registry import Template

ARMS = ("objective_swap", "query_swap", "paraphrase")
"""`template_kind` of the rows each steering test adds."""


@dataclass(frozen=True)
class RenderSource:
    """What re-rendering an evaluated row needs: the render context of textualize (the registry's phrases and
    formats, item names, user texts, like threshold) and every template by id (the registry's and the paraphrases)."""

    ctx: RenderContext
    templates: Mapping[str, Template]
    histories: Mapping[str, Mapping[int, np.ndarray]]
    """task → user → the history `(L,)` item ids of the user's instance (`histories_of`)."""


def histories_of(frame: pd.DataFrame) -> dict[int, np.ndarray]:
    """user → the history `(L,)` of the user's instance of one task and split: `items[history_start :
    history_start + n_history]` of the user's first row that writes a history (all of them write the same one)."""
    rows = frame[frame["n_history"] > 0].drop_duplicates("user_idx")
    return {int(u): np.asarray(items, dtype=np.int64)[int(s): int(s) + int(n)]
            for u, items, s, n in zip(rows["user_idx"], rows["items"], rows["history_start"], rows["n_history"])}


def _text(value: object) -> str | None:
    return None if value is None or value is pd.NA or (isinstance(value, float) and value != value) else str(value)


def instance_of(row: Mapping[str, object], history: Sequence[int]) -> Instance:
    """The `Instance` behind an evaluated set-out row (its history given)."""
    rating = row.get("rating")
    return Instance(user=int(row["user_idx"]), history=[int(i) for i in history],  # type: ignore[call-overload]
                    target_items=[int(i) for i in row["target_items"]],  # type: ignore[attr-defined]
                    candidates=[int(i) for i in (row.get("candidates") if row.get("candidates") is not None else [])],
                    objective=_text(row.get("objective")), query=_text(row.get("query")),
                    rating=None if _text(rating) is None else float(rating))  # type: ignore[arg-type]


def rerender(row: Mapping[str, object], template: Template, source: RenderSource, kind: str,
             **changes: object) -> dict:
    """`row` rendered with `template` on the same instance, with `changes` (objective=..., query=...) applied to the
    instance; the new row's `template_kind` is `kind`. Raises ValueError when the row's own template does not render
    the row's prompt again (the instance could not be rebuilt: examples written with another registry?)."""
    task, user = str(row["task"]), int(row["user_idx"])  # type: ignore[call-overload]
    history = source.histories.get(task, {}).get(user, np.empty(0, dtype=np.int64))
    inst = instance_of(row, history)
    own = source.templates.get(str(row["template_id"]))
    again = None if own is None else render(inst, own, task, str(row["split"]), source.ctx)["prompt"]
    if again != row["prompt"]:
        raise ValueError(f"{row.get('example_id')}: its template {row['template_id']!r} does not render its prompt "
                         "again from the rebuilt instance; were the examples written with another prompt registry "
                         "(textualize.registry) or like_threshold? Rerun `unirec textualize`")
    for name, value in changes.items():
        setattr(inst, name, value)
    out = render(inst, template, task, str(row["split"]), source.ctx)
    out.update(template_kind=kind, example_id=f"{row.get('example_id')}/{kind}")
    return out


def _frame(rows: list[dict], like: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame(rows) if rows else like.iloc[:0].copy()


def objective_rows(seen: pd.DataFrame, source: RenderSource, like_threshold: float) -> pd.DataFrame:
    """The `like` rendering of every seen multi_objective `watch` row whose target is rated below `like_threshold`
    (a liked target already has its `like` row; an unrated one is in neither group)."""
    rating = pd.to_numeric(seen["rating"], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    pick = (seen["objective"] == "watch").to_numpy(dtype=bool) & (rating < like_threshold)
    rows = [rerender(r, source.templates[str(r["template_id"])], source, ARMS[0], objective="like")
            for r in seen[pick].to_dict("records")]
    return _frame(rows, seen)


def pick_donors(users: np.ndarray, pool: pd.DataFrame, item_genres: Sequence[Sequence[str]],
                rng: np.random.Generator) -> dict[int, int]:
    """user → its donor: another user of `pool` (columns user_idx, target (item id), query; one row per user) whose
    target shares no genre with the user's target and whose query differs, drawn uniformly by `rng` (users in
    ascending order). A user without such a donor is left out."""
    names = sorted({g for gs in item_genres for g in gs})
    column = {g: k for k, g in enumerate(names)}
    has = np.zeros((len(item_genres), max(len(names), 1)), dtype=bool)  # (N, G)
    for i, gs in enumerate(item_genres):
        has[i, [column[g] for g in gs]] = True
    pool_users = pool["user_idx"].to_numpy(dtype=np.int64)
    targets = pool["target"].to_numpy(dtype=np.int64)
    queries = pool["query"].astype(str).to_numpy()
    pool_has = has[targets]  # (P, G)
    own = dict(zip(pool_users.tolist(), range(len(pool))))
    out: dict[int, int] = {}
    for user in np.sort(np.asarray(users, dtype=np.int64)).tolist():
        if user not in own:
            continue
        k = own[user]
        ok = ~pool_has[:, has[targets[k]]].any(1) & (pool_users != user) & (queries != queries[k])
        choices = np.flatnonzero(ok)
        if len(choices):
            out[user] = int(pool_users[choices[int(rng.integers(len(choices)))]])
    return out


def query_rows(seen: pd.DataFrame, donors: Mapping[int, int], pool: pd.DataFrame, source: RenderSource
               ) -> pd.DataFrame:
    """Every seen query row of a user with a donor (`pick_donors`), rendered with the donor's query (from `pool`)
    instead of the true one."""
    query = dict(zip(pool["user_idx"].astype(int), pool["query"].astype(str)))
    rows = [rerender(r, source.templates[str(r["template_id"])], source, ARMS[1],
                     query=query[donors[int(r["user_idx"])]])
            for r in seen.to_dict("records") if int(r["user_idx"]) in donors]
    return _frame(rows, seen)


def paraphrase_rows(seen: pd.DataFrame, templates: Sequence[Template], priority: np.ndarray,
                    source: RenderSource) -> pd.DataFrame:
    """Every seen row rendered with its user's paraphrase: the user of rank r (`priority[user]`) gets `T[r % len(T)]`,
    T = `templates` sorted by id (the rotation rule of `rows.rotate_templates`)."""
    ordered = sorted(templates, key=lambda t: t.id)
    if not ordered:
        raise ValueError("paraphrase_rows: no paraphrase template")
    rows = [rerender(r, ordered[int(priority[int(r["user_idx"])]) % len(ordered)], source, ARMS[2])
            for r in seen.to_dict("records")]
    return _frame(rows, seen)


def same_tokens(a: pd.DataFrame, b: pd.DataFrame, tokenizer, spec: PromptSpec) -> pd.DataFrame:
    """`(user_idx, template_id, same)` for every (user, template) with a row in both `a` and `b` (example rows, one per
    key on each side): `same` when both prompts encode to the same token ids, i.e. the words that differ fell to the
    left cut at train.max_prompt_tokens (a long titled history before the question pushes them out): the model cannot
    see the change."""
    def tokens(frame: pd.DataFrame) -> dict[tuple[int, str], tuple[int, ...]]:
        return {(int(r["user_idx"]), str(r["template_id"])): tuple(encode_example(r, tokenizer, spec).input_ids)
                for r in frame.to_dict("records")}

    left, right = tokens(a), tokens(b)
    keys = sorted(left.keys() & right.keys())
    return pd.DataFrame({"user_idx": [k[0] for k in keys], "template_id": [k[1] for k in keys],
                         "same": [left[k] == right[k] for k in keys]})
