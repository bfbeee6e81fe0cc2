"""Issue 26: ingest never loses a row silently (each test reproduced a failure of the old reader first).

Every test builds its files in code (`tests/fixtures/clean_data.py`), breaks one thing and checks the
exact counts: ``rows_in == kept + quarantined`` per table, the rejected row's line, rule and reason.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from components.config import Params
from components.ingest import ingest
from components.tables import table_path
from components.validate import ValidationFailed, ValidationReport, validate
from tests.fixtures.clean_data import (
    INTER_HEADER,
    ITEM_HEADER,
    RECBOLE_ITEM_HEADER,
    delimited,
    generic_files,
    generic_overrides,
    interaction_rows,
    item_rows,
    recbole_files,
    recbole_overrides,
)
from tests.fixtures.steps import ingest_and_validate


def _params(make_params: Callable[..., Params], tmp_path: Path, files: dict[str, bytes],
            overrides: dict[str, object]) -> Params:
    folder = tmp_path / "in"
    folder.mkdir(exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return make_params(overrides, dataset_dir=None)


def _run(params: Params) -> tuple[ValidationReport, dict[str, pd.DataFrame], dict[str, object]]:
    report, quarantine = ingest_and_validate(params)
    ingest_report = json.loads((params.resolve(params.paths.interim_dir) / "ingest_report.json").read_text())
    return report, quarantine, ingest_report


def _rejected(frame: pd.DataFrame) -> dict[int, tuple[str, str, str]]:
    return {int(r.source_row): (r.source_file, r.rule, r.reason) for r in frame.itertuples()}


@pytest.mark.parametrize("pad", ["", "x" * 60], ids=["75KB", "over-128KB"])
def test_one_unbalanced_quote_quarantines_one_row(make_params: Callable[..., Params], tmp_path: Path,
                                                  pad: str) -> None:
    rows = interaction_rows(n_users=300, pad=pad)
    rows[100][1] = '"' + rows[100][1]  # line 102: a quoted field that never closes
    files = {"events.csv": delimited(INTER_HEADER, rows)}
    assert (len(files["events.csv"]) > 128 * 1024) == bool(pad)
    report, q, _ = _run(_params(make_params, tmp_path, files, generic_overrides(items=None)))
    t = report.tables["interactions"]
    assert (t.rows_in, t.kept, t.quarantined) == (3000, 2999, 1)
    source, rule, reason = _rejected(q["interactions"])[102]
    assert (source, rule) == ("events.csv", "parse") and "unbalanced quote" in reason
    assert q["interactions"]["raw"].tolist() == [",".join(rows[100])]


@pytest.mark.parametrize("value", ["99999999999999999999", "1e300", "-1e300"])
def test_overflowing_timestamp_quarantines_its_row(make_params: Callable[..., Params], tmp_path: Path,
                                                   value: str) -> None:
    rows = interaction_rows()
    rows[10][2] = value  # line 12
    report, q, ingest_report = _run(_params(make_params, tmp_path, generic_files(rows), generic_overrides()))
    assert _rejected(q["interactions"]) == {
        12: ("events.csv", "parse", f"timestamp: {value!r} is outside the 64-bit integer range")}
    assert (report.tables["interactions"].kept, report.tables["items"].quarantined) == (len(rows) - 1, 0)
    assert ingest_report["tables"]["interactions"]["parse_errors"] == 1


@pytest.mark.parametrize("value,why", [
    ("99999999999999999999", "is not a calendar year (1-9999)"),
    ("1e300", "is not a calendar year (1-9999)"),
    ("abc", "is not a number"),
    ("1995.5", "is not an integer"),
])
@pytest.mark.parametrize("fmt", ["generic", "recbole"])
def test_bad_year_nulls_the_year_not_the_item(make_params: Callable[..., Params], tmp_path: Path,
                                              fmt: str, value: str, why: str) -> None:
    items = item_rows()
    items[4][2] = value  # item 5, line 6
    if fmt == "generic":
        files, overrides = generic_files(), generic_overrides()
        files["items.csv"] = delimited(ITEM_HEADER, items)
    else:
        files, overrides = recbole_files(), recbole_overrides()
        files["corrupt.item"] = delimited(RECBOLE_ITEM_HEADER, [[i, t, y, g.replace("|", " ")]
                                                                for i, t, y, g in items], "\t")
    params = _params(make_params, tmp_path, files, overrides)
    report, q, ingest_report = _run(params)
    assert {t: r.quarantined for t, r in report.tables.items()} == {"interactions": 0, "items": 0, "users": 0}
    canonical = pd.read_parquet(table_path(params.resolve(params.paths.canonical_dir), "items")).set_index("item_id")
    assert pd.isna(canonical.loc["5", "year"]) and canonical.loc["5", "title"] == "Film 5"
    assert canonical.loc["6", "year"] == 1956
    nulled = ingest_report["tables"]["items"]["nulled_attributes"]
    assert nulled == {"year": {"rows": 1, "examples": [f"line 6: {value!r} {why}"]}}


@pytest.mark.parametrize("fmt", ["generic", "recbole"])
def test_every_row_unparsable_fails_validate_with_one_line(make_params: Callable[..., Params], tmp_path: Path,
                                                           fmt: str) -> None:
    if fmt == "generic":
        name, files, overrides = "events.csv", generic_files(with_items=False), generic_overrides(items=None)
        files[name] = delimited(INTER_HEADER, [["1", "2", "soon", "4", "view"], ["1", "3", "later", "4", "view"]])
    else:
        name, files, overrides = "corrupt.inter", recbole_files(), recbole_overrides()
        files[name] = b"user_id:token\titem_id:token\ttimestamp:float\n1\t2\tsoon\n1\t3\n"
    params = _params(make_params, tmp_path, files, overrides)
    report = ingest(params)
    assert (report.tables["interactions"].rows_read, report.tables["interactions"].parse_errors) == (2, 2)
    with pytest.raises(ValidationFailed) as info:
        validate(params)
    first = str(info.value).splitlines()[0]
    assert str(tmp_path / "in" / name) in first and "2 of 2 rows" in first
    assert "line 2" in first and "rule parse" in first and "timestamp: 'soon' is not a number" in first


@pytest.mark.parametrize("fmt", ["generic", "recbole"])
def test_utf8_byte_order_mark_is_stripped(make_params: Callable[..., Params], tmp_path: Path, fmt: str) -> None:
    files, overrides = (generic_files(), generic_overrides()) if fmt == "generic" else (
        recbole_files(), recbole_overrides())
    for name in files:
        files[name] = b"\xef\xbb\xbf" + files[name]
    report, q, ingest_report = _run(_params(make_params, tmp_path, files, overrides))
    assert all(t.quarantined == 0 for t in report.tables.values())
    assert report.tables["interactions"].kept == 200
    assert any("byte-order mark" in n for n in ingest_report["notes"])
