"""Thin Prefect 3 wrappers over the component functions (orchestration issue #5).

Importing this package sets the offline defaults BEFORE Prefect is imported (Prefect reads its
settings once, at import): no telemetry, the SQLite API database under `<repo>/.prefect/`, and a
longer start-up timeout for the ephemeral API server on a slow, shared CPU. Values already in the
environment win (a worker pointed at a real server keeps its PREFECT_API_URL and PREFECT_HOME).
"""

from __future__ import annotations

import os
from pathlib import Path

CODE_ROOT = Path(__file__).resolve().parents[1]
"""Folder holding `components/`, `flows/` and `dvc.yaml`: the code the flow imports and hashes."""

OFFLINE_DEFAULTS: dict[str, str] = {
    "PREFECT_HOME": str(CODE_ROOT / ".prefect"),
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "MLFLOW_ENABLE_TELEMETRY": "false",
    "DVC_NO_ANALYTICS": "1",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    # component loggers (components.*) appear in the Prefect task-run logs
    "PREFECT_LOGGING_EXTRA_LOGGERS": "components",
    # ... and outside a flow run (a DVC stage, a CLI command, a test calling a step) they go to the console
    # only, without Prefect's "attempted to send logs to the API without a flow run id" warning per record
    "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore",
}

for _key, _value in OFFLINE_DEFAULTS.items():
    os.environ.setdefault(_key, _value)
