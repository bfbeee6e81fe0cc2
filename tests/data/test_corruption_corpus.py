"""Issue 26: a sweep of corrupted inputs (`tests/fixtures/corrupt_corpus.py`) through the real ingest and
validate component functions, and a handful through the `unirec` CLI in a subprocess.

Every case is either accepted with exact counts (``rows_in == kept + quarantined`` per table, each
quarantined row with its file, line, rule and reason) or refused with one line naming the file, the
line where there is one, and the rule; never a traceback, never a row lost.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
import yaml

from components.config import Params
from components.ingest import IngestError, ingest
from components.tables import TABLES, table_path
from components.validate import ValidationFailed, validate
from tests.conftest import REPO
from tests.fixtures.corrupt_corpus import Accepted, Case, Refused, corpus

CASES = corpus()
CLI_CASES = [c for c in CASES if c.cli]
UNIREC = Path(sys.executable).with_name("unirec")


def _write_files(case: Case, folder: Path) -> None:
    folder.mkdir(parents=True)
    for name, data in case.files.items():
        (folder / name).write_bytes(data)


def _canonical_value(params: Params, table: str, line: int, column: str) -> object:
    frame = pd.read_parquet(table_path(params.resolve(params.paths.canonical_dir), table))
    row = frame.loc[frame["source_row"] == line]
    assert len(row) == 1, f"{table} line {line} is not kept exactly once"
    return row[column].iloc[0]


def _check_accepted(params: Params, expect: Accepted) -> None:
    ingested = ingest(params)
    report = validate(params)
    saved = json.loads((params.resolve(params.paths.interim_dir) / "ingest_report.json").read_text())
    quarantine = params.resolve(params.paths.quarantine_dir)
    for t in TABLES:
        r = report.tables[t]
        assert r.rows_in == expect.rows_in[t] == ingested.tables[t].rows_read, t
        assert r.rows_in == r.kept + r.quarantined, t
        rejected = pd.read_parquet(table_path(quarantine, t))
        got = {int(row.source_row): row for row in rejected.itertuples()}
        want = expect.rejected.get(t, {})
        assert sorted(got) == sorted(want), t
        for line, w in want.items():
            row = got[line]
            assert (row.source_file, row.rule) == (w.source, w.rule), (t, line, row.reason)
            assert w.reason in row.reason, (t, line, row.reason)
        nulled = {c: v["rows"] for c, v in saved["tables"][t]["nulled_attributes"].items()}
        assert nulled == expect.nulled.get(t, {}), t
    assert ingested.tables["interactions"].blank_lines == expect.blank_lines
    for table, line, column, value in expect.values:
        got_value = _canonical_value(params, table, line, column)
        if value is None:
            assert pd.isna(got_value), (table, line, column, got_value)
        elif isinstance(value, list):
            assert list(got_value) == value
        else:
            assert got_value == value


def _check_refusal_message(message: str, expect: Refused, folder: Path) -> None:
    first = message.splitlines()[0]
    assert str(folder / expect.file) in first and expect.rule in first, message[:500]
    if expect.line is not None:
        assert f"line {expect.line}" in first, first
    assert "Traceback" not in message
    if expect.step == "ingest":
        assert "\n" not in message.strip(), message


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_corrupted_input(case: Case, make_params: Callable[..., Params], tmp_path: Path) -> None:
    _write_files(case, tmp_path / "in")
    params = make_params(case.overrides, dataset_dir=None)
    if isinstance(case.expect, Accepted):
        _check_accepted(params, case.expect)
        return
    if case.expect.step == "ingest":
        with pytest.raises(IngestError) as info:
            ingest(params)
    else:
        ingest(params)
        with pytest.raises(ValidationFailed) as info:
            validate(params)
    _check_refusal_message(str(info.value), case.expect, tmp_path / "in")


def _cli(step: str, folder: Path, overrides: dict[str, object]) -> subprocess.CompletedProcess[str]:
    sets = [arg for key, value in overrides.items()
            for arg in ("--set", f"{key}={yaml.safe_dump(value, default_flow_style=True).strip()}")]
    sets = [s.removesuffix("\n...") for s in sets]
    return subprocess.run([str(UNIREC), step, "--params", str(folder / "params.yaml"), *sets],
                          cwd=folder, capture_output=True, text=True, timeout=300, check=False)


@pytest.mark.parametrize("case", CLI_CASES, ids=[c.name for c in CLI_CASES])
def test_corrupted_input_through_cli(case: Case, tmp_path: Path) -> None:
    _write_files(case, tmp_path / "in")
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    expect = case.expect
    if isinstance(expect, Refused) and expect.step == "ingest":
        done = _cli("ingest", tmp_path, case.overrides)
        assert done.returncode == 1, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("unirec ingest failed: "), done.stderr
        _check_refusal_message(lines[0], expect, tmp_path / "in")
        return
    ingested = _cli("ingest", tmp_path, case.overrides)
    assert ingested.returncode == 0 and "Traceback" not in ingested.stderr, ingested.stderr
    if isinstance(expect, Accepted):  # validate's counts are checked by test_corrupted_input (GX is slow to import)
        for table, rows_in in expect.rows_in.items():
            n_parse = sum(r.rule == "parse" for r in expect.rejected.get(table, {}).values())
            assert f"{table:<12} {rows_in:>8} rows read from " in ingested.stdout, ingested.stdout
            assert f", {n_parse} unparsable" in ingested.stdout.split(f"{table:<12}")[1].splitlines()[0]
        return
    validated = _cli("validate", tmp_path, case.overrides)
    assert validated.returncode == 1, validated.stdout
    assert validated.stderr.startswith("unirec validate failed: validation failed: ")
    _check_refusal_message(validated.stderr, expect, tmp_path / "in")
