"""Pipeline step `validate`: interim tables → clean canonical tables + quarantine + quality report.

Reads what `components.ingest.ingest` wrote (``paths.interim_dir``), then per table:

* rows ingest could not parse are quarantined with their ``parse_error`` (rule ``parse``);
* pandera contracts (`components.validate.schemas`) quarantine out-of-range, null-key, duplicate and
  dangling rows (interactions are checked against the KEPT items/users rows);
* kept rows get contiguous indices from the ingest id maps and are written to ``paths.canonical_dir``
  (``interactions/items/users.parquet`` and ``id_maps/``), rejected rows to
  ``paths.quarantine_dir/<table>.parquet`` with ``reason`` and ``rule`` (always written);
* a table quarantining more than ``validate.max_quarantine_fraction`` of its rows raises
  `ValidationFailed` (after writing the outputs);
* otherwise Great Expectations checks the clean tables (`components.validate.expectations`), builds
  Data Docs in ``<reports_dir>/validation/data_docs/`` and ``<reports_dir>/validation/summary.json``.

Counts always add up: ``rows_in == kept + quarantined`` per table.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from components.artifacts import read_parquet
from components.config import Params
from components.ingest import load_interim
from components.tables import COLUMNS, DERIVED_SOURCE, KEY_COLUMN, TABLES, id_map_path, table_path
from components.validate.quarantine import QUARANTINE_EXTRA, TableOutcome, apply_rules

__all__ = ["ValidationFailed", "ValidationReport", "TableValidation", "IndexingError", "validate"]
log = logging.getLogger(__name__)
_SHOWN_CHARS = 200
"""Longest raw line or reason quoted in a failure message (the quarantine keeps them whole)."""


class ValidationFailed(ValueError):
    """Too many rows of a table were quarantined; the message names file, rules and example rows."""


class IndexingError(RuntimeError):
    """A kept row has no index in the id map: a bug in ingest/validate, never a data problem."""


@dataclass
class TableValidation:
    source: str
    rows_in: int
    kept: int
    quarantined: int
    by_rule: dict[str, int] = field(default_factory=dict)
    """Quarantined rows per rule (a row failing several rules counts once under each)."""

    @property
    def quarantined_fraction(self) -> float:
        return self.quarantined / self.rows_in if self.rows_in else 0.0


@dataclass
class ValidationReport:
    dataset: str
    tables: dict[str, TableValidation]
    expectations: list[dict[str, Any]] = field(default_factory=list)
    outputs: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    def summary(self) -> str:
        lines = [f"validate {self.dataset} ({self.seconds:.1f} s):"]
        for name, t in self.tables.items():
            rules = ", ".join(f"{r} {n}" for r, n in t.by_rule.items()) or "-"
            lines.append(f"  {name:<12} {t.rows_in:>8} in, {t.kept:>8} kept, {t.quarantined:>6} quarantined "
                         f"({100 * t.quarantined_fraction:.2f} %; rules: {rules})")
        ok = sum(e["success"] for e in self.expectations)
        lines.append(f"  expectations: {ok}/{len(self.expectations)} passed")
        lines += [f"  {k}: {v}" for k, v in self.outputs.items()]
        return "\n".join(lines)


def _source_path(params: Params, source: str) -> str:
    if not source or source == DERIVED_SOURCE:
        return source
    names = [s.strip() for s in source.split(",")]
    folder = params.resolve(params.dataset.path)
    return ", ".join(str(folder / n) for n in names)


def _with_index(kept: pd.DataFrame, table: str, maps: dict[str, pd.Series]) -> pd.DataFrame:
    """Canonical columns + int64 indices from the id maps (raises `IndexingError` on a missing id)."""
    out = kept[list(COLUMNS[table])].reset_index(drop=True)
    targets = ({"user_idx": ("users", "user_id"), "item_idx": ("items", "item_id")} if table == "interactions"
               else {"idx": (table, KEY_COLUMN[table])})
    for column, (entity, key) in targets.items():
        idx = out[key].map(maps[entity])
        missing = idx.isna()
        if missing.any():
            examples = out.loc[missing, [key, "source_row"]].head(5).to_dict("records")
            raise IndexingError(f"{table}: {int(missing.sum())} kept row(s) have a {key} absent from the "
                                f"{entity} id map (bug in ingest/validate), e.g. {examples}")
        out[column] = idx.astype("int64")
    if table != "interactions":
        out = out.sort_values("idx", kind="stable", ignore_index=True)
    return out


def _quarantine_frame(outcome: TableOutcome, interim: pd.DataFrame) -> pd.DataFrame:
    if len(outcome.quarantined):
        return outcome.quarantined
    empty = interim.iloc[0:0].copy()
    for column in QUARANTINE_EXTRA:
        empty[column] = pd.Series(dtype="string")
    return empty


def _clip(text: str, limit: int = _SHOWN_CHARS) -> str:
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"


def _example(row: pd.Series, table: str) -> str:
    if isinstance(row.get("raw"), str):
        shown = "raw: " + _clip(repr(row["raw"]))
    else:
        shown = "values: " + " ".join(f"{c}={row[c]}" for c in COLUMNS[table]
                                      if c not in {"source_file", "source_row"} and not _isna(row[c]))
    return f"line {row['source_row']}: {row['reason']} | {shown}"


def _isna(value: Any) -> bool:
    return value is None or (not isinstance(value, (list, tuple)) and bool(pd.isna(value)))


def _headline(name: str, t: TableValidation, quarantined: pd.DataFrame, limit: float) -> str:
    """One line naming the table, its file, the first rejected row and its rule."""
    first = quarantined.iloc[0]
    return (f"{name}: {t.quarantined} of {t.rows_in} rows ({100 * t.quarantined_fraction:.1f} %) quarantined "
            f"from {t.source}, more than validate.max_quarantine_fraction = {limit}; first rejected: "
            f"line {first['source_row']}, rule {first['rule']} ({_clip(str(first['reason']))})")


def _failure_message(params: Params, failing: list[str], tables: dict[str, TableValidation],
                     outcomes: dict[str, TableOutcome], quarantine_dir: Path) -> str:
    """First line: the first failing table, file, row and rule (and the other failing tables); then
    per table the count per rule, example rows and where all rejected rows are."""
    limit = params.validate_.max_quarantine_fraction
    head = _headline(failing[0], tables[failing[0]], outcomes[failing[0]].quarantined, limit)
    others = [f"{n} ({tables[n].quarantined} of {tables[n].rows_in} rows)" for n in failing[1:]]
    parts = [f"validation failed: {head}" + (f"; also failing: {', '.join(others)}" if others else "")]
    for name in failing:
        t = tables[name]
        lines = [f"{name} ({t.source}):"]
        lines += [f"  rule {rule}: {n} row(s)" for rule, n in t.by_rule.items()]
        q = outcomes[name].quarantined
        n_ex = min(params.validate_.example_rows, len(q))
        lines.append(f"  examples ({n_ex} of {len(q)}):")
        lines += ["    " + _example(row, name) for _, row in q.head(n_ex).iterrows()]
        lines.append(f"  all rejected rows: {table_path(quarantine_dir, name)}")
        parts.append("\n".join(lines))
    return "\n".join(parts)


def _relative(params: Params, path: Path) -> str:
    try:
        return str(path.resolve().relative_to(params.root.resolve()))
    except ValueError:
        return str(path)


def _write_summary(path: Path, report: ValidationReport, status: str, params: Params) -> None:
    payload = {
        "dataset": report.dataset,
        "status": status,
        "max_quarantine_fraction": params.validate_.max_quarantine_fraction,
        "tables": {name: {"source": t.source, "rows_in": t.rows_in, "kept": t.kept, "quarantined": t.quarantined,
                          "quarantined_fraction": round(t.quarantined_fraction, 6), "by_rule": t.by_rule}
                   for name, t in report.tables.items()},
        "expectations": report.expectations,
        "outputs": report.outputs,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n", encoding="utf-8")


def validate(params: Params) -> ValidationReport:
    """Run the validate step (see module docstring); returns the report, raises `ValidationFailed`."""
    start = time.perf_counter()
    cfg = params.validate_
    now = datetime.now(timezone.utc)
    interim_dir = params.resolve(params.paths.interim_dir)
    canonical_dir = params.resolve(params.paths.canonical_dir)
    quarantine_dir = params.resolve(params.paths.quarantine_dir)
    report_dir = params.resolve(params.paths.reports_dir) / "validation"
    interim = load_interim(interim_dir)
    outcomes = apply_rules(interim, cfg, now=now)

    maps_raw = {e: read_parquet(id_map_path(interim_dir, e), "ingest") for e in ("users", "items")}
    maps = {e: pd.Series(m["idx"].to_numpy(), index=m["raw_id"].astype(str).to_numpy()) for e, m in maps_raw.items()}
    canonical = {t: _with_index(outcomes[t].kept, t, maps) for t in TABLES}
    canonical_dir.mkdir(parents=True, exist_ok=True)
    quarantine_dir.mkdir(parents=True, exist_ok=True)
    for t in TABLES:
        canonical[t].to_parquet(table_path(canonical_dir, t), index=False)
        _quarantine_frame(outcomes[t], interim[t]).to_parquet(table_path(quarantine_dir, t), index=False)
    for entity in ("users", "items"):
        target = id_map_path(canonical_dir, entity)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(id_map_path(interim_dir, entity), target)

    tables = {t: TableValidation(source=_source_path(params, o.source), rows_in=o.rows_in, kept=len(o.kept),
                                 quarantined=len(o.quarantined), by_rule=o.by_rule) for t, o in outcomes.items()}
    for name, t in tables.items():
        assert t.rows_in == t.kept + t.quarantined == len(interim[name]), f"{name}: counts do not add up"
    docs_dir, summary_path = report_dir / "data_docs", report_dir / "summary.json"
    report = ValidationReport(dataset=params.dataset.name, tables=tables, outputs={
        "canonical": _relative(params, canonical_dir), "quarantine": _relative(params, quarantine_dir),
        "data_docs": _relative(params, docs_dir / "index.html"), "summary": _relative(params, summary_path)})

    failing = [n for n, t in tables.items() if t.quarantined_fraction > cfg.max_quarantine_fraction]
    if failing:
        report.seconds = time.perf_counter() - start
        _write_summary(summary_path, report, "failed", params)
        raise ValidationFailed(_failure_message(params, failing, tables, outcomes, quarantine_dir))

    from components.validate.expectations import TableFacts, raise_on_failure, run_expectations

    facts = {t: TableFacts(kept=tables[t].kept, id_map_size=len(maps[e]))
             for t, e in (("interactions", "items"), ("items", "items"), ("users", "users"))}
    report.expectations = run_expectations(canonical, facts, ts_bounds=cfg.timestamp_bounds(now),
                                           rating_bounds=(cfg.rating_min, cfg.rating_max), docs_dir=docs_dir)
    report.seconds = time.perf_counter() - start
    passed = all(e["success"] for e in report.expectations)
    _write_summary(summary_path, report, "passed" if passed else "expectations_failed", params)
    raise_on_failure(report.expectations, docs_dir)
    return report
