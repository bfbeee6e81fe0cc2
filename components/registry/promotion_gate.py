"""The promotion gate: pure comparison of a challenger's eval figures with the champion's.

Figures are keyed `<task>.<metric>` (`next_item.ndcg@10`); a metric whose last name part (before `@`) is
rmse, mae or logloss is lower-is-better (`evaluation.scoring.LOWER_IS_BETTER`), every other one higher-is-better.

* gate: challenger[gate_metric] >= champion[gate_metric] + margin (lower-is-better: <= champion - margin);
  `margin` is ABSOLUTE, in the metric's own units;
* no tracked metric may regress by more than `tolerance`, measured RELATIVELY:
  regression = (champion - challenger) / |champion| for higher-is-better, (challenger - champion) / |champion|
  for lower-is-better (the absolute difference when the champion's figure is 0); a metric missing on either
  side is not compared and listed as such;
* a challenger without the gate figure is refused; a champion without it cannot be beaten on it, so the
  challenger passes the gate (tracked metrics still apply) and the reason says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from components.evaluation.scoring import LOWER_IS_BETTER


def lower_is_better(spec: str) -> bool:
    """True for rmse / mae / logloss figures (``rating.rmse``, ``ctr.logloss``)."""
    metric = spec.partition(".")[2]
    return metric.split("/")[-1].split("@")[0] in LOWER_IS_BETTER


def regression(challenger: float, champion: float, lower: bool) -> float:
    """How much worse the challenger is (> 0 worse, < 0 better): relative to |champion|, absolute at 0."""
    worse = (challenger - champion) if lower else (champion - challenger)
    return worse / abs(champion) if champion != 0 else worse


@dataclass
class GateResult:
    passed: bool
    reason: str
    gate_metric: str
    challenger_value: float | None
    champion_value: float | None
    required: float | None
    """The value the challenger had to reach (champion ± margin), None when not comparable."""
    regressions: dict[str, float] = field(default_factory=dict)
    """Tracked metric → relative regression, for every tracked metric that was compared."""
    failed: list[str] = field(default_factory=list)
    """Tracked metrics whose regression exceeds the tolerance."""
    not_compared: list[str] = field(default_factory=list)


def decide(challenger: dict[str, float], champion: dict[str, float], gate_metric: str, margin: float,
           tracked: list[str], tolerance: float) -> GateResult:
    """Apply the gate (see the module docstring) to two figure dicts keyed `<task>.<metric>`."""
    lower = lower_is_better(gate_metric)
    new, old = challenger.get(gate_metric), champion.get(gate_metric)
    required = None if old is None else (old - margin if lower else old + margin)
    regressions, failed, skipped = {}, [], []
    for spec in tracked:
        if spec not in challenger or spec not in champion:
            skipped.append(spec)
            continue
        regressions[spec] = regression(challenger[spec], champion[spec], lower_is_better(spec))
        if regressions[spec] > tolerance:
            failed.append(spec)
    result = GateResult(passed=False, reason="", gate_metric=gate_metric, challenger_value=new, champion_value=old,
                        required=required, regressions=regressions, failed=failed, not_compared=skipped)
    sign = "<=" if lower else ">="
    if new is None:
        result.reason = f"the challenger has no {gate_metric} figure (run `unirec evaluate` before `unirec register`)"
        return result
    if required is not None and not (new <= required if lower else new >= required):
        result.reason = (f"{gate_metric} {new:.6g} is not {sign} {required:.6g} (champion {old:.6g} "
                         f"{'-' if lower else '+'} margin {margin:g})")
        return result
    if failed:
        result.reason = "tracked metrics regress by more than {:.1%}: {}".format(
            tolerance, ", ".join(f"{s} {champion[s]:.6g} -> {challenger[s]:.6g} ({regressions[s]:+.1%})" for s in failed))
        return result
    result.passed = True
    result.reason = (f"{gate_metric} {new:.6g} {sign} {required:.6g} (champion {old:.6g} {'-' if lower else '+'} "
                     f"margin {margin:g}) and no tracked metric regresses by more than {tolerance:.1%}"
                     if required is not None else
                     f"the champion has no {gate_metric} figure; challenger {new:.6g} accepted, no tracked metric "
                     f"regresses by more than {tolerance:.1%}")
    return result
