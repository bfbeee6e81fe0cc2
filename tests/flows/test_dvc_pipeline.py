"""The DVC pipeline for real: `dvc repro` in a temporary git repo on the small committed fixture.

Checks: the first repro runs ingest → validate → split → textualize; a second repro runs nothing;
changing one param reruns only the stages that depend on it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
STAGES = ("ingest", "validate", "split", "textualize")


def _run(cmd: list[str], cwd: Path) -> str:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


def _ran(output: str) -> set[str]:
    return {s for s in STAGES if f"Running stage '{s}'" in output}


def _set_param(repo: Path, dotted: str, value: object) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    node = params
    *parents, leaf = dotted.split(".")
    for key in parents:
        node = node[key]
    node[leaf] = value
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture(scope="module")
def dvc_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("dvcrepo")
    for name in ("dvc.yaml", "params.yaml", "pyproject.toml"):
        shutil.copy(REPO / name, repo / name)
    for folder in ("components", "prompts"):
        shutil.copytree(REPO / folder, repo / folder, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "tests" / "fixtures" / "tiny", repo / "data" / "raw" / "tiny")
    _set_param(repo, "dataset.name", "tiny")
    _set_param(repo, "dataset.path", "data/raw/tiny")
    _set_param(repo, "dataset.recbole.prefix", "tiny")
    _run(["git", "init", "-q"], repo)
    _run(["dvc", "init", "-q"], repo)
    _run(["dvc", "config", "core.analytics", "false"], repo)
    _run(["git", "add", "-A"], repo)
    _run(["git", "commit", "-q", "-m", "fixture"], repo)
    return repo


def test_repro_runs_every_stage_then_nothing_then_only_what_changed(dvc_repo: Path) -> None:
    first = _run(["dvc", "repro", "textualize"], dvc_repo)
    assert _ran(first) == set(STAGES), first
    assert "fetch" not in first  # the fixture is local: nothing is downloaded
    for out in ("data/interim/interactions.parquet", "data/canonical/interactions.parquet",
                "data/quarantine/interactions.parquet", "data/splits/train.parquet",
                "data/examples/manifest.json", "dvc.lock"):
        assert (dvc_repo / out).exists(), out

    second = _run(["dvc", "repro", "textualize"], dvc_repo)
    assert _ran(second) == set(), second
    status = _run(["dvc", "status", "textualize"], dvc_repo)
    assert "up to date" in status, status

    _set_param(dvc_repo, "split.cold_item_fraction", 0.2)
    third = _run(["dvc", "repro", "textualize"], dvc_repo)
    assert _ran(third) == {"split", "textualize"}, third

    _set_param(dvc_repo, "textualize.summary_top_genres", 2)
    fourth = _run(["dvc", "repro", "textualize"], dvc_repo)
    assert _ran(fourth) == {"textualize"}, fourth
