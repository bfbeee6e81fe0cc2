"""The unirec pipeline as one Prefect 3 flow: fetch → ingest → validate → split → textualize →
embed-items → train, baselines → index → evaluate → register → promote.

Each step is one cached task over its component function (flows/tasks.py); the order and each
step's inputs come from dvc.yaml (flows/plan.py). A failing step does not stop the steps that do not
need it; at the end a summary names every step's outcome (ran / cached / skipped / FAILED / not run)
and the flow fails with that summary if any step failed. When every step succeeded but the promotion gate
refused the challenger, the run ends COMPLETED under the state name "Challenger refused" (`REFUSED_STATE`), with
the refusal as the state message.

Offline: with no PREFECT_API_URL, Prefect starts its ephemeral API server (SQLite under
PREFECT_HOME = `<repo>/.prefect`). Run it with `make run` or `unirec flow run [--set k=v]`.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import flows  # noqa: F401  (offline Prefect defaults, before prefect is imported)
import yaml
from prefect import flow, get_run_logger
from prefect.states import Completed, State

from components.config import Params, load_params
from flows.fingerprint import results_dir
from components.steps import ORDER, STEP
from flows.plan import StepName, build_plan
from flows.tasks import STEP_TASKS

ENV_OVERRIDES = "UNIREC_OVERRIDES"
"""Env var holding a JSON/YAML mapping of dotted overrides applied under the `overrides` parameter
(infra/docker-compose.yml points `mlflow.tracking_uri` at the MLflow server this way)."""


REFUSED_STATE = "Challenger refused"
"""Name of the final (COMPLETED) state of a flow run whose challenger the promotion gate refused."""


class PipelineFailed(RuntimeError):
    """At least one step failed; the message is the run summary."""


@dataclass
class Outcome:
    step: str
    status: str  # ran | cached | skipped | failed | not run
    seconds: float = 0.0
    summary: str = ""
    error: str = ""
    attempts: int = 1


def env_overrides() -> dict[str, Any]:
    text = os.environ.get(ENV_OVERRIDES, "").strip()
    if not text:
        return {}
    value = yaml.safe_load(text)
    if not isinstance(value, dict):
        raise ValueError(f"{ENV_OVERRIDES} must be a mapping of dotted params keys to values, got {text!r}")
    return value


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}" + (" (…)" if len(text) > 1 else "")


def render_summary(outcomes: dict[str, Outcome], title: str = "unirec pipeline") -> str:
    failed = [o.step for o in outcomes.values() if o.status == "failed"]
    head = f"{title}: FAILED at {', '.join(failed)}" if failed else f"{title}: all steps succeeded"
    lines = [head]
    for o in outcomes.values():
        detail = o.error or (f"{o.seconds:.1f} s" if o.status == "ran" else "")
        if o.attempts > 1:
            detail += f" ({o.attempts} attempts)"
        lines.append(f"  {o.step:<12} {o.status:<8} {detail}".rstrip())
    counts = {s: sum(o.status == s for o in outcomes.values()) for s in ("ran", "cached", "skipped", "failed", "not run")}
    lines.append("  " + ", ".join(f"{n} {s}" for s, n in counts.items() if n))
    return "\n".join(lines)


def run_steps(params_path: str, overrides: dict[str, Any], skip: set[str], refresh: set[str]) -> dict[str, Outcome]:
    params = load_params(params_path, overrides)
    plan = build_plan(params)
    storage = results_dir(params)
    storage.mkdir(parents=True, exist_ok=True)
    outcomes: dict[str, Outcome] = {}
    for name in ORDER:
        blocked = [u for u in plan[name].needs if outcomes[u].status in ("failed", "not run")]
        if name in skip:
            outcomes[name] = Outcome(name, "skipped")
            continue
        if blocked:
            outcomes[name] = Outcome(name, "not run", error=f"needs {', '.join(blocked)}")
            continue
        options: dict[str, Any] = {"result_storage": storage, "refresh_cache": name in refresh}
        if STEP[name].retries:
            retries = getattr(params.orchestration, STEP[name].retries)
            options |= {"retries": retries,
                        "retry_delay_seconds": [params.orchestration.retry_delay_s * 2 ** i for i in range(retries)]}
        start = time.perf_counter()
        state = STEP_TASKS[name].with_options(**options)(params_path, overrides, return_state=True)
        seconds = time.perf_counter() - start
        if state.is_completed():
            result = state.result()
            cached = state.name == "Cached"
            outcomes[name] = Outcome(name, "cached" if cached else "ran", seconds, result.get("summary", ""),
                                     attempts=1 if cached else int(result.get("attempts", 1)))
        else:
            exc = state.result(raise_on_failure=False)
            error = one_line(exc) if isinstance(exc, BaseException) else (state.message or state.name)
            outcomes[name] = Outcome(name, "failed", seconds, error=error,
                                     attempts=int(getattr(exc, "unirec_attempt", 1)))
    return outcomes



@flow(name="unirec-pipeline", validate_parameters=True)
def unirec_pipeline(params_path: str = "params.yaml", overrides: dict[str, Any] | None = None,
                    skip: list[StepName] | None = None, refresh: list[StepName] | None = None
                    ) -> dict[str, Any] | State[Any]:
    """Run every pipeline step, each cached on its inputs; returns {"summary", "steps", "refused"} (a refused
    challenger: as the data of a COMPLETED state named "Challenger refused"; calling the flow still returns the dict).

    Args:
        params_path: the params.yaml to read (relative to the working directory).
        overrides: dotted params keys → values (`{"train.max_steps": 1}`), validated by load_params;
            env UNIREC_OVERRIDES supplies defaults under these.
        skip: steps not to run (their outputs are used as they are), e.g. ["fetch"] offline.
        refresh: steps to rerun even when cached (their dependents rerun only if outputs change).
    """
    merged = {**env_overrides(), **(overrides or {})}
    path = str(Path(params_path).resolve())
    params = load_params(path, merged)  # invalid params fail here, before any step
    outcomes = run_steps(path, merged, set(skip or ()), set(refresh or ()))
    summary = render_summary(outcomes)
    logger = get_run_logger()
    if any(o.status == "failed" for o in outcomes.values()):
        logger.error(summary)
        raise PipelineFailed(summary)
    refused = refusal(params, outcomes)
    if refused:
        summary += f"\n  {refused}"
        logger.warning(summary)
    else:
        logger.info(summary)
    result = {"summary": summary, "steps": {n: asdict(o) for n, o in outcomes.items()}, "refused": refused}
    # A refused challenger is not a failure (the champion keeps serving), but it must not look like a normal
    # run either: the flow run ends Completed under its own state name, visible in the UI and the API.
    return Completed(message=refused, name=REFUSED_STATE, data=result) if refused else result


def refusal(params: Params, outcomes: dict[str, Outcome]) -> str:
    """'challenger vN refused by the promotion gate: …' when this run's promote step (ran or cached) left the
    challenger refused (read from `registry.promotion_file`), else ''."""
    if outcomes.get("promote") is None or outcomes["promote"].status not in ("ran", "cached"):
        return ""
    try:
        record = json.loads(params.resolve(params.registry.promotion_file).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ""
    if record.get("action") != "refused":
        return ""
    return (f"challenger v{record.get('challenger')} refused by the promotion gate: {record.get('reason')}; "
            f"{params.registry.champion_alias} stays v{record.get('champion')}")


def run(params_path: str, overrides: dict[str, Any], skip: list[str], refresh: list[str], as_json: bool = False,
        debug: bool = False) -> int:
    """`unirec flow run`: check the params, run the flow, print its summary; the exit code (0 = every step succeeded).

    Invalid params or overrides fail before Prefect starts with one line `unirec flow failed: …` (`debug`: the
    exception propagates); a failed step prints the per-step summary."""
    try:
        load_params(params_path, {**env_overrides(), **overrides})  # a typo fails here, before Prefect starts
        result = unirec_pipeline(params_path=params_path, overrides=overrides, skip=skip, refresh=refresh)
    except PipelineFailed as exc:
        print(exc, file=sys.stderr)
        return 1
    except ValueError as exc:  # invalid params / overrides, before any step ran
        if debug:
            raise
        print(f"unirec flow failed: {' | '.join(str(exc).splitlines())}", file=sys.stderr)
        return 1
    print(json.dumps(result["steps"], indent=2) if as_json else result["summary"])
    return 0
