"""Every DVC stage lists, among its deps, the code it runs: the static import closure of the step's module inside
`components/` (lazy imports in function bodies included) must be covered by the stage's `deps` (a file, or a folder
holding it). Otherwise editing that code leaves `dvc repro` reporting the stage up to date while it would compute
something else. Exempt: the shared infrastructure that reads parameters and files but decides no figure
(`INFRASTRUCTURE`); a change there that does change a figure must be forced with `dvc repro -f`."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from components.steps import STEPS
from tests.conftest import REPO

INFRASTRUCTURE = {
    "components/__init__.py",
    "components/config",  # parsing and validation of params.yaml (the values are the stages' `params` deps)
    "components/artifacts.py",  # readers that turn an unreadable file into one clear error
    "components/manifest.py",  # the sha256 of a step's output files, recorded and checked (decides no figure)
    "components/utils.py",  # sha256_of
    "components/hardware.py",  # resolves `auto` precision / autocast from the machine
    "components/steps.py",  # the step registry
}


def _module_file(module: str) -> Path | None:
    base = REPO / Path(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _nodes(tree: ast.Module, module_level_only: bool) -> list[ast.AST]:
    """The statements that run: `if TYPE_CHECKING:` blocks never; function bodies unless `module_level_only`."""
    out: list[ast.AST] = []
    todo: list[ast.AST] = list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            todo.extend(node.orelse)
            continue
        if module_level_only and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        out.append(node)
        todo.extend(ast.iter_child_nodes(node))
    return out


def _imports(path: Path, module_level_only: bool) -> set[str]:
    """Modules of `components` that `path` imports (at import time, or also inside its functions)."""
    found: set[str] = set()
    package = ".".join(path.relative_to(REPO).with_suffix("").parts)
    package = package.removesuffix(".__init__") if path.name == "__init__.py" else package.rsplit(".", 1)[0]
    for node in _nodes(ast.parse(path.read_text(encoding="utf-8")), module_level_only):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "components"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            if module.split(".")[0] != "components":
                continue
            found.add(module)
            found |= {f"{module}.{a.name}" for a in node.names if _module_file(f"{module}.{a.name}")}
    return found


def closure(module: str) -> set[str]:
    """Repository-relative files of every `components` module that running code of `module` executes: a module's
    imports, inside its functions too; a parent package's `__init__` (run on the way in) only at its top level,
    and not at all when it imports nothing there (a docstring or lazy wrappers decide nothing for the stage)."""
    seen: dict[str, bool] = {}  # file -> followed into function bodies
    todo: list[tuple[str, bool]] = [(module, False)]
    while todo:
        name, module_level_only = todo.pop()
        parts = name.split(".")
        for i in range(1, len(parts) + 1):
            path = _module_file(".".join(parts[:i]))
            if path is None:
                continue
            only_top = module_level_only or i < len(parts)
            rel = path.relative_to(REPO).as_posix()
            if i < len(parts) and not _imports(path, True):
                continue  # a package __init__ passed on the way in that imports nothing at import time (a facade)
            if rel in seen and (seen[rel] or only_top):
                continue
            seen[rel] = not only_top
            todo.extend((m, False) for m in _imports(path, only_top))
    return set(seen)


def _covered(file: str, deps: list[str]) -> bool:
    return any(file == d or file.startswith(d.rstrip("/") + "/") for d in [*deps, *INFRASTRUCTURE])


@pytest.mark.parametrize("step", STEPS, ids=[s.name for s in STEPS])
def test_each_stage_depends_on_the_code_it_runs(step) -> None:
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    deps = [str(d) for d in stages[step.name].get("deps", [])]
    module = step.target.split(":")[0]
    missing = sorted(f for f in closure(module) if not _covered(f, deps))
    assert not missing, f"dvc.yaml stage {step.name!r} runs {missing} but does not list them in deps"


def test_the_closure_follows_lazy_and_relative_imports() -> None:
    files = closure("components.train")
    assert "components/train.py" in files and "components/evaluation/ranking.py" in files
    assert any(f.startswith("components/model/") for f in files)
