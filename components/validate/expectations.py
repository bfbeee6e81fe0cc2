"""Great Expectations (GX Core 1.x) quality gate over the CLEAN canonical tables, with Data Docs.

The quarantine has already removed every bad row, so any failing expectation here means a bug in
ingest/validate; `run_expectations` then raises `ExpectationsFailed`. GX is imported lazily (its
import costs ~4-5 s), so importing `components.validate` stays cheap.

Context: an ephemeral context (nothing persisted except the Data Docs site, whose
TupleFilesystemStoreBackend writes static HTML to an absolute folder), analytics and progress
bars off; one pandas dataframe asset, suite and checkpoint per table.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

SITE_NAME = "unirec_validation"


class ExpectationsFailed(RuntimeError):
    """An expectation failed on the clean canonical tables: a bug upstream of the quality gate."""


@dataclass(frozen=True)
class TableFacts:
    """What the expectations of one table are checked against."""

    kept: int
    """Rows the quarantine step kept (the expected row count)."""
    id_map_size: int
    """Size of the entity id map(s): idx columns must lie in [0, id_map_size)."""


def _expectations(table: str, df: pd.DataFrame, facts: dict[str, TableFacts],
                  ids: dict[str, list[str]], ts_bounds: tuple[int, int],
                  rating_bounds: tuple[float, float]) -> list[Any]:
    """The GX Expectation objects for one clean canonical table."""
    import great_expectations.expectations as gxe

    out: list[Any] = [gxe.ExpectTableRowCountToEqual(value=facts[table].kept)]
    if table == "interactions":
        for col in ("user_id", "item_id", "timestamp", "user_idx", "item_idx"):
            out.append(gxe.ExpectColumnValuesToNotBeNull(column=col))
        out.append(gxe.ExpectColumnValuesToBeBetween(column="timestamp", min_value=max(0, ts_bounds[0]),
                                                     max_value=ts_bounds[1]))
        ratings = df["rating"].dropna()
        if len(ratings):
            out.append(gxe.ExpectColumnValuesToBeBetween(column="rating", min_value=rating_bounds[0],
                                                         max_value=rating_bounds[1]))
            out.append(gxe.ExpectColumnValuesToBeInSet(
                column="rating", value_set=sorted(float(r) for r in ratings.unique())))
        out.append(gxe.ExpectColumnValuesToBeInSet(column="label", value_set=[0, 1]))
        out.append(gxe.ExpectCompoundColumnsToBeUnique(column_list=["user_id", "item_id", "timestamp"]))
        out.append(gxe.ExpectColumnValuesToBeInSet(column="item_id", value_set=ids["items"]))
        out.append(gxe.ExpectColumnValuesToBeInSet(column="user_id", value_set=ids["users"]))
        for col, entity in (("user_idx", "users"), ("item_idx", "items")):
            out.append(gxe.ExpectColumnValuesToBeBetween(column=col, min_value=0,
                                                         max_value=facts[entity].id_map_size - 1))
    else:
        key = "item_id" if table == "items" else "user_id"
        out += [gxe.ExpectColumnValuesToNotBeNull(column=key), gxe.ExpectColumnValuesToBeUnique(column=key),
                gxe.ExpectColumnValuesToNotBeNull(column="idx"), gxe.ExpectColumnValuesToBeUnique(column="idx"),
                gxe.ExpectColumnValuesToBeBetween(column="idx", min_value=0,
                                                  max_value=facts[table].id_map_size - 1)]
    return out


def _jsonable(value: Any) -> Any:
    """Plain JSON types; long value sets are abbreviated (the Data Docs hold the full detail)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        items = list(value)
        if len(items) > 20:
            return f"<{len(items)} values>"
        return [_jsonable(v) for v in items]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def _observed(result: dict[str, Any]) -> Any:
    if "observed_value" in result:
        return _jsonable(result["observed_value"])
    keys = ("element_count", "unexpected_count", "unexpected_percent", "partial_unexpected_list")
    return {k: _jsonable(result[k]) for k in keys if k in result}


def _context(docs_dir: Path) -> Any:
    """Ephemeral GX context whose only Data Docs site writes to `docs_dir` (absolute)."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    site = {"class_name": "SiteBuilder",
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir)},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"}}
    config = DataContextConfig(store_backend_defaults=InMemoryStoreBackendDefaults(), analytics_enabled=False,
                               progress_bars=ProgressBarsConfig(globally=False),
                               data_docs_sites={SITE_NAME: site})
    return gx.get_context(mode="ephemeral", project_config=config)


def run_expectations(
    tables: dict[str, pd.DataFrame],
    facts: dict[str, TableFacts],
    *,
    ts_bounds: tuple[int, int],
    rating_bounds: tuple[float, float],
    docs_dir: Path,
) -> list[dict[str, Any]]:
    """Run the suite of each clean canonical table, (re)build Data Docs in `docs_dir`.

    Returns one record per expectation: table, expectation type, kwargs, success, observed
    (check them with `raise_on_failure`).
    """
    import great_expectations as gx

    docs_dir = docs_dir.resolve()
    shutil.rmtree(docs_dir, ignore_errors=True)  # only the latest run; a DVC output is reproducible
    docs_dir.mkdir(parents=True, exist_ok=True)
    ctx = _context(docs_dir)
    source = ctx.data_sources.add_pandas("canonical")
    ids = {t: sorted(tables[t][k].astype(str)) for t, k in (("items", "item_id"), ("users", "user_id"))}
    records: list[dict[str, Any]] = []
    for table, df in tables.items():
        batch = source.add_dataframe_asset(name=table).add_batch_definition_whole_dataframe("all")
        suite = ctx.suites.add(gx.ExpectationSuite(name=f"{table}_canonical"))
        for expectation in _expectations(table, df, facts, ids, ts_bounds, rating_bounds):
            suite.add_expectation(expectation)
        vd = ctx.validation_definitions.add(gx.ValidationDefinition(name=f"{table}_vd", data=batch, suite=suite))
        checkpoint = ctx.checkpoints.add(gx.Checkpoint(
            name=f"{table}_checkpoint", validation_definitions=[vd], actions=[],
            result_format={"result_format": "SUMMARY"}))
        result = checkpoint.run(batch_parameters={"dataframe": df})
        for run in result.run_results.values():
            for r in run.results:
                cfg = r.expectation_config
                records.append({"table": table, "expectation": cfg.type, "kwargs": _jsonable(
                    {k: v for k, v in cfg.kwargs.items() if k not in {"batch_id"}}),
                    "success": bool(r.success), "observed": _observed(r.result or {}),
                    **({"exception": str(r.exception_info.get("exception_message"))}
                       if r.exception_info and r.exception_info.get("raised_exception") else {})})
    ctx.build_data_docs(site_names=[SITE_NAME])
    if not (docs_dir / "index.html").is_file():
        raise ExpectationsFailed(f"{docs_dir}: Data Docs were not written (no index.html)")
    return records


def raise_on_failure(records: list[dict[str, Any]], docs_dir: Path) -> None:
    """Raise `ExpectationsFailed` listing every failed expectation of `run_expectations`' records."""
    failed = [r for r in records if not r["success"]]
    if failed:
        lines = [f"{r['table']}: {r['expectation']} {r['kwargs']} observed {r['observed']}"
                 + (f" ({r['exception']})" if "exception" in r else "") for r in failed]
        raise ExpectationsFailed("expectations failed on the clean canonical tables (a bug in ingest/validate):\n  "
                                 + "\n  ".join(lines) + f"\nData Docs: {docs_dir / 'index.html'}")
