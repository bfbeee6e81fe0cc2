"""infra/ and prefect.yaml, checked without Docker: structure, and agreement with the code's settings
(ports and URLs between services, every ${VAR} in .env.example, pools, entrypoints and their parameters,
real Prefect setting names, params keys the workers override, the trainer's GPU reservation)."""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="unirec-prefect-home-"))  # before prefect loads

import re
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from components.config import load_params
from flows.deploy import work_pool_names
from flows.pipeline import ENV_OVERRIDES

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"
COMPOSE_TEXT = (INFRA / "docker-compose.yml").read_text()
ENV = dict(line.split("=", 1) for line in (INFRA / ".env.example").read_text().splitlines()
           if line.strip() and not line.startswith("#"))
RAW = yaml.safe_load(COMPOSE_TEXT)
SERVICES = {"postgres", "minio", "minio-init", "mlflow", "prefect-server", "prefect-deploy", "prefect-worker", "trainer"}
FLOW_SERVICES = ("prefect-deploy", "prefect-worker", "trainer")


def _interpolate(text: str) -> str:
    return re.sub(r"\$\{(\w+)\}", lambda m: ENV[m.group(1)], text).replace("$$", "$")


COMPOSE = yaml.safe_load(_interpolate(COMPOSE_TEXT))
SVC: dict[str, dict[str, Any]] = COMPOSE["services"]
PREFECT = yaml.safe_load((REPO / "prefect.yaml").read_text())
DEPLOYMENTS = {d["name"]: d for d in PREFECT["deployments"]}


def _args(service: str) -> list[str]:
    cmd = SVC[service]["command"]
    return cmd if isinstance(cmd, list) else cmd.split()


def _flag(service: str, name: str) -> str:
    args = _args(service)
    for i, arg in enumerate(args):
        if arg.startswith(f"{name}="):
            return arg.split("=", 1)[1]
        if arg == name:
            return args[i + 1]
    raise AssertionError(f"{service}: no {name} in {args}")


def _overrides(service: str) -> dict[str, Any]:
    return yaml.safe_load(SVC[service]["environment"][ENV_OVERRIDES])


def _container_port(service: str, host_var: str) -> int:
    (mapping,) = RAW["services"][service]["ports"]
    host, host_port, container = mapping.split(":")
    assert host == "127.0.0.1" and host_port == f"${{{host_var}}}", mapping
    return int(container)


def _prefect_setting_names() -> set[str]:
    from prefect.settings import Settings
    from prefect.settings.legacy import _get_valid_setting_names

    return set(_get_valid_setting_names(Settings))


def test_compose_has_every_service_and_valid_references() -> None:
    assert set(SVC) == SERVICES
    for name, svc in SVC.items():
        assert "image" in svc or "build" in svc, name
        for dep, cond in (svc.get("depends_on") or {}).items():
            assert dep in SVC, (name, dep)
            assert cond["condition"] in {"service_started", "service_healthy", "service_completed_successfully"}
            if cond["condition"] == "service_healthy":
                assert "healthcheck" in SVC[dep], (name, dep)
        build = svc.get("build")
        if build:
            context = (INFRA / build["context"]).resolve()
            assert (context / build.get("dockerfile", "Dockerfile")).is_file(), name
    assert all(v is None for v in COMPOSE["volumes"].values())
    used = {m.split(":")[0] for s in RAW["services"].values() for m in s.get("volumes", []) if ":" in m}
    assert {v for v in used if not v.startswith(".")} <= set(COMPOSE["volumes"])


def test_every_compose_variable_is_in_env_example_and_every_example_is_used() -> None:
    referenced = set(re.findall(r"(?<!\$)\$\{(\w+)\}", COMPOSE_TEXT))
    assert referenced == set(ENV), (sorted(referenced - set(ENV)), sorted(set(ENV) - referenced))
    assert all(value.strip() for value in ENV.values())


def test_host_ports_bind_loopback_only() -> None:
    for name, svc in RAW["services"].items():
        for mapping in svc.get("ports", []):
            assert str(mapping).startswith("127.0.0.1:"), (name, mapping)


def test_mlflow_server_stores_runs_in_postgres_and_artifacts_in_minio() -> None:
    pg = SVC["postgres"]["environment"]
    backend = urlsplit(_flag("mlflow", "--backend-store-uri"))
    assert backend.scheme == "postgresql+psycopg2" and backend.hostname == "postgres" and backend.port == 5432
    assert (backend.username, backend.password, backend.path) == (pg["POSTGRES_USER"], pg["POSTGRES_PASSWORD"],
                                                                  f"/{pg['POSTGRES_DB']}")
    bucket = SVC["minio-init"]["environment"]["MLFLOW_BUCKET"]
    assert urlsplit(_flag("mlflow", "--artifacts-destination"))[:2] == ("s3", bucket)
    assert "--serve-artifacts" in _args("mlflow")
    env = SVC["mlflow"]["environment"]
    assert urlsplit(env["MLFLOW_S3_ENDPOINT_URL"]).netloc == "minio:9000"  # `minio server` listens on 9000
    assert "local/$MLFLOW_BUCKET" in SVC["minio-init"]["command"][0] and "http://minio:9000" in SVC["minio-init"]["command"][0]
    minio = SVC["minio"]["environment"]
    assert (env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]) == (minio["MINIO_ROOT_USER"],
                                                                        minio["MINIO_ROOT_PASSWORD"])
    port = int(_flag("mlflow", "--port"))
    assert _container_port("mlflow", "MLFLOW_PORT") == port
    assert f"localhost:{port}/health" in " ".join(SVC["mlflow"]["healthcheck"]["test"])
    dockerfile = (INFRA / "mlflow" / "Dockerfile").read_text()
    assert "psycopg2-binary==" in dockerfile and "boto3==" in dockerfile  # not in the official image
    pins = dict(d.split("==") for d in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"])
    assert SVC["mlflow"]["build"]["args"]["MLFLOW_VERSION"] == pins["mlflow"]
    assert re.search(r"^FROM ghcr.io/mlflow/mlflow:v\$\{MLFLOW_VERSION\}$", dockerfile, re.M)


def test_flow_processes_reach_the_mlflow_and_prefect_servers_the_stack_runs() -> None:
    mlflow_url = f"http://mlflow:{_flag('mlflow', '--port')}"
    prefect_api = f"http://prefect-server:{_flag('prefect-server', '--port')}/api"
    allowed = _flag("mlflow", "--allowed-hosts").split(",")
    assert urlsplit(mlflow_url).netloc in allowed  # MLflow 3 rejects unknown Host headers
    for name in FLOW_SERVICES:
        env = SVC[name]["environment"]
        assert env["PREFECT_API_URL"] == prefect_api, name
        assert env["MLFLOW_TRACKING_URI"] == mlflow_url, name
        if name != "prefect-deploy":
            assert _overrides(name)["mlflow.tracking_uri"] == mlflow_url, name
    assert _container_port("prefect-server", "PREFECT_PORT") == int(_flag("prefect-server", "--port"))
    server = SVC["prefect-server"]["environment"]
    ui = urlsplit(server["PREFECT_SERVER_UI_API_URL"])
    assert (ui.hostname, ui.port, ui.path) == ("127.0.0.1", int(ENV["PREFECT_PORT"]), "/api")
    db = urlsplit(server["PREFECT_SERVER_DATABASE_CONNECTION_URL"])
    assert db.scheme == "postgresql+asyncpg" and db.hostname == "postgres"
    assert db.path == f"/{SVC['postgres']['environment']['PREFECT_DB']}"
    assert re.search(r'CREATE DATABASE \\"\$PREFECT_DB\\"', (INFRA / "postgres" / "init-databases.sh").read_text())


def test_every_prefect_variable_is_a_real_prefect_setting() -> None:
    names = _prefect_setting_names()
    prefect_services = [svc for svc in SVC.values() if str(svc.get("image", "")).startswith("unirec")
                        and "mlflow" not in svc["image"]]  # the project image: where Prefect runs
    assert len(prefect_services) == 4
    used = {k for svc in prefect_services for k in (svc.get("environment") or {}) if k.startswith("PREFECT_")}
    used |= {k for pool in PREFECT["definitions"]["work_pools"].values()
             for k in pool["job_variables"]["env"] if k.startswith("PREFECT_")}
    used |= set(re.findall(r"PREFECT_\w+", (INFRA / "Dockerfile").read_text()))
    assert used and used <= names, sorted(used - names)


def test_worker_overrides_are_valid_params_and_the_trainer_gets_a_gpu() -> None:
    for name in ("prefect-worker", "trainer"):
        load_params(REPO / "params.yaml", _overrides(name))  # unknown keys / bad values raise
    gpu = _overrides("trainer")
    assert gpu["train.accelerator"] == "gpu" and gpu["train.devices"] == int(ENV["GPU_COUNT"])
    assert gpu["train.strategy"] == ENV["TRAIN_STRATEGY"] in {"ddp", "fsdp"}
    (device,) = SVC["trainer"]["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert int(device["count"]) == int(ENV["GPU_COUNT"])
    assert "cu" in urlsplit(SVC["trainer"]["build"]["args"]["TORCH_INDEX_URL"]).path
    assert "TORCH_INDEX_URL" not in (SVC["prefect-worker"].get("build") or {}).get("args", {})


def test_workers_serve_the_pools_of_prefect_yaml_from_the_image_workdir() -> None:
    pools = {d["work_pool"]["name"] for d in PREFECT["deployments"]}
    served = {_flag(n, "--pool") for n in ("prefect-worker", "trainer")}
    assert pools == served == {"unirec-process", "unirec-gpu"}
    assert work_pool_names(REPO / "prefect.yaml") == ["unirec-process", "unirec-gpu"]  # what the deploy job creates
    # the compose deploy job = `make deploy`: the pools of prefect.yaml, then Prefect's CLI (in that order)
    deploy_cmd = " ".join(_args("prefect-deploy"))
    make_deploy = re.search(r"^deploy:.*\n((?:\t.*\n)+)", (REPO / "Makefile").read_text(), re.M).group(1)
    for recipe in (deploy_cmd, make_deploy):
        pools_at = recipe.index("unirec flow pools --prefect-file prefect.yaml")
        assert pools_at < recipe.index("prefect --no-prompt deploy --all"), recipe
    assert PREFECT["pull"] == [{"prefect.deployments.steps.set_working_directory":
                                {"directory": "{{ $UNIREC_PROJECT_DIR }}"}}]
    workdir = re.search(r"^WORKDIR (\S+)$", (INFRA / "Dockerfile").read_text(), re.M).group(1)
    for name in FLOW_SERVICES:
        assert SVC[name]["environment"]["UNIREC_PROJECT_DIR"] == workdir
    makefile = (REPO / "Makefile").read_text()
    assert "--pool unirec-process" in makefile


def test_state_volumes_hold_every_output_path_of_params() -> None:
    mounts = {m.split(":")[1] for m in RAW["services"]["prefect-worker"]["volumes"]}
    assert mounts == {m.split(":")[1] for m in RAW["services"]["trainer"]["volumes"]}
    workdir = SVC["prefect-worker"]["environment"]["UNIREC_PROJECT_DIR"]
    tops = {str(Path(m).relative_to(workdir)) for m in mounts}
    tree = yaml.safe_load((REPO / "params.yaml").read_text())

    def walk(prefix: str, node: Any) -> Any:
        if isinstance(node, dict):
            for key, value in node.items():
                yield from walk(f"{prefix}.{key}" if prefix else key, value)
        elif isinstance(node, str) and re.search(r"(_dir|_file|\.path)$", prefix) and "member" not in prefix:
            yield prefix, node

    for key, value in walk("", tree):
        if key == "textualize.registry":  # code, in the image
            continue
        assert Path(value).parts[0] in tops, (key, value, tops)


@pytest.mark.parametrize("name", ["weekly-retrain", "daily-champion-eval", "retrain-gpu"])
def test_deployment_entrypoints_name_real_flows_with_valid_parameters(name: str) -> None:
    from prefect.flows import load_flow_from_entrypoint

    spec = DEPLOYMENTS[name]
    flow = load_flow_from_entrypoint(str(REPO / spec["entrypoint"]))
    assert set(spec["parameters"]) <= set(flow.parameters.properties), (name, spec["parameters"])
    flow.validate_parameters(spec["parameters"])
    assert spec["work_pool"]["job_variables"]["env"]["PREFECT_LOGGING_EXTRA_LOGGERS"] == "components"
    assert spec.get("concurrency_limit") == 1


def test_schedules_are_a_weekly_retrain_and_a_daily_champion_evaluation() -> None:
    from prefect.client.schemas.schedules import CronSchedule

    weekly, daily = DEPLOYMENTS["weekly-retrain"]["schedules"], DEPLOYMENTS["daily-champion-eval"]["schedules"]
    assert [(s["cron"], s["timezone"], s["active"]) for s in weekly] == [("0 3 * * 1", "UTC", True)]
    assert [(s["cron"], s["timezone"], s["active"]) for s in daily] == [("0 5 * * *", "UTC", True)]
    for s in (*weekly, *daily):
        CronSchedule(cron=s["cron"], timezone=s["timezone"])  # valid cron and zone
    assert "schedules" not in DEPLOYMENTS["retrain-gpu"]
    assert DEPLOYMENTS["daily-champion-eval"]["parameters"]["alias"] == \
        load_params(REPO / "params.yaml").registry.champion_alias


def test_images_pin_the_projects_torch_and_docs_cover_kubernetes_and_multi_gpu() -> None:
    pins = dict(d.split("==") for d in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"])
    dockerfile = (INFRA / "Dockerfile").read_text()
    assert f'"torch=={pins["torch"]}" --index-url "${{TORCH_INDEX_URL}}"' in dockerfile
    assert "requirements.lock" in dockerfile and "pip install --no-deps -e ." in dockerfile
    readme = (INFRA / "README.md").read_text()
    for needle in ("prefect work-pool create unirec-k8s --type kubernetes", "base-job-template", "nvidia.com/gpu",
                   "train.strategy: ddp", "train.strategy: fsdp", "fsdp_auto_wrap_policy", "psycopg2", "boto3"):
        assert needle in readme, needle
