"""The versioned prompt registry (`prompts/registry.yaml`): loading, validation, rendering.

A template is plain text with named fields (``{history}``, ``{query}``, ...). Which fields a task
provides, and which it requires, is fixed here in `TASK_FIELDS`; `load_registry` rejects a template
that uses a field its task does not provide, misses a required one, or uses positional fields /
format specs. Item mentions are rendered as placeholders ``<item:IDX>`` (`placeholder`); the model
replaces each one by an ``[ITEM]`` token carrying the fused item vector.
"""

from __future__ import annotations

import hashlib
import re
import string
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

from components.config import TASKS

ITEM_PLACEHOLDER = "<item:{idx}>"
"""How an item mention appears in a rendered prompt (IDX = canonical item index)."""
PLACEHOLDER_RE = re.compile(r"<item:(\d+)>")
"""Matches one item placeholder; group 1 is the item index."""

SET_OUT_TASKS: tuple[str, ...] = ("next_item", "multi_objective", "query", "cold_start", "long_tail",
                                  "candidate_choice")
"""Tasks answered by [UM] user vectors scored against all items (no target text)."""
KINDS: tuple[str, ...] = ("seen", "unseen")
OBJECTIVES: tuple[str, ...] = ("watch", "like")
"""multi_objective objectives: watch = any next item; like = next item rated >= textualize.like_threshold."""
QUERY_KINDS: tuple[str, ...] = ("genre", "title")


@dataclass(frozen=True)
class TaskFields:
    """Prompt fields a task provides, groups of which at least one must be used, and its target fields."""

    provides: frozenset[str]
    requires: tuple[frozenset[str], ...]
    target: frozenset[str] = frozenset()
    exact_target: str | None = None
    """When set, the target template must be exactly this (verbaliser / span answers)."""


_HISTORY = frozenset({"history", "history_titles"})
RATED_HISTORY = frozenset({"history_rated", "history_rated_titles"})
"""History fields that also write the user's rating of each item (`format.rated_item`)."""
HISTORY_FIELDS = _HISTORY | RATED_HISTORY
"""Every field that writes the user's history."""
_BASE = frozenset({"user"}) | _HISTORY
TASK_FIELDS: dict[str, TaskFields] = {
    "next_item": TaskFields(_BASE, (_HISTORY,)),
    "multi_objective": TaskFields(_BASE | {"objective"}, (frozenset({"objective"}), _HISTORY)),
    "query": TaskFields(_BASE | {"query"}, (frozenset({"query"}),)),
    "cold_start": TaskFields(_BASE, (_HISTORY,)),
    "long_tail": TaskFields(_BASE, (_HISTORY,)),
    "candidate_choice": TaskFields(_BASE | {"candidates", "candidate_titles"},
                                   (frozenset({"candidates", "candidate_titles"}),)),
    "ctr": TaskFields(_BASE | {"target", "target_title"}, (frozenset({"target", "target_title"}),),
                      frozenset({"answer"}), "{answer}"),
    "rating": TaskFields(_BASE | RATED_HISTORY | {"target", "target_title"},
                         (frozenset({"target", "target_title"}),), frozenset({"rating"}), "{rating}"),
    "text": TaskFields(_BASE, (_HISTORY,), frozenset({"genres"})),
    "infill": TaskFields(frozenset({"user", "passage"}), (frozenset({"passage"}),), frozenset({"spans"}),
                         "{spans}"),
}

FORMAT_FIELDS: dict[str, frozenset[str]] = {
    "list_sep": frozenset(), "titled_list_sep": frozenset(), "titled_item": frozenset({"placeholder", "name"}),
    "title_year": frozenset({"title", "year"}), "unnamed_item": frozenset({"raw_id"}),
    "unnamed_user": frozenset({"raw_id"}), "genre_sep": frozenset(), "item_text": frozenset({"name", "genres"}),
    "passage_item": frozenset({"name", "genres"}), "passage_sep": frozenset(), "mask": frozenset({"k"}),
    "rated_item": frozenset({"item", "rating"}),
}
"""Keys of the registry's `format:` section and the fields each may use."""


class RegistryError(ValueError):
    """The prompt registry is missing or invalid; the message names the entry."""


@dataclass(frozen=True)
class Template:
    id: str
    task: str
    kind: str
    template: str
    target: str | None
    fields: frozenset[str]


@dataclass(frozen=True)
class Registry:
    version: str
    sha256: str
    path: str
    templates: tuple[Template, ...]
    format: Mapping[str, str]
    objectives: Mapping[str, str]
    queries: Mapping[str, tuple[str, ...]]

    def for_task(self, task: str, kind: str | None = None) -> tuple[Template, ...]:
        """Templates of `task` (in file order), optionally only those of `kind` (seen|unseen)."""
        return tuple(t for t in self.templates if t.task == task and (kind is None or t.kind == kind))

    def by_id(self, template_id: str) -> Template:
        for t in self.templates:
            if t.id == template_id:
                return t
        raise KeyError(template_id)


def placeholder(idx: int) -> str:
    """The placeholder of item `idx`: ``<item:IDX>``."""
    return ITEM_PLACEHOLDER.format(idx=int(idx))


def placeholders_in(text: str) -> list[int]:
    """Item indices of the placeholders in `text`, in order of appearance."""
    return [int(m) for m in PLACEHOLDER_RE.findall(text)]


def template_fields(text: str, where: str) -> frozenset[str]:
    """Named fields of a format string; positional fields, attribute access and specs are errors."""
    names = set()
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as exc:
        raise RegistryError(f"{where}: malformed template: {exc}") from None
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if not name.isidentifier() or spec or conversion:
            raise RegistryError(f"{where}: field '{{{name}}}' must be a plain named field")
        names.add(name)
    return frozenset(names)


def render_template(text: str, values: Mapping[str, str]) -> str:
    """Fill the named fields of `text` from `values` (extra values are ignored)."""
    return text.format_map(values)


def _check_fields(used: frozenset[str], allowed: frozenset[str], where: str) -> None:
    unknown = used - allowed
    if unknown:
        raise RegistryError(f"{where}: uses field(s) {sorted(unknown)} not provided; allowed: {sorted(allowed)}")


def _validate_template(entry: object, n: int) -> Template:
    if not isinstance(entry, dict):
        raise RegistryError(f"templates[{n}]: expected a mapping")
    missing = {"id", "task", "kind", "template", "target"} - set(entry)
    extra = set(entry) - {"id", "task", "kind", "template", "target"}
    if missing or extra:
        raise RegistryError(f"templates[{n}]: missing keys {sorted(missing)}, unknown keys {sorted(extra)}")
    tid, task, kind, text, target = (entry[k] for k in ("id", "task", "kind", "template", "target"))
    where = f"template '{tid}'"
    if task not in TASKS:
        raise RegistryError(f"{where}: unknown task '{task}'; tasks: {list(TASKS)}")
    if kind not in KINDS:
        raise RegistryError(f"{where}: kind must be one of {list(KINDS)}, got '{kind}'")
    if not isinstance(text, str) or not text.strip():
        raise RegistryError(f"{where}: empty template")
    spec = TASK_FIELDS[task]
    used = template_fields(text, where)
    _check_fields(used, spec.provides, where)
    for group in spec.requires:
        if not used & group:
            raise RegistryError(f"{where}: must use one of {sorted(group)}")
    if len(used & HISTORY_FIELDS) > 1:  # the model reads the history as ONE run of item slots
        raise RegistryError(f"{where}: uses {sorted(used & HISTORY_FIELDS)}; a template writes the history once")
    if task in SET_OUT_TASKS:
        if target is not None:
            raise RegistryError(f"{where}: set-out task '{task}' takes no target text (target: null)")
    else:
        if not isinstance(target, str) or not target:
            raise RegistryError(f"{where}: task '{task}' needs a target template")
        if spec.exact_target is not None and target != spec.exact_target:
            raise RegistryError(f"{where}: target must be exactly '{spec.exact_target}'")
        tused = template_fields(target, where + " target")
        _check_fields(tused, spec.target, where + " target")
        if spec.target - tused:
            raise RegistryError(f"{where}: target must use {sorted(spec.target)}")
    return Template(id=str(tid), task=task, kind=kind, template=text, target=target, fields=used)


def _validate_phrases(raw: object) -> tuple[dict[str, str], dict[str, tuple[str, ...]]]:
    if not isinstance(raw, dict) or set(raw) != {"objectives", "queries"}:
        raise RegistryError("phrases: expected exactly the keys 'objectives' and 'queries'")
    objectives, queries = raw["objectives"], raw["queries"]
    if not isinstance(objectives, dict) or set(objectives) != set(OBJECTIVES):
        raise RegistryError(f"phrases.objectives: expected exactly {list(OBJECTIVES)}")
    for key, text in objectives.items():
        _check_fields(template_fields(str(text), f"phrases.objectives.{key}"), frozenset({"threshold"}),
                      f"phrases.objectives.{key}")
    if not isinstance(queries, dict) or set(queries) != set(QUERY_KINDS):
        raise RegistryError(f"phrases.queries: expected exactly {list(QUERY_KINDS)}")
    fields = {"genre": frozenset({"genre"}), "title": frozenset({"words"})}
    out: dict[str, tuple[str, ...]] = {}
    for kind, texts in queries.items():
        if not isinstance(texts, list) or not texts:
            raise RegistryError(f"phrases.queries.{kind}: expected a non-empty list")
        for text in texts:
            where = f"phrases.queries.{kind}"
            used = template_fields(str(text), where)
            _check_fields(used, fields[kind], where)
            if used != fields[kind]:
                raise RegistryError(f"{where}: '{text}' must use {sorted(fields[kind])}")
        out[kind] = tuple(str(t) for t in texts)
    return {k: str(v) for k, v in objectives.items()}, out


def _validate_format(raw: object) -> dict[str, str]:
    if not isinstance(raw, dict) or set(raw) != set(FORMAT_FIELDS):
        got = sorted(raw) if isinstance(raw, dict) else raw
        raise RegistryError(f"format: expected exactly the keys {sorted(FORMAT_FIELDS)}, got {got}")
    for key, text in raw.items():
        _check_fields(template_fields(str(text), f"format.{key}"), FORMAT_FIELDS[key], f"format.{key}")
    return {k: str(v) for k, v in raw.items()}


def load_registry(path: str | Path) -> Registry:
    """Parse and validate the registry file; raise `RegistryError` naming the first bad entry."""
    path = Path(path)
    if not path.is_file():
        raise RegistryError(f"{path}: prompt registry not found")
    data = path.read_bytes()
    try:
        raw = yaml.safe_load(data.decode("utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError) as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise RegistryError(f"{path}: not valid UTF-8 YAML ({problem}{where}): fix the file, or point "
                            "textualize.registry at the prompt registry") from None
    if not isinstance(raw, dict) or set(raw) != {"version", "format", "phrases", "templates"}:
        raise RegistryError(f"{path}: expected top-level keys version, format, phrases, templates")
    if not isinstance(raw["templates"], list):
        raise RegistryError(f"{path}: templates must be a list")
    templates = tuple(_validate_template(e, n) for n, e in enumerate(raw["templates"]))
    ids = [t.id for t in templates]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise RegistryError(f"{path}: duplicate template ids {dupes}")
    for task in TASKS:
        for kind in KINDS:
            if not any(t.task == task and t.kind == kind for t in templates):
                raise RegistryError(f"{path}: task '{task}' has no {kind} template")
    objectives, queries = _validate_phrases(raw["phrases"])
    return Registry(version=str(raw["version"]), sha256=hashlib.sha256(data).hexdigest(), path=str(path),
                    templates=templates, format=_validate_format(raw["format"]), objectives=objectives,
                    queries=queries)
