"""validate on the clean tiny fixture: nothing quarantined, every output present and consistent."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from components.config import Params
from components.ingest import ingest
from components.tables import COLUMNS, TABLES, id_map_path, table_path
from components.validate import ValidationReport, validate
from components.validate.quarantine import QUARANTINE_EXTRA


@pytest.fixture
def validated(tiny_params: Params) -> tuple[Params, ValidationReport]:
    ingest(tiny_params)
    return tiny_params, validate(tiny_params)


def test_clean_fixture_keeps_everything(validated: tuple[Params, ValidationReport]) -> None:
    params, report = validated
    expected = {"interactions": 862, "items": 60, "users": 40}
    for table, n in expected.items():
        t = report.tables[table]
        assert (t.rows_in, t.kept, t.quarantined, t.by_rule) == (n, n, 0, {})
        assert t.source.endswith({"interactions": "tiny.inter", "items": "tiny.item", "users": "tiny.user"}[table])
    assert "862 in" in report.summary() and "27/27 passed" in report.summary()


def test_canonical_tables_and_id_maps(validated: tuple[Params, ValidationReport]) -> None:
    params, _ = validated
    canonical = params.resolve(params.paths.canonical_dir)
    interim = params.resolve(params.paths.interim_dir)
    frames = {t: pd.read_parquet(table_path(canonical, t)) for t in TABLES}
    maps = {e: pd.read_parquet(id_map_path(canonical, e)) for e in ("users", "items")}
    for entity in ("users", "items"):  # copied unchanged
        assert maps[entity].equals(pd.read_parquet(id_map_path(interim, entity)))
        assert maps[entity]["idx"].tolist() == list(range(len(maps[entity])))

    inter = frames["interactions"]
    assert list(inter.columns) == [*COLUMNS["interactions"], "user_idx", "item_idx"]
    assert inter["source_row"].tolist() == list(range(2, 864))  # input order kept
    assert str(inter["user_idx"].dtype) == str(inter["item_idx"].dtype) == "int64"
    for col, entity, key in (("user_idx", "users", "user_id"), ("item_idx", "items", "item_id")):
        lookup = dict(zip(maps[entity]["raw_id"], maps[entity]["idx"]))
        assert inter[col].tolist() == [lookup[v] for v in inter[key]]
    for table in ("items", "users"):
        frame = frames[table]
        assert list(frame.columns) == [*COLUMNS[table], "idx"]
        assert frame["idx"].tolist() == list(range(len(frame)))  # sorted by idx, contiguous
        key = "item_id" if table == "items" else "user_id"
        m = maps[table]
        assert dict(zip(frame[key], frame["idx"])) == dict(zip(m["raw_id"], m["idx"]))
    assert set(inter["item_id"]) <= set(frames["items"]["item_id"])
    assert set(inter["user_id"]) <= set(frames["users"]["user_id"])
    assert "parse_error" not in inter.columns and "raw" not in inter.columns


def test_quarantine_files_always_written(validated: tuple[Params, ValidationReport]) -> None:
    params, _ = validated
    quarantine = params.resolve(params.paths.quarantine_dir)
    for table in TABLES:
        frame = pd.read_parquet(table_path(quarantine, table))
        assert len(frame) == 0
        assert list(frame.columns) == [*COLUMNS[table], "parse_error", "raw", *QUARANTINE_EXTRA]


def test_data_docs_and_summary(validated: tuple[Params, ValidationReport]) -> None:
    params, report = validated
    folder = params.resolve(params.paths.reports_dir) / "validation"
    index = folder / "data_docs" / "index.html"
    assert index.is_file() and "interactions_canonical" in index.read_text(encoding="utf-8")
    assert any((folder / "data_docs" / "validations").rglob("*.html"))
    summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
    assert summary["status"] == "passed"
    assert {t: summary["tables"][t]["kept"] for t in TABLES} == {"interactions": 862, "items": 60, "users": 40}
    exps = summary["expectations"]
    assert exps == report.expectations and len(exps) == 27 and all(e["success"] for e in exps)
    kinds = {(e["table"], e["expectation"], e["kwargs"].get("column")) for e in exps}
    for needed in [("interactions", "expect_table_row_count_to_equal", None),
                   ("interactions", "expect_column_values_to_be_in_set", "label"),
                   ("interactions", "expect_column_values_to_be_in_set", "rating"),
                   ("interactions", "expect_column_values_to_be_between", "timestamp"),
                   ("interactions", "expect_column_values_to_be_in_set", "item_id"),
                   ("interactions", "expect_column_values_to_be_between", "user_idx"),
                   ("items", "expect_column_values_to_be_unique", "item_id"),
                   ("users", "expect_column_values_to_be_unique", "idx")]:
        assert needed in kinds
    rating_set = next(e for e in exps if e["kwargs"].get("column") == "rating"
                      and e["expectation"] == "expect_column_values_to_be_in_set")
    assert rating_set["kwargs"]["value_set"] == [1.0, 2.0, 3.0, 4.0, 5.0]
    row_count = next(e for e in exps if e["table"] == "interactions"
                     and e["expectation"] == "expect_table_row_count_to_equal")
    assert row_count["observed"] == 862


def test_expectations_catch_a_bug_in_clean_tables(validated: tuple[Params, ValidationReport], tmp_path: Path) -> None:
    """If a bad row ever reached the canonical tables, the GX gate fails loudly."""
    from components.validate.expectations import ExpectationsFailed, TableFacts, raise_on_failure, run_expectations

    params, _ = validated
    canonical = params.resolve(params.paths.canonical_dir)
    tables = {t: pd.read_parquet(table_path(canonical, t)) for t in TABLES}
    tables["interactions"].loc[0, "rating"] = 9.0
    tables["items"].loc[1, "idx"] = tables["items"].loc[0, "idx"]
    facts = {"interactions": TableFacts(862, 60), "items": TableFacts(60, 60), "users": TableFacts(40, 40)}
    records = run_expectations(tables, facts, ts_bounds=params.validate_.timestamp_bounds(),
                               rating_bounds=(1.0, 5.0), docs_dir=tmp_path / "docs")
    failed = {(r["table"], r["expectation"], r["kwargs"].get("column")) for r in records if not r["success"]}
    assert failed == {("interactions", "expect_column_values_to_be_between", "rating"),
                      ("items", "expect_column_values_to_be_unique", "idx")}
    with pytest.raises(ExpectationsFailed, match="rating"):
        raise_on_failure(records, tmp_path / "docs")
