"""The MLflow pyfunc model of unirec, logged as "models from code" (`python_model=<this file>`).

`load_context` loads the bundle artifact (components/registry/bundle.py) into a `Recommender`;
`predict(context, model_input, params)` answers a table of request rows (user_id, history, items) with the
inference params task / k / query / objective / template_id (components/registry/requests.py).

Errors: an invalid request raises `MlflowException(INVALID_PARAMETER_VALUE)` with the rule that was broken, which
MLflow's scoring server returns as HTTP 400 `{"error_code": "INVALID_PARAMETER_VALUE", "message": "... Error: k must
be in [1, 100], got 0"}`; any other failure is logged with its traceback on the server and answered with HTTP 500
and a one-line message (no stack trace in the response). The server keeps serving either way.

`model_input` is annotated `pd.DataFrame`, a hint MLflow derives no signature from (other hints would make
it validate against the hint and expect the `inputs` payload key instead of the logged signature).
"""

from __future__ import annotations

import logging
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INTERNAL_ERROR, INVALID_PARAMETER_VALUE
from mlflow.pyfunc import PythonModel

log = logging.getLogger("components.registry.serving")
BUNDLE_ARTIFACT = "bundle"


class UnirecModel(PythonModel):
    """pyfunc wrapper around `components.registry.engine.Recommender`."""

    def load_context(self, context) -> None:  # noqa: ANN001 - MLflow's PythonModelContext
        from components.registry.engine import Recommender

        self.engine = Recommender.load(Path(context.artifacts[BUNDLE_ARTIFACT]))

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:  # noqa: ANN001
        from components.registry.requests import RequestError

        try:
            return self.engine.predict(model_input, params)
        except RequestError as exc:
            raise MlflowException(str(exc), error_code=INVALID_PARAMETER_VALUE) from None
        except Exception as exc:  # noqa: BLE001 - answered as a clean 500, traceback in the server log
            log.exception("unirec predict failed")
            raise MlflowException(f"internal error while answering the request: {type(exc).__name__}: {exc}",
                                  error_code=INTERNAL_ERROR) from None


mlflow.models.set_model(UnirecModel())
