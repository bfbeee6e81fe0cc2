"""`unirec benchmark index`: the synthetic vectors have the trained model's output width, and a small run measures
every kind against exact search (flat recall 1) and records a build that its budget stopped."""

from __future__ import annotations

import json

import numpy as np

from components.bench_index import benchmark_index, item_vector_width, synthetic_items, synthetic_users
from components.model.build import build_model

SMALL = {"benchmark.index_items": 3000, "benchmark.index_clusters": 30, "benchmark.index_queries": 12,
         "benchmark.index_warmup": 2, "benchmark.index_ivf_nlist": 32, "benchmark.index_ivf_nprobe": [1, 8],
         "benchmark.index_hnsw_ef_search": [16, 64]}


def test_synthetic_vectors_have_the_models_output_width(model_params) -> None:
    params = model_params()
    built = build_model(params)
    width = built.model.item_vectors().shape[1]
    assert sum(item_vector_width(params).values()) == width == 128 + 1 + 256  # retrieval_dim + bias + neighbours
    items, topic = synthetic_items(model_params(SMALL), 0)
    users = synthetic_users(model_params(SMALL), 0, 5)
    assert items.shape == (3000, width) and topic.shape == (3000,)
    assert users.shape == (5, params.model.num_user_tokens, width)
    np.testing.assert_allclose(np.linalg.norm(items[:, :128], axis=1), 1.0, atol=1e-5)  # the unit content block


def test_small_run_measures_every_kind_and_records_a_stopped_build(model_params, tmp_path, monkeypatch) -> None:
    params = model_params({**SMALL, "paths.metrics_dir": str(tmp_path)})
    result = benchmark_index(params)
    written = json.loads((tmp_path / "bench_index.json").read_text())
    assert written["kinds"].keys() == {"flat", "ivf", "hnsw"} and written["dim"] == 385
    assert [q["recall"] for q in written["kinds"]["flat"]["search"]] == [1.0]
    assert [q["ivf_nprobe"] for q in written["kinds"]["ivf"]["search"]] == [1, 8]
    assert [q["hnsw_ef_search"] for q in written["kinds"]["hnsw"]["search"]] == [16, 64]
    for kind, record in written["kinds"].items():
        assert record["complete"] and record["n_indexed"] == 3000, kind
        for q in record["search"]:
            assert 0.3 < q["recall"] <= 1.0 and q["p95_ms"] >= q["p50_ms"] > 0, kind
    ivf = written["kinds"]["ivf"]["search"]
    assert ivf[1]["recall"] >= ivf[0]["recall"]  # more cells searched, no fewer exact hits
    cos = written["synthetic"]["cosines"]
    assert cos["content"]["nearest_10_mean"] > cos["content"]["random_pair_mean"] + 0.2  # clustered
    assert "benchmark index: 3,000 synthetic items" in result.summary()
    monkeypatch.setattr("components.bench_index.CHUNK", 1000)  # three chunks: the budget stops after the first
    stopped = benchmark_index(model_params({**SMALL, "paths.metrics_dir": str(tmp_path),
                                            "benchmark.index_kinds": ["hnsw"], "benchmark.index_build_budget_s": 1e-9}))
    hnsw = stopped["kinds"]["hnsw"]
    assert not hnsw["complete"] and hnsw["n_indexed"] == 1000 and hnsw["projected_build_s"] > hnsw["build_s"]
    assert stopped["kinds"].keys() == {"hnsw"} and all(0 <= q["recall"] <= 1.0 for q in hnsw["search"])
