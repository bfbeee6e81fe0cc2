"""The Prefect flows for real, under `prefect_test_harness` (temporary SQLite API server), on the tiny setup:
tiny fixture dataset, tiny random Llama backbone, fast experts; fetch skipped (nothing is downloaded).

One project folder for the module, runs in order: a full run (every step runs, champion alias set,
metrics in the tracking store) → an identical rerun (every step cached, no file or registry change) →
a worse param (only train and its dependents rerun; a challenger the gate refuses) → a deleted output
(only its step reruns) → a deterministic failure (summary names the step, dependents not run) → a
transient tracking-store failure (retried) → the daily champion evaluation → `prefect deploy --all`.
"""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="unirec-prefect-home-"))  # before prefect loads

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import StateType
from prefect.states import State
from prefect.testing.utilities import prefect_test_harness

from components.config import load_params
from flows.champion_eval import champion_eval
from flows.fingerprint import path_digest, record_path
from flows.pipeline import PipelineFailed, unirec_pipeline
from flows.plan import ORDER, build_plan, downstream
from tests.conftest import PROMPT_FILES, REPO, TINY, TINY_OVERRIDES
from tests.model.conftest import TINY_MODEL
from tests.model.conftest import FAST_EXPERTS, USERS

OVERRIDES: dict[str, Any] = {**TINY_OVERRIDES, **PROMPT_FILES,
                             **TINY_MODEL, **FAST_EXPERTS, "evaluate.users_per_task": USERS,
                             "evaluate.batch_size": 8, "evaluate.max_new_tokens": 4, "evaluate.num_threads": 1,
                             "baselines.num_threads": 1, "embed_items.batch_size": 16}
STEPS = [s for s in ORDER if s != "fetch"]
# A deliberately worse model: one training step (resume off, or the 4-step checkpoint would be resumed). The tiny
# random model's figures are noise, so a gate margin no NDCG can reach makes the refusal certain.
WORSE = {"train.max_steps": 1, "train.resume": False, "registry.gate_margin": 1.0}


def test_the_dag_comes_from_dvc_yaml_and_follows_the_data() -> None:
    plan = build_plan(load_params(REPO / "params.yaml"))
    assert plan["ingest"].needs == ("fetch",)  # dataset.path = fetch.dataset.out_dir
    assert plan["train"].needs == ("fetch", "validate", "split", "textualize", "embed-items")
    assert plan["select-gates"].needs == ("fetch", "validate", "split", "textualize", "embed-items", "train")
    assert plan["evaluate"].needs == ("fetch", "validate", "split", "textualize", "embed-items", "train",
                                      "select-gates", "baselines")
    assert plan["promote"].needs == ("register",)  # through registry.json
    tiny = build_plan(load_params(REPO / "params.yaml", OVERRIDES))
    assert tiny["ingest"].needs == ()  # the tiny fixture is not fetched


def test_only_transient_errors_are_retried() -> None:
    from components.fetch import FetchError
    from flows.tasks import is_transient

    assert is_transient(FetchError("could not download recbole==1.2.1 from PyPI: timed out"))
    assert not is_transient(FetchError("ml-100k.inter from x.whl: sha256 abc does not match the expected def"))
    assert is_transient(ConnectionRefusedError(111, "Connection refused"))
    wrapped = RuntimeError("register failed")
    wrapped.__cause__ = TimeoutError("read timed out")
    assert is_transient(wrapped)
    assert not is_transient(ValueError("index.kind 'torch' is the in-memory exact index"))
    assert not is_transient(FileNotFoundError("models/unirec: no trained model"))


def test_a_bad_override_fails_before_any_step_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    from flows.pipeline import run

    assert run(str(REPO / "params.yaml"), {"train.no_such_key": 1}, [], []) == 1
    err = capsys.readouterr().err
    assert err.startswith("unirec flow failed:") and "train.no_such_key" in err and "no such key" in err


@pytest.fixture(scope="session")
def harness() -> Iterator[None]:
    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, harness: None) -> Iterator[Path]:
    folder = tmp_path_factory.mktemp("flow_project")
    shutil.copy(REPO / "params.yaml", folder / "params.yaml")
    shutil.copytree(TINY, folder / "data" / "raw" / "tiny")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)  # MLflow's default artifact root (./mlruns) lands in the project
        yield folder


def _run(project: Path, **extra: Any) -> dict[str, str]:
    result = unirec_pipeline(params_path=str(project / "params.yaml"), overrides={**OVERRIDES, **extra},
                             skip=["fetch"])
    return {name: step["status"] for name, step in result["steps"].items()}


def _run_state(project: Path, **extra: Any) -> tuple[dict[str, str], State]:
    """The run's step statuses and its final state, as the Prefect API records it."""
    state = unirec_pipeline(params_path=str(project / "params.yaml"), overrides={**OVERRIDES, **extra},
                            skip=["fetch"], return_state=True)
    with get_client(sync_client=True) as client:
        recorded = client.read_flow_run(state.state_details.flow_run_id).state
    assert recorded is not None and (recorded.type, recorded.name) == (state.type, state.name)
    return {name: step["status"] for name, step in state.result()["steps"].items()}, recorded


def _params(project: Path, **extra: Any):
    return load_params(project / "params.yaml", {**OVERRIDES, **extra})


def _client(project: Path) -> MlflowClient:
    uri = _params(project).tracking_uri()
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _snapshot(project: Path) -> dict[str, str]:
    """sha256 of every output file of every step (and of the MLflow DB's registry view)."""
    plan = build_plan(_params(project))
    files = {str(o): path_digest(o) for step in plan.values() for o in step.outs}
    client = _client(project)
    versions = sorted((v.version, v.run_id) for v in client.search_model_versions("name='unirec'"))
    files["registry"] = json.dumps([versions, client.get_registered_model("unirec").aliases], sort_keys=True)
    return files


def test_first_run_runs_every_step_and_leaves_a_champion(project: Path) -> None:
    statuses, state = _run_state(project)
    assert statuses == {"fetch": "skipped", **{s: "ran" for s in STEPS}}
    assert state.type == StateType.COMPLETED and state.name == "Completed"
    for step in STEPS:
        assert record_path(_params(project), step).is_file(), step
    client = _client(project)
    champion = client.get_model_version_by_alias("unirec", "champion")
    assert str(champion.version) == "1"
    assert str(client.get_model_version_by_alias("unirec", "challenger").version) == "1"
    run = client.get_run(champion.run_id)  # the training run holds train, eval and registry figures
    assert any(k.startswith("eval.next_item.") for k in run.data.metrics), sorted(run.data.metrics)[:10]
    assert run.data.params, "register logs the effective params into the run"
    promotion = json.loads((project / "metrics" / "promotion.json").read_text())
    assert promotion["action"] == "promoted" and promotion["champion"] == "1"


def test_identical_rerun_hits_the_cache_for_every_step_and_changes_nothing(project: Path) -> None:
    before = _snapshot(project)
    statuses = _run(project)
    assert statuses == {"fetch": "skipped", **{s: "cached" for s in STEPS}}
    assert _snapshot(project) == before


def test_a_worse_param_reruns_only_train_and_its_dependents_and_the_gate_refuses(project: Path) -> None:
    plan = build_plan(_params(project))
    expected = {"train"} | downstream(plan, "train")
    assert expected == {"train", "select-gates", "index", "evaluate", "register", "promote"}
    statuses, state = _run_state(project, **WORSE)
    assert {s for s, v in statuses.items() if v == "ran"} == expected, statuses
    assert {s for s, v in statuses.items() if v == "cached"} == set(STEPS) - expected
    # a distinct final state: COMPLETED (the champion keeps serving) but named for the refusal, with the reason
    assert state.type == StateType.COMPLETED and state.name == "Challenger refused"
    assert state.message.startswith("challenger v2 refused by the promotion gate: next_item.ndcg@10 ")
    assert state.message.endswith("; champion stays v1")
    client = _client(project)
    assert str(client.get_model_version_by_alias("unirec", "challenger").version) == "2"
    assert str(client.get_model_version_by_alias("unirec", "champion").version) == "1"
    promotion = json.loads((project / "metrics" / "promotion.json").read_text())
    assert promotion["action"] == "refused", promotion
    assert promotion["challenger"] == "2" and promotion["champion"] == "1"
    assert promotion["gate"]["challenger"] < promotion["gate"]["required"]


def test_a_deleted_output_reruns_only_the_step_that_writes_it(project: Path) -> None:
    index_dir = _params(project).resolve(_params(project).index.out_dir)
    digest = path_digest(index_dir)
    shutil.rmtree(index_dir)
    statuses = _run(project, **WORSE)
    assert {s for s, v in statuses.items() if v == "ran"} == {"index"}, statuses  # same bytes: dependents cached
    assert path_digest(index_dir) == digest


def test_a_failing_step_is_named_in_the_summary_and_its_dependents_do_not_run(project: Path) -> None:
    with pytest.raises(PipelineFailed) as info:
        _run(project, **WORSE, **{"index.kind": "torch"})  # the index step refuses the in-memory kind
    summary = str(info.value)
    assert summary.splitlines()[0] == "unirec pipeline: FAILED at index"
    lines = {line.split()[0]: line for line in summary.splitlines()[1:-1]}
    assert "failed" in lines["index"] and "ItemIndexError: index.kind 'torch'" in lines["index"]
    assert "attempts" not in lines["index"]  # deterministic: no retry
    assert "not run" in lines["register"] and "needs index" in lines["register"]
    assert "not run" in lines["promote"]
    assert all("cached" in lines[s] for s in ("ingest", "train", "baselines", "evaluate"))


def test_a_tracking_store_outage_is_retried_then_reported(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # MLflow's own HTTP retries take minutes
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    with pytest.raises(PipelineFailed) as info:
        _run(project, **WORSE, **{"mlflow.tracking_uri": "http://127.0.0.1:9", "orchestration.registry_retries": 1,
                                  "orchestration.retry_delay_s": 0})
    lines = {line.split()[0]: line for line in str(info.value).splitlines()[1:-1]}
    assert "failed" in lines["register"] and "Connection refused" in lines["register"]
    assert "(2 attempts)" in lines["register"]
    assert "cached" in lines["evaluate"]  # mlflow.* is not an evaluate param


def test_champion_evaluation_downloads_the_champion_and_logs_a_tagged_run(project: Path) -> None:
    result = champion_eval(params_path=str(project / "params.yaml"), overrides=OVERRIDES)
    assert result["version"] == "1" and result["alias"] == "champion"
    out = project / "reports" / "champion_eval"
    payload = json.loads((out / "eval.json").read_text())
    assert payload["meta"]["model_dir"] == result["model_dir"]
    run = _client(project).get_run(result["mlflow_run_id"])
    assert run.data.tags["unirec.model_version"] == "1" and run.data.tags["unirec.step"] == "champion-eval"
    assert any(k.startswith("eval.next_item.") for k in run.data.metrics)
    experiment = _client(project).get_experiment(run.info.experiment_id)
    assert experiment.name == "tiny.champion-eval"
    # the pipeline's own evaluation is untouched
    assert json.loads((project / "metrics" / "eval.json").read_text())["meta"]["model_dir"] != result["model_dir"]


def test_prefect_yaml_deploys_both_schedules_and_the_gpu_deployment(tmp_path: Path, harness: None) -> None:
    for name in ("prefect.yaml", "dvc.yaml", "params.yaml"):
        shutil.copy(REPO / name, tmp_path / name)
    for folder in ("flows", "components"):
        shutil.copytree(REPO / folder, tmp_path / folder, ignore=shutil.ignore_patterns("__pycache__"))
    with get_client(sync_client=True) as client:
        api = client.api_url
    env = {**os.environ, "PREFECT_API_URL": str(api).rstrip("/"), "PYTHONPATH": str(tmp_path)}
    # `make deploy`: the pools prefect.yaml names (flows/deploy.py), then the plain CLI
    pools = subprocess.run([sys.executable, "-m", "unirec.cli", "flow", "pools", "--prefect-file", "prefect.yaml"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert pools.returncode == 0, pools.stdout[-3000:] + pools.stderr[-3000:]
    assert "work pool unirec-gpu: created" in pools.stdout, pools.stdout
    proc = subprocess.run([sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--all"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("successfully created") == 3, proc.stdout[-3000:]
    with get_client(sync_client=True) as client:
        weekly = client.read_deployment_by_name("unirec-pipeline/weekly-retrain")
        daily = client.read_deployment_by_name("unirec-champion-eval/daily-champion-eval")
        gpu = client.read_deployment_by_name("unirec-pipeline/retrain-gpu")
    assert [(s.schedule.cron, s.schedule.timezone) for s in weekly.schedules] == [("0 3 * * 1", "UTC")]
    assert [(s.schedule.cron, s.schedule.timezone) for s in daily.schedules] == [("0 5 * * *", "UTC")]
    assert gpu.schedules == []
    assert (weekly.work_pool_name, daily.work_pool_name, gpu.work_pool_name) == \
        ("unirec-process", "unirec-process", "unirec-gpu")
    assert weekly.parameters["params_path"] == "params.yaml" and daily.parameters["alias"] == "champion"
    assert weekly.pull_steps == [{"prefect.deployments.steps.set_working_directory":
                                  {"directory": "{{ $UNIREC_PROJECT_DIR }}"}}]
    assert weekly.job_variables["env"]["PREFECT_LOGGING_EXTRA_LOGGERS"] == "components"
    assert (tmp_path / "prefect.yaml").read_bytes() == (REPO / "prefect.yaml").read_bytes()  # not rewritten
