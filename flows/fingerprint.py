"""Content hashes and the cache key of a step.

A step's cache key is the sha256 of: the step and its component function, the sha256 of every
input file/folder (its dvc.yaml `deps`, code included), the values of its `params`, what upstream
registry steps last recorded, and the state of its own outputs:

* outputs as the step last wrote them (or no record yet)  -> "ok"
* an output missing, or changed since the step wrote it    -> "changed:<digest>"

so an unchanged step is skipped, a changed input reruns it, and deleting or editing an output
reruns the step that writes it (as `dvc repro` does). After a real run the task writes a record of
its outputs' digest to `<results>/outs/<step>.json`; a cache hit writes nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from components.config import Params, load_params
from flows.plan import PlannedStep, build_plan, lookup, params_tree

KEY_VERSION = 1
_FILE_MEMO: dict[tuple[str, int, int], str] = {}
_SKIP_DIRS = {"__pycache__", ".ipynb_checkpoints"}


def file_sha256(path: Path) -> str:
    st = path.stat()
    memo = (str(path), st.st_size, st.st_mtime_ns)
    if memo not in _FILE_MEMO:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            while block := f.read(1 << 20):
                digest.update(block)
        _FILE_MEMO[memo] = digest.hexdigest()
    return _FILE_MEMO[memo]


def path_digest(path: Path) -> str:
    """sha256 of a file, of a folder (relative names + file hashes, sorted), or "missing"."""
    if path.is_file():
        return file_sha256(path)
    if not path.is_dir():
        return "missing"
    lines = []
    for folder, dirs, files in os.walk(path):
        dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS)
        for name in sorted(files):
            if name.endswith((".pyc", ".part")):
                continue
            full = Path(folder) / name
            lines.append(f"{full.relative_to(path).as_posix()}\0{file_sha256(full)}")
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def outs_digest(step: PlannedStep) -> str:
    parts = {str(out): path_digest(out) for out in step.outs}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def results_dir(params: Params) -> Path:
    return params.resolve(params.orchestration.results_dir)


def record_path(params: Params, step: str) -> Path:
    return results_dir(params) / "outs" / f"{step}.json"


def read_record(params: Params, step: str) -> dict[str, Any] | None:
    path = record_path(params, step)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def write_record(params: Params, step: PlannedStep, registry: dict[str, Any] | None = None) -> dict[str, Any]:
    """After a real run: what the step's outputs look like now (files, or registry facts)."""
    record = {"step": step.name, "outs": outs_digest(step), "registry": registry}
    path = record_path(params, step.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.part")
    tmp.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    tmp.replace(path)
    return record


def outs_state(params: Params, step: PlannedStep) -> str:
    """"ok" when the outputs are as the step last left them (or it never ran here); else "changed:…"."""
    record = read_record(params, step.name)
    if record is None:  # never ran here: nothing to compare (a first run misses the cache anyway)
        return "ok"
    if any(not out.exists() for out in step.outs):
        return "changed:missing"
    if step.spec.registry_outs:
        from flows.registry_state import registry_matches

        return "ok" if registry_matches(params, step.name, record.get("registry")) else "changed:registry"
    current = outs_digest(step)
    return "ok" if record.get("outs") == current else f"changed:{current}"


def key_material(params: Params, step_name: str) -> dict[str, Any]:
    """Everything the cache key of `step_name` is a hash of (readable, for debugging and tests)."""
    plan = build_plan(params)
    step = plan[step_name]
    tree = params_tree(params)
    upstream_registry = {u: (read_record(params, u) or {}).get("registry")
                         for u in step.needs if plan[u].spec.registry_outs}
    return {
        "v": KEY_VERSION,
        "step": step.name,
        "deps": {str(d): path_digest(d) for d in step.deps},
        "params": {k: lookup(tree, k) for k in step.params},
        "upstream_registry": upstream_registry,
        "outs": outs_state(params, step),
    }


def step_cache_key(step_name: str, params_path: str, overrides: dict[str, Any] | None) -> str:
    params = load_params(params_path, overrides)
    material = key_material(params, step_name)
    digest = hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()
    return f"unirec-{step_name}-{digest}"
