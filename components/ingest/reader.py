"""Line-exact reading of delimited text files.

Every data line of the file becomes one `RawRecord`, whether it parsed or not: a record whose bytes
are not valid in the declared encoding, or whose field count differs from the header, carries an
`error` and its original text instead of fields. Nothing is dropped except blank lines, which are
counted. Typed conversion of the fields happens in `formats.py`.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path


class IngestError(ValueError):
    """An input file cannot be ingested at all (missing, empty, wrong header); names the file."""


@dataclass
class RawRecord:
    line: int
    """1-based line number in the file where the record starts (the header, if any, is line 1)."""
    fields: list[str] | None
    error: str | None = None
    raw: str | None = None


@dataclass
class RawTable:
    path: Path
    header: list[str]
    delimiter: str = "\t"
    records: list[RawRecord] = field(default_factory=list)
    blank_lines: int = 0

    @property
    def n_errors(self) -> int:
        return sum(r.error is not None for r in self.records)


def _first_bad_char(text: str) -> int | None:
    for i, ch in enumerate(text):
        if "\udc80" <= ch <= "\udcff":
            return i
    return None


def read_delimited(
    path: Path,
    *,
    delimiter: str,
    encoding: str,
    has_header: bool,
    header: list[str] | None = None,
    quoting: bool = False,
) -> RawTable:
    """Read `path` into records. Either the file has a header line or `header` names its columns.

    `quoting` enables CSV quote handling (generic CSV); atomic and GroupLens files have none.
    Raises `IngestError` for a missing or empty file, or a header that cannot be decoded.
    """
    if not path.is_file():
        raise IngestError(f"{path}: file not found")
    data = path.read_bytes()
    if not data.strip():
        raise IngestError(f"{path}: file is empty ({len(data)} bytes); expected "
                          + ("a header line and data rows" if has_header else "data rows"))
    text = data.decode(encoding, errors="surrogateescape")
    reader = csv.reader(
        io.StringIO(text, newline=""),
        delimiter=delimiter,
        quoting=csv.QUOTE_MINIMAL if quoting else csv.QUOTE_NONE,
        strict=False,
    )
    table = RawTable(path=path, header=list(header or []), delimiter=delimiter)
    prev_end = 0
    for fields in reader:
        start = prev_end + 1
        prev_end = reader.line_num
        if not fields or (len(fields) == 1 and not fields[0].strip()):
            if has_header and not table.header and start == 1:
                raise IngestError(f"{path}: line 1 is blank; expected a header line")
            table.blank_lines += 1
            continue
        if has_header and not table.header:
            joined = delimiter.join(fields)
            bad = _first_bad_char(joined)
            if bad is not None:
                raise IngestError(f"{path}: line 1 (header) has bytes that are not valid {encoding}")
            table.header = [f.strip() for f in fields]
            continue
        joined = delimiter.join(fields)
        bad = _first_bad_char(joined)
        if bad is not None:
            byte = ord(joined[bad]) - 0xDC00
            table.records.append(RawRecord(
                line=start, fields=None,
                error=f"invalid {encoding} byte 0x{byte:02x} at character {bad + 1}",
                raw=joined.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace"),
            ))
            continue
        if len(fields) != len(table.header):
            table.records.append(RawRecord(
                line=start, fields=None,
                error=f"expected {len(table.header)} fields, got {len(fields)} (truncated or malformed line)",
                raw=joined,
            ))
            continue
        table.records.append(RawRecord(line=start, fields=[f.strip() for f in fields]))
    if has_header and not table.header:
        raise IngestError(f"{path}: no header line found")
    if not table.records:
        raise IngestError(f"{path}: has a header but no data rows")
    return table
