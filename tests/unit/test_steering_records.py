"""The steering tests' pure parts: the donor of a swapped query, and the objective-swap / query-swap / paraphrase
records from hand-made rank rows (values computed by hand)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from components.evaluation.scoring import MetricContext
from components.evaluation.steering import objective_swap, paired, paraphrase_effect, query_swap
from components.evaluation.steering_rows import histories_of, pick_donors

CTX = MetricContext(ks=(5, 10), top_k=10, tail_items=frozenset(), genres=("Action", "Drama"), mask_format="[MASK_{k}]")
GENRES = [("Action",), ("Drama",), ("Action", "Drama"), (), ("Comedy",)]
"""Genres of items 0..4."""


def _rows(users, ranks, objective=None, kind="seen", rating=None) -> pd.DataFrame:
    n = len(users)
    return pd.DataFrame({"template_id": ["t"] * n, "template_kind": [kind] * n, "user_idx": users, "rank": ranks,
                         "objective": [objective] * n, "rating": rating if rating is not None else [np.nan] * n})


def _ndcg(rank: int) -> float:
    return 1 / math.log2(rank + 1) if rank <= 10 else 0.0


def test_donors_share_no_genre_differ_in_query_and_are_seeded() -> None:
    pool = pd.DataFrame({"user_idx": [0, 1, 2, 3, 4], "target": [0, 1, 2, 3, 4],
                         "query": ["Action titles", "Drama titles", "x", "y", "Comedy titles"]})
    donors = pick_donors(np.array([0, 1, 2, 3]), pool, GENRES, np.random.default_rng(0))
    for user, donor in donors.items():  # user u's target is item u
        assert not set(GENRES[user]) & set(GENRES[donor]) and donor != user
    assert donors[0] in {1, 3, 4}  # user 0 (Action): never 0 itself, never 2 (Action, Drama)
    assert donors[2] in {3, 4}  # Action + Drama: only the genre-less and the Comedy target
    assert donors[3] in {0, 1, 2, 4}  # a genre-less target shares no genre with any other
    assert donors == pick_donors(np.array([0, 1, 2, 3]), pool, GENRES, np.random.default_rng(0))
    lonely = pd.DataFrame({"user_idx": [0, 2], "target": [0, 2], "query": ["a", "b"]})
    assert pick_donors(np.array([0, 2]), lonely, GENRES, np.random.default_rng(0)) == {}


def test_objective_swap_splits_users_by_the_rating_of_their_target() -> None:
    # users 0, 1 liked (rating 5): like rows rank 1, watch rows rank 3; user 2 not liked (rating 2): watch rank 2, the
    # swapped like row rank 50; user 3 unrated: in neither group
    seen = pd.concat([_rows([0, 1], [1, 1], "like", rating=[5.0, 5.0]),
                      _rows([0, 1], [3, 3], "watch", rating=[5.0, 5.0]),
                      _rows([2], [2], "watch", rating=[2.0]), _rows([3], [1], "watch", rating=[np.nan])],
                     ignore_index=True)
    swapped = _rows([2], [50], "like", kind="objective_swap")
    out = objective_swap(seen, swapped, CTX, 4.0, 200, 0)
    liked, not_liked = out["liked"], out["not_liked"]
    assert liked["users"] == 2 and math.isclose(liked["diff"], _ndcg(1) - _ndcg(3))
    assert liked["ci95"] == [liked["diff"], liked["diff"]] and liked["holds"]  # every user gains the same
    assert not_liked["users"] == 1 and math.isclose(not_liked["watch"], _ndcg(2)) and not_liked["like"] == 0.0
    assert out["users_unrated"] == 1 and out["holds"] and out["metric"] == "ndcg@10"


def test_query_swap_and_paraphrase_records() -> None:
    seen = _rows([0, 1, 2], [1, 4, 30])
    swapped = _rows([0, 1], [40, 4], kind="query_swap")  # user 2 had no donor
    out = query_swap(seen, swapped, CTX, 300, 1)
    assert out["metric"] == "hr@10" and out["users"] == 2 and out["users_without_donor"] == 1
    assert math.isclose(out["true"], 1.0) and math.isclose(out["swapped"], 0.5) and math.isclose(out["diff"], 0.5)
    assert out["ci95"][0] <= 0.5 <= out["ci95"][1] and out["holds"] is (out["ci95"][0] > 0)
    para = _rows([0, 1, 2], [1, 5, 30], kind="paraphrase").assign(template_id=["p1", "p2", "p1"])
    rec = paraphrase_effect("next_item", seen, para, CTX, 0.9, 300, 1)
    assert math.isclose(rec["seen"], (_ndcg(1) + _ndcg(4)) / 3)
    assert math.isclose(rec["ratio"], (_ndcg(1) + _ndcg(5)) / (_ndcg(1) + _ndcg(4)))
    assert rec["holds"] == (rec["ratio"] >= 0.9) and rec["templates"] == ["p1", "p2"]
    assert math.isclose(rec["diff"], rec["paraphrased"] - rec["seen"])
    assert paired(seen.iloc[:0], seen, "next_item", "ndcg@10", ("a", "b"), CTX, 10, 0)["users"] == 0


def test_histories_come_from_the_rows_that_write_them() -> None:
    frame = pd.DataFrame({"user_idx": [7, 7, 8], "items": [[], [3, 4, 5, 9], [1, 2]],
                          "history_start": [0, 0, 0], "n_history": [0, 3, 2]})
    out = histories_of(frame)
    assert out[7].tolist() == [3, 4, 5] and out[8].tolist() == [1, 2]
