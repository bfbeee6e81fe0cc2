"""Step `promote`: move the champion alias to the challenger when the gate passes; `--rollback` undoes it.

Aliases and tags only (stages are deprecated). State lives in the registry:

* aliases `registry.challenger_alias` (set by `unirec register`) and `registry.champion_alias`;
* registered-model tags `champion_history` (JSON list of the versions that became champion, oldest first)
  and `previous_champion`;
* version tags `promotion.decision` (promoted | refused | rolled_back), `promotion.reason`,
  `promotion.compared_to`, `promotion.gate_metric`, `promotion.challenger_value`, `promotion.champion_value`,
  `promotion.required`, `promotion.regressions` (JSON), `promotion.failed` (JSON).

`promote`: no champion yet → the challenger becomes champion (first model); challenger already champion →
unchanged (reruns are idempotent); a version that was rolled back is never re-promoted; otherwise the gate
(promotion_gate.py) decides. `promote(rollback=True)`: the champion alias returns to the previous entry of the history
and the demoted version is tagged rolled_back. Both write `registry.promotion_file`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from mlflow.tracking import MlflowClient

from components.config import Params
from components.registry.promotion_gate import GateResult, decide
from components.registry.store import (HISTORY_TAG, PREVIOUS_TAG, RegistryError, champion_history, client_for,
                                       registered_aliases, version_figures, write_json)

DECISION_TAG = "promotion.decision"


@dataclass
class PromoteReport:
    model_name: str
    action: str
    """promoted | refused | unchanged | rolled_back."""
    challenger: str | None
    champion_before: str | None
    champion_after: str | None
    reason: str
    gate: dict[str, Any] = field(default_factory=dict)
    figures: dict[str, dict[str, float]] = field(default_factory=dict)

    def summary(self) -> str:
        lines = [f"promote: {self.action} — {self.model_name} champion v{self.champion_before or '-'} → "
                 f"v{self.champion_after or '-'} (challenger v{self.challenger or '-'})", f"  {self.reason}"]
        for side in ("challenger", "champion"):
            for spec, value in self.figures.get(side, {}).items():
                lines.append(f"  {side:<10} {spec:<28} {value:.4f}")
        return "\n".join(lines)

    def record(self) -> dict[str, Any]:
        return {"model_name": self.model_name, "action": self.action, "challenger": self.challenger,
                "champion_before": self.champion_before, "champion": self.champion_after, "reason": self.reason,
                "gate": self.gate, "figures": self.figures}


def _gate_tags(result: GateResult, compared_to: str) -> dict[str, str]:
    def num(value: float | None) -> str:
        return "none" if value is None else repr(value)

    return {"promotion.reason": result.reason, "promotion.compared_to": compared_to,
            "promotion.gate_metric": result.gate_metric, "promotion.challenger_value": num(result.challenger_value),
            "promotion.champion_value": num(result.champion_value), "promotion.required": num(result.required),
            "promotion.regressions": json.dumps(result.regressions, sort_keys=True),
            "promotion.failed": json.dumps(result.failed)}


def _tag_version(client: MlflowClient, name: str, version: str, tags: dict[str, str]) -> None:
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)


def _set_champion(client: MlflowClient, params: Params, version: str, history: list[str]) -> None:
    name = params.registry.model_name
    client.set_registered_model_alias(name, params.registry.champion_alias, version)
    client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(history))
    client.set_registered_model_tag(name, PREVIOUS_TAG, history[-2] if len(history) > 1 else "")


def _rollback(params: Params, client: MlflowClient) -> PromoteReport:
    cfg = params.registry
    aliases = registered_aliases(client, cfg.model_name)
    current = aliases.get(cfg.champion_alias)
    history = champion_history(client, cfg.model_name)
    if current is None:
        raise RegistryError(f"{cfg.model_name} has no {cfg.champion_alias!r} alias: nothing to roll back")
    if not history or history[-1] != current:
        raise RegistryError(f"{cfg.model_name}: champion history {history} does not end with the current champion "
                            f"v{current} (the alias was moved outside `unirec promote`); set it back by hand")
    if len(history) < 2:
        raise RegistryError(f"{cfg.model_name}: v{current} is the first champion; there is no previous champion "
                            "to roll back to")
    previous = history[-2]
    _set_champion(client, params, previous, history[:-1])
    reason = f"rolled back: {cfg.champion_alias} returned from v{current} to v{previous}"
    _tag_version(client, cfg.model_name, current, {DECISION_TAG: "rolled_back", "promotion.reason": reason})
    return PromoteReport(cfg.model_name, "rolled_back", aliases.get(cfg.challenger_alias), current, previous, reason)


def _promote(params: Params, client: MlflowClient) -> PromoteReport:
    cfg = params.registry
    aliases = registered_aliases(client, cfg.model_name)
    challenger = aliases.get(cfg.challenger_alias)
    if challenger is None:
        raise RegistryError(f"{cfg.model_name} has no {cfg.challenger_alias!r} alias; run `unirec register` first")
    champion = aliases.get(cfg.champion_alias)
    specs = [cfg.gate_metric, *cfg.tracked_metrics]
    version = client.get_model_version(cfg.model_name, challenger)
    figures = {"challenger": version_figures(client, version, specs)}
    history = champion_history(client, cfg.model_name)
    if champion == challenger:
        return PromoteReport(cfg.model_name, "unchanged", challenger, champion, champion,
                             f"v{challenger} is already the {cfg.champion_alias}", figures=figures)
    if version.tags.get(DECISION_TAG) == "rolled_back":
        return PromoteReport(cfg.model_name, "refused", challenger, champion, champion,
                             f"v{challenger} was rolled back from {cfg.champion_alias}; register a new model "
                             "to promote", figures=figures)
    if champion is None:
        reason = f"first model: no {cfg.champion_alias} yet, v{challenger} becomes {cfg.champion_alias}"
        _set_champion(client, params, challenger, [*history, challenger])
        _tag_version(client, cfg.model_name, challenger, {DECISION_TAG: "promoted", "promotion.reason": reason,
                                                          "promotion.compared_to": "none"})
        return PromoteReport(cfg.model_name, "promoted", challenger, None, challenger, reason, figures=figures)
    figures["champion"] = version_figures(client, client.get_model_version(cfg.model_name, champion), specs)
    result = decide(figures["challenger"], figures["champion"], cfg.gate_metric, cfg.gate_margin,
                    cfg.tracked_metrics, cfg.regression_tolerance)
    action = "promoted" if result.passed else "refused"
    if result.passed:
        if not history or history[-1] != champion:
            history = [*history, champion]  # the alias was set outside `promote`: keep it restorable
        _set_champion(client, params, challenger, [*history, challenger])
    _tag_version(client, cfg.model_name, challenger, {DECISION_TAG: action, **_gate_tags(result, champion)})
    gate = {"metric": result.gate_metric, "challenger": result.challenger_value, "champion": result.champion_value,
            "required": result.required, "margin": cfg.gate_margin, "tolerance": cfg.regression_tolerance,
            "regressions": result.regressions, "failed": result.failed, "not_compared": result.not_compared}
    return PromoteReport(cfg.model_name, action, challenger, champion, challenger if result.passed else champion,
                         result.reason, gate=gate, figures=figures)


def promote(params: Params, rollback: bool = False) -> PromoteReport:
    """Gate the challenger against the champion (or roll back); writes `registry.promotion_file`."""
    client = client_for(params)
    report = _rollback(params, client) if rollback else _promote(params, client)
    write_json(params.resolve(params.registry.promotion_file), report.record())
    return report
