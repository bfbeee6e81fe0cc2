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

.PHONY: venv run test test-slow test-all help

help:
	@echo "make run        - run the pipeline end to end on the default (MovieLens-100K)"
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

# The DVC pipeline (fetch → ingest → validate → split → textualize); later stages join as they land.
run: $(STAMP)
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/dvc repro

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow $(PYTEST_ARGS)

test-all: $(STAMP)
	$(BIN)/python -m pytest -m "slow or not slow" $(PYTEST_ARGS)

