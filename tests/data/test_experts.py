"""The tuned experts' pure pieces on toy data (every-prefix windows, grids, item-kNN, rating experts, BM25, the
content centroid, the CTR features' leave-one-out), then SASRec's successive halving on the tiny fixture."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from components.baselines.common import best_config, config_key, grid_points
from components.baselines.content import ContentCentroid, cold_rows
from components.baselines.ctr_features import ctr_features
from components.baselines.inputs import ExpertInputs
from components.baselines.knn import ItemKnn, co_counts, cosine, keep_neighbours, recency_weights
from components.baselines.query import Bm25Index, QueryExperts, lexicographic, query_rows
from components.baselines.rating import RatingKnn, RatingRecency, RatingTable, item_biases
from components.baselines.sasrec import prefix_windows
from components.baselines.sasrec_tuning import tune_sasrec
from components.config import Params
from components.config.baselines import SasrecGrid
from components.evaluation.ranking import SplitData, load_split_data, next_item_task


@settings(max_examples=60, deadline=None)
@given(length=st.integers(0, 40), max_len=st.integers(1, 12), stride=st.integers(1, 12))
def test_prefix_windows_count_every_target_once_with_its_prefix(length: int, max_len: int, stride: int) -> None:
    stride = min(stride, max_len)
    seq = np.arange(100, 100 + length)
    inputs, targets, mask, lengths = prefix_windows([seq], max_len, stride)
    assert sorted(targets[mask].tolist()) == seq[1:].tolist()
    for w in range(len(inputs)):
        assert int(lengths[w]) == int((inputs[w] > 0).sum())
        for p in np.flatnonzero(mask[w].numpy()):
            t = int(targets[w, p]) - 100
            context = inputs[w, : p + 1].numpy() - 1
            assert context.tolist() == seq[max(0, t - max_len): t][-(p + 1):].tolist()
            # the whole prefix up to max_len; later targets at least max_len - stride + 1 items
            assert p + 1 == t if t <= max_len else p + 1 >= max_len - stride + 1


def test_grid_points_keys_and_best_config() -> None:
    points = grid_points(SasrecGrid(dropout=[0.1, 0.5], max_len=[50], hidden_size=[64, 128]))
    assert points[0] == {"dropout": 0.1, "max_len": 50, "hidden_size": 64} and len(points) == 4
    assert config_key(points[-1]) == "dropout=0.5,max_len=50,hidden_size=128"
    assert best_config({"a": 0.2, "b": 0.3, "c": 0.3}) == "b"  # ties to the earlier key
    assert best_config({"a": 1.2, "b": 0.9}, higher_is_better=False) == "b"


def test_item_knn_cosine_pruning_and_recency() -> None:
    train = pd.DataFrame({"user_idx": [0, 0, 1, 1, 1, 2], "item_idx": [0, 1, 0, 1, 2, 2]})
    co = co_counts(train, 3, 4)
    assert co[0, 1] == 2 and co[1, 2] == 1 and np.diag(co).tolist() == [2, 2, 2, 0]
    sim = cosine(co, 0.0)
    assert sim[0, 1] == pytest.approx(1.0) and sim[0, 2] == pytest.approx(0.5) and sim[0, 0] == 0 and not sim[3].any()
    assert cosine(co, 2.0)[0, 1] == pytest.approx(2 / 4)
    pruned = keep_neighbours(sim, 1)  # each column keeps its single most similar item
    assert (np.count_nonzero(pruned, axis=0) <= 1).all() and pruned[1, 0] == sim[1, 0]
    w = recency_weights([np.array([2, 0, 2])], 4, 0.5)  # item 2 at r=0 and r=2, item 0 at r=1
    assert w.tolist() == [[0.5, 0.0, 1.25, 0.0]]
    scores = ItemKnn(sim, 0.5).score_users(np.array([0]), [np.array([1, 0])])
    assert scores[0].tolist() == pytest.approx((0.5 * sim[1] + sim[0]).tolist())


def test_rating_experts_read_only_the_rated_history() -> None:
    train = pd.DataFrame({"user_idx": [0, 0, 1, 1, 2], "item_idx": [0, 1, 0, 1, 0],
                          "rating": [5.0, 3.0, 4.0, 2.0, 3.0]})
    table = RatingTable([train], 3, 3)
    assert np.isnan(table.values[2, 1]) and table.rated(0, np.array([1, 2, 0]))[0].tolist() == [1, 0]
    mu, bias = item_biases(train, 3, 0.0)
    assert mu == pytest.approx(3.4) and bias[0] == pytest.approx(4.0 - 3.4) and bias[2] == 0.0
    recency = RatingRecency(mu, bias, 1, table, (1.0, 5.0))
    # user 0's last rated item is 1 (rating 3, item mean 2.5): offset +0.5 on item 0
    assert recency.predict(np.array([0]), np.array([0]), [np.array([0, 1])])[0] == pytest.approx(4.0 + 0.5)
    assert recency.predict(np.array([2]), np.array([2]), [np.array([], dtype=np.int64)])[0] == pytest.approx(mu)
    sim = RatingKnn.pearson_baseline(train, 3, 3, mu, bias, 0.0, 0.0)
    assert sim.shape == (3, 3) and np.allclose(sim, sim.T) and np.all(np.abs(sim) <= 1 + 1e-6) and sim[0, 0] == 0
    knn = RatingKnn(mu, bias, np.array([[0, 1, 0], [1, 0, 0], [0, 0, 0]], np.float32), 5, 0.0, table, (1.0, 5.0))
    pred = knn.predict(np.array([0, 0]), np.array([0, 2]), [np.array([1]), np.array([1])])
    base = mu + (3.0 - mu - bias[1])  # user bias from item 1 alone (bias_reg 0)
    assert pred[0] == pytest.approx(base + bias[0] + 0.0)  # the one neighbour's residual is 0 after the user bias
    assert pred[1] == pytest.approx(base + bias[2])  # no similar rated item: the baseline


def test_bm25_and_fusion() -> None:
    from components.config import QueryParams

    texts = ["Toy Story (1995) — Animation, Children's, Comedy", "Heat (1995) — Action, Crime, Thriller",
             "Alien (1979) — Horror, Sci-Fi", "Aliens (1986) — Action, Sci-Fi"]
    index = Bm25Index(texts, QueryParams(k1=1.5, b=0.75, stopwords="en", weights=[0.0]))
    scores = index.scores(["Sci-Fi titles", "a good Horror pick", "titles"])
    assert scores.shape == (3, 4) and scores[0, 2] > 0 and scores[0, 3] > 0 and scores[0, 0] == 0
    assert np.argmax(scores[1]) == 2 and not scores[2].any()

    class Flat:
        def scores(self, histories: list[np.ndarray]) -> np.ndarray:
            return np.zeros((len(histories), 4), np.float32)

    experts = QueryExperts(index, Flat(), 1.0, np.array([10, 0, 5, 1]))
    assert experts.bm25(["titles"])[0].tolist() == [3, 0, 2, 1]  # no match: popularity orders the items
    both = experts.bm25(["Sci-Fi titles"])[0]  # Alien and Aliens match: BM25 first, popularity among equals
    assert set(np.argsort(-both)[:2]) == {2, 3} and both[0] > both[1]
    fused = experts.fused(["Sci-Fi titles"], [np.array([0])])[0]
    assert fused - fused.min() == pytest.approx(scores[0] - scores[0].min())  # flat SASRec: BM25 decides
    frame = pd.DataFrame({"user_idx": [0, 0, 1], "target_items": [[2], [2], [1]], "query": ["q", "q", "r"]})
    assert query_rows(frame)[["user_idx", "target", "query"]].values.tolist() == [[0, 2, "q"], [1, 1, "r"]]


def test_lexicographic_ranks_break_ties_by_the_second_key_only() -> None:
    ranks = lexicographic(np.array([[0.5, 0.0, 0.5, 0.0, 2.0]]), np.array([1.0, 3.0, 1.0, 2.0, 0.0]))
    assert ranks.tolist() == [[2.0, 1.0, 2.0, 0.0, 3.0]]  # equal pairs tie; (0, 3) above (0, 2)
    assert np.float32(ranks).tolist() == ranks.tolist()


def test_content_centroid_and_cold_rows() -> None:
    text = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [1.0, -1.0]])
    model = ContentCentroid.build(text, window=1, center=False)
    scores = model.score_users(np.array([0, 1]), [np.array([1, 0]), np.array([], dtype=np.int64)])
    assert np.argmax(scores[0]) == 0 and scores[0, 3] == pytest.approx(np.sqrt(0.5)) and not scores[1].any()
    frame = pd.DataFrame({"user_idx": [0, 0, 1], "target_items": [[2], [2], [3]]})
    cold = pd.DataFrame({"user_idx": [1, 1], "item_idx": [2, 3], "role": ["extra", "test"]})
    users, targets, excludes = cold_rows(frame, cold, np.array([2, 3]), 4, ("extra",))
    assert users.tolist() == [0, 1] and targets.tolist() == [2, 3]
    assert excludes[0].tolist() == [0, 1] and excludes[1].tolist() == [0, 1, 2]  # warm items + earlier cold ones


def _inputs(train: pd.DataFrame, n_users: int, n_items: int) -> ExpertInputs:
    items = pd.DataFrame({"idx": np.arange(n_items), "year": 1990 + np.arange(n_items),
                          "categories": [["A"] if i % 2 else ["B", "A"] for i in range(n_items)]})
    genres = np.array([[1.0, 0.0] if i % 2 else [1.0, 1.0] for i in range(n_items)], np.float32)
    empty = pd.DataFrame({"user_idx": pd.Series(dtype="int64"), "item_idx": pd.Series(dtype="int64")})
    data = SplitData(n_users=n_users, n_items=n_items, train=train, valid=empty, test=empty)
    return ExpertInputs(data=data, co=co_counts(train, n_users, n_items),
                        ratings=RatingTable([train], n_users, n_items),
                        counts=np.bincount(train["item_idx"], minlength=n_items), items=items, genres=genres,
                        genre_names=("A", "B"), text=np.random.default_rng(0).normal(size=(n_items, 3)), users=None,
                        rating_range=(1.0, 5.0))


def test_ctr_training_features_leave_the_row_out_and_are_point_in_time() -> None:
    """A positive training row's features = those of the same history scored by tables without its interaction."""
    rng = np.random.default_rng(3)
    n_users, n_items = 6, 12
    seqs = [rng.permutation(n_items)[: rng.integers(4, 9)] for _ in range(n_users)]
    train = pd.DataFrame({"user_idx": np.repeat(np.arange(n_users), [len(s) for s in seqs]),
                          "item_idx": np.concatenate(seqs), "rating": rng.integers(1, 6, sum(map(len, seqs))) * 1.0})
    full = _inputs(train, n_users, n_items)
    u, t = 2, 3
    item = int(seqs[u][t])
    row = pd.DataFrame({"user_idx": [u], "item_idx": [item], "t": [t], "positive": [True]})
    with_row = ctr_features(full.ctr_tables(), row, seqs, full.ratings.values, 2)
    without = _inputs(train[~((train["user_idx"] == u) & (train["item_idx"] == item))].reset_index(drop=True),
                      n_users, n_items)
    unseen = ctr_features(without.ctr_tables(), row.assign(positive=False), seqs, without.ratings.values, 2)
    np.testing.assert_allclose(with_row, unseen, rtol=1e-9, atol=1e-12)
    later = ctr_features(full.ctr_tables(), row.assign(t=t + 2), seqs, full.ratings.values, 2)
    assert later[0, 0] == t + 2 and not np.allclose(later, with_row, equal_nan=True)


@pytest.fixture(scope="module")
def tiny_split(tmp_path_factory: pytest.TempPathFactory) -> Params:
    from components.ingest import ingest
    from components.split import split
    from components.validate import validate
    from tests.conftest import params_in

    params = params_in(tmp_path_factory.mktemp("halving"), {"baselines.sasrec.batch_targets": 64})
    ingest(params)
    validate(params)
    split(params)
    return params


def test_successive_halving_prunes_and_each_run_trains_as_it_would_alone(tiny_split: Params) -> None:
    data = load_split_data(tiny_split, ("train", "valid"))
    valid, seqs = next_item_task(data, "valid"), data.train_sequences()
    cfg = tiny_split.baselines.sasrec.model_copy(update={
        "grid": SasrecGrid(dropout=[0.1, 0.5], max_len=[8, 12], hidden_size=[8]), "halving_epochs": [1],
        "halving_eta": 2, "max_epochs": 3, "patience": 5, "inner_factor": 2})
    model, chosen, report = tune_sasrec(seqs, data.n_items, valid, cfg, 10, seed=7)
    grid = report["grid"]
    pruned = [k for k, r in grid.items() if r["pruned_at"] == 1]
    assert len(grid) == 4 and len(pruned) == 2 and all(grid[k]["epochs"] == 1 for k in pruned)
    survivors = [k for k in grid if k not in pruned]
    assert all(grid[k]["epochs"] == 3 for k in survivors)
    assert min(grid[k]["curve"][0] for k in survivors) >= max(grid[k]["curve"][0] for k in pruned)
    assert report["chosen"] in survivors and report["best_value"] == max(grid[k]["best_value"] for k in survivors)
    assert chosen.model_dump() == report["chosen_config"] and model.max_len == chosen.max_len
    alone_cfg = cfg.model_copy(update={"grid": SasrecGrid(**{k: [v] for k, v in grid[survivors[0]]["config"].items()}),
                                       "halving_epochs": []})
    _, _, alone = tune_sasrec(seqs, data.n_items, valid, alone_cfg, 10, seed=7)
    assert alone["curve"] == grid[survivors[0]]["curve"]  # the interleaving changed nothing
