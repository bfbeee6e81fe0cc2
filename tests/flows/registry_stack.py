"""Shared real infrastructure of the registry and serving tests (imported by their modules, not a conftest).

* `Server`: a real subprocess (`mlflow server` with a SQLite backend, or `mlflow models serve`) on 127.0.0.1 and
  a free port, waited for over HTTP and stopped (terminate, then kill) by the owning fixture's finalizer;
* `shared_stack`: ONE per test session — the MLflow server, the tiny project (ingest → embed-items on the
  committed fixture, tiny random Llama), one 4-step training run logged to that server, and its faiss index.
  Both test modules call it; the first call builds it, the finalizers stop the server once.
* `eval_figures`: an eval.json in the schema `unirec evaluate` writes, whose `model` figures are chosen by the
  test — the gate's input, so promotion decisions are known in advance (the model itself is always real).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from components.config import Params
from components.indexing import build_item_index
from components.select_gates import select_gates
from components.train import train
from tests.conftest import params_in
from tests.model.conftest import TINY_MODEL, prepare_tiny_project

BIN = Path(sys.executable).parent
STARTUP_S = 240


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def subprocess_env(**extra: str) -> dict[str, str]:
    """The test environment plus: the venv first on PATH (the scoring server execs `uvicorn`), no telemetry,
    one thread per process (the box has 2 cores and another job)."""
    if "MLFLOW_TRACKING_URI" in extra:  # the registry follows the tracking store unless told otherwise:
        # an MLFLOW_REGISTRY_URI inherited from an earlier test (mlflow.set_registry_uri exports it) would win
        extra = {"MLFLOW_REGISTRY_URI": extra["MLFLOW_TRACKING_URI"], **extra}
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "MLFLOW_ENABLE_TELEMETRY": "false",
            "DO_NOT_TRACK": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **extra}


class Server:
    """A real server subprocess answering `health_path` with HTTP 200 once it is up."""

    def __init__(self, cmd: list[str], port: int, log: Path, health_path: str, env: dict[str, str]) -> None:
        self.port, self.log = port, log
        self.url = f"http://127.0.0.1:{port}"
        self._log_file = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, stdout=self._log_file, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)
        deadline = time.monotonic() + STARTUP_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.stop()
                raise RuntimeError(f"{cmd[:3]} exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                with urllib.request.urlopen(self.url + health_path, timeout=5) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(1.0)
        self.stop()
        raise RuntimeError(f"{cmd[:3]} not up after {STARTUP_S}s:\n{self.tail()}")

    def tail(self, n: int = 4000) -> str:
        return self.log.read_bytes()[-n:].decode("utf-8", "replace") if self.log.exists() else ""

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        """Terminate the process group this server started (idempotent)."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, 15)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait(timeout=30)
        if not self._log_file.closed:
            self._log_file.close()


def mlflow_server(folder: Path) -> Server:
    port = free_port()
    cmd = [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
           "--artifacts-destination", str(folder / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
           "--workers", "1"]
    return Server(cmd, port, folder / "mlflow_server.log", "/health", subprocess_env())


def model_server(model_uri: str, tracking_uri: str, log: Path) -> Server:
    port = free_port()
    cmd = [str(BIN / "mlflow"), "models", "serve", "-m", model_uri, "--env-manager", "local", "--host", "127.0.0.1",
           "-p", str(port)]
    return Server(cmd, port, log, "/ping", subprocess_env(MLFLOW_TRACKING_URI=tracking_uri))


@dataclass
class Stack:
    server: Server
    project: Path
    shared: Path
    """Holds the trained model (unirec/), its checkpoints (with the MLflow run id) and index (index/)."""
    run_id: str

    def overrides(self, out: Path, **overrides: object) -> dict[str, object]:
        """The dotted overrides of `params` (what `--set` passes to the CLI), without the tiny-dataset ones
        that `params_in` adds (`tests.conftest.TINY_OVERRIDES`, the prompt registry)."""
        return {
            **TINY_MODEL, "mlflow.tracking_uri": self.server.url, "train.out_dir": str(self.shared / "unirec"),
            "train.checkpoint_dir": str(self.shared / "checkpoints"), "index.out_dir": str(self.shared / "index"),
            "select_gates.out_file": str(self.shared / "gates.json"),
            "select_gates.metrics_file": str(self.shared / "metrics" / "gates.json"),
            "paths.metrics_dir": str(out / "metrics"), "evaluate.metrics_file": str(out / "eval.json"),
            "registry.metrics_file": str(out / "registry.json"),
            "registry.promotion_file": str(out / "promotion.json"), **overrides}

    def params(self, out: Path, **overrides: object) -> Params:
        """Params of the tiny project logging to the server: the shared model and index, per-test outputs."""
        return params_in(self.project, self.overrides(out, **overrides))


_STACK: list[Stack] = []


def shared_stack(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Stack:
    """The session's stack (built on first use); the calling fixture's finalizer stops the server."""
    if not _STACK:
        root = tmp_path_factory.mktemp("registry_stack")
        server = mlflow_server(root)
        try:
            project, shared = root / "project", root / "shared"
            project.mkdir()
            prepare_tiny_project(project)
            stack = Stack(server, project, shared, run_id="")
            trained = stack.params(shared)
            stack.run_id = str(train(trained).mlflow_run_id)
            select_gates(trained)
            build_item_index(trained)
        except BaseException:
            server.stop()
            raise
        _STACK.append(stack)
    request.addfinalizer(_STACK[0].server.stop)
    return _STACK[0]


def eval_figures(path: Path, run_id: str, figures: dict[str, float]) -> Path:
    """Write eval.json with `model` figures {"next_item.ndcg@10": 0.1, ...} (the test's gate input)."""
    model: dict[str, dict[str, float]] = {}
    for spec, value in figures.items():
        task, _, metric = spec.partition(".")
        model.setdefault(task, {})[metric] = value
    payload = {"dataset": "tiny", "model": model, "unseen": {}, "baselines": {}, "prompt_sensitivity": {},
               "per_template": {}, "meta": {"split": "test", "mlflow_run_id": run_id}}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return path
