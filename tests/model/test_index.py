"""CandidateIndex: exactly k distinct valid unseen items, torch/faiss agreement, ANN recall, save/load."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from components.config import IndexParams, load_params
from components.model.heads import set_scores
from components.model.index import FaissIndex, TorchIndex, build_index, score_candidate_lists

REPO = Path(__file__).resolve().parents[2]
INDEX = load_params(REPO / "params.yaml").index


def index_params(kind: str, **update: object) -> IndexParams:
    return INDEX.model_copy(update={"kind": kind, **update})


def exact_topk(items: np.ndarray, queries: np.ndarray, k: int, exclude: list[list[int]]) -> np.ndarray:
    """Brute-force reference: max over M, excluded set to -inf, full argsort."""
    scores = np.einsum("qmd,nd->qmn", queries, items).max(axis=1)
    for row, ex in enumerate(exclude):
        scores[row, ex] = -np.inf
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


@st.composite
def retrieval_case(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, int, list[list[int]]]:
    n, d = draw(st.integers(3, 60)), draw(st.integers(2, 8))
    q, m = draw(st.integers(1, 4)), draw(st.integers(1, 3))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    exclude = [sorted(rng.choice(n, size=draw(st.integers(0, n - 1)), replace=False).tolist()) for _ in range(q)]
    k = draw(st.integers(1, n - max(len(ex) for ex in exclude)))
    items = rng.standard_normal((n, d)).astype(np.float32)
    queries = rng.standard_normal((q, m, d)).astype(np.float32)
    return items, queries, k, exclude


@pytest.mark.parametrize("kind", ["torch", "flat", "ivf", "hnsw"])
@given(case=retrieval_case())
@settings(max_examples=40, deadline=None)
def test_topk_returns_k_distinct_valid_unseen_items(kind: str, case: tuple) -> None:
    items, queries, k, exclude = case
    index = build_index(items, index_params(kind, ivf_nlist=4, ivf_nprobe=1, hnsw_m=4, hnsw_ef_search=2))
    ids, scores = index.topk(queries, k, exclude)
    assert ids.shape == scores.shape == (len(queries), k)
    assert ids.dtype == np.int64 and scores.dtype == np.float32
    for row in range(len(queries)):
        assert len(set(ids[row].tolist())) == k
        assert ids[row].min() >= 0 and ids[row].max() < len(items)
        assert not set(ids[row].tolist()) & set(exclude[row])
        assert np.all(np.diff(scores[row]) <= 1e-6)  # best first
    if kind in ("torch", "flat"):  # exact kinds: same scores as brute force (ids up to exact ties)
        ref = exact_topk(items, queries, k, exclude)
        ref_scores = np.take_along_axis(np.einsum("qmd,nd->qmn", queries, items).max(axis=1), ref, axis=1)
        assert np.allclose(scores, ref_scores, atol=1e-5)


@pytest.mark.parametrize("kind", ["torch", "flat"])
def test_too_large_k_and_bad_excludes_raise(kind: str) -> None:
    index = build_index(np.eye(5, dtype=np.float32), index_params(kind))
    queries = np.ones((2, 1, 5), dtype=np.float32)
    with pytest.raises(ValueError, match="query 1"):
        index.topk(queries, 3, [[0], [0, 1, 2]])
    with pytest.raises(ValueError, match="0..4"):
        index.topk(queries, 1, [[5], []])
    with pytest.raises(ValueError, match="2 queries"):
        index.topk(queries, 1, [[0]])
    ids, _ = index.topk(queries, 2, [[0, 0, 1], [4]])  # duplicates count once
    assert ids.shape == (2, 2)


def random_catalogue(n: int = 2000, d: int = 32, q: int = 100, m: int = 4, seed: int = 0):
    rng = np.random.default_rng(seed)
    items = rng.standard_normal((n, d)).astype(np.float32)
    queries = rng.standard_normal((q, m, d)).astype(np.float32)
    exclude = [rng.choice(n, size=rng.integers(0, 50), replace=False).tolist() for _ in range(q)]
    return items, queries, exclude


def test_torch_and_faiss_flat_agree_exactly() -> None:
    items, queries, exclude = random_catalogue()
    torch_ids, torch_scores = TorchIndex(items).topk(queries, 20, exclude)
    flat_ids, flat_scores = build_index(items, index_params("flat")).topk(queries, 20, exclude)
    assert np.array_equal(torch_ids, flat_ids)
    assert np.allclose(torch_scores, flat_scores, atol=1e-4)
    assert np.array_equal(flat_ids, exact_topk(items, queries, 20, exclude))
    # (Q, D) queries mean M = 1
    assert np.array_equal(TorchIndex(items).topk(queries[:, 0], 5)[0], exact_topk(items, queries[:, :1], 5, [[]] * 100))


@pytest.mark.parametrize(
    "params", [index_params("ivf", ivf_nlist=16, ivf_nprobe=16), index_params("hnsw")], ids=["ivf", "hnsw"]
)
def test_approximate_indexes_recall(params: IndexParams) -> None:
    items, queries, exclude = random_catalogue(seed=1)
    ids, _ = build_index(items, params).topk(queries, 20, exclude)
    ref = exact_topk(items, queries, 20, exclude)
    recall = np.mean([len(set(a) & set(b)) / 20 for a, b in zip(ids.tolist(), ref.tolist())])
    assert recall >= 0.99


def test_ivf_falls_back_to_exact_search_when_short() -> None:
    items, queries, exclude = random_catalogue(n=200, d=8, q=20, seed=2)
    index = FaissIndex.build(items, index_params("ivf", ivf_nlist=50, ivf_nprobe=1))  # ~4 items per cell
    ids, _ = index.topk(queries, 30, exclude)
    assert index.fallback_queries > 0
    assert np.array_equal(ids, exact_topk(items, queries, 30, exclude))


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_save_load_roundtrip(kind: str, tmp_path: Path) -> None:
    items, queries, exclude = random_catalogue(n=300, d=8, q=10, seed=3)
    index = FaissIndex.build(items, index_params(kind, ivf_nlist=8, ivf_nprobe=3))
    index.save(tmp_path / "items.faiss")
    loaded = FaissIndex.load(tmp_path / "items.faiss")
    assert loaded.n_items == 300 and loaded.dim == 8
    assert np.array_equal(loaded.topk(queries, 10, exclude)[0], index.topk(queries, 10, exclude)[0])
    assert np.allclose(loaded.item_vectors(), items)
    if kind == "ivf":
        assert loaded.index.nprobe == 3
        assert FaissIndex.load(tmp_path / "items.faiss", index_params("ivf", ivf_nprobe=5)).index.nprobe == 5


def test_build_index_kinds() -> None:
    items = np.random.default_rng(0).standard_normal((10, 4)).astype(np.float32)
    assert isinstance(build_index(torch.from_numpy(items), index_params("torch")), TorchIndex)
    assert isinstance(build_index(items, index_params("hnsw")), FaissIndex)


def test_score_candidate_lists_matches_set_scores() -> None:
    gen = torch.Generator().manual_seed(0)
    queries, items = torch.randn(3, 2, 6, generator=gen), torch.randn(40, 6, generator=gen)
    candidates = torch.randint(0, 40, (3, 20), generator=gen)
    got = score_candidate_lists(queries, items, candidates)
    assert got.shape == (3, 20)
    for row in range(3):
        assert torch.allclose(got[row], set_scores(queries[row : row + 1], items[candidates[row]])[0])
    with pytest.raises(ValueError):
        score_candidate_lists(queries, items, candidates + 40)
