"""`prefect --no-prompt deploy …` on prefect.yaml, with one compatibility fix for the pinned versions.

`python -m flows.deploy --all` runs exactly Prefect's own `prefect --no-prompt deploy --all`. Why not call
the CLI directly: after creating each deployment, Prefect 3.8.8's deploy command asks the API whether a
worker of the pool is online (`read_workers_for_work_pool`) and sends `"offset": null, "limit": null`;
FastAPI 0.154 (pinned because prefect 3.8.8 breaks with >= 0.155) no longer maps an explicit null body
field to its default, the server answers 422 and the command aborts after the FIRST deployment. The fix
sends the server's own defaults (offset 0, limit PREFECT_SERVER_API_DEFAULT_LIMIT) instead of nulls;
nothing else changes. Remove this module once the fastapi / prefect pins agree again.
"""

from __future__ import annotations

import functools
import sys
from typing import Any

import flows  # noqa: F401  (offline defaults before prefect is imported)


def _explicit_paging(method: Any, is_async: bool) -> Any:
    def fill(kwargs: dict[str, Any]) -> dict[str, Any]:
        from prefect.settings import get_current_settings

        limit = kwargs.get("limit")
        return {**kwargs, "offset": kwargs.get("offset") or 0,
                "limit": limit if limit is not None else get_current_settings().server.api.default_limit}

    if is_async:
        @functools.wraps(method)
        async def wrapper(self: Any, work_pool_name: str, worker_filter: Any = None, **kwargs: Any) -> Any:
            return await method(self, work_pool_name, worker_filter, **fill(kwargs))
    else:
        @functools.wraps(method)
        def wrapper(self: Any, work_pool_name: str, worker_filter: Any = None, **kwargs: Any) -> Any:
            return method(self, work_pool_name, worker_filter, **fill(kwargs))
    wrapper.__unirec_paging_fix__ = True  # type: ignore[attr-defined]
    return wrapper


def apply_paging_fix() -> None:
    from prefect.client.orchestration._work_pools.client import WorkPoolAsyncClient, WorkPoolClient

    for cls, is_async in ((WorkPoolClient, False), (WorkPoolAsyncClient, True)):
        method = cls.read_workers_for_work_pool
        if not getattr(method, "__unirec_paging_fix__", False):
            cls.read_workers_for_work_pool = _explicit_paging(method, is_async)  # type: ignore[method-assign]


def main(argv: list[str] | None = None) -> int:
    apply_paging_fix()
    from prefect.cli import app

    args = list(sys.argv[1:] if argv is None else argv) or ["--all"]
    sys.argv = ["prefect", "--no-prompt", "deploy", *args]  # Prefect's CLI entry point reads sys.argv
    try:
        app()
    except SystemExit as exc:  # the CLI exits with its status
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
