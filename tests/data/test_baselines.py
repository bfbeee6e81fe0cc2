"""Expert baselines: pure pieces (ranking metric, SASRec windows, early stopping, buckets), then each expert
trained briefly on the tiny RecBole fixture (ingest → validate → split). The whole step (`train_baselines`, which
also reads the examples and the text embeddings) is tested in tests/model/test_experts.py."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from components.baselines.common import fit_early_stopping
from components.evaluation.ranking import (evaluate_scorer, load_split_data, next_item_task, rank_metrics,
                                           rank_of_targets)
from components.baselines.ctr import ctr_metrics, fit_ctr, genre_matrix, popularity_buckets
from components.baselines.mf import fit_mf, rating_errors
from components.baselines.popularity import Popularity
from components.baselines.sasrec import fit_sasrec, pad_histories, training_windows
from components.config import Params
from components.ingest import ingest
from components.split import split
from components.tables import table_path
from components.validate import validate

FAST = {"baselines.sasrec_recbole.max_epochs": 4, "baselines.sasrec_recbole.batch_size": 16,
        "baselines.sasrec_recbole.hidden_size": 16, "baselines.sasrec_recbole.inner_size": 32,
        "baselines.sasrec_recbole.max_len": 10, "baselines.sasrec_recbole.train_stride": 5,
        "baselines.mf.max_epochs": 30, "baselines.mf.batch_size": 64, "baselines.ctr.max_epochs": 30,
        "baselines.ctr.batch_size": 256}


def test_rank_is_pessimistic_and_excludes_seen_items() -> None:
    scores = np.array([[5.0, 3.0, 3.0, 1.0, 9.0]])
    # item 4 (score 9) is seen → excluded; target 1 ties with item 2 → ranked below it.
    assert rank_of_targets(scores, np.array([1]), [np.array([4])]).tolist() == [2]
    assert rank_of_targets(scores, np.array([1]), [np.array([], dtype=np.int64)]).tolist() == [3]
    # a seen target is still ranked (never excluded itself)
    assert rank_of_targets(scores, np.array([4]), [np.array([4, 0])]).tolist() == [0]


def test_rank_rejects_nan() -> None:
    with pytest.raises(ValueError):
        rank_of_targets(np.array([[np.nan, 1.0]]), np.array([0]), [np.array([], dtype=np.int64)])


def test_rank_metrics_values() -> None:
    m = rank_metrics(np.array([0, 1, 10]), (1, 10))
    assert m["hr@1"] == pytest.approx(1 / 3) and m["hr@10"] == pytest.approx(2 / 3)
    assert m["ndcg@10"] == pytest.approx((1.0 + 1 / np.log2(3)) / 3)


@pytest.mark.parametrize("length,max_len,stride", [(2, 4, 4), (9, 4, 4), (9, 4, 2), (30, 5, 3), (1, 3, 1)])
def test_windows_count_every_target_once_with_enough_context(length: int, max_len: int, stride: int) -> None:
    seq = np.arange(100, 100 + length)
    inputs, targets, mask = training_windows([seq], max_len, stride)
    counted = sorted(targets[mask].tolist())
    assert counted == seq[1:].tolist()
    for w in range(len(inputs)):
        for p in np.flatnonzero(mask[w].numpy()):
            t = int(targets[w, p]) - 100
            context = inputs[w, : p + 1].numpy() - 1  # idx+1 encoding
            assert context.tolist() == seq[max(0, t - max_len): t][-(p + 1):].tolist()
            assert p + 1 >= min(t, max_len - stride + 1)


def test_pad_histories_keeps_the_most_recent() -> None:
    seq, lengths = pad_histories([np.array([], dtype=np.int64), np.array([3]), np.arange(10)], 4)
    assert lengths.tolist() == [0, 1, 4]
    assert seq.tolist() == [[0, 0, 0, 0], [4, 0, 0, 0], [7, 8, 9, 10]]


def test_early_stopping_stops_and_restores_best() -> None:
    model = nn.Linear(1, 1)
    values = iter([0.1, 0.5, 0.3, 0.2, 0.9])
    seen: dict[int, float] = {}

    def train_epoch(epoch: int) -> float:
        with torch.no_grad():
            model.weight.fill_(float(epoch))
        return 1.0 / epoch

    def validate() -> float:
        v = next(values)
        seen[int(model.weight.item())] = v
        return v

    hist = fit_early_stopping(model, train_epoch, validate, monitor="m", higher_is_better=True, max_epochs=10,
                              patience=2)
    assert hist.epochs == 4 and hist.best_epoch == 2 and hist.stopped_early
    assert hist.curve == [0.1, 0.5, 0.3, 0.2]
    assert model.weight.item() == 2.0  # best epoch's weights restored


def test_early_stopping_lower_is_better() -> None:
    model = nn.Linear(1, 1)
    values = iter([3.0, 2.0, 2.5, 1.0])
    hist = fit_early_stopping(model, lambda e: 0.0, lambda: next(values), monitor="rmse", higher_is_better=False,
                              max_epochs=4, patience=5)
    assert hist.best_epoch == 4 and hist.epochs == 4 and not hist.stopped_early


def test_popularity_buckets_and_genres() -> None:
    buckets = popularity_buckets(np.array([0, 1, 2, 4, 8, 100, 0]), 3)
    assert buckets[0] == 0 and buckets[-1] == 0 and buckets[1:6].min() >= 1 and buckets[1:6].max() == 3
    assert np.all(np.diff(buckets[1:6]) >= 0)
    items = pd.DataFrame({"idx": [1, 0], "categories": [["Drama", "Comedy"], []]})
    mh, names = genre_matrix(items, 2)
    assert names == ["Comedy", "Drama"] and mh.tolist() == [[0.0, 0.0], [1.0, 1.0]]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Params:
    from tests.conftest import params_in  # the make_params mechanism, once per module

    params = params_in(tmp_path_factory.mktemp("baselines"), FAST)
    ingest(params)
    validate(params)
    split(params)
    return params


def _splits(params: Params, name: str) -> pd.DataFrame:
    return pd.read_parquet(params.resolve(params.paths.splits_dir) / f"{name}.parquet")


def test_popularity_ranks_by_train_count(tiny: Params) -> None:
    data = load_split_data(tiny)
    pop = Popularity.fit(data.train, data.n_items)
    scores = pop.scores(np.array([0, 3, 5]))
    counts = data.train["item_idx"].value_counts()
    assert scores.shape == (3, data.n_items) and np.isfinite(scores).all()
    assert (scores == scores[0]).all()
    top = int(np.argmax(scores[0]))
    assert counts.loc[top] == counts.max()
    cold = _splits(tiny, "cold_items")["item_idx"].to_numpy()
    assert (scores[0, cold] == 0).all()


def test_sasrec_trains_scores_and_handles_short_histories(tiny: Params) -> None:
    data = load_split_data(tiny)
    cfg = tiny.baselines.sasrec_recbole
    model, hist = fit_sasrec(data.train_sequences(), data.n_items, next_item_task(data, "valid"), cfg, 10, seed=1)
    assert hist.train_loss[-1] < hist.train_loss[0]
    assert len(hist.curve) == hist.epochs and 1 <= hist.best_epoch <= hist.epochs
    histories = [np.array([], dtype=np.int64), np.array([3]), np.arange(data.n_items)]  # empty, 1, > max_len
    scores = model.scores(histories)
    assert scores.shape == (3, data.n_items) and np.isfinite(scores).all()
    test = next_item_task(data, "test")
    assert all(len(h) == len(e) for h, e in zip(test.histories, test.exclude))  # no repeats in the fixture
    metrics = evaluate_scorer(model, test, (5, 10), 8)
    assert all(0.0 <= v <= 1.0 for v in metrics.values())


def test_sasrec_is_deterministic_and_early_stopping_restores_best(tiny: Params) -> None:
    data = load_split_data(tiny)
    cfg = tiny.baselines.sasrec_recbole.model_copy(update={"max_epochs": 30, "patience": 2})
    valid = next_item_task(data, "valid")
    runs = [fit_sasrec(data.train_sequences(), data.n_items, valid, cfg, 10, seed=3) for _ in range(2)]
    (m1, h1), (m2, h2) = runs
    assert h1.curve == h2.curve
    np.testing.assert_array_equal(m1.scores(valid.histories), m2.scores(valid.histories))
    assert h1.stopped_early and h1.epochs == h1.best_epoch + 2 < 30
    again = evaluate_scorer(m1, valid, (10,), 64)["ndcg@10"]
    assert again == pytest.approx(h1.curve[h1.best_epoch - 1]) == pytest.approx(max(h1.curve))


def test_mf_beats_global_mean_on_train(tiny: Params) -> None:
    data = load_split_data(tiny)
    train, valid = _splits(tiny, "rating_train"), _splits(tiny, "rating_valid")
    model, hist = fit_mf(train, valid, data.n_users, data.n_items, tiny.baselines.mf, (1.0, 5.0), seed=2)
    mean_rmse = float(np.sqrt(((train["rating"] - train["rating"].mean()) ** 2).mean()))
    assert rating_errors(model, train)["rmse"] < mean_rmse
    pred = model.predict(valid["user_idx"].to_numpy(), valid["item_idx"].to_numpy())
    assert pred.shape == (len(valid),) and np.isfinite(pred).all() and pred.min() >= 1.0 and pred.max() <= 5.0
    assert hist.curve[hist.best_epoch - 1] == pytest.approx(rating_errors(model, valid)["rmse"])
    model2, _ = fit_mf(train, valid, data.n_users, data.n_items, tiny.baselines.mf, (1.0, 5.0), seed=2)
    np.testing.assert_array_equal(pred, model2.predict(valid["user_idx"].to_numpy(), valid["item_idx"].to_numpy()))


def test_ctr_expert_learns(tiny: Params) -> None:
    data = load_split_data(tiny)
    train, valid = _splits(tiny, "ctr_train"), _splits(tiny, "ctr_valid")
    items = pd.read_parquet(table_path(tiny.resolve(tiny.paths.canonical_dir), "items"))
    genres, names = genre_matrix(items, data.n_items)
    counts = np.bincount(data.train["item_idx"], minlength=data.n_items)
    model, hist = fit_ctr(train, valid, data.n_users, genres, counts, tiny.baselines.ctr, seed=4)
    assert names and ctr_metrics(model, train)["auc"] > 0.5
    p = model.predict_proba(valid["user_idx"].to_numpy(), valid["item_idx"].to_numpy())
    assert p.shape == (len(valid),) and ((p > 0) & (p < 1)).all()
    assert hist.curve[hist.best_epoch - 1] == pytest.approx(ctr_metrics(model, valid)["auc"])
