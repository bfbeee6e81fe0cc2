"""Schedules that fire, against a REAL `prefect server` (127.0.0.1, a free port, a temporary PREFECT_HOME).

1. `make deploy` on the fresh server exits 0, creates both pools prefect.yaml names and all three deployments,
   and is idempotent; `prefect deployment ls` and `prefect work-pool ls` exit 0 and list them.
2. The project's weekly-retrain deployment (same entrypoint, pull step, job variables, pool and concurrency
   limit; its cron changed to `* * * * *` and its parameters to the tests' tiny configuration, fetch skipped) is
   deployed with the same two commands, and a real process worker (`make worker`'s command) serves the pool.
   Nothing here creates a flow run: the server's SCHEDULER must create one (auto_scheduled, its idempotency
   key names the schedule), and the worker must take it to Completed, every pipeline step having run.
   Bounded: it fails with the states seen and the logs' tails after RUN_DEADLINE_S. The server, the worker and
   every process they started are stopped in every case.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

from components.config import load_params
from flows.deploy import work_pool_names
from flows.fingerprint import record_path
from tests.conftest import REPO, params_in
from tests.flows.test_prefect_flow import OVERRIDES, STEPS

# Pools and deployments of the project's prefect.yaml, as `make deploy` must leave them on a fresh server.
POOLS = {"unirec-process", "unirec-gpu"}
DEPLOYMENTS = {"unirec-pipeline/weekly-retrain": "unirec-process",
               "unirec-champion-eval/daily-champion-eval": "unirec-process",
               "unirec-pipeline/retrain-gpu": "unirec-gpu"}
MINUTELY = "every-minute-tiny"  # the weekly-retrain deployment, every minute, on the tiny configuration
QUEUE = "schedule-test"  # its work queue: the worker takes no run of the project's own deployments
SERVER_START_S = 150
RUN_DEADLINE_S = 240  # from the deployment to Completed: ≤ 60 s to the next minute, the tiny pipeline, slack
SERVER_ENV = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "5",  # prefect 3.8.8 ServerServicesSchedulerSettings
    "PREFECT_WORKER_QUERY_SECONDS": "2", "PREFECT_WORKER_HEARTBEAT_SECONDS": "10",
    "COLUMNS": "200",  # the CLI's tables untruncated
}


@dataclass
class Server:
    api: str
    env: dict[str, str]  # for CLI and worker subprocesses: PREFECT_API_URL → this server
    logs: Path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _tail(path: Path, lines: int = 40) -> str:
    text = path.read_text(errors="replace") if path.exists() else "(no output)"
    return "\n".join(text.splitlines()[-lines:])


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop `proc` and every process it started (a flow run may sit in a session of its own)."""
    try:
        family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        family = []
    for member in family:
        try:
            member.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(family, timeout=20)
    for member in alive:
        try:
            member.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=10)
    proc.wait(timeout=10)


@contextmanager
def _process(args: list[str], log: Path, **kwargs: Any) -> Iterator[subprocess.Popen[bytes]]:
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, **kwargs)
    try:
        yield proc
    finally:
        _stop(proc)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """`make server`'s command on a free port, with its own SQLite database under a temporary PREFECT_HOME."""
    home = tmp_path_factory.mktemp("prefect_home")
    port = _free_port()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("PREFECT_") and k != "UNIREC_OVERRIDES"},
           **SERVER_ENV, "PREFECT_HOME": str(home)}
    logs = home / "logs"
    logs.mkdir()
    api = f"http://127.0.0.1:{port}/api"
    with _process([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                  logs / "server.log", env=env) as proc:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            assert proc.poll() is None, f"prefect server exited ({proc.returncode}):\n{_tail(logs / 'server.log')}"
            try:
                with urllib.request.urlopen(f"{api}/health", timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, \
                f"prefect server not healthy after {SERVER_START_S} s:\n{_tail(logs / 'server.log')}"
            time.sleep(1)
        yield Server(api=api, env={**env, "PREFECT_API_URL": api}, logs=logs)


@contextmanager
def _client(server: Server) -> Iterator[Any]:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: server.api}), get_client(sync_client=True) as client:
        yield client


def _run(args: list[str], server: Server, cwd: Path, timeout: int = 300, **env: str) -> str:
    proc = subprocess.run(args, cwd=cwd, env={**server.env, **env}, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, \
        f"{' '.join(args)} exited {proc.returncode}:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}"
    return proc.stdout


def test_make_deploy_on_a_fresh_server_creates_both_pools_and_every_deployment(server: Server) -> None:
    make = ["make", "-s", "-C", str(REPO), "deploy", f"VENV={sys.prefix}", "-o", f"{sys.prefix}/.installed"]
    prefect_yaml = (REPO / "prefect.yaml").read_bytes()
    with _client(server) as client:
        assert client.read_work_pools() == []  # fresh
    first = _run(make, server, REPO)
    assert {f"work pool {pool}: created" for pool in POOLS} <= set(first.splitlines()), first
    assert first.count("successfully created") == len(DEPLOYMENTS), first
    again = _run(make, server, REPO)  # idempotent: existing pools are kept, deployments updated
    assert {f"work pool {pool}: exists (process)" for pool in POOLS} <= set(again.splitlines()), again
    assert (REPO / "prefect.yaml").read_bytes() == prefect_yaml
    with _client(server) as client:
        assert {(p.name, p.type) for p in client.read_work_pools()} == {(pool, "process") for pool in POOLS}
        for name, pool in DEPLOYMENTS.items():
            assert client.read_deployment_by_name(name).work_pool_name == pool
    # the CLI listings (422 with fastapi 0.151-0.154: the CLI sends "limit": null)
    listed = _run([sys.executable, "-m", "prefect", "deployment", "ls"], server, REPO)
    assert all(name in listed for name in DEPLOYMENTS), listed
    pools = _run([sys.executable, "-m", "prefect", "work-pool", "ls"], server, REPO)
    assert all(pool in pools for pool in POOLS), pools
    assert set(work_pool_names(REPO / "prefect.yaml")) == POOLS


def _minutely_project(folder: Path) -> dict[str, Any]:
    """The tiny project in `folder` (code, dvc.yaml, params.yaml, tiny data) and its prefect.yaml: the project's
    own, holding only weekly-retrain with a one-minute cron and the tests' tiny parameters."""
    params_in(folder, OVERRIDES)  # params.yaml + the tiny dataset under data/raw/tiny
    shutil.copy(REPO / "dvc.yaml", folder / "dvc.yaml")
    for package in ("flows", "components"):
        shutil.copytree(REPO / package, folder / package, ignore=shutil.ignore_patterns("__pycache__"))
    config = yaml.safe_load((REPO / "prefect.yaml").read_text())
    weekly = next(d for d in config.pop("deployments") if d["name"] == "weekly-retrain")
    config.pop("definitions", None)
    deployment = {**weekly, "name": MINUTELY,
                  "schedules": [{"cron": "* * * * *", "timezone": "UTC", "active": True}],
                  "parameters": {**weekly["parameters"], "overrides": OVERRIDES, "skip": ["fetch"]},
                  "work_pool": {**weekly["work_pool"], "work_queue_name": QUEUE}}
    (folder / "prefect.yaml").write_text(yaml.safe_dump({**config, "deployments": [deployment]}, sort_keys=False))
    return deployment


def test_a_one_minute_cron_makes_the_scheduler_create_a_run_that_a_worker_completes(
        server: Server, tmp_path: Path) -> None:
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.client.schemas.sorting import FlowRunSort

    deployment = _minutely_project(tmp_path)
    assert deployment["entrypoint"] == "flows/pipeline.py:unirec_pipeline" and deployment["concurrency_limit"] == 1
    code = {"PYTHONPATH": str(tmp_path)}  # the flow run imports the project copy it runs in
    _run([sys.executable, "-m", "unirec.cli", "flow", "pools", "--prefect-file", "prefect.yaml"], server, tmp_path, **code)
    _run([sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--all"], server, tmp_path, **code)
    deployed_at = time.monotonic()
    with _client(server) as client:
        deployed = client.read_deployment_by_name(f"unirec-pipeline/{MINUTELY}")
    assert [s.schedule.cron for s in deployed.schedules] == ["* * * * *"]
    worker_env = {**code, "UNIREC_PROJECT_DIR": str(tmp_path),
                  "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    worker_log = server.logs / "worker.log"
    # `make worker`'s command, on the test's queue
    with _process([sys.executable, "-m", "prefect", "worker", "start", "--pool", "unirec-process",
                   "--work-queue", QUEUE], worker_log, cwd=tmp_path, env={**server.env, **worker_env}) as worker:
        try:
            with _client(server) as client:
                while True:
                    runs = client.read_flow_runs(
                        deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployed.id])),
                        sort=FlowRunSort.EXPECTED_START_TIME_ASC, limit=200, offset=0)
                    manual = [r.name for r in runs if not r.auto_scheduled]
                    assert not manual, f"runs not created by the scheduler: {manual}"
                    first = runs[0] if runs else None
                    if first is not None and first.state is not None and first.state.is_final():
                        break
                    elapsed = time.monotonic() - deployed_at
                    assert elapsed < RUN_DEADLINE_S and worker.poll() is None, (
                        f"no scheduled run of {MINUTELY} Completed within {elapsed:.0f} s (worker exit code "
                        f"{worker.poll()}); first run: {first.state_type.value if first else 'none'}, "
                        f"{len(runs)} runs\n--- worker:\n{_tail(worker_log)}\n--- server:\n"
                        f"{_tail(server.logs / 'server.log')}")
                    time.sleep(3)
                completed = time.monotonic() - deployed_at
                assert first.state_type.value == "COMPLETED", \
                    f"{first.name}: {first.state.name} {first.state.message}\n--- worker:\n{_tail(worker_log, 80)}"
                assert first.auto_scheduled and first.idempotency_key.startswith(f"scheduled {deployed.id} ")
                start = first.expected_start_time
                assert (start.second, start.microsecond) == (0, 0)  # a minute of the cron
                assert first.parameters["overrides"] == OVERRIDES and first.parameters["skip"] == ["fetch"]
        finally:  # no further runs while the worker stops; a dead server must not hide the failure above
            with suppress(Exception), _client(server) as client:
                client.delete_deployment(deployed.id)
    # the real pipeline ran in the project folder: every step, and the first version became champion
    params = load_params(tmp_path / "params.yaml", OVERRIDES)
    for step in STEPS:
        assert record_path(params, step).is_file(), step
    promotion = json.loads((tmp_path / "metrics" / "promotion.json").read_text())
    assert promotion["action"] == "promoted" and promotion["champion"] == "1", promotion
    print(f"scheduled run {first.name} Completed {completed:.0f} s after the deployment")
