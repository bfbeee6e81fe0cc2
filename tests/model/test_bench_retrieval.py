"""`unirec benchmark retrieval`: the title trie allows exactly the titles, the beam search returns K
distinct real (unseen) catalogue items, and the benchmark writes its JSON with positive latencies."""

from __future__ import annotations

import json

import pytest

from components.bench_retrieval import (TitleTrie, beam_search_items, benchmark_retrieval, benchmark_rows,
                                        seen_items, title_sequences)
from components.bench_train import item_names
from components.model.batching import collate
from components.model.build import load_trained
from components.model.prompting import encode_example
from components.select_gates import select_gates
from components.train import train

EOS = 0
TITLES = {10: [5, 6], 11: [5, 6, 7], 12: [5, 8], 13: [9], 14: [5, 8]}  # 12 and 14: identical sequences


def test_trie_allows_only_title_continuations_and_eos_at_complete_titles() -> None:
    trie = TitleTrie(TITLES, EOS)
    assert trie.n_items == 5 and sorted(trie.lengths()) == [2, 3, 3, 3, 4]
    assert sorted(trie.allowed([])) == [5, 9]
    assert sorted(trie.allowed([5])) == [6, 8]  # no EOS: [5] is no title
    assert sorted(trie.allowed([5, 6])) == [EOS, 7]  # [5, 6] is complete and a prefix of [5, 6, 7]
    assert trie.allowed([5, 6, 7]) == [EOS]
    assert trie.allowed([9]) == [EOS]
    assert trie.allowed([7]) == [] and trie.allowed([5, 6, 7, EOS]) == []  # off the trie / finished


def test_trie_maps_sequences_back_to_items_with_duplicates() -> None:
    trie = TitleTrie(TITLES, EOS)
    assert trie.items([5, 6, EOS]) == [10]
    assert trie.items([5, 6, 7, EOS, EOS, EOS]) == [11]  # padding after EOS ignored
    assert sorted(trie.items([5, 8, EOS])) == [12, 14]  # identical titles map to all their ids
    assert trie.items([5, 6]) == [] and trie.items([5, EOS]) == [] and trie.items([7, EOS]) == []


def test_pruned_trie_drops_seen_items_without_touching_the_original() -> None:
    trie = TitleTrie(TITLES, EOS)
    view = trie.pruned([11, 13, 12])
    assert view.n_items == 2 and trie.n_items == 5
    assert view.allowed([]) == [5]  # 13 was the only title starting with 9
    assert view.allowed([5, 6]) == [EOS]  # 11 ([5, 6, 7]) is gone
    assert view.allowed([5, 8]) == [EOS] and view.items([5, 8, EOS]) == [14]  # 14 keeps the shared title
    gone = view.pruned([14])
    assert gone.allowed([5]) == [6] and gone.items([5, 8, EOS]) == []
    assert sorted(trie.allowed([])) == [5, 9] and sorted(trie.items([5, 8, EOS])) == [12, 14]


def test_trie_rejects_eos_inside_a_title() -> None:
    with pytest.raises(ValueError, match="EOS"):
        TitleTrie({1: [3, EOS, 4]}, EOS)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, model_project):
    """A tiny model trained for a few steps, shared by the model-level tests of this module."""
    from tests.model.conftest import TINY_MODEL
    from tests.conftest import params_in

    tmp = tmp_path_factory.mktemp("bench_retrieval")
    params = params_in(model_project, {**TINY_MODEL, "train.out_dir": str(tmp / "unirec"),
                                       "train.checkpoint_dir": str(tmp / "checkpoints"),
                                       "paths.metrics_dir": str(tmp / "metrics"),
                                       "select_gates.out_file": str(tmp / "gates.json"),
                                       "select_gates.metrics_file": str(tmp / "metrics" / "gates.json"),
                                       "mlflow.tracking_uri": f"sqlite:///{tmp / 'mlflow.db'}",
                                       "train.max_steps": 3, "train.precision": "32-true",
                                       "benchmark.retrieval_users": 3, "benchmark.retrieval_k": 5,
                                       "benchmark.retrieval_warmup": 1,
                                       "benchmark.retrieval_max_new_tokens": 64,
                                       "benchmark.generator_steps": 4,
                                       "benchmark.generator_dir": str(tmp / "title_generator")})
    train(params)
    select_gates(params)
    return params


def test_beam_search_returns_k_distinct_real_unseen_items(trained) -> None:
    params, k = trained, trained.benchmark.retrieval_k
    built = load_trained(params)
    tok, spec = built.backbone.tokenizer, built.spec
    trie = TitleTrie(title_sequences(item_names(params), tok), spec.eos_id)
    assert max(trie.lengths()) <= params.benchmark.retrieval_max_new_tokens  # every beam can finish
    seen = seen_items(params)
    for row in benchmark_rows(params):
        ex = encode_example({**row, "task": "text"}, tok, spec, with_target=False)
        assert ex.input_ids[-1] == spec.lm_id and ex.item_ids  # same prompt, ending in [LM]
        user_seen = seen[int(row["user_idx"])]
        items, complete = beam_search_items(built.model, collate([ex], tok.pad_token_id),
                                            trie.pruned(user_seen), k, params.benchmark.retrieval_max_new_tokens)
        assert complete == k  # all K returned sequences are complete titles
        assert len(items) == k and len(set(items)) == k
        assert all(0 <= i < built.model.n_items for i in items)
        assert not set(items) & set(user_seen)


def test_benchmark_writes_json_with_positive_latencies(trained) -> None:
    params, k = trained, trained.benchmark.retrieval_k
    result = benchmark_retrieval(params)
    written = json.loads((params.resolve(params.paths.metrics_dir) / "bench_retrieval.json").read_text())
    assert written == json.loads(json.dumps(result))
    assert written["users"] == 3 and written["k"] == k and written["template"] == "next_item/seen-3"
    for side in ("set_out", "beam"):
        figures = written[side]
        assert 0 < figures["p50_ms"] <= figures["p95_ms"] and figures["users_per_s"] > 0
        assert 0.0 <= figures[f"hr@{k}"] <= 1.0 and figures["users_with_fewer_than_k"] == 0
    assert written["speedup_p50"] == pytest.approx(written["beam"]["p50_ms"] / written["set_out"]["p50_ms"])
    assert written["beam"]["complete_sequence_fraction"] == 1.0
    assert len(written["sample"]["set_out"]) == len(written["sample"]["beam"]) == k
    assert 0.0 <= written["beam"][f"ndcg@{k}"] <= written["beam"][f"hr@{k}"]
    for metric in (f"hr@{k}", f"ndcg@{k}"):
        rec = written["comparison"][metric]
        assert rec["users"] == 3 and rec["set_out"] == pytest.approx(written["set_out"][metric])
        assert rec["diff"] == pytest.approx(written["set_out"][metric] - written["beam"][metric])
        assert rec["ci95"][0] <= rec["diff"] <= rec["ci95"][1] and rec["verdict"] in ("beats", "ties", "loses")
    adapter = written["beam"]["adapter"]
    assert adapter["steps"] == 4 and adapter["rows"] > 0 and len(written["beam"]["adapter_loss_curve"]) >= 2
    assert "benchmark retrieval" in result.summary()
    meta = params.resolve(params.benchmark.generator_dir) / "meta.json"
    stamp = meta.stat().st_mtime_ns
    again = benchmark_retrieval(params)  # the trained adapter is reused, not retrained
    assert meta.stat().st_mtime_ns == stamp and again["beam"]["adapter"] == adapter
    assert again["comparison"] == written["comparison"]  # same users, same items, same draws


def test_title_adapter_learns_its_rows_and_leaves_the_model_untouched(trained) -> None:
    """The title adapter fits a row (its loss falls: 6.15 -> 5.5 nats measured on the tiny random backbone), trains
    nothing but itself, and switching back to the model's own adapter gives bit-identical decoder states."""
    import torch

    from components.title_generator import ADAPTER, title_rows, train_title_adapter

    params = trained.model_copy(update={"train": trained.train.model_copy(update={"lr": 0.005, "warmup_steps": 0})})
    built = load_trained(params)
    model, tok, spec = built.model.eval(), built.backbone.tokenizer, built.spec
    rows = title_rows(params, item_names(params))[:1]
    assert all(r["task"] == "text" and r["target_text"] for r in rows)
    batch = collate([encode_example(r, tok, spec, with_target=False) for r in rows], tok.pad_token_id)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        states = model.hidden_states(batch)
    record = train_title_adapter(params, built, rows, steps=40)
    assert record["last_loss"] < record["first_loss"] - 0.3
    after = dict(model.named_parameters())
    added = set(after) - set(before)
    assert added and all(f".{ADAPTER}." in n for n in added)  # the adapter is all that was added ...
    assert all(torch.equal(after[n], p) for n, p in before.items())  # ... and all that changed
    with torch.no_grad():
        assert torch.equal(model.hidden_states(batch), states)  # the model's own adapter is active again


def test_paired_comparison_of_the_two_sides_by_hand() -> None:
    import numpy as np

    from components.bench_retrieval import paired_comparison

    users = np.arange(4)
    a = {"hr@10": np.array([1.0, 1.0, 1.0, 0.0]), "ndcg@10": np.array([1.0, 0.5, 0.0, 0.0])}
    same = paired_comparison(a, a, users, 200, 0)
    assert all(r["diff"] == 0.0 and r["ci95"] == [0.0, 0.0] and r["verdict"] == "ties" for r in same.values())
    b = {"hr@10": np.zeros(4), "ndcg@10": np.zeros(4)}
    out = paired_comparison(a, b, users, 200, 0)
    assert out["hr@10"]["diff"] == pytest.approx(0.75) and out["ndcg@10"]["diff"] == pytest.approx(0.375)
    assert out["hr@10"]["set_out"] == pytest.approx(0.75) and out["hr@10"]["beam"] == 0.0 and out["hr@10"]["users"] == 4
    assert 0.0 <= out["hr@10"]["ci95"][0] <= 0.75 <= out["hr@10"]["ci95"][1] <= 1.0
