"""Step `promote`: move the champion alias to the challenger when the gate passes; `--rollback` undoes it.

Aliases and tags only (stages are deprecated). State lives in the registry:

* aliases `registry.challenger_alias` (set by `unirec register`) and `registry.champion_alias`;
* registered-model tags `champion_events` (every move of the champion alias with its UTC time: promoted,
  rolled_back, adopted), `champion_history` (JSON list of every version that held the alias, in order — a
  rolled-back version stays listed, a version a rollback restored appears again) and `previous_champion` (what a
  rollback would restore);
* version tags `promotion.decision` (promoted | refused | rolled_back), `promotion.reason`,
  `promotion.compared_to`, `promotion.gate_metric`, `promotion.challenger_value`, `promotion.champion_value`,
  `promotion.required`, `promotion.regressions` (JSON), `promotion.failed` (JSON), and `promotion.override`
  (JSON `{"registry.<key>": {"params_yaml": …, "effective": …}}`) when the gate settings used differ from the
  params file's (a `--set` or flow override of `registry.gate_metric`, `gate_margin`, `tracked_metrics` or
  `regression_tolerance`).

`promote`: no champion yet → the challenger becomes champion (first model); challenger already champion →
unchanged (reruns are idempotent); a version that was rolled back is never re-promoted; otherwise the gate
(promotion_gate.py) decides; `strict=True` (`unirec promote --strict`) raises `ChallengerRefused` after recording
a refusal. `promote(rollback=True)`: the champion alias returns to the champion before the current one (the
events replayed as a stack) and the demoted version is tagged rolled_back. Both write `registry.promotion_file`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import yaml
from mlflow.tracking import MlflowClient

from components.config import Params
from components.registry.promotion_gate import GateResult, decide
from components.registry.store import (EVENTS_TAG, HISTORY_TAG, PREVIOUS_TAG, RegistryError, champion_events,
                                       champion_stack, client_for, registered_aliases, version_figures, write_json)

DECISION_TAG = "promotion.decision"
OVERRIDE_TAG = "promotion.override"
GATE_KEYS = ("gate_metric", "gate_margin", "tracked_metrics", "regression_tolerance")
"""The `registry` settings that decide the gate: overriding one is recorded on the version (`OVERRIDE_TAG`)."""


class ChallengerRefused(RegistryError):
    """`promote(strict=True)`: the gate refused the challenger (the refusal is recorded before this is raised)."""


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
    override: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Gate settings that differ from the params file: `registry.<key>` → {"params_yaml", "effective"}."""

    def summary(self) -> str:
        lines = [f"promote: {self.action} — {self.model_name} champion v{self.champion_before or '-'} → "
                 f"v{self.champion_after or '-'} (challenger v{self.challenger or '-'})", f"  {self.reason}"]
        if self.override:
            lines.append(f"  GATE OVERRIDE (recorded as version tag {OVERRIDE_TAG}): {describe_override(self.override)}")
        for side in ("challenger", "champion"):
            for spec, value in self.figures.get(side, {}).items():
                lines.append(f"  {side:<10} {spec:<28} {value:.4f}")
        return "\n".join(lines)

    def record(self) -> dict[str, Any]:
        return {"model_name": self.model_name, "action": self.action, "challenger": self.challenger,
                "champion_before": self.champion_before, "champion": self.champion_after, "reason": self.reason,
                "gate": self.gate, "figures": self.figures, "override": self.override}


def gate_override(params: Params) -> dict[str, dict[str, Any]]:
    """The gate settings (`GATE_KEYS`) whose effective value differs from the params file's (`--set` or flow
    overrides): `registry.<key>` → {"params_yaml": file value, "effective": value used}."""
    source = params.source_file()
    try:
        raw = (yaml.safe_load(source.read_text(encoding="utf-8")) or {}).get("registry") or {}
    except (OSError, yaml.YAMLError, AttributeError):
        raw = {}
    return {f"registry.{key}": {"params_yaml": raw.get(key), "effective": getattr(params.registry, key)}
            for key in GATE_KEYS if raw.get(key) != getattr(params.registry, key)}


def describe_override(override: dict[str, dict[str, Any]]) -> str:
    return "; ".join(f"{key} {json.dumps(v['params_yaml'])} → {json.dumps(v['effective'])} (params file → used)"
                     for key, v in override.items())


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


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _move_champion(client: MlflowClient, params: Params, events: list[dict[str, Any]],
                   *moves: tuple[str, str, str | None]) -> None:
    """Apply `moves` (event, new champion, previous champion) to the alias and append them to the event log;
    rewrite `champion_history` and `previous_champion` from it."""
    name = params.registry.model_name
    for event, version, previous in moves:
        events.append({"at": _now(), "event": event, "version": version, "from": previous})
    client.set_registered_model_alias(name, params.registry.champion_alias, moves[-1][1])
    stack = champion_stack(events)
    client.set_registered_model_tag(name, EVENTS_TAG, json.dumps(events))
    client.set_registered_model_tag(name, HISTORY_TAG, json.dumps([str(e["version"]) for e in events]))
    client.set_registered_model_tag(name, PREVIOUS_TAG, stack[-2] if len(stack) > 1 else "")


def _rollback(params: Params, client: MlflowClient) -> PromoteReport:
    cfg = params.registry
    aliases = registered_aliases(client, cfg.model_name)
    current = aliases.get(cfg.champion_alias)
    events = champion_events(client, cfg.model_name)
    stack = champion_stack(events)
    if current is None:
        raise RegistryError(f"{cfg.model_name} has no {cfg.champion_alias!r} alias: nothing to roll back")
    if not stack or stack[-1] != current:
        raise RegistryError(f"{cfg.model_name}: the recorded champion is v{stack[-1] if stack else '-'}, but "
                            f"{cfg.champion_alias!r} points at v{current} (the alias was moved outside `unirec "
                            "promote`); set it back by hand")
    if len(stack) < 2:
        raise RegistryError(f"{cfg.model_name}: v{current} is the first champion; there is no previous champion "
                            "to roll back to")
    previous = stack[-2]
    _move_champion(client, params, events, ("rolled_back", previous, current))
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
    events = champion_events(client, cfg.model_name)
    override = gate_override(params)
    if champion == challenger:
        return PromoteReport(cfg.model_name, "unchanged", challenger, champion, champion,
                             f"v{challenger} is already the {cfg.champion_alias}", figures=figures, override=override)
    if version.tags.get(DECISION_TAG) == "rolled_back":
        return PromoteReport(cfg.model_name, "refused", challenger, champion, champion,
                             f"v{challenger} was rolled back from {cfg.champion_alias}; register a new model "
                             "to promote", figures=figures, override=override)
    override_tags = {OVERRIDE_TAG: json.dumps(override, sort_keys=True)} if override else {}
    if champion is None:
        reason = f"first model: no {cfg.champion_alias} yet, v{challenger} becomes {cfg.champion_alias}"
        _move_champion(client, params, events, ("promoted", challenger, None))
        _tag_version(client, cfg.model_name, challenger, {DECISION_TAG: "promoted", "promotion.reason": reason,
                                                          "promotion.compared_to": "none", **override_tags})
        return PromoteReport(cfg.model_name, "promoted", challenger, None, challenger, reason, figures=figures,
                             override=override)
    figures["champion"] = version_figures(client, client.get_model_version(cfg.model_name, champion), specs)
    result = decide(figures["challenger"], figures["champion"], cfg.gate_metric, cfg.gate_margin,
                    cfg.tracked_metrics, cfg.regression_tolerance)
    action = "promoted" if result.passed else "refused"
    if result.passed:
        stack = champion_stack(events)
        adopted = [] if stack and stack[-1] == champion else [  # the alias was set outside `promote`: keep it restorable
            ("adopted", champion, stack[-1] if stack else None)]
        _move_champion(client, params, events, *adopted, ("promoted", challenger, champion))
    _tag_version(client, cfg.model_name, challenger, {DECISION_TAG: action, **_gate_tags(result, champion),
                                                      **override_tags})
    gate = {"metric": result.gate_metric, "challenger": result.challenger_value, "champion": result.champion_value,
            "required": result.required, "margin": cfg.gate_margin, "tolerance": cfg.regression_tolerance,
            "regressions": result.regressions, "failed": result.failed, "not_compared": result.not_compared}
    return PromoteReport(cfg.model_name, action, challenger, champion, challenger if result.passed else champion,
                         result.reason, gate=gate, figures=figures, override=override)


def promote(params: Params, rollback: bool = False, strict: bool = False) -> PromoteReport:
    """Gate the challenger against the champion (or roll back); writes `registry.promotion_file`. With `strict`, a
    refused challenger raises `ChallengerRefused` (after the refusal is recorded), so `unirec promote --strict`
    exits with code 1."""
    client = client_for(params)
    report = _rollback(params, client) if rollback else _promote(params, client)
    path = params.resolve(params.registry.promotion_file)
    write_json(path, report.record())
    if strict and report.action == "refused":
        raise ChallengerRefused(f"challenger v{report.challenger} refused by the promotion gate (--strict): "
                                f"{report.reason}; {params.registry.champion_alias} stays "
                                f"v{report.champion_after or '-'} (figures in {path})")
    return report
