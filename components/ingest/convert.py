"""Typed conversion of raw string fields into canonical interim frames.

A field that cannot be converted does not stop ingestion. For a REQUIRED or interaction field the row
gets a `parse_error` such as ``rating: 'abc' is not a number`` and keeps its original text in `raw`, so
that `validate` quarantines it with that reason. An OPTIONAL entity attribute (an item's year or
categories) that cannot be converted is set to null instead and the row is kept: `ParsedTable.nulled`
counts those per column with example lines, for the ingest report. Integers (timestamps, years) must
fit in 64 bits; a value that does not is a conversion error of its row, never an overflow of the file.
Rows that convert are checked for ranges and keys by `validate`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import pandas as pd

from components.ingest.reader import RawTable
from components.tables import COLUMNS

Converter = Callable[[str], object]
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_MAX_EXAMPLES = 5


@dataclass(frozen=True)
class Nulled:
    """The value of an optional attribute that could not be converted: stored as null, counted."""

    reason: str


@dataclass
class NulledAttribute:
    """How many rows of a table had one optional attribute set to null, and why (first examples)."""

    rows: int = 0
    examples: list[str] = field(default_factory=list)


@dataclass
class ParsedTable:
    """One interim table with what ingest reports about it."""

    frame: pd.DataFrame
    source: str
    blank_lines: int = 0
    nulled: dict[str, NulledAttribute] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def as_text(value: str) -> str | None:
    return value if value != "" else None


def as_float(value: str) -> float | None:
    if value == "":
        return None
    try:
        out = float(value)
    except ValueError:
        raise ValueError(f"{value!r} is not a number") from None
    if not math.isfinite(out):
        raise ValueError(f"{value!r} is not a finite number")
    return out


def _int64(number: float, value: str) -> int:
    out = int(number)
    if not _INT64_MIN <= out <= _INT64_MAX:
        raise ValueError(f"{value!r} is outside the 64-bit integer range")
    return out


def as_int(value: str) -> int | None:
    out = as_float(value)
    if out is None:
        return None
    if not out.is_integer():
        raise ValueError(f"{value!r} is not an integer")
    return _int64(out, value)


def as_label(value: str) -> int | None:
    lowered = value.strip().lower()
    if lowered == "":
        return None
    if lowered in {"1", "1.0", "true", "yes"}:
        return 1
    if lowered in {"0", "0.0", "false", "no"}:
        return 0
    raise ValueError(f"{value!r} is not a 0/1 label")


def as_year(value: str) -> int | None:
    """A calendar year 1-9999 (``1995`` or ``1995.0``); anything else raises (an optional attribute:
    ml-100k's placeholders 'V' and 'unkonwn' become null, counted in the report)."""
    out = as_float(value)
    if out is None:
        return None
    if not out.is_integer():
        raise ValueError(f"{value!r} is not an integer")
    if not 1 <= out <= 9999:
        raise ValueError(f"{value!r} is not a calendar year (1-9999)")
    return int(out)


def timestamp_converter(fmt: str) -> Converter:
    """unix_s / unix_ms → int seconds; iso → any date pandas parses, as UTC seconds."""

    def unix_s(value: str) -> int | None:
        out = as_float(value)
        return None if out is None else _int64(math.floor(out), value)

    def unix_ms(value: str) -> int | None:
        out = as_float(value)
        return None if out is None else _int64(math.floor(out / 1000.0), value)

    def iso(value: str) -> int | None:
        if value == "":
            return None
        try:
            ts = pd.Timestamp(value)
        except (ValueError, TypeError, OverflowError):
            raise ValueError(f"{value!r} is not a date") from None
        if ts is pd.NaT:
            raise ValueError(f"{value!r} is not a date")
        if ts.tzinfo is None:
            ts = ts.tz_localize("UTC")
        return int(ts.timestamp())

    return {"unix_s": unix_s, "unix_ms": unix_ms, "iso": iso}[fmt]


@dataclass(frozen=True)
class FieldSpec:
    """Canonical column ← (source field index, converter)."""

    column: str
    index: int
    convert: Converter
    optional: bool = False
    """An optional entity attribute: a conversion failure nulls it (counted), the row is kept."""


Extra = Callable[[list[str]], dict[str, object]]
"""Further canonical columns from a row's fields; raises ValueError to reject the row, or returns
`Nulled` for an optional attribute it cannot convert."""


def _convert(fields: list[str], specs: list[FieldSpec], extra: Extra | None) -> tuple[dict[str, object], list[str]]:
    """(canonical values, errors rejecting the row) of one parsed record."""
    values: dict[str, object] = {}
    errors: list[str] = []
    for spec in specs:
        try:
            values[spec.column] = spec.convert(fields[spec.index])
        except ValueError as exc:
            if spec.optional:
                values[spec.column] = Nulled(str(exc))
            else:
                errors.append(f"{spec.column}: {exc}")
    if extra is not None:
        try:
            values.update(extra(fields))
        except ValueError as exc:
            errors.append(str(exc))
    return values, errors


def _count_nulled(nulled: dict[str, NulledAttribute], column: str, line: int, reason: str) -> None:
    entry = nulled.setdefault(column, NulledAttribute())
    entry.rows += 1
    if len(entry.examples) < _MAX_EXAMPLES:
        entry.examples.append(f"line {line}: {reason}")


def build_frame(
    raw: RawTable,
    table: str,
    specs: list[FieldSpec],
    extra: Extra | None = None,
    source_name: str | None = None,
) -> ParsedTable:
    """One interim row per raw record; conversion failures become `parse_error` rows (with their line
    in `raw`), failures of optional attributes become nulls counted in `ParsedTable.nulled`."""
    columns = COLUMNS[table]
    source = source_name or raw.path.name
    nulled: dict[str, NulledAttribute] = {}
    rows: list[dict[str, object]] = []
    for rec in raw.records:
        row: dict[str, object] = dict.fromkeys(columns)
        row.update(source_file=source, source_row=rec.line, parse_error=rec.error,
                   raw=rec.raw if rec.error is not None else None)
        if rec.fields is not None:
            values, errors = _convert(rec.fields, specs, extra)
            if errors:
                row.update(parse_error="; ".join(errors), raw=rec.raw)
            else:
                for column, value in values.items():
                    if isinstance(value, Nulled):
                        _count_nulled(nulled, column, rec.line, value.reason)
                        value = None
                    row[column] = value
        rows.append(row)
    frame = typed_frame(pd.DataFrame(rows, columns=[*columns, "parse_error", "raw"]), table)
    return ParsedTable(frame=frame, source=source, blank_lines=raw.blank_lines, nulled=nulled,
                       notes=list(raw.notes))


def typed_frame(df: pd.DataFrame, table: str) -> pd.DataFrame:
    """Cast an interim frame to the canonical nullable dtypes."""
    dtypes: dict[str, str] = {"source_file": "string", "source_row": "int64",
                              "parse_error": "string", "raw": "string"}
    if table == "interactions":
        dtypes.update(user_id="string", item_id="string", timestamp="Int64", rating="Float64",
                      label="Int64", event="string")
    elif table == "items":
        dtypes.update(item_id="string", title="string", year="Int64", text_fields="string",
                      vector_row="Int64")
        df["categories"] = pd.Series([c if isinstance(c, list) else [] for c in df["categories"]],
                                     index=df.index, dtype=object)
    else:
        dtypes.update(user_id="string", attributes="string")
    return df.astype(dtypes)


def json_object(mapping: dict[str, object]) -> str:
    return json.dumps(mapping, ensure_ascii=False, sort_keys=True)
