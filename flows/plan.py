"""Which files and params each pipeline step depends on: read from dvc.yaml, ONE declaration.

The steps and their order are components/steps.py's. Every step is the DVC stage of the same name: its
`deps`, `params` and `outs` (+ `metrics`, `plots`) come from `dvc.yaml`, with `${...}` resolved against the
loaded params exactly as DVC templating does, so the flow and `dvc repro` agree on what a step depends on. The DAG is derived the way DVC derives it:
step B needs step A when one of B's deps is, contains or lies inside one of A's outs; `needs` adds
edges that no file carries (promote acts on what register put in the registry).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import yaml

from components.config import Params
from components.steps import ORDER, STEP, Step
from flows import CODE_ROOT

StepName = Literal[ORDER]  # type: ignore[valid-type]  # the step names of components/steps.py

_TEMPLATE = re.compile(r"\$\{\s*([^}\s]+)\s*\}")


class PlanError(ValueError):
    """dvc.yaml names a param or lacks a stage of the flow."""


@dataclass(frozen=True)
class PlannedStep:
    name: str
    spec: Step
    deps: tuple[Path, ...]
    params: tuple[str, ...]
    outs: tuple[Path, ...]
    needs: tuple[str, ...]


@lru_cache(maxsize=4)
def _dvc_stages(path: Path, mtime_ns: int) -> dict[str, dict[str, Any]]:
    return (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("stages", {})


def dvc_stages() -> dict[str, dict[str, Any]]:
    path = CODE_ROOT / "dvc.yaml"
    return _dvc_stages(path, path.stat().st_mtime_ns) if path.is_file() else {}


def lookup(tree: dict[str, Any], dotted: str) -> Any:
    node: Any = tree
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            raise KeyError(dotted)
        node = node[key]
    return node


def params_tree(params: Params) -> dict[str, Any]:
    return params.model_dump(mode="json", by_alias=True, exclude={"root"})


def _interpolate(text: str, tree: dict[str, Any], where: str) -> str:
    def sub(match: re.Match[str]) -> str:
        try:
            return str(lookup(tree, match.group(1)))
        except KeyError:
            raise PlanError(f"{where}: ${{{match.group(1)}}} is not a key of params.yaml") from None
    return _TEMPLATE.sub(sub, text)


def _entries(items: list[Any] | None) -> list[str]:
    """dvc.yaml list entries: plain strings or one-key mappings (`- path: {cache: false}`)."""
    out: list[str] = []
    for item in items or []:
        out.extend([item] if isinstance(item, str) else list(item))
    return out


def _param_keys(items: list[Any] | None) -> list[str]:
    keys: list[str] = []
    for item in items or []:
        if isinstance(item, str):
            keys.append(item)
        elif isinstance(item, dict):  # `- params.yaml: [a, b]`; other params files are not ours
            for file, names in item.items():
                if Path(file).name == "params.yaml":
                    keys.extend(names or [])
    return keys


def stage_of(name: str) -> dict[str, Any]:
    """The dvc.yaml stage of step `name` (stages are named as the steps)."""
    stages = dvc_stages()
    if name not in stages:
        raise PlanError(f"step {name!r}: {CODE_ROOT / 'dvc.yaml'} has no stage {name!r}")
    return stages[name]


def _overlap(a: Path, b: Path) -> bool:
    return a == b or a in b.parents or b in a.parents


def build_plan(params: Params) -> dict[str, PlannedStep]:
    """Every step with resolved absolute deps/outs, its params keys and its upstream steps."""
    tree = params_tree(params)
    raw: dict[str, tuple[list[Path], list[str], list[Path]]] = {}
    for name in ORDER:
        stage, where = stage_of(name), f"step {name}"
        deps: list[Path] = []
        for dep in _entries(stage.get("deps")):
            # `${...}` paths are data (relative to the params folder); plain ones are code.
            deps.append(params.resolve(_interpolate(dep, tree, where)) if "${" in dep else CODE_ROOT / dep)
        outs = [params.resolve(_interpolate(out, tree, where))
                for section in ("outs", "metrics", "plots") for out in _entries(stage.get(section))]
        keys = _param_keys(stage.get("params"))
        for key in keys:
            try:
                lookup(tree, key)
            except KeyError:
                raise PlanError(f"{where}: param {key!r} is not a key of params.yaml") from None
        raw[name] = ([d.resolve() for d in deps], keys, [o.resolve() for o in outs])
    plan: dict[str, PlannedStep] = {}
    for i, name in enumerate(ORDER):
        deps, keys, outs = raw[name]
        upstream = [u for u in ORDER[:i] if any(_overlap(d, o) for d in deps for o in raw[u][2])]
        needs = tuple(dict.fromkeys([*upstream, *STEP[name].needs]))
        plan[name] = PlannedStep(name, STEP[name], tuple(deps), tuple(keys), tuple(outs), needs)
    return plan


def downstream(plan: dict[str, PlannedStep], step: str) -> set[str]:
    """Steps that (transitively) need `step`."""
    found: set[str] = set()
    for name in ORDER:
        if step in plan[name].needs or found & set(plan[name].needs):
            found.add(name)
    return found
