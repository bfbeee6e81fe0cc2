"""The work pools of prefect.yaml: the first step of `make deploy` (and of the compose stack's deploy job).

`prefect --no-prompt deploy --all` does not create work pools: on a fresh server it stops at the first
deployment whose pool is missing. `unirec flow pools` reads the pool names from the deployments of
prefect.yaml and creates each missing one as a `process` pool (every unirec worker is a process worker:
`make worker`, the compose `prefect-worker` and `trainer`) with Prefect's default process job template.
A pool that already exists is left as it is (its type, template, limits and pause state), so the command
is idempotent and never undoes a tuned pool. It talks only to PREFECT_API_URL.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

import flows  # noqa: F401  (offline defaults before prefect is imported)

POOL_TYPE = "process"


def work_pool_names(prefect_file: Path) -> list[str]:
    """The pools the deployments of `prefect_file` run on, in file order, each once."""
    path = Path(prefect_file)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: deployments file not found: run from the project root (prefect.yaml) or "
                                "pass --prefect-file")
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ValueError(f"{path}: not valid UTF-8 YAML ({getattr(exc, 'problem', None) or type(exc).__name__}): "
                         "fix the deployments file or pass --prefect-file") from None
    names: list[str] = []
    for deployment in config.get("deployments") or []:
        name = ((deployment or {}).get("work_pool") or {}).get("name")
        if not name:
            raise ValueError(f"{prefect_file}: deployment {deployment.get('name')!r} names no work_pool.name")
        if name not in names:
            names.append(name)
    return names


def ensure_work_pools(names: list[str], pool_type: str = POOL_TYPE) -> dict[str, str]:
    """Create every pool of `names` that the API does not have; returns name → 'created' / 'exists (<type>)'."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
    from prefect.workers.base import BaseWorker

    worker_cls = BaseWorker.get_worker_class_from_type(pool_type)
    if worker_cls is None:
        raise ValueError(f"no worker of type {pool_type!r} is installed")
    outcome: dict[str, str] = {}
    with get_client(sync_client=True) as client:
        for name in names:
            try:
                outcome[name] = f"exists ({client.read_work_pool(name).type})"
                continue
            except ObjectNotFound:
                pass
            template: dict[str, Any] = worker_cls.get_default_base_job_template()
            try:
                client.create_work_pool(WorkPoolCreate(name=name, type=pool_type, base_job_template=template))
                outcome[name] = "created"
            except ObjectAlreadyExists:  # created meanwhile by another deploy
                outcome[name] = f"exists ({client.read_work_pool(name).type})"
    return outcome


def deploy_pools(prefect_file: Path) -> str:
    """`unirec flow pools`: ensure every pool of `prefect_file` exists; one line per pool."""
    return "\n".join(f"work pool {name}: {state}" for name, state in ensure_work_pools(work_pool_names(prefect_file)).items())
