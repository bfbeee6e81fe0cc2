"""Crafted bad inputs: each gives a clear IngestError, or a quarantine with its reason and EXACT counts."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from components.config import Params
from components.ingest import IngestError, ingest
from components.tables import table_path
from components.validate import ValidationFailed, ValidationReport, validate
from tests.fixtures import corrupt_u_data
from tests.fixtures.steps import ingest_and_validate

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "tests" / "fixtures" / "corrupt_u_data.py"
N_INTER, N_ITEMS, N_USERS = 862, 60, 40


def _file(params: Params, suffix: str) -> Path:
    return params.resolve(params.dataset.path) / f"{params.dataset.recbole.prefix}.{suffix}"


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().split(b"\n")[:-1]  # fixture files end with a newline


def _write(path: Path, lines: list[bytes], trailing_newline: bool = True) -> None:
    path.write_bytes(b"\n".join(lines) + (b"\n" if trailing_newline else b""))


def _set_field(path: Path, line: int, field: int, value: bytes) -> None:
    lines = _lines(path)
    fields = lines[line - 1].split(b"\t")
    fields[field] = value
    lines[line - 1] = b"\t".join(fields)
    _write(path, lines)


def _run(params: Params) -> tuple[ValidationReport, dict[str, pd.DataFrame]]:
    return ingest_and_validate(params)


def _reasons(frame: pd.DataFrame) -> dict[int, tuple[str, str]]:
    return {int(r.source_row): (r.rule, r.reason) for r in frame.itertuples()}


# ---------------------------------------------------------------- ingest errors
def test_missing_required_column(make_params: Callable[..., Params]) -> None:
    params = make_params()
    path = _file(params, "inter")
    lines = _lines(path)
    lines[0] = lines[0].replace(b"timestamp:float", b"time:float")
    _write(path, lines)
    with pytest.raises(IngestError, match=r"tiny\.inter.*missing required column.*'timestamp'"):
        ingest(params)


def test_missing_mapped_generic_column(make_params: Callable[..., Params], tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "events.csv").write_text("u,i,t\n1,2,881250949\n", encoding="utf-8")
    params = make_params({"dataset.format": "generic", "dataset.path": "in",
                          "dataset.generic.interactions.path": "events.csv",
                          "dataset.generic.interactions.columns": {"user_id": "u", "item_id": "i",
                                                                   "timestamp": "when"}}, dataset_dir=None)
    with pytest.raises(IngestError, match=r"events\.csv: column 'when' \(mapped to 'timestamp'"):
        ingest(params)


@pytest.mark.parametrize("suffix,content,message", [
    ("inter", b"", r"tiny\.inter: file is empty"),
    ("inter", b"\n\n", r"tiny\.inter: file is empty"),
    ("item", b"", r"tiny\.item: file is empty"),
    ("inter", b"user_id:token\titem_id:token\ttimestamp:float\n", r"tiny\.inter: has a header but no data rows"),
])
def test_empty_files(make_params: Callable[..., Params], suffix: str, content: bytes, message: str) -> None:
    params = make_params()
    _file(params, suffix).write_bytes(content)
    with pytest.raises(IngestError, match=message):
        ingest(params)


# ---------------------------------------------------------------- quarantined rows
def test_wrong_types_null_keys_and_non_utf8(make_params: Callable[..., Params]) -> None:
    params = make_params()
    path = _file(params, "inter")
    _set_field(path, 10, 2, b"abc")            # rating not a number
    _set_field(path, 11, 0, b"")               # null user id
    _set_field(path, 12, 1, b"4\xe9")          # latin-1 byte in a UTF-8 file
    report, q = _run(params)
    reasons = _reasons(q["interactions"])
    assert reasons[10] == ("parse", "rating: 'abc' is not a number")
    assert reasons[11] == ("not_null", "user_id is null")
    assert reasons[12][0] == "parse" and "invalid utf-8 byte 0xe9" in reasons[12][1]
    assert "\\xe9" in q["interactions"].set_index("source_row").loc[12, "raw"]
    assert (report.tables["interactions"].kept, report.tables["interactions"].quarantined) == (N_INTER - 3, 3)
    assert report.tables["interactions"].by_rule == {"not_null": 1, "parse": 2}


def test_timestamps_out_of_range(make_params: Callable[..., Params]) -> None:
    params = make_params({"validate.timestamp_max": "now"})
    path = _file(params, "inter")
    for line, value in ((20, b"-5"), (21, b"100"), (22, b"4102444800")):
        _set_field(path, line, 3, value)
    report, q = _run(params)
    reasons = _reasons(q["interactions"])
    assert set(reasons) == {20, 21, 22}
    assert reasons[20] == ("timestamp_range", "timestamp -5 is negative")
    assert reasons[21] == ("timestamp_range", "timestamp 100 (1970-01-01T00:01:40Z) is before "
                                              "validate.timestamp_min 1990-01-01T00:00:00Z")
    assert reasons[22][1].startswith("timestamp 4102444800 (2100-01-01T00:00:00Z) is in the future")
    assert report.tables["interactions"].by_rule == {"timestamp_range": 3}


def test_truncated_last_line(make_params: Callable[..., Params]) -> None:
    params = make_params()
    path = _file(params, "inter")
    lines = _lines(path)
    lines[-1] = b"\t".join(lines[-1].split(b"\t")[:2])
    _write(path, lines, trailing_newline=False)
    report, q = _run(params)
    assert _reasons(q["interactions"]) == {
        N_INTER + 1: ("parse", "expected 4 fields, got 2 (truncated or malformed line)")}
    assert q["interactions"]["raw"].iloc[0] == lines[-1].decode()


def test_duplicate_entity_keys(make_params: Callable[..., Params]) -> None:
    params = make_params()
    item_path, user_path = _file(params, "item"), _file(params, "user")
    items, users = _lines(item_path), _lines(user_path)
    item5 = next(n for n, ln in enumerate(items, 1) if ln.split(b"\t")[0] == b"5")
    user3 = next(n for n, ln in enumerate(users, 1) if ln.split(b"\t")[0] == b"3")
    _write(item_path, [*items, b"5\tImpostor\t2001\tDrama"])
    _write(user_path, [*users, b"3\t30\tM\twriter\t12345"])
    report, q = _run(params)
    assert _reasons(q["items"]) == {
        N_ITEMS + 2: ("duplicate_key", f"duplicate item_id '5' (first kept at line {item5})")}
    assert _reasons(q["users"]) == {
        N_USERS + 2: ("duplicate_key", f"duplicate user_id '3' (first kept at line {user3})")}
    assert report.tables["interactions"].quarantined == 0
    canonical = pd.read_parquet(table_path(params.resolve(params.paths.canonical_dir), "items"))
    assert len(canonical) == N_ITEMS and canonical.set_index("item_id").loc["5", "title"] != "Impostor"


def test_dangling_references(make_params: Callable[..., Params]) -> None:
    params = make_params()
    inter = _file(params, "inter")
    _set_field(inter, 30, 1, b"99999")
    _set_field(inter, 31, 0, b"777")
    # item 7's row is unparsable → quarantined → every interaction with item 7 dangles
    item_path = _file(params, "item")
    items = _lines(item_path)
    row7 = next(n for n, ln in enumerate(items) if ln.split(b"\t")[0] == b"7")
    items[row7] += b"\textra"
    _write(item_path, items)
    with_7 = [n for n, ln in enumerate(_lines(inter), 1) if n > 1 and ln.split(b"\t")[1] == b"7"]
    report, q = _run(params)
    reasons = _reasons(q["interactions"])
    assert reasons.pop(30) == ("dangling_item", "item_id '99999' not in items (dangling reference)")
    assert reasons.pop(31) == ("dangling_user", "user_id '777' not in users (dangling reference)")
    assert reasons == {n: ("dangling_item", "item_id '7' not in items (dangling reference)") for n in with_7}
    assert report.tables["items"].by_rule == {"parse": 1}
    assert (report.tables["interactions"].quarantined, report.tables["interactions"].kept) == (
        2 + len(with_7), N_INTER - 2 - len(with_7))


def test_duplicates_several_rules_and_first_kept(make_params: Callable[..., Params]) -> None:
    params = make_params()
    path = _file(params, "inter")
    lines = _lines(path)
    lines[59] = lines[58]                                   # line 60 duplicates line 59
    bad = lines[69].split(b"\t")
    lines[70] = lines[69]                                   # line 71 duplicates line 70 ...
    lines[69] = b"\t".join([bad[0], b"99999", b"9", bad[3]])  # ... whose item and rating then go bad
    _write(path, lines)
    report, q = _run(params)
    reasons = _reasons(q["interactions"])
    u, i, _, ts = (f.decode() for f in lines[58].split(b"\t"))
    assert reasons[60] == ("duplicate_interaction", f"duplicate interaction (user_id '{u}', item_id '{i}', "
                                                    f"timestamp {ts}) (first kept at line 59)")
    rules, reason = reasons[70]
    assert set(rules.split("; ")) == {"rating_range", "dangling_item"}
    assert set(reason.split("; ")) == {"rating 9.0 outside [1.0, 5.0]",
                                       "item_id '99999' not in items (dangling reference)"}
    assert set(reasons) == {60, 70}  # line 71 is kept: its "first occurrence" (line 70) was rejected
    assert report.tables["interactions"].by_rule == {"dangling_item": 1, "duplicate_interaction": 1,
                                                     "rating_range": 1}


def test_one_percent_corruption_quarantines_exactly_those_rows(make_params: Callable[..., Params]) -> None:
    params = make_params()
    mod = corrupt_u_data
    target = _file(params, "inter")
    expected = mod.corrupt_file(target, target, 0.01, seed=7, kinds=tuple(mod.KIND_RULE))
    assert len(expected) == round(0.01 * N_INTER) == 9 and {e["kind"] for e in expected} == set(mod.KIND_RULE)
    report, q = _run(params)
    fragment = {
        "bad_rating_text": "rating: 'abc' is not a number",
        "rating_out_of_range": "rating 7.0 outside [1.0, 5.0]",
        "negative_timestamp": "is negative",
        "future_timestamp": "(2100-01-01T00:00:00Z) is in the future",
        "non_utf8": "invalid utf-8 byte 0xff",
        "missing_field": "expected 4 fields, got 3",
        "dangling_item": "not in items (dangling reference)",
        "dangling_user": "not in users (dangling reference)",
        "duplicate": "duplicate interaction (user_id",
    }
    reasons = _reasons(q["interactions"])
    assert set(reasons) == {e["line"] for e in expected}
    for e in expected:
        rule, reason = reasons[e["line"]]
        assert rule == e["rule"] and fragment[e["kind"]] in reason, (e, rule, reason)
    t = report.tables["interactions"]
    assert (t.rows_in, t.kept, t.quarantined) == (N_INTER, N_INTER - 9, 9)
    assert report.tables["items"].quarantined == report.tables["users"].quarantined == 0


def test_too_many_quarantined_rows_fail_but_outputs_written(make_params: Callable[..., Params]) -> None:
    params = make_params()
    target = _file(params, "inter")
    done = subprocess.run([sys.executable, str(SCRIPT), str(target), str(target), "--fraction", "0.1",
                           "--seed", "1"], capture_output=True, text=True, check=True)
    assert "corrupted 86 rows" in done.stdout
    expected = json.loads(Path(f"{target}.expected.json").read_text(encoding="utf-8"))
    ingest(params)
    with pytest.raises(ValidationFailed) as info:
        validate(params)
    message = str(info.value)
    n_parse = sum(e["rule"] == "parse" for e in expected)
    assert str(target) in message and "86 of 862 rows" in message
    assert f"rule parse: {n_parse} row(s)" in message and "rule dangling_item:" in message
    first = expected[0]
    assert f"line {first['line']}: rating: 'abc' is not a number | raw: " in message
    assert message.count("\n    line ") == params.validate_.example_rows
    quarantine = pd.read_parquet(table_path(params.resolve(params.paths.quarantine_dir), "interactions"))
    assert sorted(quarantine["source_row"]) == sorted(e["line"] for e in expected)
    canonical = pd.read_parquet(table_path(params.resolve(params.paths.canonical_dir), "interactions"))
    assert len(canonical) == N_INTER - 86
    summary = json.loads((params.resolve(params.paths.reports_dir) / "validation" / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["tables"]["interactions"]["quarantined"] == 86
