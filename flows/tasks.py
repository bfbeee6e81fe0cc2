"""One thin Prefect task per pipeline step: load params from (path, overrides), call the component
function, record the outputs, return a small JSON summary. Tasks take paths, never objects.

Caching: `CacheKeyFnPolicy` over the step's input-file hashes, params and output state
(flows/fingerprint.py) + `TASK_SOURCE` (editing a task's body reruns it). Results are persisted as
JSON under `orchestration.results_dir`, so the cache holds across flow runs and processes.
Retries only where a retry can help: `fetch` (network) and `register` / `promote` (tracking store),
and only for transient errors — a checksum mismatch or an invalid model fails at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from typing import Any

from prefect import Task, get_run_logger, task
from prefect.cache_policies import TASK_SOURCE, CacheKeyFnPolicy
from prefect.client.schemas.objects import TaskRun
from prefect.states import State

from components.config import load_params
from flows.fingerprint import step_cache_key, write_record
from components.steps import STEPS, Step
from flows.plan import build_plan

Overrides = dict[str, Any] | None
StepResult = dict[str, Any]


def _key_fn(step: str, _ctx: object, inputs: dict[str, Any]) -> str:
    return step_cache_key(step, inputs["params_path"], inputs.get("overrides"))


def is_transient(exc: BaseException | None) -> bool:
    """Network / tracking-store hiccups that a retry can fix; deterministic failures are not."""
    seen = 0
    while exc is not None and seen < 10:
        name, text = type(exc).__name__, str(exc)
        if name == "FetchError":
            return text.startswith(("could not download", "`pip download")) and "sha256" not in text
        if isinstance(exc, (ConnectionError, TimeoutError)) or name in {"ConnectTimeout", "ReadTimeout",
                                                                         "MaxRetryError", "NewConnectionError"}:
            return True
        if "database is locked" in text or "Connection refused" in text or "TEMPORARILY_UNAVAILABLE" in text:
            return True
        if name == "MlflowException" and getattr(exc, "error_code", "") in {
                "TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED", "RESOURCE_EXHAUSTED"}:
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def retry_if_transient(_task: Task[..., Any], _run: TaskRun, state: State[Any]) -> bool:
    return is_transient(state.result(raise_on_failure=False) if state.is_failed() else None)


def step_options(step: str, retries: int = 0) -> dict[str, Any]:
    return {"name": step, "task_run_name": step,
            "cache_policy": CacheKeyFnPolicy(cache_key_fn=partial(_key_fn, step)) + TASK_SOURCE,
            "persist_result": True, "result_serializer": "json", "cache_result_in_memory": False,
            "retries": retries, "retry_delay_seconds": [10 * 2 ** i for i in range(retries)],
            "retry_condition_fn": retry_if_transient if retries else None}


def run_step(step: str, params_path: str, overrides: Overrides, fn: Callable[..., Any], **kwargs: Any) -> StepResult:
    """The body of every step task: the component function, then the record of what it wrote."""
    from prefect.runtime import task_run

    attempt = int(task_run.run_count or 1)
    params = load_params(params_path, overrides)
    start = time.perf_counter()
    try:
        report = fn(params, **kwargs)
    except Exception as exc:
        exc.unirec_attempt = attempt  # type: ignore[attr-defined]  (the flow's summary shows retries)
        raise
    seconds = time.perf_counter() - start
    summary = report.summary() if callable(getattr(report, "summary", None)) else str(report)
    registry = None
    planned = build_plan(params)[step]
    if planned.spec.registry_outs:
        from flows.registry_state import registry_facts

        registry = registry_facts(params, step)
    write_record(params, planned, registry)
    get_run_logger().info("%s done in %.1f s\n%s", step, seconds, summary)
    return {"step": step, "summary": summary, "seconds": round(seconds, 3), "attempts": attempt,
            "finished": time.time()}


def _step_task(step: Step) -> Task[..., StepResult]:
    """The Prefect task of one step: `run_step` over the step's component function."""
    def body(params_path: str, overrides: Overrides = None) -> StepResult:
        return run_step(step.name, params_path, overrides, step.function(), **step.flow_kwargs)

    body.__name__ = body.__qualname__ = f"{step.name.replace('-', '_')}_task"
    return task(**step_options(step.name, retries=2 if step.retries else 0))(body)


STEP_TASKS: dict[str, Task[..., StepResult]] = {step.name: _step_task(step) for step in STEPS}
