"""Helpers of the prompt-file validation tests: a mutated copy of a YAML prompt file."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import yaml


def mutated_copy(source: Path, folder: Path, mutate: Callable[[dict], object]) -> Path:
    """`source` loaded, changed in place by `mutate`, written as `folder / source.name`."""
    raw = yaml.safe_load(source.read_text(encoding="utf-8"))
    mutate(raw)
    path = folder / source.name
    path.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    return path


def set_template(index: int, key: str, value: object) -> Callable[[dict], None]:
    """A mutation setting `key` of the `index`-th entry of `templates`."""
    def mutate(raw: dict) -> None:
        raw["templates"][index][key] = value
    return mutate
