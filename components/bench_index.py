"""`unirec benchmark index`: faiss flat / IVF / HNSW at catalogue scale, on synthetic item vectors.

Builds every kind of `benchmark.index_kinds` with `components.model.index.FaissIndex` — the code the `index` step
and serving use — over `benchmark.index_items` synthetic item vectors of the trained model's output width, and
measures per kind: build time (IVF: k-means training + adding; HNSW: graph construction), the process's resident
memory growth, and for each query-time setting (IVF nprobe, HNSW efSearch: `benchmark.index_ivf_nprobe`,
`benchmark.index_hnsw_ef_search`) recall@K against exact search and the latency of `CandidateIndex.topk` for ONE
user (batch size 1, the user's M = `model.num_user_tokens` vectors, max over M; K = `benchmark.retrieval_k`) →
p50 / p95.

**Width.** An output item vector is `[ v (model.retrieval_dim, unit) ; b (1 with model.item_bias) ; F (
embed_items.neighbours.rank with the item-neighbourhood term, model.item_neighbours.window > 0) ]` and a user
vector `[ u (unit) ; c ≈ 1 ; q = β Σ_{r<L} δ^r f ]` (`UniversalRecModel.catalogue`, docs/design.md §6):
`item_vector_width` computes it from params (385 with the defaults; a test checks it on the tiny model).

**Synthetic vectors, and why clustered.** Isotropic random vectors in 385 dimensions are all nearly orthogonal:
every item is about as close to a query as every other, exact top-10 is decided by noise, and an IVF or HNSW
index cannot find it — a benchmark of nothing. Trained item vectors are concentrated around topics. So each item
belongs to one of `benchmark.index_clusters` topics (uniformly drawn); each block is `unit(centre_t + noise·g/√d)`
with g ~ N(0, I) and its topic's centre, so an item's cosine to its centre is ≈ 1/√(1 + noise²)
(`benchmark.index_noise`); the bias column is N(0, `benchmark.index_bias_std`²). Topics are not independent
either: each topic centre is drawn the same way around one of `benchmark.index_super_clusters` random unit centres
(`benchmark.index_topic_spread`), so neighbouring topics overlap — with independent topics, IVF's cells at 1M items
held whole topics and nprobe 1 already found every exact hit (measured: recall 1.0 at nprobe 1, 2000 topics, 1024
cells), which says nothing about real catalogues, whose neighbourhoods straddle cells. Each user vector m is drawn around its own random topic the same way, with
bias coordinate 1 and the neighbourhood block scaled by β Σ_{r<L} δ^r (`model.item_neighbours`: weight, window,
decay), the weight a user vector's block has when its last L items share the topic. The top-10 of a user is then
a few items of the user's topics, the shape IVF's cells and HNSW's graph exploit.

**Exact reference.** Flat is built first: `topk` over a flat inner-product index is exact (components/model/index.py),
and its answers are the reference of recall@K. A build that is still adding vectors after
`benchmark.index_build_budget_s` seconds stops (vectors are added in chunks of `CHUNK`; flat, the reference, always
completes); the JSON then says how many items it
indexed, and its recall is measured against exact search over those same items. Nothing is reduced silently.

Writes ``<paths.metrics_dir>/bench_index.json`` after each kind (a long HNSW build keeps what was measured).
"""

from __future__ import annotations

import gc
import json
import logging
import math
import os
import subprocess
import time
from datetime import datetime, timezone

import faiss
import numpy as np

from components.config import BenchmarkParams, IndexParams, Params
from components.model.index import FaissIndex

__all__ = ["IndexBenchmark", "benchmark_index", "item_vector_width", "synthetic_items", "synthetic_users"]
log = logging.getLogger(__name__)
CHUNK = 50_000
"""Vectors generated and added per call (bounds the float64 temporaries; the build budget is checked between chunks)."""


class IndexBenchmark(dict):
    """The JSON written to bench_index.json (a dict), with a one-screen summary for the CLI."""

    def summary(self) -> str:
        lines = [f"benchmark index: {self['n_items']:,} synthetic items x {self['dim']} dims, {self['queries']} users "
                 f"(M = {self['m']}, K = {self['k']}, batch size 1), {self['threads']} build threads, "
                 f"{self['query_threads']} query threads"]
        for kind, r in self["kinds"].items():
            built = "" if r["complete"] else \
                f" (stopped at {r['n_indexed']:,} items, projected {r['projected_build_s']:.0f} s)"
            lines.append(f"  {kind:<5} build {r['build_s']:8.1f} s{built}, +{r['rss_delta_gib']:.2f} GiB")
            for q in r["search"]:
                knob = ", ".join(f"{key} {v}" for key, v in q.items() if key in ("ivf_nprobe", "hnsw_ef_search"))
                lines.append(f"        {knob or 'exact':<20} recall@{self['k']} {q['recall']:.4f}, "
                             f"p50 {q['p50_ms']:.2f} ms, p95 {q['p95_ms']:.2f} ms")
        return "\n".join(lines)


def item_vector_width(params: Params) -> dict[str, int]:
    """The blocks of the model's output item vector: content (retrieval_dim), bias (1 or 0), neighbours (k or 0)."""
    m = params.model
    return {"content": m.retrieval_dim, "bias": int(m.item_bias),
            "neighbours": params.embed_items.neighbours.rank if m.item_neighbours.window else 0}


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _around(centres: np.ndarray, noise: float, rng: np.random.Generator) -> np.ndarray:
    """unit(centre + noise · g/√d) for each row of `centres` `(n, d)`, float32."""
    d = centres.shape[1]
    g = rng.standard_normal(centres.shape, dtype=np.float32)
    return _unit(centres + np.float32(noise / np.sqrt(d)) * g).astype(np.float32)


def _centres(params: Params, rng: np.random.Generator) -> list[np.ndarray]:
    """Topic centres `(clusters, d)` per block: each around one of `index_super_clusters` random unit centres
    (genre → sub-genre), unit(super + index_topic_spread · g/√d)."""
    parts, cfg = item_vector_width(params), params.benchmark
    out = []
    for block in ("content", "neighbours"):
        if parts[block]:
            supers = _unit(rng.standard_normal((cfg.index_super_clusters, parts[block]), dtype=np.float32))
            out.append(_around(supers[rng.integers(cfg.index_super_clusters, size=cfg.index_clusters)],
                               cfg.index_topic_spread, rng))
    return out


def synthetic_items(params: Params, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(`(N, D)` float32 item vectors, `(N,)` topic of each) — see the module docstring."""
    cfg = params.benchmark
    parts = item_vector_width(params)
    rng = np.random.default_rng([seed, 1])
    centres = _centres(params, rng)
    topic = rng.integers(cfg.index_clusters, size=cfg.index_items)
    out = np.empty((cfg.index_items, sum(parts.values())), dtype=np.float32)
    for start in range(0, cfg.index_items, CHUNK):
        t = topic[start:start + CHUNK]
        blocks = [_around(centres[0][t], cfg.index_noise, rng)]
        if parts["bias"]:
            blocks.append(rng.normal(0.0, cfg.index_bias_std, (len(t), 1)).astype(np.float32))
        if parts["neighbours"]:
            blocks.append(_around(centres[1][t], cfg.index_noise, rng))
        out[start:start + len(t)] = np.concatenate(blocks, axis=1)
    return out, topic


def synthetic_users(params: Params, seed: int, n_users: int) -> np.ndarray:
    """`(U, M, D)` float32 user vectors, each of the M around its own random topic (module docstring)."""
    cfg, m = params.benchmark, params.model
    parts = item_vector_width(params)
    rng = np.random.default_rng([seed, 1])
    centres = _centres(params, rng)  # the items' centres: same seed, same first draws
    rng = np.random.default_rng([seed, 2])
    topic = rng.integers(cfg.index_clusters, size=(n_users * m.num_user_tokens))
    blocks = [_around(centres[0][topic], cfg.index_noise, rng)]
    if parts["bias"]:
        blocks.append(np.ones((len(topic), 1), dtype=np.float32))
    if parts["neighbours"]:
        nb = m.item_neighbours
        weight = nb.weight * sum(nb.decay ** r for r in range(nb.window))
        blocks.append(np.float32(weight) * _around(centres[1][topic], cfg.index_noise, rng))
    return np.concatenate(blocks, axis=1).reshape(n_users, m.num_user_tokens, -1)


def _rss_gib() -> float:
    """Current resident set size of this process (VmRSS), GiB."""
    with open("/proc/self/status", encoding="ascii") as f:
        kib = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return kib / 1024 ** 2


def _exact_topk(items: np.ndarray, users: np.ndarray, k: int) -> np.ndarray:
    """`(U, k)` exact max-over-M top-k ids of `users` `(U, M, D)` over `items` `(N, D)` (set order only matters)."""
    out = np.empty((users.shape[0], k), dtype=np.int64)
    for u, q in enumerate(users):
        scores = np.full(items.shape[0], -np.inf, dtype=np.float32)
        for start in range(0, items.shape[0], 200_000):
            scores[start:start + 200_000] = (items[start:start + 200_000] @ q.T).max(axis=1)
        out[u] = np.argpartition(-scores, k - 1)[:k]
    return out


def _build(kind: str, items: np.ndarray, cfg: IndexParams, budget_s: float) -> tuple[FaissIndex, dict]:
    """Build `kind` over `items`, adding in chunks until done or over `budget_s`; returns the index and the record."""
    gc.collect()
    rss = _rss_gib()
    start = time.perf_counter()
    index = FaissIndex.empty(items, cfg)
    trained = time.perf_counter() - start
    added = 0
    while added < items.shape[0] and (added == 0 or time.perf_counter() - start < budget_s):
        index.add(items[added:added + CHUNK])
        added = min(items.shape[0], added + CHUNK)
        log.info("%s: %d / %d items indexed after %.0f s", kind, added, items.shape[0], time.perf_counter() - start)
    result = FaissIndex.finish(index, cfg)
    seconds = time.perf_counter() - start
    record = {"build_s": seconds, "train_s": trained, "n_indexed": added, "complete": added == items.shape[0],
              "projected_build_s": trained + (seconds - trained) * items.shape[0] / max(added, 1),
              "rss_delta_gib": _rss_gib() - rss, "faiss_index": type(index).__name__}
    return result, record


def _time_queries(index: FaissIndex, users: np.ndarray, k: int, warmup: int, threads: int
                  ) -> tuple[np.ndarray, list[float]]:
    """Answer each user alone (batch size 1) with `threads` faiss threads; the first `warmup` untimed. Returns the
    ids `(U, k)` and the ms. (On a loaded 2-core machine a 2-thread OpenMP region waits for a second core: measured
    at 100,000 items, IVF p50 0.4 ms with 1 thread against 0.3 or 8.0 ms with 2, run to run.)"""
    build_threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(threads)
    ids = np.empty((users.shape[0], k), dtype=np.int64)
    ms: list[float] = []
    try:
        for u, q in enumerate(users):
            start = time.perf_counter()
            ids[u] = index.topk(q[None], k)[0][0]
            if u >= warmup:
                ms.append((time.perf_counter() - start) * 1e3)
    finally:
        faiss.omp_set_num_threads(build_threads)
    return ids[warmup:], ms


def _machine() -> dict:
    """What the figures were measured on and beside: CPU, cores, load, and the other processes using the most CPU
    (`ps` pcpu = CPU time over the process's lifetime, elapsed time, command; this process left out)."""
    model = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    try:
        ps = subprocess.run(["ps", "-eo", "pid,pcpu,etime,comm", "--sort=-pcpu"], capture_output=True, text=True,
                            timeout=10)
        rows = [line.split(None, 3) for line in ps.stdout.splitlines()[1:]]
        busiest = [" ".join(r[1:]) for r in rows if len(r) == 4 and int(r[0]) != os.getpid()][:8]
    except (OSError, subprocess.SubprocessError):
        busiest = []
    return {"cpu": model, "cores": os.cpu_count(), "load_avg_1_5_15": [round(x, 2) for x in os.getloadavg()],
            "other_processes_pcpu_etime_comm": busiest}


def _git_commit(root: object) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=str(root), capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _search_settings(kind: str, cfg: BenchmarkParams) -> list[dict[str, int]]:
    """The query-time knobs measured for `kind`: every IVF nprobe, every HNSW efSearch of the sweep."""
    if kind == "ivf":
        return [{"ivf_nprobe": v} for v in cfg.index_ivf_nprobe]
    if kind == "hnsw":
        return [{"hnsw_ef_search": v} for v in cfg.index_hnsw_ef_search]
    return [{}]


def neighbourhood_cosines(items: np.ndarray, parts: dict[str, int], seed: int, sample: int = 200) -> dict:
    """Per block (content, neighbours): mean cosine of `sample` random items to their 10 nearest other items and to
    a random item — how clustered the catalogue is (the same figures of a trained model: docs/experiments.md §7.3)."""
    rng = np.random.default_rng([seed, 3])
    rows = rng.choice(items.shape[0], size=min(sample, items.shape[0]), replace=False)
    out: dict[str, dict[str, float]] = {}
    begin = 0
    for block in ("content", "bias", "neighbours"):
        width = parts[block]
        if block != "bias" and width:
            x = items[:, begin:begin + width]
            norms = np.maximum(np.linalg.norm(x, axis=1), 1e-12)
            top = np.empty((len(rows), 10), dtype=np.float32)
            rand = []
            for i, r in enumerate(rows):
                cos = (x @ x[r]) / (norms * norms[r])
                cos[r] = -np.inf
                top[i] = np.partition(cos, len(cos) - 10)[-10:]
                rand.append(float(cos[(r + 1 + rng.integers(len(cos) - 1)) % len(cos)]))
            out[block] = {"nearest_10_mean": float(top.mean()), "nearest_10th_mean": float(top.min(axis=1).mean()),
                          "random_pair_mean": float(np.mean(rand))}
        begin += width
    return out


def benchmark_index(params: Params) -> IndexBenchmark:
    """Build and time every kind of `benchmark.index_kinds` over the synthetic catalogue → bench_index.json."""
    cfg = params.benchmark
    k, m, seed = cfg.retrieval_k, params.model.num_user_tokens, params.seed
    unknown = sorted(set(cfg.index_kinds) - {"flat", "ivf", "hnsw"})
    if unknown:
        raise ValueError(f"benchmark.index_kinds: {unknown} are not faiss kinds (flat, ivf, hnsw)")
    if k > cfg.index_items:
        raise ValueError(f"benchmark.retrieval_k {k} exceeds benchmark.index_items {cfg.index_items}")
    out_file = params.resolve(params.paths.metrics_dir) / "bench_index.json"
    out_file.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    items, topic = synthetic_items(params, seed)
    users = synthetic_users(params, seed, cfg.index_warmup + cfg.index_queries)
    generated = time.perf_counter() - start
    parts = item_vector_width(params)
    build_knobs = {"flat": IndexParams(**{**params.index.model_dump(), "kind": "flat"}),
                   "ivf": IndexParams(**{**params.index.model_dump(), "kind": "ivf", "ivf_nlist": cfg.index_ivf_nlist}),
                   "hnsw": IndexParams(**{**params.index.model_dump(), "kind": "hnsw"})}
    result = IndexBenchmark(
        command="unirec benchmark index", date=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        git_commit=_git_commit(params.root), n_items=cfg.index_items, dim=int(items.shape[1]), dim_parts=parts,
        m=m, k=k, queries=cfg.index_queries, warmup=cfg.index_warmup, threads=faiss.omp_get_max_threads(),
        query_threads=cfg.index_query_threads,
        faiss_version=faiss.__version__,
        synthetic={"clusters": cfg.index_clusters, "super_clusters": cfg.index_super_clusters,
                   "topic_spread": cfg.index_topic_spread, "noise": cfg.index_noise, "bias_std": cfg.index_bias_std,
                   "items_per_cluster_mean": cfg.index_items / cfg.index_clusters,
                   "user_neighbour_block_weight": float(np.linalg.norm(users[0, 0, parts["content"] + parts["bias"]:]))
                   if parts["neighbours"] else None,
                   "how": "per block, each item and each of a user's M vectors near one of `clusters` topic centres, "
                          "each topic centre near one of `super_clusters` random unit centres (components/bench_index.py)", "seed": seed, "generate_s": generated,
                   "cosines": neighbourhood_cosines(items, parts, seed)},
        build_budget_s=cfg.index_build_budget_s, machine_start=_machine(), kinds={})
    timed_users = users[cfg.index_warmup:]
    exact: np.ndarray | None = None
    for kind in ["flat", *[k_ for k_ in cfg.index_kinds if k_ != "flat"]]:
        knobs = build_knobs[kind]
        index, record = _build(kind, items, knobs, math.inf if kind == "flat" else cfg.index_build_budget_s)
        record["knobs"] = knobs.model_dump(include={"ivf_nlist"} if kind == "ivf" else
                                           {"hnsw_m", "hnsw_ef_construction"} if kind == "hnsw" else set())
        # the reference: flat's own answers (exact); for a build its budget stopped, exact search over its items
        reference = exact if record["complete"] else _exact_topk(items[:record["n_indexed"]], timed_users, k)
        record["search"] = []
        for setting in _search_settings(kind, cfg):
            index.set_search_params(knobs.model_copy(update=setting))
            index.fallback_queries = 0
            ids, ms = _time_queries(index, users, k, cfg.index_warmup, cfg.index_query_threads)
            if kind == "flat":
                exact = reference = ids
            recall = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(ids.tolist(), reference.tolist())]))
            record["search"].append(setting | {
                "recall": recall, "p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95)),
                "mean_ms": float(np.mean(ms)), "fallback_queries": index.fallback_queries})
            log.info("%s %s: %s", kind, setting, record["search"][-1])
        if kind in cfg.index_kinds:
            result["kinds"][kind] = record
            result["machine_end"] = _machine()
            out_file.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        del index
        gc.collect()
    if exact is not None:  # how concentrated the exact answers are: distinct topics among a user's top-K
        result["synthetic"]["exact_topk_topics_mean"] = float(np.mean([len(np.unique(topic[row])) for row in exact]))
    result["machine_end"] = _machine()
    out_file.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return result
