"""Per-user scores and the paired bootstrap over users (components/evaluation/bootstrap.py), hand-checked."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from components.evaluation.bootstrap import (UserScores, ablation_effect, comparison, multiplicities, paired_bootstrap,
                                             per_user_frame, statistic, user_scores, verdict, weighted_auc)
from components.evaluation.metrics import auc
from components.evaluation.scoring import MetricContext, task_metrics

CTX = MetricContext(ks=(5, 10), top_k=10, tail_items=frozenset(), genres=("Drama", "Comedy"), mask_format="[MASK_{k}]")


def _mean_scores(values: list[float], rows: list[int] | None = None, metric: str = "ndcg@10") -> UserScores:
    n = len(values)
    return UserScores(metric, np.arange(n), np.asarray(values, float), np.asarray(rows or [1] * n))


def test_per_user_scores_are_row_means_and_reproduce_the_pooled_metric() -> None:
    # user 0: two seen rows (ranks 1 and 3), user 1: one row (rank 12, outside the top 10)
    rows = pd.DataFrame({"user_idx": [0, 1, 0], "rank": [1, 12, 3], "template_id": "t", "template_kind": "seen",
                         "objective": None})
    s = user_scores("next_item", "ndcg@10", rows, CTX)
    assert s.users.tolist() == [0, 1] and s.rows.tolist() == [2, 1]
    assert s.value == pytest.approx([(1 + 1 / np.log2(4)) / 2, 0.0])
    pooled = task_metrics("next_item", rows, CTX)["ndcg@10"]
    assert statistic(s, np.ones((1, 2)))[0] == pytest.approx(pooled) == pytest.approx(0.5)
    # rating: per-user mean squared error, the statistic is its row-weighted mean's square root (= pooled RMSE)
    rating = pd.DataFrame({"user_idx": [0, 0, 1], "rating": [4.0, 2.0, 5.0], "pred": [3.0, 2.0, 2.0]})
    r = user_scores("rating", "rmse", rating, CTX)
    assert r.value == pytest.approx([0.5, 9.0])
    assert statistic(r, np.ones((1, 2)))[0] == pytest.approx(np.sqrt(10 / 3)) == pytest.approx(
        task_metrics("rating", rating.assign(template_id="t", template_kind="seen"), CTX)["rmse"])
    # a resample that draws user 1 twice and user 0 never: RMSE of user 1's row alone
    assert statistic(r, np.array([[0.0, 2.0]]))[0] == pytest.approx(3.0)
    cand = pd.DataFrame({"user_idx": [3], "cand_scores": [np.array([0.2, 0.9, 0.2])], "positive_col": [0]})
    assert user_scores("candidate_choice", "ndcg@5", cand, CTX).value == pytest.approx([1 / np.log2(4)])  # rank 3
    text = pd.DataFrame({"user_idx": [0], "generated": ["Likes drama"], "target_text": ["Drama, Comedy"]})
    assert user_scores("text", "attribute_f1", text, CTX).value == pytest.approx([2 / 3])


def test_weighted_auc_equals_the_auc_of_duplicated_rows_with_ties() -> None:
    labels = np.array([1, 0, 1, 0, 0, 1])
    scores = np.array([0.9, 0.9, 0.3, 0.1, 0.5, 0.5])
    assert weighted_auc(labels, scores, np.ones((1, 6)))[0] == pytest.approx(auc(labels, scores))
    w = np.array([[2.0, 1.0, 0.0, 1.0, 3.0, 1.0]])
    rep = np.repeat(np.arange(6), w[0].astype(int))
    assert weighted_auc(labels, scores, w)[0] == pytest.approx(auc(labels[rep], scores[rep]))
    assert np.isnan(weighted_auc(labels, scores, np.array([[1.0, 0, 1, 0, 0, 1]])))[0]  # no negative drawn
    rows = pd.DataFrame({"user_idx": [0, 0, 1, 1, 1, 2], "label": labels, "score": scores})
    s = user_scores("ctr", "auc", rows, CTX)
    assert s.value[:2] == pytest.approx([0.5, 0.5]) and np.isnan(s.value[2])  # a tie; 0.3 between 0.1 and 0.5
    # the bootstrap statistic resamples users: user 0 twice and user 2 once = rows 0, 1, 0, 1, 5
    assert statistic(s, np.array([[2.0, 0.0, 1.0]]))[0] == pytest.approx(
        auc(labels[[0, 1, 0, 1, 5]], scores[[0, 1, 0, 1, 5]]))


def test_multiplicities_draw_each_resample_with_replacement() -> None:
    m = multiplicities(7, 50, seed=3)
    assert m.shape == (50, 7) and (m.sum(1) == 7).all() and (m >= 0).all()
    assert np.array_equal(m, multiplicities(7, 50, seed=3)) and not np.array_equal(m, multiplicities(7, 50, seed=4))


def test_identical_systems_give_a_zero_interval_and_a_tie() -> None:
    a = _mean_scores([0.1, 0.5, 0.0, 0.9], [2, 1, 3, 1])
    out = comparison(a, a, resamples=1000, seed=0)
    assert out["diff"] == 0.0 and out["ci95"] == [0.0, 0.0] and out["verdict"] == "ties" and out["users"] == 4


def test_a_constant_shift_gives_the_shift_as_its_interval_and_the_direction_sets_the_verdict() -> None:
    base = [0.1, 0.5, 0.0, 0.9, 0.3]
    out = comparison(_mean_scores([v + 0.25 for v in base]), _mean_scores(base), resamples=1000, seed=1)
    assert out["diff"] == pytest.approx(0.25) and out["ci95"] == pytest.approx([0.25, 0.25])
    assert out["verdict"] == "beats"
    # MAE is lower-is-better: 0.25 more error is a loss; the ablation record keeps ablated − full
    worse = comparison(_mean_scores([v + 0.25 for v in base], metric="mae"), _mean_scores(base, metric="mae"), 1000, 1)
    assert worse["verdict"] == "loses" and worse["diff"] == pytest.approx(0.25)
    effect = ablation_effect(_mean_scores(base), _mean_scores([v - 0.5 for v in base]), 1000, 1)
    assert effect["diff"] == pytest.approx(-0.5) and effect["ci95"] == pytest.approx([-0.5, -0.5])
    assert effect["full"] == pytest.approx(np.mean(base))


def test_verdict_reads_the_interval_and_the_metric_direction() -> None:
    assert verdict(0.01, 0.2, lower_is_better=False) == "beats" and verdict(-0.2, -0.01, False) == "loses"
    assert verdict(0.01, 0.2, lower_is_better=True) == "loses" and verdict(-0.2, -0.01, True) == "beats"
    assert verdict(-0.1, 0.1, False) == "ties" == verdict(0.0, 0.3, True)


def test_the_paired_interval_covers_the_true_difference_about_95_percent_of_the_time() -> None:
    rng = np.random.default_rng(0)
    true_diff, hits, trials = 0.05, 0, 200
    for trial in range(trials):
        base = rng.uniform(0, 1, 150)
        a = base + true_diff + rng.normal(0, 0.2, 150)  # paired: the users' own level cancels
        out = paired_bootstrap(_mean_scores(list(a)), _mean_scores(list(base)), resamples=400, seed=trial)
        lo, hi = out["ci95"]
        hits += lo <= true_diff <= hi
    assert 0.9 <= hits / trials <= 0.99


def test_only_shared_users_are_compared_and_the_per_user_frame_keeps_every_system() -> None:
    a = UserScores("ndcg@10", np.array([0, 1, 2]), np.array([1.0, 0.0, 0.5]), np.array([1, 1, 1]))
    b = UserScores("ndcg@10", np.array([1, 2, 5]), np.array([0.0, 0.0, 0.0]), np.array([1, 1, 1]))
    out = paired_bootstrap(a, b, resamples=10, seed=0)
    assert out["users"] == 2 and out["a"] == pytest.approx(0.25)
    frame = per_user_frame({"unirec": a, "pop": b})
    assert frame["user_idx"].tolist() == [0, 1, 2, 5] and frame["pop.rows"].tolist() == [0, 1, 1, 1]
    assert np.isnan(frame["unirec"].iloc[3]) and frame["unirec"].iloc[0] == 1.0
    ctr = user_scores("ctr", "auc", pd.DataFrame({"user_idx": [4, 4, 2], "label": [1, 0, 1], "score": [.2, .1, .3]}), CTX)
    table = per_user_frame({"unirec": ctr})
    assert table["unirec.labels"].map(list).tolist() == [[1], [1, 0]]
    with pytest.raises(ValueError, match="share no user"):
        paired_bootstrap(a.subset(np.array([0])), b.subset(np.array([5])), 10, 0)
