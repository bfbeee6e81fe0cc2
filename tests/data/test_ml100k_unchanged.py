"""The real default dataset (ml-100k, RecBole atomic files) gives the same tables as before issue 26.

The digests were taken from the output of the reader before it was rewritten (commit a17564b) on the
fetched ml-100k files; the interim and canonical Parquet files of both versions were byte-identical.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable

import pandas as pd
import pytest

from components.config import Params
from components.fetch import fetch_dataset
from components.ingest import ingest
from components.tables import id_map_path, table_path
from components.validate import validate

DIGESTS = {
    "interactions": "412e42b61a3c6b3b",
    "items": "28ff1acfc9711b85",
    "users": "a414816fc48ad0ed",
    "id_maps/users": "d29cb761013a9c83",
    "id_maps/items": "5dcff3b22c3e6cbf",
}


def _digest(frame: pd.DataFrame) -> str:
    return hashlib.sha256(frame.to_csv(index=False).encode("utf-8")).hexdigest()[:16]


@pytest.mark.slow
def test_ml100k_canonical_tables_and_id_maps_unchanged(make_params: Callable[..., Params]) -> None:
    params = make_params({"dataset.name": "ml-100k", "dataset.path": "data/raw/ml-100k",
                          "dataset.recbole.prefix": "ml-100k"}, dataset_dir=None)
    fetch_dataset(params)
    ingested = ingest(params)
    report = validate(params)
    assert {t: (r.rows_in, r.kept, r.quarantined) for t, r in report.tables.items()} == {
        "interactions": (100_000, 100_000, 0), "items": (1682, 1682, 0), "users": (943, 943, 0)}
    canonical = params.resolve(params.paths.canonical_dir)
    got = {t: _digest(pd.read_parquet(table_path(canonical, t))) for t in ("interactions", "items", "users")}
    got |= {f"id_maps/{e}": _digest(pd.read_parquet(id_map_path(canonical, e))) for e in ("users", "items")}
    assert got == DIGESTS
    # the two placeholder years of ml-100k are nulled (as before) and now counted in the report
    saved = json.loads((params.resolve(params.paths.interim_dir) / "ingest_report.json").read_text())
    assert saved["tables"]["items"]["nulled_attributes"] == {"year": {"rows": 2, "examples": [
        "line 268: 'unkonwn' is not a number", "line 1413: 'V' is not a number"]}}
    assert ingested.tables["items"].parse_errors == 0
