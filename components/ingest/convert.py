"""Typed conversion of raw string fields into canonical interim frames.

A field that cannot be converted does not stop ingestion: its row gets a `parse_error` such as
``rating: 'abc' is not a number`` and keeps its original text in `raw`, so that `validate`
quarantines it with that reason. Rows that convert are checked for ranges and keys by `validate`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd

from components.ingest.reader import RawTable
from components.tables import COLUMNS

Converter = Callable[[str], object]


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


def as_int(value: str) -> int | None:
    out = as_float(value)
    if out is None:
        return None
    if not out.is_integer():
        raise ValueError(f"{value!r} is not an integer")
    return int(out)


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
    """Release years: non-numeric placeholders (ml-100k has 'V' and 'unkonwn') become null, not errors."""
    stripped = value.strip()
    return int(stripped) if stripped.isdigit() else None


def timestamp_converter(fmt: str) -> Converter:
    """unix_s / unix_ms → int seconds; iso → any date pandas parses, as UTC seconds."""

    def unix_s(value: str) -> int | None:
        out = as_float(value)
        return None if out is None else int(math.floor(out))

    def unix_ms(value: str) -> int | None:
        out = as_float(value)
        return None if out is None else int(math.floor(out / 1000.0))

    def iso(value: str) -> int | None:
        if value == "":
            return None
        try:
            ts = pd.Timestamp(value)
        except (ValueError, TypeError):
            raise ValueError(f"{value!r} is not a date") from None
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


def build_frame(
    raw: RawTable,
    table: str,
    specs: list[FieldSpec],
    extra: Callable[[list[str]], dict[str, object]] | None = None,
    source_name: str | None = None,
) -> pd.DataFrame:
    """One interim row per raw record; conversion failures become `parse_error` rows.

    `extra(fields)` computes further canonical columns (e.g. categories, JSON attributes) and may
    raise ValueError with a message naming the field.
    """
    columns = COLUMNS[table]
    source = source_name or raw.path.name
    rows: list[dict[str, object]] = []
    for rec in raw.records:
        row: dict[str, object] = {c: None for c in columns}
        row.update(source_file=source, source_row=rec.line, parse_error=rec.error, raw=rec.raw)
        if rec.fields is not None:
            errors: list[str] = []
            for spec in specs:
                try:
                    row[spec.column] = spec.convert(rec.fields[spec.index])
                except ValueError as exc:
                    errors.append(f"{spec.column}: {exc}")
            if extra is not None:
                try:
                    row.update(extra(rec.fields))
                except ValueError as exc:
                    errors.append(str(exc))
            if errors:
                row = {c: None for c in columns}
                row.update(source_file=source, source_row=rec.line,
                           parse_error="; ".join(errors), raw=raw.delimiter.join(rec.fields))
        rows.append(row)
    return typed_frame(pd.DataFrame(rows, columns=[*columns, "parse_error", "raw"]), table)


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
        df["categories"] = [c if isinstance(c, list) else [] for c in df["categories"]]
    else:
        dtypes.update(user_id="string", attributes="string")
    return df.astype(dtypes)


def json_object(mapping: dict[str, object]) -> str:
    return json.dumps(mapping, ensure_ascii=False, sort_keys=True)
