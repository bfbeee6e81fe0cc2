"""Split invariants: leave-one-out by time with file-order ties, cold items never trained on,
negatives saved once (never an interacted or cold item), no valid/test target in any training input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from components.config import Params
from components.ingest import ingest
from components.split import choose_cold_items, leave_one_out, sample_negatives, split
from components.validate import validate


@pytest.fixture
def split_dir(tiny_params: Params):
    ingest(tiny_params)
    validate(tiny_params)
    report = split(tiny_params)
    return tiny_params, report, tiny_params.resolve(tiny_params.paths.splits_dir)


def _read(folder, name: str) -> pd.DataFrame:
    return pd.read_parquet(folder / f"{name}.parquet")


def test_leave_one_out_breaks_ties_by_file_order() -> None:
    inter = pd.DataFrame({"user_idx": [0, 0, 0, 0], "item_idx": [10, 11, 12, 13],
                          "timestamp": [5, 9, 9, 1], "source_row": [2, 4, 3, 5]})
    out = leave_one_out(inter, min_interactions=3)
    # chronological: item13 (t=1), item10 (t=5), item12 (t=9,row3), item11 (t=9,row4)
    assert out.sort_values("order")["item_idx"].tolist() == [13, 10, 12, 11]
    assert out.set_index("item_idx").loc[[11, 12, 10, 13], "split"].tolist() == ["test", "valid", "train", "train"]


def test_users_below_minimum_are_train_only() -> None:
    inter = pd.DataFrame({"user_idx": [0, 0, 1, 1, 1], "item_idx": [1, 2, 1, 2, 3],
                          "timestamp": [1, 2, 1, 2, 3], "source_row": [2, 3, 4, 5, 6]})
    out = leave_one_out(inter, min_interactions=3)
    assert (out[out.user_idx == 0]["split"] == "train").all()
    assert sorted(out[out.user_idx == 1]["split"]) == ["test", "train", "valid"]


@given(st.lists(st.integers(0, 500), min_size=1, max_size=200, unique=True), st.floats(0, 0.9))
@settings(max_examples=50, deadline=None)
def test_cold_item_count_and_determinism(items: list[int], fraction: float) -> None:
    a = choose_cold_items(np.array(items), fraction, np.random.default_rng(1))
    b = choose_cold_items(np.array(items), fraction, np.random.default_rng(1))
    assert np.array_equal(a, b)
    assert len(a) == round(fraction * len(items)) and set(a) <= set(items) and len(set(a)) == len(a)


@given(st.sets(st.integers(0, 49), max_size=30), st.integers(1, 15), st.integers(1, 5))
@settings(max_examples=50, deadline=None)
def test_negatives_avoid_excluded_items(exclude: set[int], k: int, rows: int) -> None:
    pool = np.arange(50)
    negs = sample_negatives(pool, exclude, (rows, k), np.random.default_rng(0), distinct_rows=True)
    assert negs.shape == (rows, k)
    assert not set(negs.ravel().tolist()) & exclude
    assert all(len(set(r)) == k for r in negs.tolist())


def test_split_counts_add_up_and_protocol_holds(split_dir) -> None:
    params, report, folder = split_dir
    canonical = pd.read_parquet(params.resolve(params.paths.canonical_dir) / "interactions.parquet")
    assert sum(report.interactions.values()) == len(canonical)
    train, valid, test = (_read(folder, n) for n in ("train", "valid", "test"))
    assert valid["user_idx"].is_unique and test["user_idx"].is_unique
    last_train = train.groupby("user_idx")["order"].max()
    for held in (valid, test):
        h = held.set_index("user_idx")["order"]
        assert (h > last_train.loc[h.index]).all()
    assert (test.set_index("user_idx")["order"] > valid.set_index("user_idx")["order"]).all()


def test_no_valid_or_test_target_in_any_training_input(split_dir) -> None:
    _, _, folder = split_dir
    train = _read(folder, "train")
    train_pairs = set(zip(train.user_idx, train.item_idx))
    for name in ("valid", "test"):
        held = _read(folder, name)
        assert not set(zip(held.user_idx, held.item_idx)) & train_pairs
        assert not set(held.source_row) & set(train.source_row)
    # training CTR / rating rows only use training positives, and their negatives are never a held-out item
    held_pairs = {(u, i) for n in ("valid", "test", "cold") for u, i in zip(_read(folder, n).user_idx,
                                                                          _read(folder, n).item_idx)}
    for name in ("ctr_train", "rating_train"):
        frame = _read(folder, name)
        assert not set(zip(frame.user_idx, frame.item_idx)) & held_pairs
    pos = _read(folder, "ctr_train").query("label == 1")
    assert set(zip(pos.user_idx, pos.item_idx)) <= train_pairs


def test_cold_items_never_in_training(split_dir) -> None:
    params, report, folder = split_dir
    cold = set(_read(folder, "cold_items")["item_idx"])
    assert report.cold_items == len(cold) > 0
    for name in ("train", "valid", "test", "ctr_train", "ctr_valid", "ctr_test", "rating_train"):
        assert not set(_read(folder, name)["item_idx"]) & cold, name
    for name in ("candidates_valid", "candidates_test"):
        frame = _read(folder, name)
        assert not {int(x) for row in frame["negatives"] for x in row} & cold
    assert set(_read(folder, "cold")["item_idx"]) == cold


def test_negatives_are_saved_valid_and_deterministic(split_dir) -> None:
    params, _, folder = split_dir
    inter = pd.read_parquet(params.resolve(params.paths.canonical_dir) / "interactions.parquet")
    seen = inter.groupby("user_idx")["item_idx"].agg(set).to_dict()
    cand = _read(folder, "candidates_test")
    assert (cand["negatives"].map(len) == params.split.candidate_negatives).all()
    for user, target, negs in cand.itertuples(index=False):
        assert target in seen[user] and not set(negs) & seen[user] and len(set(negs)) == len(negs)
    ctr = _read(folder, "ctr_test")
    assert ctr.groupby("user_idx")["label"].agg(["sum", "size"]).eq(
        [1, 1 + params.split.ctr_eval_negatives]).all().all()
    before = {n: _read(folder, n) for n in ("candidates_test", "ctr_train", "ctr_valid")}
    split(params)
    for name, frame in before.items():
        pd.testing.assert_frame_equal(frame, _read(folder, name))


def test_zero_cold_fraction_is_plain_recbole_loo(make_params) -> None:
    params = make_params({"split.cold_item_fraction": 0.0})
    ingest(params)
    validate(params)
    report = split(params)
    assert report.cold_items == 0 and report.interactions["cold"] == 0
    assert report.users_evaluated == report.users
