"""evaluation.metrics: hand-computed values on tiny inputs, oracle = 1.0, random = chance, sklearn parity,
rank_of_target vs an explicit full ranking (hypothesis), and clear ValueErrors on bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import log_loss, roc_auc_score

from components.evaluation.metrics import (attribute_f1, auc, candidate_metrics, gauc, genres_in_text,
                                           hit_rate_at_k, logloss, mae, metrics_from_ranks, mrr_at_k, ndcg_at_k,
                                           prompt_sensitivity, rank_of_target, ranking_metrics, recall_at_k, rmse,
                                           rouge_l_f1, tail_coverage, tail_share)

ML100K_GENRES = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
                 "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
                 "War", "Western"]
# user A: target 2 at rank 3; user B: target 4 at rank 1; user C: target 0 absent (miss)
RANKED = np.array([[7, 5, 2, 9, 1], [4, 6, 8, 3, 0], [1, 2, 3, 4, 5]])
TARGETS = [2, 4, {0}]


def test_ranking_hand_computed() -> None:
    # @5: HR = (1 + 1 + 0)/3; NDCG = (1/log2(4) + 1/log2(2) + 0)/3 = (0.5 + 1)/3 = 0.5
    #     MRR = (1/3 + 1 + 0)/3 = 4/9; recall = HR (one target each)
    assert hit_rate_at_k(RANKED, TARGETS, 5) == pytest.approx(2 / 3)
    assert ndcg_at_k(RANKED, TARGETS, 5) == pytest.approx(0.5)
    assert mrr_at_k(RANKED, TARGETS, 5) == pytest.approx(4 / 9)
    assert recall_at_k(RANKED, TARGETS, 5) == pytest.approx(2 / 3)
    # @2: only user B hits (rank 1) -> every metric = 1/3; MRR@2 of A is 0 because rank 3 > 2
    for fn in (hit_rate_at_k, ndcg_at_k, mrr_at_k, recall_at_k):
        assert fn(RANKED, TARGETS, 2) == pytest.approx(1 / 3)


def test_ranking_several_targets_hand_computed() -> None:
    ranked, targets = RANKED[:1], [{5, 1, 8}]  # hits at positions 2 and 5, item 8 never recommended
    # @5: DCG = 1/log2(3) + 1/log2(6); IDCG over min(3, 5) = 3 hits = 1 + 1/log2(3) + 1/log2(4)
    idcg5 = 1 + 1 / math.log2(3) + 0.5
    assert ndcg_at_k(ranked, targets, 5) == pytest.approx((1 / math.log2(3) + 1 / math.log2(6)) / idcg5)
    assert recall_at_k(ranked, targets, 5) == pytest.approx(2 / 3)  # 2 of 3 targets
    assert mrr_at_k(ranked, targets, 5) == pytest.approx(0.5)  # first hit at rank 2
    assert hit_rate_at_k(ranked, targets, 5) == 1.0
    # @2: DCG = 1/log2(3); IDCG over min(3, 2) = 2 hits = 1 + 1/log2(3); recall = 1/3
    assert ndcg_at_k(ranked, targets, 2) == pytest.approx((1 / math.log2(3)) / (1 + 1 / math.log2(3)))
    assert recall_at_k(ranked, targets, 2) == pytest.approx(1 / 3)


def test_ranking_metrics_keys_and_agreement_with_single_functions() -> None:
    ranked = np.arange(60).reshape(3, 20)
    targets = [3, {21, 39}, 100]
    out = ranking_metrics(ranked, targets)
    assert list(out) == ["hr@5", "ndcg@5", "recall@5", "hr@10", "ndcg@10", "recall@10", "hr@20", "ndcg@20",
                         "recall@20", "mrr@10"]
    assert out["ndcg@10"] == pytest.approx(ndcg_at_k(ranked, targets, 10))
    assert out["recall@20"] == pytest.approx(recall_at_k(ranked, targets, 20))
    assert out["mrr@10"] == pytest.approx(mrr_at_k(ranked, targets, 10))


def test_metrics_from_ranks_hand_computed() -> None:
    out = metrics_from_ranks(np.array([1, 3, 12]))
    assert out["hr@5"] == pytest.approx(2 / 3) and out["recall@5"] == out["hr@5"]
    assert out["ndcg@5"] == pytest.approx((1 + 0.5) / 3)  # 1/log2(2) + 1/log2(4)
    assert out["hr@20"] == 1.0
    assert out["ndcg@20"] == pytest.approx((1 + 0.5 + 1 / math.log2(13)) / 3)
    assert out["mrr@10"] == pytest.approx((1 + 1 / 3 + 0) / 3)  # rank 12 > 10 -> 0
    assert list(out) == list(ranking_metrics(np.arange(20)[None], [0]))


def test_rank_of_target_hand_computed_pessimistic_ties() -> None:
    scores = np.array([[0.1, 0.9, 0.5, 0.5, 0.3]] * 3)
    # target 2 (0.5): ahead = item 1 (0.9) and item 3 (tie, pessimistic) -> rank 3; excluding item 1 -> rank 2;
    # target 4 (0.3): ahead = items 1, 2, 3 -> rank 4
    ranks = rank_of_target(scores, np.array([2, 2, 4]), [[], [1, 1], []])
    assert ranks.tolist() == [3, 2, 4]
    assert rank_of_target(np.zeros((1, 7)), np.array([3]), [[0]]).tolist() == [6]  # constant scorer: worst


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_rank_of_target_matches_explicit_full_ranking(data: st.DataObject) -> None:
    n_users, n_items = data.draw(st.integers(1, 4)), data.draw(st.integers(2, 12))
    scores = np.array(data.draw(st.lists(st.lists(st.integers(0, 3), min_size=n_items, max_size=n_items),
                                         min_size=n_users, max_size=n_users)), dtype=float)  # many ties
    targets, exclude, expected = [], [], []
    for u in range(n_users):
        t = data.draw(st.integers(0, n_items - 1))
        ex = data.draw(st.lists(st.integers(0, n_items - 1).filter(lambda i, t=t: i != t), max_size=n_items))
        # full ranking of the non-excluded items, best first; among equal scores the target is placed last
        order = sorted((i for i in range(n_items) if i not in ex), key=lambda i, u=u, t=t: (-scores[u, i], i == t))
        targets.append(t)
        exclude.append(ex)
        expected.append(order.index(t) + 1)
    assert rank_of_target(scores, np.array(targets), exclude).tolist() == expected


def test_rank_based_and_list_based_metrics_agree() -> None:
    rng = np.random.default_rng(1)
    scores = rng.random((30, 40))
    targets = rng.integers(0, 40, 30)
    exclude = [[i for i in rng.choice(40, 5, replace=False) if i != t] for t in targets]
    masked = scores.copy()
    for u, ex in enumerate(exclude):
        masked[u, ex] = -np.inf
    ranked = np.argsort(-masked, axis=1, kind="stable")[:, :20]
    expect = ranking_metrics(ranked, targets.tolist())
    got = metrics_from_ranks(rank_of_target(scores, targets, exclude))
    assert got == pytest.approx(expect)


def test_oracle_scores_one_everywhere() -> None:
    rng = np.random.default_rng(2)
    targets = rng.integers(0, 30, 10)
    scores = rng.random((10, 30))
    scores[np.arange(10), targets] = 2.0
    assert set(metrics_from_ranks(rank_of_target(scores, targets, [[]] * 10)).values()) == {1.0}
    ranked = np.array([[t, *[i for i in range(25) if i != t][:19]] for t in targets])
    assert set(ranking_metrics(ranked, targets.tolist()).values()) == {1.0}
    multi = np.array([[0, 1, 2, *range(3, 20)]])
    assert set(ranking_metrics(multi, [{0, 1, 2}]).values()) == {1.0}  # |targets| = 3 <= every k
    cand = rng.random((10, 20))
    cand[np.arange(10), targets % 20] = 5.0
    assert candidate_metrics(cand, targets % 20) == {"hr@1": 1.0, "ndcg@5": 1.0}
    labels = rng.integers(0, 2, 200)
    labels[:2] = [0, 1]
    users = rng.integers(0, 15, 200)
    assert auc(labels, labels + 0.1 * rng.random(200)) == 1.0
    assert gauc(users, labels, labels + 0.1 * rng.random(200)).gauc == 1.0
    assert attribute_f1({"Drama", "War"}, {"war", "drama"}) == 1.0
    assert rouge_l_f1("Loves gritty crime dramas.", "Loves gritty crime dramas.") == 1.0


def test_random_scorer_is_at_chance() -> None:
    rng = np.random.default_rng(3)
    n_users, n_items, n_excluded, k = 4000, 50, 10, 10
    scores = rng.random((n_users, n_items))
    targets = rng.integers(0, n_items, n_users)
    exclude = [rng.choice(np.setdiff1d(np.arange(n_items), [t]), n_excluded, replace=False) for t in targets]
    hr = metrics_from_ranks(rank_of_target(scores, targets, exclude), ks=(k,))[f"hr@{k}"]
    p = k / (n_items - n_excluded)  # = 0.25; binomial std of the mean = sqrt(p(1-p)/U) ~ 0.0068
    assert abs(hr - p) < 4 * math.sqrt(p * (1 - p) / n_users)
    n = 20000
    labels, s = rng.integers(0, 2, n), rng.random(n)
    n1 = labels.sum()
    null_std = math.sqrt((n + 1) / (12 * n1 * (n - n1)))  # Mann-Whitney null std of AUC ~ 0.004
    assert abs(auc(labels, s) - 0.5) < 4 * null_std


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auc_and_gauc_match_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 500)
    scores = np.round(rng.random(500), 1)  # rounding forces ties
    assert auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    users = rng.integers(0, 40, 500)
    num = den = 0.0
    for u in np.unique(users):
        m = users == u
        if len(set(labels[m])) == 2:
            num, den = num + m.sum() * roc_auc_score(labels[m], scores[m]), den + m.sum()
    res = gauc(users, labels, scores)
    assert res.gauc == pytest.approx(num / den, abs=1e-12) and res.weight == den


def test_ctr_hand_computed() -> None:
    # pairs (pos, neg): 0.5>0.1 -> 1, 0.5=0.5 -> 0.5, 0.8>both -> 2; AUC = 3.5/4
    assert auc([0, 1, 0, 1], [0.1, 0.5, 0.5, 0.8]) == pytest.approx(0.875)
    # user 7: AUC 1 over 2 rows; user 8: pos {0.2, 0.3} vs neg {0.4, 0.1} -> 2/4 = 0.5 over 4 rows;
    # user 9: one class -> skipped. GAUC = (1*2 + 0.5*4) / 6 = 2/3
    res = gauc([7, 7, 8, 8, 8, 8, 9, 9], [1, 0, 1, 0, 0, 1, 1, 1], [0.9, 0.1, 0.2, 0.4, 0.1, 0.3, 0.5, 0.6])
    assert res.gauc == pytest.approx(2 / 3) and (res.weight, res.users, res.users_skipped) == (6, 3, 1)
    # -(ln 0.8 + ln 0.6)/2 = (0.22314 + 0.51083)/2
    assert logloss([1, 0], [0.8, 0.4]) == pytest.approx(0.366985, abs=1e-6)
    assert logloss([0], [1.0]) == pytest.approx(-math.log(1e-7))  # clipped to 1 - eps
    rng = np.random.default_rng(4)
    y, p = rng.integers(0, 2, 100), rng.random(100)
    assert logloss(y, p) == pytest.approx(log_loss(y, p))


def test_rating_hand_computed() -> None:
    # errors 1, 0, 2 -> MAE = 3/3 = 1, RMSE = sqrt((1 + 0 + 4)/3)
    assert mae([1, 2, 3], [2, 2, 5]) == pytest.approx(1.0)
    assert rmse([1, 2, 3], [2, 2, 5]) == pytest.approx(math.sqrt(5 / 3))


def test_tail_and_candidates_hand_computed() -> None:
    ranked = np.array([[1, 2, 3], [1, 4, 5]])
    assert tail_coverage(ranked, {4, 5, 6, 7}) == pytest.approx(0.5)  # 4 and 5 shown, of 4 tail items
    assert tail_share(ranked, {4, 5, 6, 7}) == pytest.approx(2 / 6)  # 2 of 6 slots
    # row 0: positive 0.9 tied with column 3 -> rank 2 (pessimistic), NDCG = 1/log2(3); row 1: rank 1
    out = candidate_metrics(np.array([[0.3, 0.9, 0.1, 0.9], [0.5, 0.2, 0.8, 0.1]]), [1, 2])
    assert out["hr@1"] == pytest.approx(0.5)
    assert out["ndcg@5"] == pytest.approx((1 / math.log2(3) + 1) / 2)


def test_text_hand_computed() -> None:
    # tokens [the cat sat on the mat] vs [the cat is on the mat]: LCS "the cat on the mat" = 5, P = R = 5/6
    assert rouge_l_f1("The cat sat on the mat", "the cat is on the mat.") == pytest.approx(5 / 6)
    # LCS("a b c d", "a c") = 2: P = 2/4, R = 2/2, F1 = 2*0.5*1/1.5 = 2/3
    assert rouge_l_f1("a b c d", "a, c") == pytest.approx(2 / 3)
    assert rouge_l_f1("", "a") == 0.0 and rouge_l_f1("x y", "a b") == 0.0
    # tp = 1 (comedy): P = 1/3, R = 1/2, F1 = 2*(1/6)/(5/6) = 0.4
    assert attribute_f1({"Comedy", "Drama", "War"}, {"comedy", "Romance"}) == pytest.approx(0.4)
    assert attribute_f1(set(), set()) == 1.0 and attribute_f1({"War"}, set()) == 0.0
    text = "A fan of CHILDREN'S films, sci fi and film noir; hates warfare, dramatic scenes and Action-packed Westerns."
    assert genres_in_text(text, ML100K_GENRES) == {"Children's", "Sci-Fi", "Film-Noir", "Action"}
    assert genres_in_text("Sci-Fi, Drama, Children’s", ML100K_GENRES) == {"Sci-Fi", "Drama", "Children's"}


def test_prompt_sensitivity_hand_computed() -> None:
    # mean 0.4; population std = sqrt((0.2^2 + 0 + 0.2^2)/3) = sqrt(0.08/3)
    out = prompt_sensitivity({"t1": 0.2, "t2": 0.4, "t3": 0.6})
    assert out == pytest.approx({"mean": 0.4, "std": math.sqrt(0.08 / 3), "min": 0.2, "max": 0.6, "n_templates": 3})
    assert prompt_sensitivity({"t1": 0.2, "t2": 0.4}) == prompt_sensitivity({"t1": 0.2, "t2": 0.4})


@pytest.mark.parametrize("call, match", [
    (lambda: hit_rate_at_k(np.empty((0, 5), int), [], 5), "non-empty"),
    (lambda: ndcg_at_k(RANKED, [1, 2], 5), "targets has 2"),
    (lambda: mrr_at_k(RANKED, TARGETS, 0), "k must be"),
    (lambda: recall_at_k(RANKED, TARGETS, 6), "only 5 columns"),
    (lambda: hit_rate_at_k(np.array([[1, 1, 2]]), [1], 2), "repeat"),
    (lambda: hit_rate_at_k(RANKED, [1, set(), 2], 2), "at least one target"),
    (lambda: ranking_metrics(RANKED, TARGETS, ks=()), "ks must not be empty"),
    (lambda: rank_of_target(np.zeros((2, 3)), np.array([0]), [[], []]), "targets must be"),
    (lambda: rank_of_target(np.zeros((1, 3)), np.array([0]), [[0]]), "own exclude"),
    (lambda: rank_of_target(np.zeros((1, 3)), np.array([3]), [[]]), "target ids"),
    (lambda: rank_of_target(np.zeros((1, 3)), np.array([0]), [[5]]), "excluded ids"),
    (lambda: rank_of_target(np.zeros((1, 3)), np.array([0]), [[], []]), "exclude has 2"),
    (lambda: metrics_from_ranks(np.array([0, 1])), "ranks must be"),
    (lambda: candidate_metrics(np.zeros((2, 20)), [0]), "targets must be"),
    (lambda: tail_coverage(RANKED, set()), "tail_items"),
    (lambda: auc([1, 1], [0.2, 0.3]), "only one class"),
    (lambda: auc([0, 2], [0.2, 0.3]), "binary"),
    (lambda: auc([0, 1], [0.2]), "shape mismatch"),
    (lambda: gauc([1, 2], [0, 1], [0.2, 0.3]), "every user"),
    (lambda: gauc([1], [0, 1], [0.2, 0.3]), "shape mismatch"),
    (lambda: logloss([0, 1], [0.2, 1.3]), r"\[0, 1\]"),
    (lambda: logloss([], []), "non-empty"),
    (lambda: rmse([1, 2], [1]), "shape mismatch"),
    (lambda: mae([], []), "non-empty"),
    (lambda: prompt_sensitivity({}), "must not be empty"),
])
def test_bad_input_raises_clear_value_error(call, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()
