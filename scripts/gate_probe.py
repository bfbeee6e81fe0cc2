"""What the per-task hidden-state gates do on a split: the trained head (every gate 1) against the gates the
model was saved with (`train.hidden_gate`), and the history path alone (gate 0), on the same rows.

Usage::

    python scripts/gate_probe.py [--split test] [--tasks next_item cold_start] [--users N] [--grid G ...]
                                 [--out F] [key=value ...]

Loads the trained model of params.yaml (`train.out_dir`; overrides as `key=value`), reads `--split` rows of
the tasks for every user (or `--users` seeded users) and every template, and prints per task and template
kind (seen / unseen) HR@10 / NDCG@10 (candidate_choice: HR@1 / NDCG@5) at gate 1, the saved gate and 0
(and every `--grid` value) — one decoder pass per batch serves them all. Full ranking, seen items excluded:
the `unirec evaluate` conventions (components/evaluation/).
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import yaml

from components.config import TASKS, Params, load_params
from components.evaluation.gate import sweep_task
from components.evaluation.rows import EvalData, load_eval_data
from components.evaluation.scoring import MetricContext
from components.evaluation.universal import InferenceConfig, catalogue_vectors
from components.model.build import load_trained


def probe(params: Params, tasks: list[str], split: str = "test", users: int | None = None,
          extra_gates: tuple[float, ...] = ()) -> dict[str, dict]:
    """Per task and template kind: rows, seconds and the metrics at gate 1, the saved gate and 0."""
    cfg = params.evaluate
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    shrunk = params.model_copy(update={"evaluate": cfg.model_copy(update={
        "split": split, "users_per_task": {t: (users if t in tasks else 1) for t in TASKS}})})
    data = load_eval_data(shrunk)
    built = load_trained(params)
    inference = InferenceConfig(batch_size=cfg.batch_size, top_k=cfg.top_k, max_new_tokens=cfg.max_new_tokens,
                                autocast_bf16=cfg.autocast_bf16)
    ctx = MetricContext(ks=tuple(cfg.ks), top_k=cfg.top_k, tail_items=frozenset(int(i) for i in data.tail_items),
                        genres=data.genres, mask_format=data.mask_format)
    vectors = catalogue_vectors(built.model)
    out: dict[str, dict] = {}
    for task in tasks:
        saved = float(built.model.user_head.task_gate[TASKS.index(task)])
        grid = sorted({0.0, saved, 1.0, *extra_gates})
        for kind in ("seen", "unseen"):
            frame = data.frames[task]
            sub = EvalData(**{**data.__dict__, "frames": {task: frame[frame["template_kind"] == kind]
                                                          .reset_index(drop=True)}})
            start = time.perf_counter()
            metrics = sweep_task(built.model, built.backbone.tokenizer, built.spec, task, sub, vectors, grid,
                                 inference, ctx)
            keys = ("hr@1", "ndcg@5") if task == "candidate_choice" else ("hr@10", "ndcg@10")
            out.setdefault(task, {"saved_gate": saved})[kind] = {
                "rows": len(sub.frames[task]), "seconds": round(time.perf_counter() - start, 1),
                **{f"gate={g:g}": {k: round(float(metrics[g][k]), 4) for k in keys} for g in grid}}
            print(task, kind, json.dumps(out[task][kind]), flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--split", default="test", choices=["valid", "test"])
    parser.add_argument("--tasks", nargs="+", default=["next_item", "cold_start"])
    parser.add_argument("--users", type=int, default=None)
    parser.add_argument("--grid", nargs="*", type=float, default=[], help="further gate values to measure")
    parser.add_argument("--out", default=None, help="also write the JSON here")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    overrides = {k: yaml.safe_load(v) for k, v in (o.split("=", 1) for o in args.overrides)}
    out = probe(load_params("params.yaml", overrides), args.tasks, args.split, args.users,
                tuple(args.grid))
    print(json.dumps(out, indent=2))
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            json.dump(out, fh, indent=2)


if __name__ == "__main__":
    main()
