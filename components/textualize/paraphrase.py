"""Held-out paraphrased templates of the retrieval tasks (`evaluate.steering.paraphrase_templates`).

A separate file in the registry's template format — top-level `version` and `templates`, each entry
`{id, task, kind, template, target}` validated by the registry's own rules (`registry._validate_template`: the
fields each task provides and requires, no target for a set-out task). The phrases and item formats are the main
registry's, so a paraphrase renders the same field values as the seen template it is compared with. Extra rules:
every entry is an `unseen` template of one of the six set-out tasks, each of those tasks has at least one, no id
is a registry id, and no text equals (case and spacing aside) a registry template of its task. Only the
evaluation's steering tests read this file; textualize and training never do.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from components.textualize.registry import SET_OUT_TASKS, Registry, RegistryError, Template, _validate_template

PARAPHRASE_KIND = "unseen"
"""The kind every paraphrase declares: never trained on."""


def _normalised(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().casefold()


def load_paraphrases(path: str | Path, registry: Registry) -> tuple[Template, ...]:
    """Parse and validate the paraphrase file against `registry`; raise `RegistryError` naming the bad entry."""
    path = Path(path)
    if not path.is_file():
        raise RegistryError(f"{path}: paraphrase templates not found (evaluate.steering.paraphrase_templates)")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError) as exc:
        raise RegistryError(f"{path}: not valid UTF-8 YAML ({type(exc).__name__})") from None
    if not isinstance(raw, dict) or set(raw) != {"version", "templates"} or not isinstance(raw["templates"], list):
        raise RegistryError(f"{path}: expected top-level keys version and templates (a list)")
    templates = tuple(_validate_template(e, n) for n, e in enumerate(raw["templates"]))
    known = {t.id for t in registry.templates}
    texts = {(t.task, _normalised(t.template)): t.id for t in registry.templates}
    ids: set[str] = set()
    for t in templates:
        where = f"{path}: template '{t.id}'"
        if t.task not in SET_OUT_TASKS:
            raise RegistryError(f"{where}: task '{t.task}' is not a retrieval task {list(SET_OUT_TASKS)}")
        if t.kind != PARAPHRASE_KIND:
            raise RegistryError(f"{where}: kind must be '{PARAPHRASE_KIND}' (paraphrases are never trained on)")
        if t.id in known or t.id in ids:
            raise RegistryError(f"{where}: id already used" + (" by the prompt registry" if t.id in known else ""))
        if (t.task, _normalised(t.template)) in texts:
            raise RegistryError(f"{where}: same text as registry template '{texts[(t.task, _normalised(t.template))]}'")
        ids.add(t.id)
    missing = [task for task in SET_OUT_TASKS if not any(t.task == task for t in templates)]
    if missing:
        raise RegistryError(f"{path}: no paraphrase template for {missing}")
    return templates
