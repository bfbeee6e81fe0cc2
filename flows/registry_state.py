"""The outputs of `register` and `promote` live in the MLflow registry, not only in files.

After a real run the task records what the registry should now hold (`registry_facts`); before the
next run the cache key checks it still does (`registry_matches`). A wiped or replaced tracking store
therefore reruns register (and, through its new record, promote) instead of hitting the cache.

* register: the recorded version still exists and carries the recorded fingerprint tag;
* promote:  the model still has a champion alias. Where it points is not compared, so a manual
  `unirec promote --rollback` is not undone by the next scheduled run.
"""

from __future__ import annotations

import json
from typing import Any

from components.config import Params

FINGERPRINT_TAG = "unirec.fingerprint"


def _read_json(params: Params, path: str) -> dict[str, Any] | None:
    try:
        return json.loads(params.resolve(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def registry_facts(params: Params, step: str) -> dict[str, Any] | None:
    """What `step` just put in the registry (from the file the component writes)."""
    cfg = params.registry
    if step == "register":
        record = _read_json(params, cfg.metrics_file) or {}
        return {"model_name": record.get("model_name", cfg.model_name), "version": record.get("version"),
                "fingerprint": record.get("fingerprint")}
    if step == "promote":
        return {"model_name": cfg.model_name, "champion_alias": cfg.champion_alias}
    raise ValueError(f"step {step!r} has no registry outputs")


def registry_matches(params: Params, step: str, facts: dict[str, Any] | None) -> bool:
    """True when the tracking store still holds what `step` recorded (False if it cannot be reached)."""
    if not facts:
        return True
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    uri = params.tracking_uri()
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    try:
        if step == "register":
            version = client.get_model_version(facts["model_name"], str(facts["version"]))
            return version.tags.get(FINGERPRINT_TAG) == facts.get("fingerprint")
        if step == "promote":
            model = client.get_registered_model(facts["model_name"])
            return facts["champion_alias"] in (model.aliases or {})
    except (MlflowException, OSError, KeyError):
        return False
    return True
