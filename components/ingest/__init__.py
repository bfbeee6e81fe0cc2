"""Pipeline step `ingest`: any supported input format → interim canonical Parquet tables + id maps.

Outputs (under ``paths.interim_dir``): ``interactions.parquet``, ``items.parquet``,
``users.parquet`` (every input row, unparsable ones flagged in ``parse_error``), ``id_maps/users.parquet``
and ``id_maps/items.parquet`` (raw id ↔ contiguous index) and ``ingest_report.json`` (per table: rows
read, unparsable rows, blank lines skipped, optional attributes set to null and why).

Missing items/users files are fine: the entity table is derived from the interaction ids.
Id maps are deterministic: the sorted distinct ids are permuted with a seeded RNG, so an index
carries no information about time or popularity (the P5 "max + 1" leak).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from components.artifacts import read_parquet
from components.config import Params
from components.ingest.convert import NulledAttribute, ParsedTable, typed_frame
from components.ingest.formats import read_dataset
from components.ingest.reader import IngestError
from components.tables import COLUMNS, DERIVED_SOURCE, id_map_path, table_path

__all__ = ["IngestError", "IngestReport", "ingest", "build_id_map"]
log = logging.getLogger(__name__)


@dataclass
class TableCount:
    source: str
    rows_read: int
    parse_errors: int
    blank_lines: int = 0
    nulled_attributes: dict[str, NulledAttribute] = field(default_factory=dict)
    """Optional attribute (column) → rows whose value could not be converted and was set to null."""


@dataclass
class IngestReport:
    dataset: str
    format: str
    tables: dict[str, TableCount]
    id_maps: dict[str, int]
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"ingest {self.dataset} ({self.format}):"]
        for name, c in self.tables.items():
            blank = f", {c.blank_lines} blank line(s) skipped" if c.blank_lines else ""
            lines.append(f"  {name:<12} {c.rows_read:>8} rows read from {c.source}, "
                         f"{c.parse_errors} unparsable (quarantined by validate){blank}")
            lines += [f"  {'':<12} {a.rows:>8} {column} value(s) unreadable, set to null (row kept), "
                      f"e.g. {a.examples[0]}" for column, a in c.nulled_attributes.items()]
        lines.append("  id maps: " + ", ".join(f"{k} {v}" for k, v in self.id_maps.items()))
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def build_id_map(ids: pd.Series, seed: int) -> pd.DataFrame:
    """Distinct non-null raw ids → contiguous idx 0..n-1, a seeded permutation of their sorted order."""
    distinct = np.array(sorted(set(ids.dropna().astype(str))), dtype=object)
    order = np.random.default_rng(seed).permutation(len(distinct))
    frame = pd.DataFrame({"raw_id": distinct[order], "idx": np.arange(len(distinct), dtype=np.int64)})
    return frame.astype({"raw_id": "string"})


def _derive_entities(inter: pd.DataFrame, table: str) -> ParsedTable:
    """An items/users table holding just the distinct ids of parsable interactions (maybe none)."""
    key = "item_id" if table == "items" else "user_id"
    ids = sorted(set(inter.loc[inter["parse_error"].isna(), key].dropna()))
    frame = pd.DataFrame({c: None for c in (*COLUMNS[table], "parse_error", "raw")}, index=range(len(ids)))
    frame[key] = ids
    frame["source_file"] = DERIVED_SOURCE
    frame["source_row"] = np.arange(1, len(ids) + 1)
    if table == "items":
        frame["text_fields"] = "{}"
    else:
        frame["attributes"] = "{}"
    return ParsedTable(frame=typed_frame(frame, table), source=DERIVED_SOURCE)


def ingest(params: Params) -> IngestReport:
    """Read `params.dataset`, write interim tables, id maps and a report; return the report."""
    (inter, items, users), notes = read_dataset(params.dataset, params.root, params.ingest.max_field_chars)
    if items is None:
        items = _derive_entities(inter.frame, "items")
        notes.append("no items file: items table derived from interaction item ids (ids only)")
    if users is None:
        users = _derive_entities(inter.frame, "users")
        notes.append("no users file: users table derived from interaction user ids (ids only)")
    out = params.resolve(params.paths.interim_dir)
    out.mkdir(parents=True, exist_ok=True)
    tables = {"interactions": inter, "items": items, "users": users}
    counts: dict[str, TableCount] = {}
    for name, parsed in tables.items():
        frame = parsed.frame
        frame.to_parquet(table_path(out, name), index=False)
        counts[name] = TableCount(source=parsed.source, rows_read=len(frame),
                                  parse_errors=int(frame["parse_error"].notna().sum()),
                                  blank_lines=parsed.blank_lines, nulled_attributes=parsed.nulled)
        notes += parsed.notes
    seed = params.seed + params.ingest.id_map_seed_offset
    id_maps = {}
    for entity, key in (("users", "user_id"), ("items", "item_id")):
        frame = tables[entity].frame
        id_map = build_id_map(frame.loc[frame["parse_error"].isna(), key], seed)
        path = id_map_path(out, entity)
        path.parent.mkdir(parents=True, exist_ok=True)
        id_map.to_parquet(path, index=False)
        id_maps[entity] = len(id_map)
    report = IngestReport(dataset=params.dataset.name, format=params.dataset.format,
                          tables=counts, id_maps=id_maps, notes=notes)
    (out / "ingest_report.json").write_text(json.dumps(asdict(report), indent=2) + "\n", encoding="utf-8")
    return report


def load_interim(folder: Path) -> dict[str, pd.DataFrame]:
    """Read the three interim tables written by `ingest`."""
    missing = [t for t in COLUMNS if not table_path(folder, t).is_file()]
    if missing:
        raise IngestError(f"{folder}: missing interim table(s) {missing}; run `unirec ingest` first")
    return {t: read_parquet(table_path(folder, t), "ingest") for t in COLUMNS}
