"""Corrupt a known fraction of the rows of an interactions file, to demonstrate the quarantine.

Usage::

    python scripts/corrupt_u_data.py <in u.data | *.inter> <out> --fraction 0.01 --seed N [--kinds a,b,...]

Works on GroupLens ``u.data`` (tab-separated user, item, rating, timestamp; no header) and RecBole
``.inter`` files (tab-separated, typed header ``user_id:token ...`` on line 1). ``round(fraction *
data rows)`` rows (at least 1) are chosen with a seeded RNG and corrupted in rotating ways (the
default kinds, in this order):

* ``bad_rating_text``      rating → ``abc``                       (rule parse)
* ``rating_out_of_range``  rating → ``7``                         (rule rating_range)
* ``negative_timestamp``   timestamp → ``-<timestamp>``           (rule timestamp_range)
* ``future_timestamp``     timestamp → 4102444800 (2100-01-01)    (rule timestamp_range)
* ``non_utf8``             an ``0xff`` byte appended to the rating (rule parse)
* ``missing_field``        last field dropped                     (rule parse)
* ``dangling_item``        item id → ``no-such-item-<line>``      (rule dangling_item)

Extra kinds (opt in with ``--kinds``): ``dangling_user`` (user id → ``no-such-user-<line>``, rule
dangling_user) and ``duplicate`` (the line becomes a copy of the nearest earlier untouched data
line, rule duplicate_interaction).

Writes the corrupted file to ``<out>`` and the expected rejections to ``<out>.expected.json``:
a list of ``{"line": n, "kind": k, "rule": r}`` (1-based file lines; the header is line 1).
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

KIND_RULE: dict[str, str] = {
    "bad_rating_text": "parse",
    "rating_out_of_range": "rating_range",
    "negative_timestamp": "timestamp_range",
    "future_timestamp": "timestamp_range",
    "non_utf8": "parse",
    "missing_field": "parse",
    "dangling_item": "dangling_item",
    "dangling_user": "dangling_user",
    "duplicate": "duplicate_interaction",
}
DEFAULT_KINDS: tuple[str, ...] = tuple(KIND_RULE)[:7]
FUTURE_TS = b"4102444800"


def _columns(lines: list[bytes]) -> tuple[bool, dict[str, int]]:
    """(has_header, column name → field index)."""
    first = lines[0].split(b"\t")
    if any(b":" in f for f in first) or not first[0].strip().lstrip(b"-").isdigit():
        names = [f.split(b":", 1)[0].strip().decode() for f in first]
        needed = ("user_id", "item_id", "rating", "timestamp")
        missing = [n for n in needed if n not in names]
        if missing:
            raise SystemExit(f"header lacks columns {missing}: {names}")
        return True, {n: names.index(n) for n in needed}
    return False, {"user_id": 0, "item_id": 1, "rating": 2, "timestamp": 3}


def corrupt_lines(lines: list[bytes], fraction: float, seed: int,
                  kinds: tuple[str, ...] = DEFAULT_KINDS) -> tuple[list[bytes], list[dict[str, object]]]:
    """Corrupt `fraction` of the data lines (lines without their newline); returns (lines, expected)."""
    has_header, col = _columns(lines)
    first_data = 1 if has_header else 0
    data_positions = [i for i in range(first_data, len(lines)) if lines[i].strip()]
    n = max(1, round(fraction * len(data_positions)))
    if n > len(data_positions):
        raise SystemExit(f"cannot corrupt {n} of {len(data_positions)} rows")
    rng = random.Random(seed)
    chosen = sorted(rng.sample(data_positions, n))
    chosen_set = set(chosen)
    out = list(lines)
    expected: list[dict[str, object]] = []
    for k, pos in enumerate(chosen):
        kind = kinds[k % len(kinds)]
        fields = lines[pos].split(b"\t")
        line_no = pos + 1
        if kind == "bad_rating_text":
            fields[col["rating"]] = b"abc"
        elif kind == "rating_out_of_range":
            fields[col["rating"]] = b"7"
        elif kind == "negative_timestamp":
            fields[col["timestamp"]] = b"-" + fields[col["timestamp"]].strip()
        elif kind == "future_timestamp":
            fields[col["timestamp"]] = FUTURE_TS
        elif kind == "non_utf8":
            fields[col["rating"]] = fields[col["rating"]] + b"\xff"
        elif kind == "missing_field":
            fields = fields[:-1]
        elif kind == "dangling_item":
            fields[col["item_id"]] = f"no-such-item-{line_no}".encode()
        elif kind == "dangling_user":
            fields[col["user_id"]] = f"no-such-user-{line_no}".encode()
        elif kind == "duplicate":
            source = next((p for p in range(pos - 1, first_data - 1, -1)
                           if p not in chosen_set and lines[p].strip()), None)
            if source is None:
                raise SystemExit(f"line {line_no}: no earlier untouched data line to duplicate")
            fields = lines[source].split(b"\t")
        else:
            raise SystemExit(f"unknown kind {kind!r}; known: {sorted(KIND_RULE)}")
        out[pos] = b"\t".join(fields)
        expected.append({"line": line_no, "kind": kind, "rule": KIND_RULE[kind]})
    return out, expected


def corrupt_file(src: Path, dst: Path, fraction: float, seed: int,
                 kinds: tuple[str, ...] = DEFAULT_KINDS) -> list[dict[str, object]]:
    """Corrupt `src` into `dst`, write ``<dst>.expected.json``; returns the expected list."""
    data = src.read_bytes()
    trailing = data.endswith(b"\n")
    lines = data.split(b"\n")
    if trailing:
        lines = lines[:-1]
    lines = [ln[:-1] if ln.endswith(b"\r") else ln for ln in lines]
    out, expected = corrupt_lines(lines, fraction, seed, kinds)
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(b"\n".join(out) + (b"\n" if trailing else b""))
    Path(f"{dst}.expected.json").write_text(json.dumps(expected, indent=1) + "\n", encoding="utf-8")
    return expected


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("src", type=Path, help="u.data or RecBole .inter file")
    parser.add_argument("dst", type=Path, help="corrupted output file")
    parser.add_argument("--fraction", type=float, default=0.01, help="fraction of data rows to corrupt")
    parser.add_argument("--seed", type=int, default=0, help="RNG seed choosing the rows")
    parser.add_argument("--kinds", default=",".join(DEFAULT_KINDS),
                        help=f"comma-separated corruption kinds, rotated (known: {','.join(KIND_RULE)})")
    args = parser.parse_args(argv)
    kinds = tuple(k.strip() for k in args.kinds.split(",") if k.strip())
    expected = corrupt_file(args.src, args.dst, args.fraction, args.seed, kinds)
    by_kind: dict[str, int] = {}
    for e in expected:
        by_kind[str(e["kind"])] = by_kind.get(str(e["kind"]), 0) + 1
    print(f"{args.dst}: corrupted {len(expected)} rows {by_kind}; expected list in {args.dst}.expected.json")


if __name__ == "__main__":
    main()
