"""Query-aware experts for the `query` task: lexical retrieval over the item texts, alone and fused with SASRec.

* `bm25`: BM25 (library `bm25s`, Lucene variant; `baselines.query.k1`, `b`, `stopwords`) of the row's query
  against every item's text (`Title (year) — genres`, as `unirec textualize` writes it); items the query does
  not match tie at 0, and ties are broken by training popularity: the scores are the dense ranks of
  (BM25, count) pairs, exact in float32 (the ranking helpers' precision) for catalogues below 2^24 items;
* `bm25_sasrec`: log-softmax of the tuned SASRec's scores over the catalogue + weight × BM25 — SASRec's
  next-item distribution re-weighted by the query's lexical evidence; the weight is chosen on the validation
  query rows (`data/examples/query/valid.parquet`, one row per user and target) by NDCG@eval_k.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import bm25s
import numpy as np
import pandas as pd
import torch

from components.baselines.common import best_config, config_key
from components.config import QueryParams
from components.evaluation.ranking import rank_metrics, rank_of_targets



def lexicographic(primary: np.ndarray, secondary: np.ndarray) -> np.ndarray:
    """Per row, the dense rank (0 = lowest) of each item's (primary, secondary) pair → float64 (Q, N)."""
    out = np.empty(primary.shape, dtype=np.float64)
    for row, values in enumerate(primary):
        order = np.lexsort((secondary, values))
        new = np.ones(len(order), dtype=bool)
        new[1:] = (np.diff(values[order]) != 0) | (np.diff(secondary[order]) != 0)
        out[row, order] = np.cumsum(new) - 1
    return out


class Bm25Index:
    """BM25 over the catalogue's item texts (row i = item idx i)."""

    def __init__(self, texts: Sequence[str], cfg: QueryParams) -> None:
        self.texts, self.stopwords = list(texts), cfg.stopwords or []
        self.retriever = bm25s.BM25(k1=cfg.k1, b=cfg.b)
        self.retriever.index(bm25s.tokenize(self.texts, stopwords=self.stopwords, show_progress=False),
                             show_progress=False)

    def scores(self, queries: Sequence[str]) -> np.ndarray:
        """(Q,) query texts → float64 (Q, N) BM25 scores."""
        tokens = bm25s.tokenize(list(queries), stopwords=self.stopwords, return_ids=False, show_progress=False)
        n = len(self.texts)
        return np.stack([self.retriever.get_scores(t).astype(np.float64) if t else np.zeros(n) for t in tokens]) \
            if len(tokens) else np.zeros((0, n))


class QueryExperts:
    """`bm25(queries)` and `fused(queries, histories)` score every item for query rows → float64 (Q, N)."""

    def __init__(self, index: Bm25Index, sasrec: Any, weight: float, counts: np.ndarray) -> None:
        self.index, self.sasrec, self.weight = index, sasrec, weight
        self.counts = np.asarray(counts, dtype=np.float64)

    def bm25(self, queries: Sequence[str]) -> np.ndarray:
        return lexicographic(self.index.scores(queries), self.counts)

    def fused(self, queries: Sequence[str], histories: Sequence[np.ndarray], weight: float | None = None
              ) -> np.ndarray:
        logp = torch.log_softmax(torch.as_tensor(self.sasrec.scores(histories), dtype=torch.float64), dim=1).numpy()
        return logp + (self.weight if weight is None else weight) * self.index.scores(queries)


def query_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per (user, target) of a query examples frame: user_idx, target, query (the first template's)."""
    rows = pd.DataFrame({"user_idx": frame["user_idx"].to_numpy(dtype=np.int64),
                         "target": [int(t[0]) for t in frame["target_items"]], "query": frame["query"].astype(str)})
    return rows.drop_duplicates(["user_idx", "target"]).reset_index(drop=True)


def _figures(scores: np.ndarray, rows: pd.DataFrame, histories: Sequence[np.ndarray], ks: Sequence[int]
             ) -> dict[str, float]:
    excludes = [np.unique(histories[int(u)]) for u in rows["user_idx"]]
    ranks = rank_of_targets(scores, rows["target"].to_numpy(dtype=np.int64), excludes)
    return rank_metrics(ranks, ks)


def tune_query(experts: QueryExperts, rows: pd.DataFrame, histories: Sequence[np.ndarray], cfg: QueryParams,
               eval_k: int, ks: Sequence[int]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The fusion weight with the best validation NDCG@eval_k on `rows` (history = train) → config, report."""
    hist = [histories[int(u)] for u in rows["user_idx"]]
    queries = rows["query"].tolist()
    scores: dict[str, float] = {}
    for weight in cfg.weights:
        fused = experts.fused(queries, hist, weight)
        scores[config_key({"weight": weight})] = _figures(fused, rows, histories, (eval_k,))[f"ndcg@{eval_k}"]
    chosen = best_config(scores)
    experts.weight = cfg.weights[list(scores).index(chosen)]
    report = {"monitor": f"valid_ndcg@{eval_k}", "rows": int(len(rows)), "grid": scores, "chosen": chosen,
              "best_value": scores[chosen],
              "valid": {"bm25_sasrec": _figures(experts.fused(queries, hist), rows, histories, ks),
                        "bm25": _figures(experts.bm25(queries), rows, histories, ks),
                        "sasrec": _figures(experts.sasrec.scores(hist), rows, histories, ks)}}
    return {"weight": experts.weight}, report
