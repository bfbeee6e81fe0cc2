"""MLflow model, registry, promotion gate and serving of unirec.

* `register_model(params)` (register.py): log the pyfunc (bundle.py, pyfunc_model.py) into the training run,
  register a version of `registry.model_name`, alias `registry.challenger_alias`;
* `promote(params, rollback=False)` (promotion.py, promotion_gate.py): move `registry.champion_alias` to the challenger
  when the gate passes; `rollback=True` restores the previous champion;
* `fetch_model_version(params, alias, dst)` and `recommend(...)` (serve.py): use a registered version;
* engine.py / requests.py: the served recommender and its request validation.

The heavy modules load on first use, so `import components.registry` stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from components.registry.promotion import PromoteReport, promote
    from components.registry.register import RegisterReport, register_model
    from components.registry.serve import RecommendReport, fetch_model_version, recommend

__all__ = ["register_model", "RegisterReport", "promote", "PromoteReport", "fetch_model_version", "recommend",
           "RecommendReport"]
_WHERE = {"register_model": "register", "RegisterReport": "register", "promote": "promotion",
          "PromoteReport": "promotion", "fetch_model_version": "serve", "recommend": "serve",
          "RecommendReport": "serve"}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(f"components.registry.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'components.registry' has no attribute {name!r}")
