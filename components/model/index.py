"""Candidate retrieval behind one contract: `CandidateIndex.topk(queries, k, exclude)`.

A query is a user's M vectors `(M, D)`; an item's score is the max over the M inner products.
`topk` always returns exactly k distinct, valid (0..N-1), non-excluded item ids per query, best
first, or raises ValueError when a query has fewer than k allowed items.

- `TorchIndex`: exact maximum-inner-product search with torch (tests, small catalogues).
- `FaissIndex`: faiss `Flat` (exact), `IVF{nlist},Flat` or `HNSW{m},Flat`, inner-product metric.
  Each of the M vectors is searched with k' = min(N, k + max_q |exclude_q|) and the hits are merged
  by max score. For exact search this is exact: if item i is in the true top-k (allowed items) and
  its max is reached at vector m, every item ranked above i by vector m also ranks above i overall,
  so i is within the top k + |exclude| of vector m. Approximate indexes (IVF/HNSW) may return
  fewer than k allowed ids (faiss pads with -1); those queries fall back to exact search.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path

import faiss
import numpy as np
import torch
from torch import Tensor

from components.config import IndexParams

ArrayLike = np.ndarray | Tensor


def _as_float32(x: ArrayLike) -> np.ndarray:
    if isinstance(x, Tensor):
        x = x.detach().to("cpu", torch.float32).numpy()
    return np.ascontiguousarray(x, dtype=np.float32)


class CandidateIndex(ABC):
    """Top-k maximum-inner-product search over N item vectors `(N, D)` with per-query exclusions."""

    n_items: int
    dim: int

    def topk(
        self, queries: ArrayLike, k: int, exclude: Sequence[Sequence[int]] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Best k items per query.

        Args:
            queries: `(Q, M, D)` (or `(Q, D)` for M = 1); an item's score is the max over M.
            k: items per query (1 ≤ k ≤ N − |exclude_q|).
            exclude: per query, item ids never returned (seen items); None = nothing excluded.
        Returns:
            ids `(Q, k)` int64 (distinct, valid, not excluded) and scores `(Q, k)` float32, best first.
        """
        q = _as_float32(queries)
        if q.ndim == 2:
            q = q[:, None, :]
        if q.ndim != 3 or q.shape[-1] != self.dim:
            raise ValueError(f"queries must be (Q, M, {self.dim}), got {q.shape}")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        excluded = self._excluded(exclude, q.shape[0])
        for row, ex in enumerate(excluded):
            if k > self.n_items - ex.size:
                raise ValueError(f"query {row}: k={k} > {self.n_items} items - {ex.size} excluded")
        ids, scores = self._topk(q, k, excluded)
        return ids.astype(np.int64, copy=False), scores.astype(np.float32, copy=False)

    def _excluded(self, exclude: Sequence[Sequence[int]] | None, n_queries: int) -> list[np.ndarray]:
        """Per query: sorted unique excluded ids (validated to lie in 0..N-1)."""
        if exclude is None:
            return [np.empty(0, dtype=np.int64) for _ in range(n_queries)]
        if len(exclude) != n_queries:
            raise ValueError(f"exclude has {len(exclude)} lists for {n_queries} queries")
        out = []
        for row, items in enumerate(exclude):
            ex = np.unique(np.asarray(list(items), dtype=np.int64))
            if ex.size and (ex[0] < 0 or ex[-1] >= self.n_items):
                raise ValueError(f"query {row}: excluded ids must be in 0..{self.n_items - 1}")
            out.append(ex)
        return out

    @abstractmethod
    def _topk(self, queries: np.ndarray, k: int, excluded: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Validated `(Q, M, D)` float32 queries → ids `(Q, k)`, scores `(Q, k)`."""


def _exact_topk_one(item_vecs: np.ndarray, query: np.ndarray, k: int, excluded: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k for one query `(M, D)` over `(N, D)` items, excluded ids removed → `(k,)`, `(k,)`."""
    scores = (item_vecs @ query.T).max(axis=1)  # (N,)
    scores[excluded] = -np.inf
    top = np.argpartition(-scores, k - 1)[:k]
    top = top[np.argsort(-scores[top], kind="stable")]
    return top, scores[top]


def _merge_hits(ids: np.ndarray, scores: np.ndarray, excluded: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hits of the M vectors `(L,)` → distinct valid non-excluded ids by descending max score."""
    keep = ids >= 0
    if excluded.size:
        keep &= ~np.isin(ids, excluded)
    ids, scores = ids[keep], scores[keep]
    order = np.argsort(-scores, kind="stable")
    ids, scores = ids[order], scores[order]
    _, first = np.unique(ids, return_index=True)  # first = best occurrence of each id
    first.sort()
    return ids[first], scores[first]


class TorchIndex(CandidateIndex):
    """Exact MIPS with torch over `(N, D)` item vectors (scores all items; for tests)."""

    def __init__(self, item_vecs: ArrayLike) -> None:
        vecs = torch.from_numpy(_as_float32(item_vecs))
        if vecs.ndim != 2 or vecs.shape[0] == 0:
            raise ValueError(f"item_vecs must be (N, D) with N >= 1, got {tuple(vecs.shape)}")
        self.item_vecs = vecs
        self.n_items, self.dim = vecs.shape

    def _topk(self, queries: np.ndarray, k: int, excluded: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        scores = torch.einsum("qmd,nd->qmn", torch.from_numpy(queries), self.item_vecs).amax(dim=1)  # (Q, N)
        rows = np.repeat(np.arange(len(excluded)), [ex.size for ex in excluded])
        if rows.size:
            cols = np.concatenate(excluded)
            scores[torch.from_numpy(rows), torch.from_numpy(cols)] = -torch.inf
        top = torch.topk(scores, k, dim=1)
        return top.indices.numpy(), top.values.numpy()


class FaissIndex(CandidateIndex):
    """faiss inner-product index (`flat`, `ivf` or `hnsw`) with merge over M and exact fallback."""

    def __init__(self, index: faiss.Index) -> None:
        if index.metric_type != faiss.METRIC_INNER_PRODUCT:
            raise ValueError("FaissIndex needs an inner-product (METRIC_INNER_PRODUCT) index")
        self.index = index
        self.n_items, self.dim = int(index.ntotal), int(index.d)
        self.fallback_queries = 0
        """Queries answered by the exact fallback so far (approximate search returned < k ids)."""
        self._vectors: np.ndarray | None = None

    @classmethod
    def build(cls, item_vecs: ArrayLike, params: IndexParams) -> "FaissIndex":
        """Index `(N, D)` item vectors as `params.kind` (flat | ivf | hnsw).

        IVF: nlist is capped at N (k-means cannot train more cells than points), nprobe at nlist.
        """
        vecs = _as_float32(item_vecs)
        index = cls.empty(vecs, params)
        index.add(vecs)
        return cls.finish(index, params)

    @staticmethod
    def empty(item_vecs: np.ndarray, params: IndexParams) -> faiss.Index:
        """The faiss index of `params.kind` for `(N, D)` float32 vectors, trained (IVF: k-means on them), still
        empty: `build` adds the vectors and calls `finish` (`unirec benchmark index` adds them in timed chunks)."""
        if item_vecs.ndim != 2 or item_vecs.shape[0] == 0:
            raise ValueError(f"item_vecs must be (N, D) with N >= 1, got {item_vecs.shape}")
        n, d = item_vecs.shape
        if params.kind == "flat":
            return faiss.index_factory(d, "Flat", faiss.METRIC_INNER_PRODUCT)
        if params.kind == "ivf":
            index = faiss.index_factory(d, f"IVF{min(params.ivf_nlist, n)},Flat", faiss.METRIC_INNER_PRODUCT)
            index.train(item_vecs)
            return index
        if params.kind == "hnsw":
            index = faiss.index_factory(d, f"HNSW{params.hnsw_m},Flat", faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = params.hnsw_ef_construction
            return index
        raise ValueError(f"FaissIndex cannot build kind {params.kind!r} (use flat, ivf or hnsw)")

    @classmethod
    def finish(cls, index: faiss.Index, params: IndexParams) -> "FaissIndex":
        """A `FaissIndex` over a filled faiss index: IVF's direct map (reconstruct() for the exact fallback) and the
        query-time knobs of `params`."""
        if isinstance(index, faiss.IndexIVF):
            index.make_direct_map()
        result = cls(index)
        result.set_search_params(params)
        return result

    def set_search_params(self, params: IndexParams) -> None:
        """Apply the query-time knobs: IVF nprobe (capped at nlist), HNSW efSearch."""
        if isinstance(self.index, faiss.IndexIVF):
            self.index.nprobe = min(params.ivf_nprobe, self.index.nlist)
        if isinstance(self.index, faiss.IndexHNSW):
            self.index.hnsw.efSearch = params.hnsw_ef_search

    def save(self, path: str | Path) -> None:
        """Write the faiss index (vectors and search knobs included) to one file."""
        faiss.write_index(self.index, str(path))

    @classmethod
    def load(cls, path: str | Path, params: IndexParams | None = None) -> "FaissIndex":
        """Read an index written by `save`; `params` (optional) overrides nprobe / efSearch."""
        result = cls(faiss.read_index(str(path)))
        if params is not None:
            result.set_search_params(params)
        return result

    def item_vectors(self) -> np.ndarray:
        """The indexed `(N, D)` float32 vectors (reconstructed once, for the exact fallback)."""
        if self._vectors is None:
            self._vectors = self.index.reconstruct_n(0, self.n_items)
        return self._vectors

    def _topk(self, queries: np.ndarray, k: int, excluded: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        n_queries, n_vectors, _ = queries.shape
        k_search = min(self.n_items, k + max(ex.size for ex in excluded))
        hit_scores, hit_ids = self.index.search(queries.reshape(n_queries * n_vectors, self.dim), k_search)
        hit_scores = hit_scores.reshape(n_queries, n_vectors * k_search)
        hit_ids = hit_ids.reshape(n_queries, n_vectors * k_search)
        ids = np.empty((n_queries, k), dtype=np.int64)
        scores = np.empty((n_queries, k), dtype=np.float32)
        for row in range(n_queries):
            row_ids, row_scores = _merge_hits(hit_ids[row], hit_scores[row], excluded[row])
            if row_ids.size < k:
                self.fallback_queries += 1
                row_ids, row_scores = _exact_topk_one(self.item_vectors(), queries[row], k, excluded[row])
            ids[row], scores[row] = row_ids[:k], row_scores[:k]
        return ids, scores


def build_index(item_vecs: ArrayLike, params: IndexParams) -> CandidateIndex:
    """`(N, D)` output item vectors → `TorchIndex` (kind torch) or `FaissIndex` (flat | ivf | hnsw)."""
    if params.kind == "torch":
        return TorchIndex(item_vecs)
    return FaissIndex.build(item_vecs, params)


def score_candidate_lists(queries: Tensor, item_vecs: Tensor, candidates: Tensor) -> Tensor:
    """Candidate-list choice: scores restricted to each query's list.

    `(Q, M, D)` queries, `(N, D)` item vectors, `(Q, C)` long candidate ids → `(Q, C)` max-over-M
    inner products (differentiable; column order follows `candidates`).
    """
    if candidates.numel() and (int(candidates.min()) < 0 or int(candidates.max()) >= item_vecs.shape[0]):
        raise ValueError(f"candidate ids must be in 0..{item_vecs.shape[0] - 1}")
    return torch.einsum("qmd,qcd->qmc", queries, item_vecs[candidates]).amax(dim=1)
