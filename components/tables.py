"""Names and column contracts of the tables every step reads and writes.

Canonical tables (one row per entity or event; ids are raw strings as they appear in the input):

* ``interactions``: user_id, item_id, timestamp (int64 unix seconds), rating (float, nullable),
  label (int 0/1, nullable), event (str, nullable), source_file, source_row (1-based line in the
  source file; the header is line 1), plus — after validation — user_idx and item_idx.
* ``items``: item_id, title (nullable), year (nullable int), categories (list[str]),
  text_fields (JSON object of further text columns), vector_row (nullable row in the extra vector
  file), source_file, source_row, plus idx after validation.
* ``users``: user_id, attributes (JSON object), source_file, source_row, plus idx after validation.

The interim (ingest) versions keep every input row and add ``parse_error`` (why a row could not be
parsed, null when it parsed) and ``raw`` (the original line, kept only for rows with a parse error),
so that validation can quarantine them with their reason and the counts add up.
"""

from __future__ import annotations

from pathlib import Path

TABLES: tuple[str, ...] = ("interactions", "items", "users")

INTERACTION_COLUMNS: tuple[str, ...] = (
    "user_id",
    "item_id",
    "timestamp",
    "rating",
    "label",
    "event",
    "source_file",
    "source_row",
)
ITEM_COLUMNS: tuple[str, ...] = (
    "item_id",
    "title",
    "year",
    "categories",
    "text_fields",
    "vector_row",
    "source_file",
    "source_row",
)
USER_COLUMNS: tuple[str, ...] = ("user_id", "attributes", "source_file", "source_row")
COLUMNS: dict[str, tuple[str, ...]] = {
    "interactions": INTERACTION_COLUMNS,
    "items": ITEM_COLUMNS,
    "users": USER_COLUMNS,
}
ERROR_COLUMNS: tuple[str, ...] = ("parse_error", "raw")
KEY_COLUMN: dict[str, str] = {"items": "item_id", "users": "user_id"}

DERIVED_SOURCE = "<derived from interactions>"
"""source_file of entity rows synthesised from interaction ids when no items/users file is given."""


def table_path(folder: Path, table: str) -> Path:
    return folder / f"{table}.parquet"


def id_map_path(folder: Path, entity: str) -> Path:
    """Id map file (columns raw_id: str, idx: int64, contiguous from 0) for entity 'users' or 'items'."""
    return folder / "id_maps" / f"{entity}.parquet"
