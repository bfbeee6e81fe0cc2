"""The three input formats → interim canonical frames (interactions, items | None, users | None).

* RecBole atomic files: ``<prefix>.inter`` / ``.item`` / ``.user``, tab-separated, typed headers
  ``name:type`` (token, token_seq, float, float_seq).
* GroupLens ml-100k: ``u.data`` (tab, no header), ``u.item`` (pipe, latin-1, 19 genre flags named
  by ``u.genre``), ``u.user`` (pipe).
* Generic CSV / Parquet with a column mapping from params (items and users files optional).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from components.config import DatasetParams, GenericInteractions, GenericItems, GenericUsers
from components.ingest.convert import (
    FieldSpec,
    Nulled,
    ParsedTable,
    as_float,
    as_label,
    as_text,
    as_year,
    build_frame,
    json_object,
    timestamp_converter,
)
from components.ingest.reader import IngestError, RawRecord, RawTable, read_delimited, too_long

Frames = tuple[ParsedTable, ParsedTable | None, ParsedTable | None]

# RecBole field names that carry canonical meaning (RecBole's own dataset conventions).
_RECBOLE_TITLE = ("movie_title", "title", "item_name", "name")
_RECBOLE_YEAR = ("release_year", "year")
_RECBOLE_CATEGORIES = ("class", "genre", "genres", "categories", "category")
# GroupLens ml-100k u.item genre flag order, used only when u.genre is absent (documented in its README).
_GROUPLENS_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
    "War", "Western",
)
_TITLE_YEAR = re.compile(r"^(?P<title>.*?)\s*\((?P<year>\d{4})\)\s*$")


def read_dataset(ds: DatasetParams, root: Path, max_field_chars: int) -> tuple[Frames, list[str]]:
    """Read the configured dataset; returns the tables and notes (ignored columns...).

    A row with a field longer than `max_field_chars` is unparsable (ingest.max_field_chars).
    """
    folder = Path(ds.path) if Path(ds.path).is_absolute() else root / ds.path
    if not folder.is_dir():
        raise IngestError(f"{folder}: dataset folder not found (dataset.path in params.yaml)")
    reader = {"recbole": _read_recbole, "grouplens": _read_grouplens, "generic": _read_generic}
    return reader[ds.format](ds, folder, max_field_chars)


# ---------------------------------------------------------------- RecBole atomic files
def _recbole_names(raw: RawTable) -> list[str]:
    names = [h.split(":", 1)[0].strip() for h in raw.header]
    if len(set(names)) != len(names):
        raise IngestError(f"{raw.path}: duplicate column names in header {raw.header}")
    return names


def _delimiter_hint(raw: RawTable) -> str:
    """A hint when the header is a single column that holds another common delimiter."""
    if len(raw.header) != 1:
        return ""
    seen = [d for d in (",", ";", "\t", "|") if d != raw.delimiter and d in raw.header[0]]
    return (f" (the header is one column holding {seen[0]!r}: is the delimiter {raw.delimiter!r} right?)"
            if seen else "")


def _require(raw: RawTable, names: list[str], wanted: tuple[str, ...]) -> None:
    missing = [w for w in wanted if w not in names]
    if missing:
        raise IngestError(f"{raw.path}: missing required column(s) {missing} in the header (line 1); "
                          f"header has {raw.header}{_delimiter_hint(raw)}")


def _first_of(names: list[str], options: tuple[str, ...]) -> int | None:
    return next((names.index(o) for o in options if o in names), None)


def _read_recbole(ds: DatasetParams, folder: Path, limit: int) -> tuple[Frames, list[str]]:
    enc, prefix, notes = ds.recbole.encoding, ds.recbole.prefix, []
    inter_raw = read_delimited(folder / f"{prefix}.inter", delimiter="\t", encoding=enc, has_header=True,
                               max_field_chars=limit)
    names = _recbole_names(inter_raw)
    _require(inter_raw, names, ("user_id", "item_id", "timestamp"))
    specs = [FieldSpec("user_id", names.index("user_id"), as_text),
             FieldSpec("item_id", names.index("item_id"), as_text),
             FieldSpec("timestamp", names.index("timestamp"), timestamp_converter("unix_s"))]
    for col, conv in (("rating", as_float), ("label", as_label), ("event", as_text)):
        if col in names:
            specs.append(FieldSpec(col, names.index(col), conv))
    used = {s.index for s in specs}
    ignored = [names[i] for i in range(len(names)) if i not in used]
    if ignored:
        notes.append(f"{inter_raw.path.name}: columns {ignored} are not part of the canonical interactions table")
    inter = build_frame(inter_raw, "interactions", specs)

    items = users = None
    item_path, user_path = folder / f"{prefix}.item", folder / f"{prefix}.user"
    if item_path.exists():
        raw = read_delimited(item_path, delimiter="\t", encoding=enc, has_header=True, max_field_chars=limit)
        names = _recbole_names(raw)
        _require(raw, names, ("item_id",))
        t, y, c = (_first_of(names, o) for o in (_RECBOLE_TITLE, _RECBOLE_YEAR, _RECBOLE_CATEGORIES))
        specs = [FieldSpec("item_id", names.index("item_id"), as_text)]
        if t is not None:
            specs.append(FieldSpec("title", t, as_text))
        if y is not None:
            specs.append(FieldSpec("year", y, as_year, optional=True))
        rest = [i for i in range(len(names)) if i not in {names.index("item_id"), t, y, c}]

        def item_extra(fields: list[str]) -> dict[str, object]:
            cats = fields[c].split() if c is not None else []
            return {"categories": cats, "text_fields": json_object({names[i]: fields[i] for i in rest})}

        items = build_frame(raw, "items", specs, item_extra)
    if user_path.exists():
        raw = read_delimited(user_path, delimiter="\t", encoding=enc, has_header=True, max_field_chars=limit)
        names = _recbole_names(raw)
        _require(raw, names, ("user_id",))
        uid = names.index("user_id")
        users = build_frame(raw, "users", [FieldSpec("user_id", uid, as_text)],
                            lambda f: {"attributes": json_object(
                                {names[i]: f[i] for i in range(len(names)) if i != uid})})
    return (inter, items, users), notes


# ---------------------------------------------------------------- GroupLens ml-100k
def _read_grouplens(ds: DatasetParams, folder: Path, limit: int) -> tuple[Frames, list[str]]:
    enc, notes = ds.grouplens.encoding, []
    raw = read_delimited(folder / "u.data", delimiter="\t", encoding=enc, has_header=False,
                         header=["user_id", "item_id", "rating", "timestamp"], max_field_chars=limit)
    inter = build_frame(raw, "interactions", [
        FieldSpec("user_id", 0, as_text), FieldSpec("item_id", 1, as_text),
        FieldSpec("rating", 2, as_float), FieldSpec("timestamp", 3, timestamp_converter("unix_s"))])
    items = users = None
    if (folder / "u.item").exists():
        genres = _grouplens_genres(folder, ds.grouplens.item_encoding)
        header = ["item_id", "title", "release_date", "video_release_date", "imdb_url", *genres]
        raw = read_delimited(folder / "u.item", delimiter="|", encoding=ds.grouplens.item_encoding,
                             has_header=False, header=header, max_field_chars=limit)

        def item_extra(fields: list[str]) -> dict[str, object]:
            flags = fields[5:]
            bad = [f for f in flags if f not in {"0", "1"}]
            categories: object = [g for g, f in zip(genres, flags) if f == "1"]
            if bad:  # an optional attribute: the item is kept without categories
                categories = Nulled(f"genre flags must be 0/1, got {bad}")
            title, year = fields[1], None
            match = _TITLE_YEAR.match(title)
            if match:
                title, year = match["title"], int(match["year"])
            elif fields[2][-4:].isdigit():
                year = int(fields[2][-4:])
            return {"title": title or None, "year": year, "categories": categories,
                    "text_fields": json_object({"release_date": fields[2], "imdb_url": fields[4]})}

        items = build_frame(raw, "items", [FieldSpec("item_id", 0, as_text)], item_extra)
    if (folder / "u.user").exists():
        cols = ["user_id", "age", "gender", "occupation", "zip_code"]
        raw = read_delimited(folder / "u.user", delimiter="|", encoding=enc, has_header=False, header=cols,
                             max_field_chars=limit)
        users = build_frame(raw, "users", [FieldSpec("user_id", 0, as_text)],
                            lambda f: {"attributes": json_object(dict(zip(cols[1:], f[1:])))})
    return (inter, items, users), notes


def _grouplens_genres(folder: Path, encoding: str) -> list[str]:
    path = folder / "u.genre"
    if not path.exists():
        return list(_GROUPLENS_GENRES)
    try:
        pairs = [ln.split("|") for ln in path.read_text(encoding=encoding).splitlines() if ln.strip()]
        return [name for name, _ in sorted(pairs, key=lambda p: int(p[1]))]
    except (ValueError, IndexError):  # UnicodeDecodeError is a ValueError
        raise IngestError(f"{path}: expected {encoding} lines 'genre|index'") from None


# ---------------------------------------------------------------- generic CSV / Parquet
def _read_parquet(path: Path, delimiter: str, limit: int) -> RawTable:
    """Parquet → RawTable of strings; row i (1-based) is record line i (Parquet has no header line)."""
    if not path.is_file():
        raise IngestError(f"{path}: file not found")
    try:
        df = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several types for corrupt files
        raise IngestError(f"{path}: not a readable Parquet file ({' '.join(str(exc).split())})") from None
    if df.empty:
        raise IngestError(f"{path}: has no rows")
    header = [str(c) for c in df.columns]
    duplicates = sorted({c for c in header if header.count(c) > 1})
    if duplicates:
        raise IngestError(f"{path}: duplicate column name(s) {duplicates}; every column needs its own name")
    table = RawTable(path=path, header=header, delimiter=delimiter)
    for i, values in enumerate(df.astype("string").fillna("").itertuples(index=False), 1):
        fields = list(values)
        error = too_long(fields, limit)
        table.records.append(RawRecord(line=i, fields=None if error else fields, error=error,
                                       raw=delimiter.join(fields)))
    return table


def _read_table_file(path: Path, delimiter: str, limit: int) -> RawTable:
    """CSV (quoted fields allowed, each closed on its line; UTF-8) or Parquet → RawTable of strings."""
    if path.suffix.lower() in {".parquet", ".pq"}:
        return _read_parquet(path, delimiter, limit)
    return read_delimited(path, delimiter=delimiter, encoding="utf-8", has_header=True, quoting=True,
                          max_field_chars=limit)


def _column_index(raw: RawTable, mapped: str, canonical: str) -> int:
    if mapped not in raw.header:
        raise IngestError(f"{raw.path}: column '{mapped}' (mapped to '{canonical}' in params.yaml dataset.generic) "
                          f"not found in the header (line 1); file has columns {raw.header}{_delimiter_hint(raw)}")
    return raw.header.index(mapped)


def _read_generic(ds: DatasetParams, folder: Path, limit: int) -> tuple[Frames, list[str]]:
    g, notes = ds.generic, []
    inter = _generic_interactions(g.interactions, folder, notes, limit)
    items = _generic_items(g.items, folder, limit) if g.items.path else None
    users = _generic_users(g.users, folder, limit) if g.users.path else None
    return (inter, items, users), notes


def _generic_interactions(cfg: GenericInteractions, folder: Path, notes: list[str], limit: int) -> ParsedTable:
    raw = _read_table_file(folder / str(cfg.path), cfg.delimiter, limit)
    converters = {"user_id": as_text, "item_id": as_text, "timestamp": timestamp_converter(cfg.timestamp_format),
                  "rating": as_float, "label": as_label, "event": as_text}
    specs = [FieldSpec(col, _column_index(raw, src, col), converters[col])
             for col, src in cfg.columns.items() if src]
    used = {s.index for s in specs}
    ignored = [h for i, h in enumerate(raw.header) if i not in used]
    if ignored:
        notes.append(f"{raw.path.name}: columns {ignored} are not mapped in params.yaml and are not ingested")
    return build_frame(raw, "interactions", specs)


def _generic_items(cfg: GenericItems, folder: Path, limit: int) -> ParsedTable:
    raw = _read_table_file(folder / str(cfg.path), cfg.delimiter, limit)
    idx = {col: _column_index(raw, src, col) for col, src in cfg.columns.items() if src}
    text_idx = {c: _column_index(raw, c, "text_columns") for c in cfg.text_columns}
    specs = [FieldSpec("item_id", idx["item_id"], as_text)]
    if "title" in idx:
        specs.append(FieldSpec("title", idx["title"], as_text))
    if "year" in idx:
        specs.append(FieldSpec("year", idx["year"], as_year, optional=True))
    row_of = {rec.line: n for n, rec in enumerate(raw.records)}

    def extra(fields: list[str]) -> dict[str, object]:
        cats = fields[idx["categories"]] if "categories" in idx else ""
        return {"categories": [c.strip() for c in cats.split(cfg.category_sep) if c.strip()],
                "text_fields": json_object({c: fields[i] for c, i in text_idx.items()})}

    parsed = build_frame(raw, "items", specs, extra)
    if cfg.vector_file:
        vec_path = folder / cfg.vector_file
        if not vec_path.is_file():
            raise IngestError(f"{vec_path}: item vector file not found (dataset.generic.items.vector_file)")
        n_vec = np.load(vec_path, mmap_mode="r").shape[0]
        if n_vec != len(raw.records):
            raise IngestError(f"{vec_path}: has {n_vec} vectors but {raw.path.name} has {len(raw.records)} "
                              "item rows; row i of the vector file must belong to the i-th item row")
        parsed.frame["vector_row"] = pd.array([row_of[line] for line in parsed.frame["source_row"]], dtype="Int64")
    return parsed


def _generic_users(cfg: GenericUsers, folder: Path, limit: int) -> ParsedTable:
    raw = _read_table_file(folder / str(cfg.path), cfg.delimiter, limit)
    uid = _column_index(raw, cfg.user_id, "user_id")
    return build_frame(raw, "users", [FieldSpec("user_id", uid, as_text)],
                       lambda f: {"attributes": json_object(
                           {raw.header[i]: f[i] for i in range(len(f)) if i != uid})})
