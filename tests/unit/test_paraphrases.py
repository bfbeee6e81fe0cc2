"""The held-out paraphrased templates of the steering tests: at least three per retrieval task, valid under the
registry's rules, worded differently from every registry template, read by the evaluation's steering tests only."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from components.config import load_params
from components.textualize.paraphrase import load_paraphrases
from components.textualize.registry import SET_OUT_TASKS, TASK_FIELDS, RegistryError, load_registry
from tests.conftest import REPO
from tests.unit.yaml_edits import mutated_copy, set_template

PARAPHRASES = REPO / "prompts" / "paraphrases.yaml"


@pytest.fixture(scope="module")
def registry():
    return load_registry(REPO / "prompts" / "registry.yaml")


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", re.sub(r"\{\w+\}", " ", text.lower())))


def test_params_name_the_file_and_textualize_reads_another() -> None:
    params = load_params(REPO / "params.yaml")
    assert params.resolve(params.evaluate.steering.paraphrase_templates) == PARAPHRASES
    assert params.resolve(params.textualize.registry) != PARAPHRASES
    users = [p for p in (REPO / "components").rglob("*.py")
             if "textualize.paraphrase" in p.read_text(encoding="utf-8")]
    assert [p.relative_to(REPO).as_posix() for p in users] == ["components/evaluation/steering.py"]


def test_three_valid_paraphrases_per_retrieval_task_worded_differently(registry) -> None:
    templates = load_paraphrases(PARAPHRASES, registry)
    for task in SET_OUT_TASKS:
        mine = [t for t in templates if t.task == task]
        assert len(mine) >= 3, task
        for t in mine:
            assert t.kind == "unseen" and t.target is None and t.id.startswith(f"{task}/paraphrase-"), t.id
            assert t.fields <= TASK_FIELDS[task].provides and all(t.fields & g for g in TASK_FIELDS[task].requires)
            others = [*registry.for_task(task), *(o for o in mine if o.id != t.id)]
            for o in others:  # the registry's own seen-vs-unseen rule (test_prompt_registry.py)
                a, b = _words(t.template), _words(o.template)
                assert len(a & b) / len(a | b) < 0.4, (t.id, o.id)
    assert not {t.id for t in templates} & {t.id for t in registry.templates}


def test_no_titled_history_before_the_objective_or_the_query(registry) -> None:
    """Prompts are cut from the left at train.max_prompt_tokens: a long titled history written first would push the
    words the steering tests change out of the prompt."""
    for t in load_paraphrases(PARAPHRASES, registry):
        for field in ("{objective}", "{query}"):
            if field in t.template and "{history_titles}" in t.template:
                assert t.template.index("{history_titles}") < t.template.index(field), t.id


def _write(tmp_path: Path, mutate) -> Path:
    return mutated_copy(PARAPHRASES, tmp_path, mutate)


_set = set_template


@pytest.mark.parametrize("mutate, message", [
    (_set(0, "template", "Items for {user} matching {query}: {history}"), "not provided"),
    (_set(0, "template", "Recommend something to {user}."), "must use one of"),
    (_set(0, "kind", "seen"), "kind must be 'unseen'"),
    (_set(0, "id", "next_item/seen-1"), "already used by the prompt registry"),
    (_set(1, "id", "next_item/paraphrase-1"), "id already used"),
    (_set(0, "template", "  given the sequence {history},   predict the NEXT items. "), "same text as registry"),
    (lambda raw: raw["templates"].append({"id": "ctr/paraphrase-1", "task": "ctr", "kind": "unseen",
                                          "template": "Will {user} like {target}?", "target": "{answer}"}),
     "not a retrieval task"),
    (lambda raw: raw.update(templates=[t for t in raw["templates"] if t["task"] != "long_tail"]),
     r"no paraphrase template for \['long_tail'\]"),
    (lambda raw: raw.pop("version"), "top-level keys"),
])
def test_invalid_paraphrase_files_are_rejected_with_the_entry_named(tmp_path, registry, mutate, message) -> None:
    with pytest.raises(RegistryError, match=message):
        load_paraphrases(_write(tmp_path, mutate), registry)


def test_missing_file_names_the_param(tmp_path, registry) -> None:
    with pytest.raises(RegistryError, match="evaluate.steering.paraphrase_templates"):
        load_paraphrases(tmp_path / "absent.yaml", registry)
