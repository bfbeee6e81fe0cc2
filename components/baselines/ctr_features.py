"""Features of the `ctr_gbdt` expert: the item, the user and the item against the user's history.

A row is (user u, item i, history h = the user's items before the row, oldest first). Training rows
(`ctr_train.parquet`) are point-in-time: h is the user's first `history_len` training items, and a positive's
own interaction is left out of every training statistic it touches (leave-one-out: its item's popularity, mean
rating and co-counts) — exactly what a validation or test row sees, whose item the user never had in train.

* item: log(1 + training users) and mean training rating (both leave-one-out), release year, genre multi-hot;
* user: history length, age, gender, occupation (categorical), mean rating, mean item popularity and mean
  release year of h;
* item × history: mean and max item-kNN cosine (co-counts / sqrt(n_i n_j), leave-one-out) between i and the
  `recent_items` latest items of h, mean cosine over all of h; the share of h in i's genres (mean and max over
  i's genres) and the cosine of h's genre profile with i's genres; the text-embedding cosine of i with the
  centroid of h and of its recent items; the year gap between i and h's mean year.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from components.baselines.content import unit_rows

FEATURES_BEFORE_GENRES = ("history_len", "age", "gender", "occupation", "item_log_pop", "item_mean_rating",
                          "item_year")
FEATURES_AFTER_GENRES = ("sim_recent_mean", "sim_recent_max", "sim_all_mean", "genre_share_mean",
                         "genre_share_max", "genre_cos", "text_cos_all", "text_cos_recent", "user_mean_rating",
                         "user_mean_log_pop", "user_mean_year", "year_gap")


@dataclass(frozen=True)
class ItemUserTables:
    """What the features read, all from the train split and the catalogue (never a held-out row)."""

    co: np.ndarray          # (N, N) co-counts over training users; diagonal = users per item
    rating_sum: np.ndarray  # (N,) sum of training ratings per item
    rating_cnt: np.ndarray  # (N,) training ratings per item
    year: np.ndarray        # (N,) release year (NaN unknown)
    genres: np.ndarray      # (N, G) multi-hot
    text: np.ndarray        # (N, D) centred, unit-norm text embeddings
    users: np.ndarray       # (U, 3) age, gender (1 = F), occupation code (NaN unknown)
    genre_names: tuple[str, ...]

    @property
    def names(self) -> list[str]:
        return [*FEATURES_BEFORE_GENRES, *(f"genre_{g}" for g in self.genre_names), *FEATURES_AFTER_GENRES]

    @property
    def categorical(self) -> list[bool]:
        return [n == "occupation" for n in self.names]


def user_attributes(users: pd.DataFrame, n_users: int) -> np.ndarray:
    """Canonical users (idx, attributes JSON) → (U, 3) age, gender (1 = female), occupation code; NaN unknown."""
    out = np.full((n_users, 3), np.nan)
    parsed = {int(i): (json.loads(a) if isinstance(a, str) and a.strip() else {})
              for i, a in zip(users["idx"], users["attributes"])}
    occupations = sorted({str(a["occupation"]) for a in parsed.values() if a.get("occupation") not in (None, "")})
    for idx, attrs in parsed.items():
        age = pd.to_numeric(attrs.get("age"), errors="coerce")
        gender = str(attrs.get("gender", "")).strip().lower()[:1]
        out[idx] = (age, {"f": 1.0, "m": 0.0}.get(gender, np.nan),
                    occupations.index(str(attrs["occupation"])) if str(attrs.get("occupation")) in occupations
                    else np.nan)
    return out


def _prefix(values: np.ndarray) -> np.ndarray:
    """Prefix sums with a leading zero row: out[t] = Σ_{k<t} values[k]."""
    return np.concatenate([np.zeros((1, *values.shape[1:])), np.cumsum(values, axis=0)])


def _user_block(tab: ItemUserTables, seq: np.ndarray, ratings: np.ndarray, items: np.ndarray, t: np.ndarray,
                positive: np.ndarray, own_rating: np.ndarray, recent: int) -> np.ndarray:
    """Features of one user's rows; row r's history is seq[:t[r]], its item items[r]."""
    n_i = np.diag(tab.co)
    pos = positive.astype(np.float64)
    inv = 1.0 / np.sqrt(np.maximum(n_i[seq], 1.0))
    cols = tab.co[np.ix_(seq, items)] * inv[:, None]               # (n, R) co-count / sqrt(n_j)
    denom = np.sqrt(np.maximum(n_i[items] - pos, 0.0))
    rows = np.arange(len(items))
    sims = []
    for d in range(1, recent + 1):                                 # the d-th latest history item
        k = t - d
        ok = k >= 0
        kk = np.maximum(k, 0)
        v = (cols[kk, rows] - pos * inv[kk]) / np.where(denom > 0, denom, np.inf)
        sims.append(np.where(ok, v, np.nan))
    sims = np.stack(sims)
    with np.errstate(invalid="ignore", divide="ignore"):
        recent_mean, recent_max = np.nanmean(sims, 0), np.nanmax(sims, 0)
        all_sum = _prefix(cols)[t, rows] - pos * _prefix(inv)[t]
        sim_all = all_sum / np.where(denom > 0, denom, np.inf) / np.maximum(t, 1)
        g_prof = _prefix(tab.genres[seq])[t] / np.maximum(t, 1)[:, None]
        g_item = tab.genres[items]
        n_g = g_item.sum(1)
        share = g_prof * g_item
        g_mean = share.sum(1) / np.where(n_g > 0, n_g, np.nan)
        g_max = np.where(n_g > 0, np.max(np.where(g_item > 0, g_prof, -1.0), axis=1), np.nan)
        g_cos = (share.sum(1) / (np.linalg.norm(g_prof, axis=1) * np.linalg.norm(g_item, axis=1)))
        pe = _prefix(tab.text[seq])
        text_all, text_recent = unit_rows(pe[t]), unit_rows(pe[t] - pe[np.maximum(t - recent, 0)])
        known = ~np.isnan(ratings)
        r_sum, r_cnt = _prefix(np.where(known, ratings, 0.0))[t], _prefix(known.astype(float))[t]
        log_pop = np.log1p(n_i)
        years = tab.year[seq]
        y_known = ~np.isnan(years)
        y_mean = _prefix(np.where(y_known, years, 0.0))[t] / _prefix(y_known.astype(float))[t]
        item_cnt = tab.rating_cnt[items] - pos * ~np.isnan(own_rating)
        item_mean = (tab.rating_sum[items] - pos * np.nan_to_num(own_rating)) / np.where(item_cnt > 0, item_cnt,
                                                                                         np.nan)
    before = [t.astype(float), np.zeros((3, len(items))), np.log1p(n_i[items] - pos), item_mean, tab.year[items]]
    after = [recent_mean, recent_max, sim_all, g_mean, g_max, g_cos, np.sum(text_all * tab.text[items], 1),
             np.sum(text_recent * tab.text[items], 1), r_sum / np.where(r_cnt > 0, r_cnt, np.nan),
             _prefix(log_pop[seq])[t] / np.maximum(t, 1), y_mean, tab.year[items] - y_mean]
    return np.column_stack([before[0], before[1].T, *before[2:], tab.genres[items], *after])


def ctr_features(tab: ItemUserTables, rows: pd.DataFrame, sequences: Sequence[np.ndarray], rating_of: np.ndarray,
                 recent: int) -> np.ndarray:
    """Feature matrix (E, F) of `rows` (user_idx, item_idx, t, positive), row order kept.

    `sequences[u]` is user u's chronological item sequence (a row's history is its first t items) and
    `rating_of` (U, N) the known ratings (NaN unknown) of the history items and, for positives, of the row's own
    item (left out of the item's mean rating)."""
    out = np.full((len(rows), len(tab.names)), np.nan)
    users = rows["user_idx"].to_numpy(dtype=np.int64)
    for u in np.unique(users):
        idx = np.flatnonzero(users == u)
        sub = rows.iloc[idx]
        seq = np.asarray(sequences[int(u)], dtype=np.int64)
        items = sub["item_idx"].to_numpy(dtype=np.int64)
        t = np.minimum(sub["t"].to_numpy(dtype=np.int64), len(seq))
        positive = sub["positive"].to_numpy(dtype=bool)
        own = np.where(positive, rating_of[u, items], np.nan)  # read for positives only (left out of the mean)
        block = _user_block(tab, seq, rating_of[u, seq].astype(np.float64), items, t, positive, own, recent)
        block[:, 1:4] = tab.users[u]
        out[idx] = block
    return out
