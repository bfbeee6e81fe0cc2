"""Pipeline step `index`: a faiss index over the output item vectors of the trained model.

Reads ``<train.out_dir>/item_vectors.npy`` (float32 `(N, D)`, row i = item idx i, written by `unirec train`),
builds ``index.kind`` (flat | ivf | hnsw, inner product) with `components.model.index.FaissIndex` and writes
``index.out_dir``:

* ``items.faiss`` — the index (vectors and search knobs included; `FaissIndex.load` reads it back);
* ``meta.json`` — kind, n_items, dim, the faiss index description, the build/search knobs and the sha256 of
  the source vectors, which ties the index to one trained model (`load_item_index` checks it);
* ``MANIFEST.json`` — the sha256 of the two files above (components/manifest.py): `load_item_index` checks the
  index file itself before reading it, so an index whose vector rows were overwritten is refused.

The source vectors are checked against train's manifest before the index is built.

Deterministic (no timings in meta.json), so an unchanged model gives byte-identical outputs. Kind ``torch``
is the in-memory exact index of the tests and is refused here: the step exists to write a faiss file.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from components.artifacts import load_npy, read_json, reading
from components.config import IndexParams, Params
from components.manifest import verify_manifest, write_manifest
from components.utils import sha256_of
from components.model.index import FaissIndex, build_index

__all__ = ["ItemIndexError", "IndexReport", "build_item_index", "load_item_index", "INDEX_FILE", "META_FILE"]

INDEX_FILE = "items.faiss"
META_FILE = "meta.json"
VECTORS_FILE = "item_vectors.npy"


class ItemIndexError(ValueError):
    """The index cannot be built or does not belong to the model it is loaded with."""


@dataclass
class IndexReport:
    kind: str
    n_items: int
    dim: int
    out_dir: str
    vectors_sha256: str
    exact_agreement: float
    """Share of the top-10 ids of 32 probe queries (the first item vectors) that the index returns as the
    exact search does (1.0 for flat; below 1 only for an approximate IVF/HNSW that falls short)."""
    seconds: float = 0.0

    def summary(self) -> str:
        return (f"index: {self.kind} over {self.n_items} items x {self.dim} dims → {self.out_dir} "
                f"(vectors sha256 {self.vectors_sha256[:12]}, top-10 agreement with exact search "
                f"{self.exact_agreement:.3f}, {self.seconds:.2f}s)")


def _load_vectors(path: Path) -> np.ndarray:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no item vectors; run `unirec train` first")
    verify_manifest(path.parent, "train", [path.name])
    vectors = load_npy(path, "train")
    if vectors.ndim != 2 or vectors.shape[0] == 0 or not np.isfinite(vectors).all():
        raise ItemIndexError(f"{path}: item vectors must be a finite (N, D) array with N >= 1, got {vectors.shape}")
    return np.ascontiguousarray(vectors, dtype=np.float32)


def _agreement(index: FaissIndex, vectors: np.ndarray, probes: int = 32, k: int = 10) -> float:
    """Share of exact top-k ids (probe queries = the first item vectors `(P, D)`) the index also returns."""
    queries = vectors[:probes]
    k = min(k, vectors.shape[0])
    exact = np.argsort(-(queries @ vectors.T), axis=1, kind="stable")[:, :k]  # (P, k)
    got, _ = index.topk(queries, k)
    return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(exact.tolist(), got.tolist())]))


def build_item_index(params: Params) -> IndexReport:
    """Build and write the faiss index of the trained model's item vectors (see the module docstring)."""
    start = time.perf_counter()
    cfg = params.index
    if cfg.kind == "torch":
        raise ItemIndexError("index.kind 'torch' is the in-memory exact index of the tests; the index step writes a "
                          "faiss file: set index.kind to flat, ivf or hnsw")
    source = params.resolve(params.train.out_dir) / VECTORS_FILE
    vectors = _load_vectors(source)
    index = build_index(vectors, cfg)
    assert isinstance(index, FaissIndex)
    out = params.resolve(cfg.out_dir)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    index.save(tmp / INDEX_FILE)
    digest = sha256_of(source)
    meta = {"kind": cfg.kind, "n_items": int(vectors.shape[0]), "dim": int(vectors.shape[1]),
            "metric": "inner_product", "faiss_index": type(index.index).__name__,
            "params": cfg.model_dump(exclude={"out_dir"}), "source": VECTORS_FILE, "vectors_sha256": digest,
            "faiss_version": faiss.__version__}
    (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    write_manifest(tmp, [tmp / INDEX_FILE, tmp / META_FILE], "index")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return IndexReport(kind=cfg.kind, n_items=meta["n_items"], dim=meta["dim"], out_dir=str(cfg.out_dir),
                       vectors_sha256=digest, exact_agreement=_agreement(index, vectors),
                       seconds=time.perf_counter() - start)


def load_item_index(folder: Path, vectors_file: Path, params: IndexParams) -> FaissIndex:
    """Read `<folder>/items.faiss` and check that it indexes exactly `vectors_file` (sha256 and shape); the index
    and meta.json are checked against the folder's manifest first.

    `params` supplies the query-time knobs (IVF nprobe, HNSW efSearch)."""
    meta_path, index_path = folder / META_FILE, folder / INDEX_FILE
    if not meta_path.is_file() or not index_path.is_file():
        raise FileNotFoundError(f"{folder}: no faiss index ({INDEX_FILE} + {META_FILE}); run `unirec index` first")
    verify_manifest(folder, "index", [INDEX_FILE, META_FILE])
    meta = read_json(meta_path, "index")
    digest = sha256_of(vectors_file)
    if meta.get("vectors_sha256") != digest:
        raise ItemIndexError(f"{folder}: the index was built from item vectors with sha256 "
                          f"{str(meta.get('vectors_sha256'))[:12]}, but {vectors_file} has {digest[:12]}: "
                          "rerun `unirec index` after training")
    with reading(index_path, "index"):
        index = FaissIndex.load(index_path, params)
    if (index.n_items, index.dim) != (meta["n_items"], meta["dim"]):
        raise ItemIndexError(f"{index_path}: holds {index.n_items} x {index.dim} vectors, meta.json says "
                          f"{meta['n_items']} x {meta['dim']}")
    return index
