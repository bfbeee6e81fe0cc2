"""Line-exact reading of delimited text files.

Every non-blank data line of the file becomes exactly one `RawRecord`, whether it parsed or not, so
``header line + records + blank lines == lines in the file`` always. A record carries an `error`
instead of fields when its line

* has bytes that are not valid in the file's encoding (or NUL bytes),
* has a quote that does not close on the line, or text after a closing quote (quoted files only),
* has a field count different from the header's, repeats the header line (concatenated files), or
* has a field longer than ``ingest.max_field_chars``.

A file that cannot be read at all (missing, empty, unreadable or duplicate header) raises `IngestError`
with one line naming the file, the line and the rule. Typed conversion happens in `convert.py`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from components.ingest.lines import FieldError, decode, printable_raw, split_fields, split_lines, undecodable


class IngestError(ValueError):
    """An input file cannot be ingested at all (missing, empty, wrong header); names the file."""


@dataclass
class RawRecord:
    line: int
    """1-based line number in the file where the record starts (the header, if any, is line 1)."""
    fields: list[str] | None
    error: str | None = None
    raw: str | None = None
    """The line as read (undecodable bytes as ``\\xNN``); quoted in the quarantine if the row is rejected."""


@dataclass
class RawTable:
    path: Path
    header: list[str]
    delimiter: str = "\t"
    records: list[RawRecord] = field(default_factory=list)
    blank_lines: int = 0
    notes: list[str] = field(default_factory=list)
    """What the reader did that the user should know (e.g. a byte-order mark removed)."""

    @property
    def n_errors(self) -> int:
        return sum(r.error is not None for r in self.records)


def too_long(fields: list[str], max_field_chars: int) -> str | None:
    """Why a row is refused for an oversized field (the first one), or None."""
    for number, value in enumerate(fields, 1):
        if len(value) > max_field_chars:
            return (f"field {number} has {len(value)} characters, more than "
                    f"ingest.max_field_chars = {max_field_chars}")
    return None


def _header(path: Path, line: str, encoding: str, delimiter: str, quoting: bool) -> list[str]:
    where = f"{path}: line 1 (header)"
    bad = undecodable(line, encoding)
    if bad is not None:
        raise IngestError(f"{where} has bytes that are not valid {encoding}: {bad}")
    if "\x00" in line:
        raise IngestError(f"{where} contains NUL bytes: not a {encoding} text file (UTF-16 without a "
                          "byte-order mark, or binary)")
    try:
        names = [name.strip() for name in split_fields(line, delimiter, quoting)]
    except FieldError as exc:
        raise IngestError(f"{where}: {exc}") from None
    duplicates = sorted(name for name, n in Counter(names).items() if n > 1)
    if duplicates:
        raise IngestError(f"{where} has duplicate column name(s) {duplicates}; every column needs its own name")
    return names


def _record(number: int, line: str, table: RawTable, encoding: str, quoting: bool,
            max_field_chars: int) -> RawRecord:
    """One data line → a record with stripped fields, or with the error that rejects it."""
    raw = printable_raw(line)
    error = undecodable(line, encoding)
    if error is None and "\x00" in line:
        error = f"NUL byte at character {line.index(chr(0)) + 1} (binary data in a text file)"
    fields: list[str] = []
    if error is None:
        try:
            fields = [f.strip() for f in split_fields(line, table.delimiter, quoting)]
        except FieldError as exc:
            error = str(exc)
    if error is None and len(fields) != len(table.header):
        error = f"expected {len(table.header)} fields, got {len(fields)} (truncated or malformed line)"
    if error is None and fields == table.header:
        error = "repeats the header line (files concatenated?)"
    if error is None:
        error = too_long(fields, max_field_chars)
    if error is not None:
        return RawRecord(line=number, fields=None, error=error, raw=raw)
    return RawRecord(line=number, fields=fields, raw=raw)


def read_delimited(
    path: Path,
    *,
    delimiter: str,
    encoding: str,
    has_header: bool,
    max_field_chars: int,
    header: list[str] | None = None,
    quoting: bool = False,
) -> RawTable:
    """Read `path` into records. Either the file has a header line or `header` names its columns.

    `quoting` enables CSV quote handling (generic CSV); atomic and GroupLens files have none.
    Raises `IngestError` for a missing or empty file, or a header that cannot be read.
    """
    if not path.is_file():
        raise IngestError(f"{path}: file not found")
    data = path.read_bytes()
    text, used, note = decode(data, encoding)
    if not text.strip():
        raise IngestError(f"{path}: file is empty ({len(data)} bytes); expected "
                          + ("a header line and data rows" if has_header else "data rows"))
    table = RawTable(path=path, header=list(header or []), delimiter=delimiter)
    if note:
        table.notes.append(f"{path.name}: {note}")
    for number, line in enumerate(split_lines(text), 1):
        if delimiter not in line and not line.strip():
            if has_header and number == 1:
                raise IngestError(f"{path}: line 1 is blank; expected a header line")
            table.blank_lines += 1
        elif has_header and number == 1:
            table.header = _header(path, line, used, delimiter, quoting)
        else:
            table.records.append(_record(number, line, table, used, quoting, max_field_chars))
    if not table.records:
        raise IngestError(f"{path}: has a header but no data rows" if has_header else f"{path}: has no data rows")
    return table
