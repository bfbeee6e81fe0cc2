"""Split each interim table into kept rows and quarantined rows, each rejection with its reason.

Order of the rules, per table (entities first, so that interactions are checked against the
entity rows that are actually KEPT):

1. rows with a non-null ``parse_error`` (ingest could not parse them) → rule ``parse``;
2. pandera row rules (`schemas`), all failures of a row joined with "; ";
3. uniqueness among the rows that passed 1–2 (so "first kept at line N" names a row that IS kept).

Pure functions over DataFrames; no I/O.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone

import pandas as pd
import pandera.pandas as pa

from components.config import ValidateParams
from components.tables import COLUMNS, KEY_COLUMN
from components.validate.schemas import (
    UNIQUENESS_RULES,
    ItemsModel,
    SchemaContractError,
    UsersModel,
    failure_cases,
    interactions_model,
    to_schema,
)

QUARANTINE_EXTRA: tuple[str, ...] = ("reason", "rule")
"""Columns a quarantine table adds to the interim columns."""

_INTERACTION_KEY: list[str] = ["user_id", "item_id", "timestamp"]


@dataclass
class TableOutcome:
    """Result of validating one table. ``kept`` has the canonical columns and the interim row index."""

    table: str
    source: str
    rows_in: int
    kept: pd.DataFrame
    quarantined: pd.DataFrame
    by_rule: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class _Context:
    """What reasons need to know: configured bounds and the ids of quarantined entity rows."""

    cfg: ValidateParams
    ts_bounds: tuple[int, int]
    dropped_ids: dict[str, frozenset[str]]


def _iso(ts: int) -> str:
    try:
        return datetime.fromtimestamp(int(ts), tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, OSError, ValueError):
        return "out of calendar range"


def _timestamp_reason(value: int, ctx: _Context) -> str:
    lo, hi = ctx.ts_bounds
    if value < 0:
        return f"timestamp {value} is negative"
    if value < lo:
        return f"timestamp {value} ({_iso(value)}) is before validate.timestamp_min {_iso(lo)}"
    if ctx.cfg.timestamp_max == "now":
        return f"timestamp {value} ({_iso(value)}) is in the future (after {_iso(hi)})"
    return f"timestamp {value} ({_iso(value)}) is after validate.timestamp_max {_iso(hi)}"


def _dangling_reason(entity: str, key: str, value: str, ctx: _Context) -> str:
    text = f"{key} '{value}' not in {entity} (dangling reference"
    if value in ctx.dropped_ids.get(entity, frozenset()):
        return text + f": its {entity} row was quarantined)"
    return text + ")"


def _describe(rule: str, column: str, row: pd.Series, ctx: _Context) -> str:
    """Human-readable reason for one (rule, row)."""
    value = row[column] if column in row.index else None
    if rule == "not_null":
        return f"{column} is null"
    if rule == "rating_range":
        return f"rating {value} outside [{ctx.cfg.rating_min}, {ctx.cfg.rating_max}]"
    if rule == "timestamp_range":
        return _timestamp_reason(int(value), ctx)
    if rule == "label_values":
        return f"label {value} not in {{0, 1}}"
    if rule == "dangling_item":
        return _dangling_reason("items", "item_id", str(value), ctx)
    if rule == "dangling_user":
        return _dangling_reason("users", "user_id", str(value), ctx)
    if rule == "vector_row_range":
        return f"vector_row {value} is negative"
    if rule == "source_row_positive":
        return f"source_row {value} < 1"
    return f"{column} {value!r} fails {rule}"


def _duplicate_reason(rule: str, row: pd.Series, keys: list[str], first_line: int) -> str:
    if rule == "duplicate_key":
        return f"duplicate {keys[0]} '{row[keys[0]]}' (first kept at line {first_line})"
    key_text = ", ".join(f"{k} '{row[k]}'" if k != "timestamp" else f"{k} {row[k]}" for k in keys)
    return f"duplicate interaction ({key_text}) (first kept at line {first_line})"


def split_table(
    interim: pd.DataFrame,
    table: str,
    schema_for: Callable[[], pa.DataFrameSchema],
    ctx: _Context,
) -> TableOutcome:
    """Apply parse / row / uniqueness rules to one interim table (see module docstring)."""
    frame = interim.reset_index(drop=True)
    reasons: dict[int, list[tuple[str, str]]] = {}
    parse_bad = frame["parse_error"].notna()
    for i, err in frame.loc[parse_bad, "parse_error"].items():
        reasons[int(i)] = [("parse", str(err))]
    candidates = frame.loc[~parse_bad, list(COLUMNS[table])]
    schema = schema_for()
    fails = failure_cases(candidates, schema)
    unique_fail = fails["rule"].isin(UNIQUENESS_RULES)
    for idx, column, rule in fails.loc[~unique_fail].itertuples(index=False):
        reasons.setdefault(int(idx), []).append((rule, _describe(rule, column, candidates.loc[idx], ctx)))
    survivors = candidates.drop(index=fails.loc[~unique_fail, "index"].unique())
    if unique_fail.any():
        again = failure_cases(survivors, schema)
        if not again["rule"].isin(UNIQUENESS_RULES).all():
            raise SchemaContractError(f"{table}: rows passed the row rules once but not twice: {again}")
        keys = [KEY_COLUMN[table]] if table in KEY_COLUMN else _INTERACTION_KEY
        first = survivors.drop_duplicates(keys, keep="first").set_index(keys)["source_row"]
        for idx, rule in again[["index", "rule"]].drop_duplicates().itertuples(index=False):
            row = survivors.loc[idx]
            key = row[keys[0]] if len(keys) == 1 else tuple(row[k] for k in keys)
            reasons[int(idx)] = [(rule, _duplicate_reason(rule, row, keys, int(first.loc[key])))]
        survivors = survivors.drop(index=again["index"].unique())
    return _outcome(frame, table, survivors, reasons)


def _outcome(frame: pd.DataFrame, table: str, kept: pd.DataFrame,
             reasons: dict[int, list[tuple[str, str]]]) -> TableOutcome:
    order = sorted(reasons)
    quarantined = frame.loc[order].copy()
    quarantined["reason"] = pd.array(["; ".join(r for _, r in reasons[i]) for i in order], dtype="string")
    rules_per_row = [list(dict.fromkeys(rule for rule, _ in reasons[i])) for i in order]
    quarantined["rule"] = pd.array(["; ".join(r) for r in rules_per_row], dtype="string")
    by_rule = Counter(rule for rules in rules_per_row for rule in rules)
    sources = frame["source_file"].dropna().unique()
    outcome = TableOutcome(table=table, source=", ".join(str(s) for s in sources), rows_in=len(frame),
                           kept=kept, quarantined=quarantined.reset_index(drop=True),
                           by_rule=dict(sorted(by_rule.items())))
    assert outcome.rows_in == len(outcome.kept) + len(outcome.quarantined), f"{table}: counts do not add up"
    return outcome


def apply_rules(interim: dict[str, pd.DataFrame], cfg: ValidateParams,
                now: datetime | None = None) -> dict[str, TableOutcome]:
    """Validate items and users, then interactions against the kept entity ids."""
    ctx = _Context(cfg=cfg, ts_bounds=cfg.timestamp_bounds(now), dropped_ids={})
    out: dict[str, TableOutcome] = {}
    dropped: dict[str, frozenset[str]] = {}
    for table, model in (("items", ItemsModel), ("users", UsersModel)):
        out[table] = split_table(interim[table], table, lambda m=model: to_schema(m), ctx)
        key = KEY_COLUMN[table]
        kept_ids = set(out[table].kept[key])
        dropped[table] = frozenset(set(out[table].quarantined[key].dropna()) - kept_ids)
    ctx = _Context(cfg=cfg, ts_bounds=ctx.ts_bounds, dropped_ids=dropped)
    model = interactions_model(
        rating_range=(cfg.rating_min, cfg.rating_max),
        timestamp_range=ctx.ts_bounds,
        item_ids=out["items"].kept["item_id"],
        user_ids=out["users"].kept["user_id"],
    )
    out["interactions"] = split_table(interim["interactions"], "interactions", lambda: to_schema(model), ctx)
    return {t: out[t] for t in ("interactions", "items", "users")}
