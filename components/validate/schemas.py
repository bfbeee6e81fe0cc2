"""pandera contracts of the three canonical tables (see `components.tables`) and failure extraction.

Every row-level rule is a named pandera check whose name *is* the rule id reported in the
quarantine (`rule` column) and in the validation report:

===================== ========================================================================
rule                  meaning
===================== ========================================================================
not_null              a key / required column is null (pandera ``not_nullable``)
rating_range          rating outside ``[validate.rating_min, validate.rating_max]``
timestamp_range       timestamp negative, before ``validate.timestamp_min`` or after ``timestamp_max``
label_values          label not in {0, 1}
source_row_positive   source_row < 1 (an ingest bug, never expected)
vector_row_range      vector_row < 0
dangling_item         interaction item_id not among the kept items rows
dangling_user         interaction user_id not among the kept users rows
duplicate_key         items.item_id / users.user_id seen before (first occurrence kept)
duplicate_interaction same (user_id, item_id, timestamp) seen before (first occurrence kept)
===================== ========================================================================

Entity models are static classes; the interactions model depends on the configured bounds and on
the kept entity ids, so it is built by `interactions_model`. `to_schema` turns a model into a
`DataFrameSchema` that reports duplicates with ``report_duplicates="exclude_first"`` (the first
occurrence is the one kept), and `failure_cases` runs it lazily and returns one row per
(row index, rule).
"""

from __future__ import annotations

import copy
from collections.abc import Collection

import numpy as np
import pandas as pd
import pandera.pandas as pa
from pandera.typing import Series

UNIQUENESS_RULES: frozenset[str] = frozenset({"duplicate_key", "duplicate_interaction"})
_PANDERA_RULES: dict[str, str] = {
    "not_nullable": "not_null",
    "field_uniqueness": "duplicate_key",
    "multiple_fields_uniqueness": "duplicate_interaction",
}


class SchemaContractError(RuntimeError):
    """A table breaks its contract at the column level (missing column, wrong dtype): an upstream bug."""


class ItemsModel(pa.DataFrameModel):
    """Canonical ``items`` rows (interim columns without parse_error/raw)."""

    item_id: Series[pd.StringDtype] = pa.Field(nullable=False, unique=True)
    title: Series[pd.StringDtype] = pa.Field(nullable=True)
    year: Series[pd.Int64Dtype] = pa.Field(nullable=True)
    categories: Series[object] = pa.Field(nullable=True)
    text_fields: Series[pd.StringDtype] = pa.Field(nullable=True)
    vector_row: Series[pd.Int64Dtype] = pa.Field(nullable=True)
    source_file: Series[pd.StringDtype] = pa.Field(nullable=False)
    source_row: Series[np.int64] = pa.Field(nullable=False)

    @pa.check("vector_row", name="vector_row_range")
    def _vector_row(cls, s: Series) -> Series[bool]:
        return s >= 0

    @pa.check("source_row", name="source_row_positive")
    def _source_row(cls, s: Series) -> Series[bool]:
        return s >= 1

    class Config:
        strict = True
        ordered = True


class UsersModel(pa.DataFrameModel):
    """Canonical ``users`` rows (interim columns without parse_error/raw)."""

    user_id: Series[pd.StringDtype] = pa.Field(nullable=False, unique=True)
    attributes: Series[pd.StringDtype] = pa.Field(nullable=True)
    source_file: Series[pd.StringDtype] = pa.Field(nullable=False)
    source_row: Series[np.int64] = pa.Field(nullable=False)

    @pa.check("source_row", name="source_row_positive")
    def _source_row(cls, s: Series) -> Series[bool]:
        return s >= 1

    class Config:
        strict = True
        ordered = True


def interactions_model(
    *,
    rating_range: tuple[float, float],
    timestamp_range: tuple[int, int],
    item_ids: Collection[str],
    user_ids: Collection[str],
) -> type[pa.DataFrameModel]:
    """The ``interactions`` model for the configured bounds and the KEPT entity ids.

    `timestamp_range` is (min, max) unix seconds, typically `ValidateParams.timestamp_bounds()`;
    a negative timestamp always fails. Nulls in rating/label are allowed (absent columns).
    """
    r_lo, r_hi = rating_range
    t_lo, t_hi = max(0, timestamp_range[0]), timestamp_range[1]
    items = pd.Index(sorted(set(item_ids)), dtype="string")
    users = pd.Index(sorted(set(user_ids)), dtype="string")

    class InteractionsModel(pa.DataFrameModel):
        """Canonical ``interactions`` rows (interim columns without parse_error/raw)."""

        user_id: Series[pd.StringDtype] = pa.Field(nullable=False)
        item_id: Series[pd.StringDtype] = pa.Field(nullable=False)
        timestamp: Series[pd.Int64Dtype] = pa.Field(nullable=False)
        rating: Series[pd.Float64Dtype] = pa.Field(nullable=True)
        label: Series[pd.Int64Dtype] = pa.Field(nullable=True)
        event: Series[pd.StringDtype] = pa.Field(nullable=True)
        source_file: Series[pd.StringDtype] = pa.Field(nullable=False)
        source_row: Series[np.int64] = pa.Field(nullable=False)

        @pa.check("rating", name="rating_range")
        def _rating(cls, s: Series) -> Series[bool]:
            return (s >= r_lo) & (s <= r_hi)

        @pa.check("timestamp", name="timestamp_range")
        def _timestamp(cls, s: Series) -> Series[bool]:
            return (s >= t_lo) & (s <= t_hi)

        @pa.check("label", name="label_values")
        def _label(cls, s: Series) -> Series[bool]:
            return s.isin([0, 1])

        @pa.check("item_id", name="dangling_item")
        def _item_ref(cls, s: Series) -> Series[bool]:
            return s.isin(items)

        @pa.check("user_id", name="dangling_user")
        def _user_ref(cls, s: Series) -> Series[bool]:
            return s.isin(users)

        @pa.check("source_row", name="source_row_positive")
        def _source_row(cls, s: Series) -> Series[bool]:
            return s >= 1

        class Config:
            strict = True
            ordered = True
            unique = ["user_id", "item_id", "timestamp"]

    return InteractionsModel


def to_schema(model: type[pa.DataFrameModel]) -> pa.DataFrameSchema:
    """The model's schema with every uniqueness constraint set to keep the first occurrence.

    `DataFrameModel.Config` has no ``report_duplicates`` option, so it is set on a copy of the schema
    (``exclude_first``: only the 2nd, 3rd... occurrences are reported as failures).
    """
    schema = copy.deepcopy(model.to_schema())
    schema.report_duplicates = "exclude_first"
    for column in schema.columns.values():
        column.report_duplicates = "exclude_first"
    return schema


def failure_cases(frame: pd.DataFrame, schema: pa.DataFrameSchema) -> pd.DataFrame:
    """Validate `frame` lazily; one row per failing (index, rule), columns ``index, column, rule``.

    Uses `SchemaErrors.failure_cases` (its ``index`` column is the label of the failing row in
    `frame`). Failures that name no row (missing column, wrong dtype) raise `SchemaContractError`.
    Empty result when the frame is valid.
    """
    empty = pd.DataFrame({"index": pd.Series(dtype="int64"), "column": pd.Series(dtype="string"),
                          "rule": pd.Series(dtype="string")})
    try:
        schema.validate(frame, lazy=True)
    except pa.errors.SchemaErrors as exc:
        cases = exc.failure_cases
    else:
        return empty
    no_row = cases["index"].isna()
    if no_row.any():
        detail = cases.loc[no_row, ["schema_context", "column", "check", "failure_case"]].to_dict("records")
        raise SchemaContractError(f"{schema.name}: table breaks its column contract: {detail}")
    out = pd.DataFrame({
        "index": cases["index"].astype("int64").to_numpy(),
        "column": cases["column"].astype("string").to_numpy(),
        "rule": [_PANDERA_RULES.get(str(c), str(c)) for c in cases["check"]],
    })
    # multi-column uniqueness reports one case per column of the key: one row per (index, rule) suffices
    return out.drop_duplicates(["index", "rule"], ignore_index=True)
