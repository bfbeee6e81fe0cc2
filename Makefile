# unirec — the two commands: `make run` (end-to-end job) and `make test` (test suite).
# Both create .venv on first use and install the pinned dependencies (pyproject.toml + requirements.lock).
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

# No telemetry, anywhere.
export DVC_NO_ANALYTICS := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1
export MLFLOW_ENABLE_TELEMETRY := false
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
# Prefect offline: no PREFECT_API_URL -> the ephemeral API server, its SQLite DB under .prefect/.
export PREFECT_HOME ?= $(CURDIR)/.prefect
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 90
export PREFECT_LOGGING_EXTRA_LOGGERS ?= components
export PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW ?= ignore
RUN_ARGS ?=
PREFECT_PORT ?= 4200
LOCAL_API := http://127.0.0.1:$(PREFECT_PORT)/api

.PHONY: venv run repro champion-eval server deploy worker test test-slow test-all help

help:
	@echo "make run        - the pipeline end to end (Prefect flow, cached per step): champion model in MLflow"
	@echo "                  RUN_ARGS='--set train.max_steps=1 --set train.resume=false' passes overrides"
	@echo "make repro      - the same data/model stages through DVC (dvc repro)"
	@echo "make champion-eval - evaluate the registered champion (the daily deployment's flow)"
	@echo "make server / deploy / worker - local Prefect server, the prefect.yaml deployments, a process worker"
	@echo "make test       - run the default test suite (CI calls this)"
	@echo "make test-slow  - run only the slow tests (real fetch, full ml-100k)"
	@echo "make test-all   - run every test"

venv: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade "pip==26.3"
	# torch first and alone: pip takes the local CPU wheel (a bare `torch` would pull a CUDA build).
	$(BIN)/python -m pip install -q "torch==2.13.0"
	$(BIN)/python -m pip install -q -c requirements.lock -e ".[test]"
	touch $(STAMP)

# The pipeline as one Prefect flow (flows/pipeline.py) on Prefect's ephemeral API: every step a cached
# task over its component function, then index, evaluate, register and promote (MLflow registry).
run: $(STAMP)
	$(BIN)/unirec flow run $(RUN_ARGS)

# The DVC path over the same component functions (dvc.yaml stages).
repro: $(STAMP)
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/dvc repro

champion-eval: $(STAMP)
	$(BIN)/unirec flow champion-eval $(RUN_ARGS)

# Scheduled runs (docs/operations.md): a local Prefect server, the deployments of prefect.yaml, a worker of the
# process pool (runs weekly-retrain and daily-champion-eval; retrain-gpu needs a worker on unirec-gpu).
server: $(STAMP)
	$(BIN)/prefect server start --host 127.0.0.1 --port $(PREFECT_PORT)

# deploy: every work pool prefect.yaml names (flows/deploy.py creates the missing ones as process pools and keeps
# existing ones: safe to rerun), then Prefect's own CLI. The server's scheduler then creates the cron runs and the
# worker runs them (tests/flows/test_schedules.py waits for one).
deploy: $(STAMP)
	PREFECT_API_URL=$${PREFECT_API_URL:-$(LOCAL_API)} $(BIN)/unirec flow pools --prefect-file prefect.yaml
	PREFECT_API_URL=$${PREFECT_API_URL:-$(LOCAL_API)} $(BIN)/prefect --no-prompt deploy --all

worker: $(STAMP)
	PREFECT_API_URL=$${PREFECT_API_URL:-$(LOCAL_API)} UNIREC_PROJECT_DIR=$(CURDIR) PATH=$(abspath $(BIN)):$$PATH \
		$(BIN)/prefect worker start --pool unirec-process

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow $(PYTEST_ARGS)

test-all: $(STAMP)
	$(BIN)/python -m pytest -m "slow or not slow" $(PYTEST_ARGS)

