"""The prompt registry: coverage, field validation, rendering, and the pure text helpers."""

from __future__ import annotations

import math

import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from components.config import TASKS
from components.textualize.examples import Instance, make_context, render
from components.textualize.registry import (SET_OUT_TASKS, TASK_FIELDS, RegistryError, load_registry, placeholder,
                                            placeholders_in, template_fields)
from components.textualize.tasks import rating_answer
from components.textualize.text import item_name, item_text, make_query, top_genres, user_profile
from tests.unit.yaml_edits import mutated_copy, set_template

REGISTRY = Path(__file__).resolve().parents[2] / "prompts" / "registry.yaml"


@pytest.fixture(scope="module")
def registry():
    return load_registry(REGISTRY)


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", re.sub(r"\{\w+\}", " ", text.lower())))


def test_every_task_has_four_seen_and_two_unseen_templates(registry):
    assert registry.version and len(registry.sha256) == 64
    for task in TASKS:
        assert len(registry.for_task(task, "seen")) >= 4, task
        assert len(registry.for_task(task, "unseen")) >= 2, task
    ids = [t.id for t in registry.templates]
    assert len(ids) == len(set(ids))


def test_template_fields_are_provided_and_required_ones_used(registry):
    for t in registry.templates:
        spec = TASK_FIELDS[t.task]
        assert t.fields <= spec.provides, t.id
        assert all(t.fields & group for group in spec.requires), t.id
        if t.task in SET_OUT_TASKS:
            assert t.target is None, t.id
        else:
            assert template_fields(t.target, t.id) == spec.target, t.id
    assert {t.target for t in registry.for_task("ctr")} == {"{answer}"}
    assert {t.target for t in registry.for_task("rating")} == {"{rating}"}


def test_unseen_templates_are_genuinely_different_phrasings(registry):
    for task in TASKS:
        seen = registry.for_task(task, "seen")
        for u in registry.for_task(task, "unseen"):
            for s in seen:
                a, b = _words(u.template), _words(s.template)
                assert len(a & b) / len(a | b) < 0.4, (u.id, s.id)


def _write(tmp_path: Path, mutate) -> Path:
    return mutated_copy(REGISTRY, tmp_path, mutate)


_set = set_template


@pytest.mark.parametrize("mutate, message", [
    (_set(0, "template", "Recommend for {user} given {query}."), "not provided"),
    (_set(0, "template", "Recommend something for {user}."), "must use one of"),
    (_set(0, "template", "History {0}: {history}"), "plain named field"),
    (_set(0, "template", "History {history:>10}"), "plain named field"),
    (_set(0, "target", "{answer}"), "takes no target"),
    (_set(0, "kind", "maybe"), "kind must be"),
    (_set(0, "task", "nope"), "unknown task"),
    (_set(1, "id", "next_item/seen-1"), "duplicate template ids"),
    (lambda raw: raw.update(templates=[t for t in raw["templates"] if t["id"] != "ctr/unseen-1"
                                       and t["id"] != "ctr/unseen-2"]), "has no unseen template"),
    (lambda raw: raw["phrases"]["objectives"].pop("like"), "phrases.objectives"),
    (lambda raw: raw["format"].pop("mask"), "format"),
    (_set(0, "template", "Seen {history}, titled {history_titles}."), "writes the history once"),
    (_set(0, "template", "Seen {history_rated}."), "not provided"),  # ratings are written by rating prompts only
])
def test_invalid_registries_are_rejected_with_the_entry_named(tmp_path, mutate, message):
    with pytest.raises(RegistryError, match=message):
        load_registry(_write(tmp_path, mutate))


def test_ctr_target_must_be_the_verbaliser(tmp_path):
    raw = yaml.safe_load(REGISTRY.read_text(encoding="utf-8"))
    index = next(i for i, t in enumerate(raw["templates"]) if t["task"] == "ctr")
    with pytest.raises(RegistryError, match="exactly"):
        load_registry(_write(tmp_path, _set(index, "target", "Answer: {answer}")))


def test_render_uses_placeholders_titles_and_collects_items(registry):
    ctx = make_context(registry, ["Toy Story (1995)", "GoldenEye (1995)", "item 77"], {5: "a 24-year-old male technician"},
                       4.0)
    inst = Instance(user=5, history=[2, 0], target=1, target_items=(1,), label=1, answers={"answer": "yes"})
    row = render(inst, registry.by_id("ctr/seen-4"), "ctr", "valid", ctx)
    assert "a 24-year-old male technician" in row["prompt"]
    assert "<item:2> item 77; <item:0> Toy Story (1995)" in row["prompt"]
    assert "<item:1> GoldenEye (1995)" in row["prompt"]
    assert row["items"] == [2, 0, 1] and row["target_text"] == "yes" and row["template_kind"] == "seen"
    plain = render(Instance(user=5, history=[2, 0], target=1, target_items=(1,), label=1, answers={"answer": "yes"}),
                   registry.by_id("ctr/seen-1"), "ctr", "valid", ctx)
    assert "<item:2><item:0>" in plain["prompt"] and "Toy Story" not in plain["prompt"]
    obj = Instance(user=5, history=[0], target_items=(1,), objective="like")
    assert "rate 4 or higher" in render(obj, registry.by_id("multi_objective/seen-2"), "multi_objective", "test",
                                        ctx)["prompt"]


def test_rated_history_and_the_history_run(registry):
    """Rating prompts write each history item's rating (nan: plain); `history_start` / `n_history` locate the
    history run among the placeholders wherever the template writes it, and a template without a history
    shows none."""
    ctx = make_context(registry, ["Toy Story (1995)", "GoldenEye (1995)", "Heat (1995)"], {}, 4.0,
                       ratings={5: {2: 4.0, 0: 1.0}})
    inst = Instance(user=5, history=[2, 0, 1], target=1, target_items=(1,), rating=3.0, answers={"rating": "3"})
    titled = render(inst, registry.by_id("rating/seen-2"), "rating", "valid", ctx)
    assert "<item:2> Heat (1995) rated 4; <item:0> Toy Story (1995) rated 1; <item:1> GoldenEye (1995)." in \
        titled["prompt"]  # item 1 has no known rating: written plain
    assert titled["history_ratings"][:2] == [4.0, 1.0] and math.isnan(titled["history_ratings"][2])
    assert (titled["history_start"], titled["n_history"]) == (0, 3) and titled["items"] == [2, 0, 1, 1]
    first = render(inst, registry.by_id("rating/seen-3"), "rating", "valid", ctx)  # target written first
    assert (first["history_start"], first["n_history"]) == (1, 3) and first["items"] == [1, 2, 0, 1]
    plain = render(Instance(user=5, history=[2, 0], target=1, target_items=(1,), label=1, answers={"answer": "yes"}),
                   registry.by_id("ctr/seen-1"), "ctr", "valid", ctx)
    assert plain["history_ratings"] == [] and " rated " not in plain["prompt"]
    cands = Instance(user=5, history=[2], target_items=(1,), candidates=(0, 1))
    after = render(cands, registry.by_id("candidate_choice/seen-3"), "candidate_choice", "valid", ctx)
    assert after["items"] == [0, 1, 2] and (after["history_start"], after["n_history"]) == (2, 1)
    no_history = render(Instance(user=5, history=[2, 0], target_items=(1,), query="Heat"),
                        registry.by_id("query/seen-4"), "query", "valid", ctx)
    assert (no_history["history_start"], no_history["n_history"], no_history["items"]) == (0, 0, [])


@given(st.lists(st.integers(min_value=0, max_value=10**9), max_size=30))
def test_placeholders_round_trip(indices):
    text = " and ".join(f"{placeholder(i)} Title (1999)" for i in indices)
    assert placeholders_in(text) == indices


def test_item_and_user_texts():
    fmt = load_registry(REGISTRY).format
    assert item_name("Toy Story", 1995, "1", fmt) == "Toy Story (1995)"
    assert item_name(None, 1995, "42", fmt) == "item 42"
    assert item_name("Heat", None, "7", fmt) == "Heat"
    assert item_text("Toy Story (1995)", ("Animation", "Children's", "Comedy"), fmt) == \
        "Toy Story (1995) — Animation, Children's, Comedy"
    assert item_text("item 42", (), fmt) == "item 42"
    assert user_profile({"age": "24", "gender": "M", "occupation": "technician"}, "1", fmt) == \
        "a 24-year-old male technician"
    assert user_profile({"age": "18", "gender": "F", "occupation": "student", "zip_code": "1"}, "1", fmt) == \
        "an 18-year-old female student, zip code 1"
    assert user_profile({"country": "NZ", "plan": "gold"}, "9", fmt) == "a user, country NZ, plan gold"
    assert user_profile({"age": "80", "gender": "M", "occupation": "none"}, "3", fmt) == "an 80-year-old male user"
    assert user_profile({"occupation": "artist"}, "3", fmt) == "an artist"
    assert user_profile({}, "9", fmt) == "user 9"


def test_queries_come_from_genres_or_title_words_and_are_seeded():
    phrases = load_registry(REGISTRY).queries
    seen = set()
    for seed in range(40):
        q = make_query("Toy Story", ("Comedy",), np.random.default_rng(seed), phrases)
        assert q == make_query("Toy Story", ("Comedy",), np.random.default_rng(seed), phrases)
        assert "Comedy" in q or "Toy" in q or "Story" in q
        seen.add(q)
    assert len(seen) > 3
    assert make_query(None, (), np.random.default_rng(0), phrases) is None


def test_top_genres_and_rating_answers():
    genres = [("Drama",), ("Comedy", "Drama"), ("Comedy",), ("War",)]
    assert top_genres([0, 1, 2, 3], genres, 2) == ["Drama", "Comedy"]
    assert top_genres([3, 2, 1], genres, 1) == ["Comedy"]
    assert [rating_answer(r, 1.0, 5.0) for r in (1.0, 2.5, 4.4, 5.0, 0.2, 7.0)] == ["1", "3", "4", "5", "1", "5"]
