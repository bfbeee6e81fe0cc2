"""The textualize step on the tiny fixture (ingest → validate → split → textualize), plus its samplers.

The pipeline is built once per session (validate is the slow part) and only read by the tests.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from components.config import TASKS, Params
from components.ingest import ingest
from components.split import split
from components.textualize import TextualizeError, TextualizeReport, examples_path, textualize
from components.textualize.examples import EXAMPLE_SCHEMA
from components.textualize.registry import load_registry, placeholders_in
from components.textualize.sampling import (Behaviour, fit_behaviours, history_window, mask_passage,
                                            mask_positions, n_masked, sample_horizon)
from components.validate import validate

_BUILT: dict[str, tuple[Params, TextualizeReport]] = {}
SPLITS = ("train", "valid", "test")
MASK = re.compile(r"\[MASK_(\d+)\]")


@pytest.fixture
def built(make_params) -> tuple[Params, TextualizeReport]:
    if "tiny" not in _BUILT:
        params = make_params()
        ingest(params)
        validate(params)
        split(params)
        _BUILT["tiny"] = (params, textualize(params, progress=False))
    return _BUILT["tiny"]


def _frame(params: Params, task: str, split_name: str) -> pd.DataFrame:
    return pd.read_parquet(examples_path(params.resolve(params.paths.examples_dir), task, split_name))


def _splits(params: Params, name: str) -> pd.DataFrame:
    return pd.read_parquet(params.resolve(params.paths.splits_dir) / f"{name}.parquet")


def _train_seqs(params: Params) -> dict[int, list[int]]:
    train = _splits(params, "train").sort_values(["user_idx", "order"])
    return {int(u): g["item_idx"].tolist() for u, g in train.groupby("user_idx")}


def test_outputs_schema_and_manifest(built):
    params, report = built
    out = params.resolve(params.paths.examples_dir)
    manifest = json.loads((out / "manifest.json").read_text())
    registry = load_registry(params.resolve(params.textualize.registry))
    assert manifest["registry_version"] == registry.version == report.registry_version
    assert manifest["registry_sha256"] == registry.sha256
    assert manifest["counts"] == report.counts and "textualize" in report.summary()
    for task in TASKS:
        for s in SPLITS:
            frame = _frame(params, task, s)
            assert list(frame.columns) == EXAMPLE_SCHEMA.names
            assert len(frame) == report.counts[task][s] > 0, (task, s)
            assert str(frame["label"].dtype) == "Int64" and str(frame["rating"].dtype) == "Float64"
            assert frame["example_id"].is_unique and (frame["task"] == task).all() and (frame["split"] == s).all()
            kinds = frame["template_kind"].value_counts().to_dict()
            assert {k: kinds.get(k, 0) for k in ("seen", "unseen")} == manifest["counts_by_kind"][task][s]
            assert all(list(i) == placeholders_in(p) for i, p in zip(frame["items"], frame["prompt"]))
    items = pd.read_parquet(out / "item_text.parquet")
    assert items["item_idx"].tolist() == list(range(len(items))) and items["text"].str.len().min() > 0
    assert pd.read_parquet(out / "user_text.parquet")["text"].str.contains("year-old").all()


def test_train_counts_follow_params_and_use_seen_templates_only(built):
    params, report = built
    registry = load_registry(params.resolve(params.textualize.registry))
    users = len(_train_seqs(params))
    for task in TASKS:
        frame = _frame(params, task, "train")
        n = params.textualize.train_examples_per_user[task]
        assert (frame["template_kind"] == "seen").all()
        if task == "next_item":  # sampled rows follow the count; window rows are checked in their own test
            frame = frame[frame["horizon"] != "window"]
        assert set(frame["template_id"]) <= {t.id for t in registry.for_task(task, "seen")}
        assert frame.groupby("user_idx").size().max() <= n
        if task not in ("long_tail", "multi_objective"):  # the tiny users always qualify for these
            assert len(frame) == users * n, task


def test_eval_examples_exist_for_every_template(built):
    params, _ = built
    registry = load_registry(params.resolve(params.textualize.registry))
    for task in TASKS:
        ids = {t.id for t in registry.for_task(task)}
        for s in ("valid", "test"):
            frame = _frame(params, task, s)
            per_template = frame.groupby("template_id").size()
            assert set(per_template.index) == ids, (task, s)
            assert per_template.nunique() == 1, (task, s)  # the same instances under every template
            assert frame["horizon"].isna().all()


def _assert_no_leak(params: Params) -> None:
    cold = set(_splits(params, "cold_items")["item_idx"])
    held: dict[int, set[int]] = {}
    for s in ("valid", "test"):
        for u, i in zip(_splits(params, s)["user_idx"], _splits(params, s)["item_idx"]):
            held.setdefault(int(u), set()).add(int(i))
    assert cold
    for task in TASKS:
        frame = _frame(params, task, "train")
        for row in frame.itertuples():
            target = row.target_text if isinstance(row.target_text, str) else ""
            used = (set(row.items) | set(row.target_items) | set(row.candidates)
                    | set(placeholders_in(row.prompt)) | set(placeholders_in(target)))
            assert not used & cold, (task, row.example_id)
            assert not used & held.get(row.user_idx, set()), (task, row.example_id)


def test_training_examples_never_contain_held_out_or_cold_items(built):
    _assert_no_leak(built[0])


def test_leakage_guard_drops_reconsumed_held_out_items(built, make_params, tmp_path):
    """Re-consumption (a user's valid/test item also in their train sequence) and a cold CTR row are dropped."""
    params, _ = built
    src = params.resolve(params.paths.splits_dir)
    dst = tmp_path / "splits_leaky"
    dst.mkdir()
    for f in src.glob("*.parquet"):
        (dst / f.name).write_bytes(f.read_bytes())
    train = pd.read_parquet(dst / "train.parquet")
    valid, test = pd.read_parquet(dst / "valid.parquet"), pd.read_parquet(dst / "test.parquet")
    cold_item = int(pd.read_parquet(dst / "cold_items.parquet")["item_idx"].iloc[0])
    for user in train["user_idx"].unique()[:10]:
        rows = train.index[train["user_idx"] == user]
        train.loc[rows[1], "item_idx"] = valid.set_index("user_idx").at[user, "item_idx"]
        train.loc[rows[4], "item_idx"] = test.set_index("user_idx").at[user, "item_idx"]
    train.to_parquet(dst / "train.parquet", index=False)
    ctr = pd.read_parquet(dst / "ctr_train.parquet")
    extra = ctr.iloc[:1].assign(item_idx=cold_item, label=0)
    pd.concat([extra, ctr], ignore_index=True).to_parquet(dst / "ctr_train.parquet", index=False)
    leaky = make_params({"paths.canonical_dir": str(params.resolve(params.paths.canonical_dir)),
                         "paths.splits_dir": str(dst), "paths.examples_dir": "data/examples_leaky"})
    report = textualize(leaky, progress=False)
    _assert_no_leak(leaky)
    assert report.dropped["train positions (held-out or cold item)"] == 20
    assert report.dropped["ctr_train rows (held-out or cold item)"] >= 1


def test_text_and_infill_use_train_data_only(built):
    params, _ = built
    items = pd.read_parquet(params.resolve(params.paths.canonical_dir) / "items.parquet").set_index("idx")
    names = pd.read_parquet(params.resolve(params.paths.examples_dir) / "item_text.parquet")["text"]
    seqs = _train_seqs(params)
    top = params.textualize.summary_top_genres
    for s in SPLITS:
        for row in _frame(params, "text", s).itertuples():
            counts = Counter(g for i in seqs[row.user_idx] for g in items.at[i, "categories"])
            best = counts.most_common(1)[0][1]
            named = [g for g in counts if g in row.target_text]
            assert len(named) == top and any(counts[g] == best for g in named)
            assert min(counts[g] for g in named) >= max([counts[g] for g in counts if g not in named], default=0)
        for row in _frame(params, "infill", s).itertuples():
            allowed = {names[i].split(" — ")[0] for i in seqs[row.user_idx]}
            allowed |= {g for i in seqs[row.user_idx] for g in items.at[i, "categories"]}
            spans = [x.strip() for x in MASK.split(row.target_text)[2::2]]
            assert spans and set(spans) <= allowed


def test_infill_masks_whole_entities_in_chronological_order(built):
    params, _ = built
    fraction, budget = params.textualize.infill_mask_fraction, params.textualize.infill_max_entities
    possible = {n_masked(n, fraction) for n in range(1, budget + 1)}
    for s in SPLITS:
        for row in _frame(params, "infill", s).itertuples():
            in_prompt = [int(k) for k in MASK.findall(row.prompt)]
            in_target = [int(k) for k in MASK.findall(row.target_text)]
            assert in_prompt == in_target == list(range(len(in_target)))
            assert len(in_target) in possible
            restored = row.prompt
            for k, span in enumerate(x.strip() for x in MASK.split(row.target_text)[2::2]):
                restored = restored.replace(f"[MASK_{k}]", span, 1)
            assert "[MASK" not in restored and row.items.size == 0


def test_eval_targets_histories_and_saved_lists(built):
    params, _ = built
    seqs, cap = _train_seqs(params), params.textualize.max_history
    valid = dict(zip(_splits(params, "valid")["user_idx"], _splits(params, "valid")["item_idx"]))
    test = dict(zip(_splits(params, "test")["user_idx"], _splits(params, "test")["item_idx"]))
    for s, targets in (("valid", valid), ("test", test)):
        frame = _frame(params, "next_item", s)
        for row in frame.itertuples():
            assert list(row.target_items) == [targets[row.user_idx]]
            hist = seqs[row.user_idx] + ([valid[row.user_idx]] if s == "test" else [])
            assert list(row.items) == hist[-cap:]
        cands = _splits(params, f"candidates_{s}").set_index("user_idx")
        for row in _frame(params, "candidate_choice", s).itertuples():
            saved = cands.loc[row.user_idx]
            # the history run, wherever the template writes it: the candidates are never part of it
            history = list(row.items[row.history_start: row.history_start + row.n_history])
            assert history == (seqs[row.user_idx] + ([valid[row.user_idx]] if s == "test" else []))[-cap:]
            assert sorted(np.delete(row.items, np.s_[row.history_start: row.history_start + row.n_history])) == \
                sorted(row.candidates)
            assert sorted(row.candidates) == sorted([saved["target"], *saved["negatives"]])
            assert list(row.target_items) == [saved["target"]]
        ctr = _frame(params, "ctr", s)
        saved_ctr = _splits(params, f"ctr_{s}")
        n_templates = ctr["template_id"].nunique()
        assert len(ctr) == len(saved_ctr) * n_templates
        assert ((ctr["label"] == 1) == (ctr["target_text"] == "yes")).all()
        cold = _splits(params, "cold")
        cold_targets = dict(zip(cold.loc[cold["role"] == s, "user_idx"], cold.loc[cold["role"] == s, "item_idx"]))
        for row in _frame(params, "cold_start", s).itertuples():
            assert list(row.target_items) == [cold_targets[row.user_idx]]
        like = _frame(params, "multi_objective", s).query("objective == 'like'")
        assert (like["rating"] >= params.textualize.like_threshold).all()
    tail = set(pd.read_parquet(params.resolve(params.paths.examples_dir) / "tail_items.parquet")["item_idx"])
    for s in SPLITS:
        assert all(set(t) <= tail for t in _frame(params, "long_tail", s)["target_items"])
        assert set(_frame(params, "rating", s)["target_text"]) <= {"1", "2", "3", "4", "5"}


def test_train_histories_follow_the_sampled_horizon(built):
    params, _ = built
    seqs, cfg = _train_seqs(params), params.textualize
    for task in ("next_item", "ctr", "rating", "multi_objective"):
        frame = _frame(params, task, "train")
        if task == "next_item":
            assert cfg.next_item_windows and (frame["horizon"] == "window").any()
            frame = frame[frame["horizon"] != "window"]
        assert set(frame["horizon"]) <= set(cfg.horizons)
        for row in frame.itertuples():
            seq, target = seqs[row.user_idx], row.target_items[0]
            length = min(cfg.horizons[row.horizon], cfg.max_history)
            if task in ("next_item", "multi_objective"):
                t = seq.index(target)
                assert list(history_window(np.array(seq), t, length)) == [i for i in row.items]
            else:
                assert row.n_history <= length
    liked = _frame(params, "multi_objective", "train").query("objective == 'like'")
    assert (liked["rating"] >= cfg.like_threshold).all()


def test_next_item_windows_tile_each_training_sequence(built):
    """Window rows cover the user's training sequence: with the dense slots every position >= 1 is a
    target exactly once, and each window is a contiguous run of at most max_history items."""
    params, _ = built
    seqs, cap = _train_seqs(params), params.textualize.max_history
    frame = _frame(params, "next_item", "train").query("horizon == 'window'")
    for user, rows in frame.groupby("user_idx"):
        seq = seqs[int(user)]
        predicted: list[int] = []
        for row in rows.itertuples():
            items = [int(i) for i in row.items]
            assert 1 <= len(items) <= cap
            t = seq.index(int(row.target_items[0]))
            assert seq[t - len(items):t] == items
            predicted += items[1:] + [seq[t]]
        assert sorted(predicted) == sorted(seq[1:])
    assert frame["user_idx"].nunique() == sum(1 for s in seqs.values() if len(s) >= 2)


def test_two_runs_are_byte_identical_and_counts_follow_overrides(built, make_params):
    params, _ = built
    again = make_params({"paths.canonical_dir": str(params.resolve(params.paths.canonical_dir)),
                         "paths.splits_dir": str(params.resolve(params.paths.splits_dir)),
                         "paths.examples_dir": "data/examples_again"})
    textualize(again, progress=False)
    first, second = params.resolve(params.paths.examples_dir), again.resolve(again.paths.examples_dir)
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(second) for p in second.rglob("*") if p.is_file())
    for rel in files:
        assert (first / rel).read_bytes() == (second / rel).read_bytes(), rel
    counts = {**params.textualize.train_examples_per_user, "next_item": 1, "infill": 3}
    fewer = make_params({"paths.canonical_dir": str(params.resolve(params.paths.canonical_dir)),
                         "paths.splits_dir": str(params.resolve(params.paths.splits_dir)),
                         "paths.examples_dir": "data/examples_fewer",
                         "textualize.train_examples_per_user": counts, "textualize.next_item_windows": False})
    report = textualize(fewer, progress=False)
    users = len(_train_seqs(params))
    assert report.counts["next_item"]["train"] == users and report.counts["infill"]["train"] == 3 * users


def test_missing_split_files_fail_with_a_hint(make_params):
    with pytest.raises(TextualizeError, match="run `unirec"):
        textualize(make_params(), progress=False)


# --------------------------------------------------------------------------- pure samplers

FORMAT = load_registry(Path(__file__).resolve().parents[2] / "prompts" / "registry.yaml").format
_entity = st.text(alphabet=st.characters(whitelist_categories=("Lu", "Ll", "Nd")), min_size=1, max_size=8)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(_entity, st.lists(_entity, max_size=3)), min_size=1, max_size=8),
       st.floats(min_value=0.01, max_value=1.0), st.integers(0, 2**32 - 1))
def test_mask_passage_masks_whole_entities_in_order(behaviours, fraction, seed):
    fmt = FORMAT
    items = [Behaviour(name, tuple(genres)) for name, genres in behaviours]
    flat = [e for b in items for e in b.entities]
    positions = mask_positions(np.random.default_rng(seed), len(flat), fraction)
    passage, target, spans = mask_passage(items, positions, fmt)
    assert len(positions) == n_masked(len(flat), fraction) >= 1
    assert spans == [flat[p] for p in positions]  # chronological: positions are sorted
    assert [int(k) for k in MASK.findall(passage)] == list(range(len(spans)))
    assert target == " ".join(f"[MASK_{k}] {e}" for k, e in enumerate(spans))
    restored = passage
    for k, e in enumerate(spans):
        restored = restored.replace(f"[MASK_{k}]", e, 1)
    assert restored == mask_passage(items, [], fmt)[0]


@given(st.lists(st.tuples(_entity, st.lists(_entity, max_size=5)), min_size=1, max_size=10),
       st.integers(2, 12), st.booleans())
def test_fit_behaviours_respects_the_entity_budget(behaviours, budget, from_end):
    items = [Behaviour(n, tuple(g)) for n, g in behaviours]
    kept = fit_behaviours(items, budget, from_end)
    assert 1 <= sum(len(b.entities) for b in kept) <= budget
    expected = items[len(items) - len(kept):] if from_end else items[:len(kept)]
    if len(kept) == 1 and kept[0] != expected[0]:  # a single behaviour too large alone: genres cut, name kept
        assert kept[0].name == expected[0].name and kept[0].genres == expected[0].genres[:budget - 1]
    else:
        assert kept == expected


@given(st.lists(st.integers(0, 100), max_size=60), st.integers(0, 60), st.integers(1, 60))
def test_history_window_is_the_block_before_the_target(seq, end, length):
    end = min(end, len(seq))
    window = history_window(np.array(seq, dtype=np.int64), end, length)
    assert list(window) == seq[max(0, end - length):end] and len(window) == min(end, length)


def test_horizon_frequencies_match_the_weights(tiny_params):
    weights = tiny_params.textualize.horizon_weights
    rng = np.random.default_rng(0)
    draws = Counter(sample_horizon(rng, weights) for _ in range(20000))
    for h, w in weights.items():
        assert abs(draws[h] / 20000 - w) < 0.015, h
