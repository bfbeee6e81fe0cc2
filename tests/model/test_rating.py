"""The collaborative rating estimate (`model.rating_prior_window`): the recency-weighted user offset, the prompt
read-out, the rated prompts it reads, its warm-up, and the rating verbaliser reading it."""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from components.collab import user_sequences
from components.model.batching import collate
from components.model.build import build_model
from components.model.data import encode_frames
from components.model.rating import RatingEstimator
from components.model.warmup import collab_warmup, sample_rated_windows, sample_windows

RATED = {"model.rating_prior_window": 3, "train.collab_warmup.rating_weight": 1.0}


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.one_of(st.none(), st.floats(-2, 2)), min_size=1, max_size=9), min_size=1, max_size=4),
       st.integers(1, 5), st.integers(0, 10_000))
def test_user_offsets_match_a_loop(rows: list[list[float | None]], window: int, seed: int) -> None:
    """At position t: Σ_a w_a · residual of the a-th latest RATED item at or before t (unrated ones skipped)."""
    width = max(len(r) for r in rows)
    residuals = torch.zeros(len(rows), width)
    present = torch.zeros(len(rows), width, dtype=torch.bool)
    for i, r in enumerate(rows):
        for j, v in enumerate(r):
            if v is not None:
                residuals[i, j], present[i, j] = v, True
    est = RatingEstimator(4, 3, window)
    with torch.no_grad():
        est.recency.copy_(torch.randn(window, generator=torch.Generator().manual_seed(seed)))
        got = est.user_offsets(residuals, present)
    weights = est.recency.detach()
    for i in range(len(rows)):
        for t in range(width):
            rated = [float(residuals[i, j]) for j in range(t + 1) if present[i, j]][::-1]  # latest first
            expected = sum(float(weights[a]) * v for a, v in enumerate(rated[:window]))
            assert abs(float(got[i, t]) - expected) < 1e-5, (i, t, float(got[i, t]), expected)


def test_from_slots_reads_rated_history_before_the_answer_by_hand() -> None:
    est = RatingEstimator(2, 5, window=2, mean=3.0)
    with torch.no_grad():
        est.content_bias.weight.copy_(torch.tensor([[1.0, 0.0]]))  # b(item) = fused[0] + offset
        est.item_offsets.weight[2] = 0.5
        est.recency.copy_(torch.tensor([0.5, 0.25]))
        est.affinity.fill_(2.0)
    fused = torch.tensor([[0.1, 9.0], [0.2, 9.0], [0.3, 9.0], [0.4, 9.0]])
    ids, use_id = torch.tensor([1, 2, 3, 4]), torch.tensor([True, True, False, True])
    ratings = torch.tensor([4.0, float("nan"), 5.0, 2.0])
    rows, cols = torch.tensor([0, 0, 0, 1]), torch.tensor([1, 2, 3, 0])
    got = est.from_slots(fused, ids, use_id, ratings, rows, cols, 2, read_rows=torch.tensor([0, 1, 0]),
                         read_cols=torch.tensor([9, 9, 1]), target_bias=torch.tensor([0.1, 0.2, 0.3]),
                         affinity=torch.tensor([0.0, 0.5, 0.0]))
    res = [4.0 - 3.0 - 0.1, 5.0 - 3.0 - 0.3]  # slot 1 is unrated; slot 2 (item 3) has no ID offset
    expected = [3.0 + 0.1 + 0.5 * res[1] + 0.25 * res[0],  # row 0: the two rated slots, latest first
                3.0 + 0.2 + 0.5 * (2.0 - 3.0 - 0.4) + 2.0 * 0.5,  # row 1: one rated slot, affinity 0.5
                3.0 + 0.3 + 0.5 * res[0]]  # row 0 read at col 1: only the first slot precedes it
    torch.testing.assert_close(got, torch.tensor(expected))


def _rating_rows(params, split: str = "valid") -> pd.DataFrame:
    return pd.read_parquet(params.resolve(params.paths.examples_dir) / "rating" / f"{split}.parquet")


def test_rating_prompts_write_the_ratings_of_the_shown_history(model_params) -> None:
    params = model_params()
    splits = params.resolve(params.paths.splits_dir)
    train = pd.read_parquet(splits / "train.parquet")
    known = {(int(u), int(i)): float(r) for u, i, r in zip(train["user_idx"], train["item_idx"], train["rating"])}
    frame = _rating_rows(params)
    assert len(frame) and (frame["n_history"] > 0).all()
    for row in frame.itertuples():
        history = row.items[row.history_start: row.history_start + row.n_history]
        assert list(row.history_ratings) == [known[(row.user_idx, int(i))] for i in history]
        last = int(history[-1])  # written right after the item (compact) or after its title
        assert re.search(rf"<item:{last}>[^;<]* rated {known[(row.user_idx, last)]:g}", row.prompt), row.prompt
    ctr = pd.read_parquet(params.resolve(params.paths.examples_dir) / "ctr" / "valid.parquet")
    assert ctr["history_ratings"].map(len).eq(0).all() and " rated " not in " ".join(ctr["prompt"])


def test_rated_windows_are_the_plain_windows_with_their_ratings() -> None:
    sequences = [np.arange(10, dtype=np.int64), np.arange(100, 104, dtype=np.int64)]
    ratings = [np.arange(10, dtype=np.float64) / 10, np.array([1.0, np.nan, 3.0, 4.0])]
    plain = sample_windows(sequences, 6, 5, np.random.default_rng(4))
    inputs, targets, in_r, out_r = sample_rated_windows(sequences, ratings, 6, 5, np.random.default_rng(4))
    assert (inputs == plain[0]).all() and (targets == plain[1]).all()
    for seq, rat in zip(sequences, ratings):
        lookup = dict(zip(seq.tolist(), rat.tolist()))
        for items, values in ((inputs, in_r), (targets, out_r)):
            mask = np.isin(items, seq)
            np.testing.assert_equal(values[mask], np.array([lookup[i] for i in items[mask]]))
    assert np.isnan(in_r[inputs < 0]).all()


def test_warmup_fits_the_estimate_and_the_verbaliser_reads_it(model_params) -> None:
    params = model_params({**RATED, "train.collab_warmup.steps": 30, "train.collab_warmup.eval_every": 0,
                           "train.collab_warmup.lr": 0.01})
    built = build_model(params)
    model = built.model
    est = model.rating_estimator
    train = pd.read_parquet(params.resolve(params.paths.splits_dir) / "train.parquet")
    assert abs(float(est.mean.detach()) - float(train["rating"].mean())) < 1e-5  # μ starts at the training mean
    frame = _rating_rows(params)
    examples = encode_frames({"rating": frame}, built.backbone.tokenizer, built.spec, progress=False)["rating"]
    batch = collate(examples, built.backbone.tokenizer.pad_token_id or 0)
    truth = torch.tensor([float(r) for r in frame["rating"]])

    def rmse() -> float:
        model.eval()
        with torch.no_grad():
            return float((model.rating_scores(batch, torch.arange(len(examples))) - truth).pow(2).mean().sqrt())

    before = rmse()
    recency = est.recency.detach().clone()
    collab_warmup(model, user_sequences(train), params.train.collab_warmup, seed=1, log_every=10,
                  ratings=user_sequences(train, "rating"))
    assert not torch.equal(recency, est.recency.detach())
    assert rmse() < before, (rmse(), before)
    assert float(model.verbaliser_prior.scale["rating"].detach().abs().sum()) > 0  # the prior was fitted too
    # the rating verbaliser's prior reads r̂ − μ (the LM logits are the rest)
    model.eval()
    with torch.no_grad():
        hidden = model.hidden_states(batch)
        rows = torch.arange(len(examples))
        logits = model.answer_logits(hidden, batch, "rating", rows)
        lm_only = logits - model.verbaliser_prior("rating", model.rating_scores(batch, rows) - est.mean)
        h = hidden[batch.answer_rows, batch.answer_cols]
        torch.testing.assert_close(lm_only, h @ model.lm_head().weight[model.verbaliser("rating")].T.float(),
                                   rtol=1e-4, atol=1e-4)
    assert math.isfinite(rmse())
