"""Bytes → text → physical lines → fields, each step bounded so that one bad byte or quote costs one row.

* `decode`: a byte-order mark names the encoding (UTF-8, UTF-16 LE/BE) and is removed; otherwise the
  declared encoding is used, undecodable bytes kept as surrogate escapes (so each row can say which byte).
* `split_lines`: ``\\r\\n``, ``\\n`` and a lone ``\\r`` all end a line (as Python's csv module sees them), so
  mixed line endings give the same rows; the final line needs no terminator.
* `split_fields`: a delimiter split; with quoting, RFC 4180 quoted fields (``"a,b"``; a doubled quote
  inside stands for one quote) that must close ON THEIR LINE. An unclosed quote raises `FieldError` for that line only, instead of
  swallowing the rest of the file into one field as a multi-line CSV reader does.
"""

from __future__ import annotations

import codecs
import re

_BOMS: tuple[tuple[bytes, str], ...] = (
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_BAD_BYTE = re.compile("[\udc80-\udcff]")
QUOTE = '"'


class FieldError(ValueError):
    """A line whose fields cannot be delimited (quoting); the message says where and why."""


def decode(data: bytes, encoding: str) -> tuple[str, str, str | None]:
    """(text, encoding used, note): a byte-order mark overrides `encoding` and is dropped."""
    for bom, name in _BOMS:
        if data.startswith(bom):
            note = "UTF-8 byte-order mark removed" if name == "utf-8" else (
                f"decoded as {name.upper()} (byte-order mark), not the declared {encoding}")
            return data[len(bom):].decode(name, errors="surrogateescape"), name, note
    return data.decode(encoding, errors="surrogateescape"), encoding, None


def split_lines(text: str) -> list[str]:
    """Physical lines without their terminators; a terminator at the very end opens no extra line."""
    lines = _LINE_BREAK.split(text)
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def undecodable(line: str, encoding: str) -> str | None:
    """Why `line` holds bytes invalid in `encoding` (first such byte), or None."""
    match = _BAD_BYTE.search(line)
    if match is None:
        return None
    byte = ord(match.group()) - 0xDC00
    return f"invalid {encoding} byte 0x{byte:02x} at character {match.start() + 1}"


def printable_raw(line: str) -> str:
    """The line as storable text: undecodable bytes shown as ``\\xNN`` escapes."""
    return line.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def split_fields(line: str, delimiter: str, quoting: bool) -> list[str]:
    """Fields of one line; raises `FieldError` for a quote that does not close on the line."""
    if not quoting or QUOTE not in line:
        return line.split(delimiter)
    fields: list[str] = []
    start, end = 0, len(line)
    while True:
        if not line.startswith(QUOTE, start):  # an unquoted field: a quote inside it is a plain character
            stop = line.find(delimiter, start)
            if stop < 0:
                fields.append(line[start:])
                return fields
            fields.append(line[start:stop])
            start = stop + len(delimiter)
            continue
        value, after = _quoted_field(line, start)
        fields.append(value)
        if after == end:
            return fields
        if not line.startswith(delimiter, after):
            raise FieldError(f"text after the closing quote at character {after} (a quote inside a quoted "
                             "field must be doubled)")
        start = after + len(delimiter)


def _quoted_field(line: str, start: int) -> tuple[str, int]:
    """(value, index after the closing quote) of the quoted field opening at `start`."""
    parts: list[str] = []
    pos = start + 1
    while True:
        close = line.find(QUOTE, pos)
        if close < 0:
            raise FieldError(f"unbalanced quote: the quoted field opened at character {start + 1} "
                             "is not closed on its line")
        parts.append(line[pos:close])
        if line.startswith(QUOTE, close + 1):  # "" stands for one quote
            parts.append(QUOTE)
            pos = close + 2
            continue
        return "".join(parts), close + 1
