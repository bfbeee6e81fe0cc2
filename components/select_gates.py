"""Pipeline step `select-gates`: the per-task hidden-state gate of the user head, chosen on validation.

A set-out user vector is `normalise(g · MLP(hidden state) + MLP_h(history))` (and the item-bias factor
`1 + g · a(hidden state)`): the LLM's reading of the prompt added to the collaborative history path that the
warm-up fitted (docs/design.md §8). With g = 1 for every task this is the trained model. After training,
every task of `select_gates.tasks` gets the g of `select_gates.grid` with the best headline metric (NDCG@K,
candidate lists NDCG@5) on the SEEN templates of `select_gates.users` seeded validation users — the test
split and the held-out templates are never read. One decoder pass per batch serves the whole grid (the gate
acts after the decoder). Ties go to the larger g (closer to the trained model).

The choice is written to `select_gates.out_file` (task → gate), which `load_trained` applies for
`unirec evaluate`, the benchmarks, `register` (the file travels in the bundle) and serving; the validation
figure of every (task, gate) goes to `select_gates.metrics_file`. Being its own step, editing an evaluation
metric or the grid reruns this step, not training.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field

import pandas as pd
import torch
from tqdm import tqdm

from components.config import TASKS, Params
from components.evaluation.rows import EvalData, load_eval_data
from components.evaluation.scoring import MetricContext, headline_metric, task_metrics
from components.evaluation.universal import KEEP, set_out_outputs
from components.model.batching import collate
from components.model.build import load_trained
from components.model.inference import InferenceConfig, catalogue_vectors, decoder_states, length_buckets
from components.model.prompting import encode_example

log = logging.getLogger(__name__)


@dataclass
class GateReport:
    """What the sweep measured: per task, the validation metric at every gate value and the choice."""

    metric: dict[str, str] = field(default_factory=dict)
    scores: dict[str, dict[str, float]] = field(default_factory=dict)
    """task → {gate value as text: validation headline metric}."""
    selected: dict[str, float] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)
    users: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    files: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        if not self.selected:
            return "select-gates: no grid (select_gates.grid: []): every gate 1"
        return "select-gates (validation): " + ", ".join(
            f"{t} {g:g} ({self.metric[t]} {self.scores[t][f'{g:g}']:.4f})" for t, g in self.selected.items())


def gate_data(params: Params) -> EvalData:
    """Validation rows of the sweep: `select_gates.users` seeded users per gated task, seen templates only."""
    cfg = params.select_gates
    users = {t: (cfg.users if t in cfg.tasks else 1) for t in TASKS}
    shrunk = params.model_copy(update={"evaluate": params.evaluate.model_copy(
        update={"split": "valid", "users_per_task": users, "seed_offset": cfg.seed_offset,
                "seen_templates_per_user": None, "unseen_templates_per_user": None})})
    data = load_eval_data(shrunk)
    frames = {}
    for task in cfg.tasks:
        frame = data.frames.get(task)
        if frame is None or frame.empty:
            log.warning("select-gates: no validation rows of %s; its gate stays 1", task)
            continue
        frames[task] = frame[frame["template_kind"] == "seen"].reset_index(drop=True)
    return EvalData(**{**data.__dict__, "frames": frames})


def choose_gate(scores: dict[float, float]) -> float:
    """The gate with the best score; ties go to the larger gate."""
    if not scores:
        raise ValueError("choose_gate: no scores")
    return max(scores, key=lambda g: (scores[g], g))


def sweep_task(model, tokenizer, spec, task: str, data: EvalData, item_vecs: torch.Tensor, grid: list[float],
               cfg: InferenceConfig, ctx: MetricContext) -> dict[float, dict[str, float]]:
    """Metrics of `task` on the rows of `data` at every gate of `grid` (one decoder pass per batch)."""
    frame = data.frames[task]
    rows = frame.to_dict("records")
    encoded = [encode_example(r, tokenizer, spec, with_target=True) for r in rows]
    outputs: dict[float, list[dict]] = {g: [{} for _ in rows] for g in grid}
    model.eval()
    with torch.inference_mode():
        for idx in tqdm(length_buckets([len(e.input_ids) for e in encoded], cfg.batch_size),
                        desc=f"select-gates {task}", leave=False, disable=None):
            batch = collate([encoded[i] for i in idx], int(tokenizer.pad_token_id))
            hidden = decoder_states(model, batch, cfg)
            for g in grid:
                users = model.user_vectors(hidden, batch, gate=g).float()
                for i, res in zip(idx, set_out_outputs(task, users, batch, [rows[i] for i in idx], data,
                                                       item_vecs, cfg.top_k)):
                    outputs[g][int(i)] = res
    base = frame[list(KEEP)].reset_index(drop=True)
    return {g: task_metrics(task, pd.concat([base, pd.DataFrame(out)], axis=1), ctx) for g, out in outputs.items()}


def sweep_gates(params: Params, built) -> GateReport:  # built: components.model.build.Built
    """Sweep `select_gates.grid` on validation for every gated task and set the chosen gates on `built.model`
    (`user_head.task_gate`). An empty grid measures nothing (every gate stays 1)."""
    cfg = params.select_gates
    report = GateReport()
    if not cfg.grid:
        return report
    model = built.model
    if model.user_head.history_reader is None:
        raise ValueError("select_gates needs the history path (model.history_skip_items > 0): with "
                         "gate 0 the user vector would have nothing left")
    start = time.perf_counter()
    data = gate_data(params)
    inference = InferenceConfig(batch_size=cfg.batch_size, top_k=cfg.top_k, max_new_tokens=1,
                                autocast_bf16=bool(cfg.autocast_bf16))
    ctx = MetricContext(ks=(cfg.top_k,), top_k=cfg.top_k, tail_items=frozenset(), genres=data.genres,
                        mask_format=data.mask_format)
    item_vecs = catalogue_vectors(model)
    for task, frame in data.frames.items():
        metric = headline_metric(task, cfg.top_k)
        scores = {g: float(m[metric]) for g, m in sweep_task(model, built.backbone.tokenizer, built.spec, task, data,
                                                             item_vecs, list(cfg.grid), inference, ctx).items()}
        chosen = choose_gate(scores)
        report.metric[task] = metric
        report.scores[task] = {f"{g:g}": round(v, 5) for g, v in sorted(scores.items())}
        report.selected[task] = chosen
        report.rows[task], report.users[task] = len(frame), int(frame["user_idx"].nunique())
        log.info("select-gates %s: %s on validation %s -> gate %g", task, metric, report.scores[task], chosen)
    model.user_head.set_task_gates(report.selected)
    report.seconds = round(time.perf_counter() - start, 2)
    return report


def select_gates(params: Params) -> GateReport:
    """The step: load the trained model, sweep, write `select_gates.out_file` and `select_gates.metrics_file`."""
    if params.evaluate.num_threads:
        torch.set_num_threads(params.evaluate.num_threads)
    built = load_trained(params, gates_file=None)
    report = sweep_gates(params, built)
    out, metrics = params.resolve(params.select_gates.out_file), params.resolve(params.select_gates.metrics_file)
    for path in (out, metrics):
        path.parent.mkdir(parents=True, exist_ok=True)
    gates = {t: float(g) for t, g in report.selected.items()}
    out.write_text(json.dumps({"gates": gates}, indent=2) + "\n", encoding="utf-8")
    metrics.write_text(json.dumps(asdict(report), indent=2) + "\n", encoding="utf-8")
    report.files = {"gates": str(out), "metrics": str(metrics)}
    return report
