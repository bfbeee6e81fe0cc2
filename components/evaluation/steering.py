"""eval.json `steering`: does the prompt steer the model? Three tests on the evaluated split, on the SAME loaded model
and the same users' seen-template rows that `model` reports (`evaluate.steering`; the prompts: steering_rows.py):

* `objective_swap` (multi_objective): the users are split by whether their target was liked (rating >= textualize.
  like_threshold; unrated targets in neither group). Liked: NDCG@K of the target under the `like` prompt vs the `watch`
  prompt (diff = like − watch); not liked: diff = watch − like. "Each objective's own prompt scores higher on its own
  targets" = both intervals above 0 (`holds`). A liked target's two rows are both evaluated already; only the not-liked
  users' `like` rows are added;
* `query_swap` (query): HR@K with the true query vs with the query of another user whose target shares no genre
  (seeded donor); diff = true − swapped; "HR@K drops" = the interval above 0;
* `paraphrase[task]` (six retrieval tasks): the headline metric on the seen rows vs the same instances rendered with
  the user's held-out paraphrased template (`evaluate.steering.paraphrase_templates`); ratio = paraphrased / seen,
  diff = paraphrased − seen; `holds` = ratio >= evaluate.steering.paraphrase_min_ratio.

Every diff is a paired bootstrap over users (bootstrap.py: evaluate.bootstrap_resamples, seed + bootstrap_seed_offset).
The added rows of a task run in one `predict_views` pass (length-bucketed batches, one decoder pass per batch); a task
whose selected gate is 0 reads no decoder state, runs no decoder pass, and its prompts cannot change its answer (diff
0 exactly): each record carries its task's `gate`.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pandas as pd

from components.config import TASKS, Params
from components.evaluation.bootstrap import paired_bootstrap, user_scores
from components.evaluation.rows import EvalData, first_target, sample_users, user_priority
from components.evaluation.scoring import MetricContext, headline_metric
from components.evaluation.steering_rows import (ARMS, RenderSource, histories_of, objective_rows, paraphrase_rows,
                                                 pick_donors, query_rows, same_tokens)
from components.evaluation.universal import SET_OUT_TASKS, predict_views
from components.model.ablations import FULL
from components.model.data import load_examples
from components.model.inference import InferenceConfig, catalogue_vectors
from components.tables import table_path
from components.textualize.examples import make_context
from components.textualize.paraphrase import load_paraphrases
from components.textualize.registry import Template, load_registry
from components.textualize.text import item_tables

__all__ = ["run_steering", "load_source", "summary_lines", "objective_swap", "query_swap", "paraphrase_effect",
           "paired"]


def paired(a: pd.DataFrame, b: pd.DataFrame, task: str, metric: str, names: tuple[str, str], ctx: MetricContext,
           resamples: int, seed: int) -> dict[str, Any]:
    """`{users, <names[0]>, <names[1]>, diff = a − b, ci95, holds = ci95 above 0}` of `metric` over the users both row
    sets hold (paired bootstrap); users 0 and nulls when either side has no row."""
    if a.empty or b.empty:
        return {"users": 0, names[0]: None, names[1]: None, "diff": None, "ci95": None, "holds": False}
    out = paired_bootstrap(user_scores(task, metric, a, ctx), user_scores(task, metric, b, ctx), resamples, seed)
    lo = out["ci95"][0]  # type: ignore[index]
    return {"users": out["users"], names[0]: out["a"], names[1]: out["b"], "diff": out["diff"], "ci95": out["ci95"],
            "holds": bool(lo > 0)}


def _of(rows: pd.DataFrame, users: np.ndarray, objective: str | None = None) -> pd.DataFrame:
    keep = rows["user_idx"].isin(users)
    if objective is not None:
        keep &= rows["objective"] == objective
    return rows[keep.to_numpy(dtype=bool)]


def objective_swap(seen: pd.DataFrame, swapped: pd.DataFrame, ctx: MetricContext, like_threshold: float,
                   resamples: int, seed: int) -> dict[str, Any]:
    """The objective swap from the model's seen multi_objective rows `seen` (with the target's `rating`) and the
    `like` rows of the not-liked users `swapped` (see the module docstring)."""
    metric = headline_metric("multi_objective", ctx.top_k)
    rating = pd.to_numeric(seen["rating"], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    liked = np.unique(seen["user_idx"].to_numpy()[rating >= like_threshold])
    not_liked = np.unique(seen["user_idx"].to_numpy()[rating < like_threshold])
    groups = {"liked": paired(_of(seen, liked, "like"), _of(seen, liked, "watch"), "multi_objective", metric,
                              ("like", "watch"), ctx, resamples, seed),
              "not_liked": paired(_of(seen, not_liked, "watch"), _of(swapped, not_liked, "like"), "multi_objective",
                                  metric, ("watch", "like"), ctx, resamples, seed)}
    return {"task": "multi_objective", "metric": metric, "like_threshold": like_threshold, **groups,
            "users_unrated": int(seen["user_idx"].nunique() - len(liked) - len(not_liked)),
            "holds": groups["liked"]["holds"] and groups["not_liked"]["holds"]}


def query_swap(seen: pd.DataFrame, swapped: pd.DataFrame, ctx: MetricContext, resamples: int, seed: int
               ) -> dict[str, Any]:
    """The query swap from the model's seen query rows and the same rows with a donor's query (module docstring)."""
    users = np.unique(swapped["user_idx"].to_numpy()) if not swapped.empty else np.empty(0, dtype=np.int64)
    record = paired(_of(seen, users), swapped, "query", f"hr@{ctx.top_k}", ("true", "swapped"), ctx, resamples, seed)
    return {"task": "query", "metric": f"hr@{ctx.top_k}", **record,
            "users_without_donor": int(seen["user_idx"].nunique() - len(users))}


def paraphrase_effect(task: str, seen: pd.DataFrame, para: pd.DataFrame, ctx: MetricContext, min_ratio: float,
                      resamples: int, seed: int) -> dict[str, Any]:
    """Seen vs paraphrased templates on the same instances: the paired diff, the ratio and `holds` (ratio >=
    `min_ratio`; null when the seen figure is 0)."""
    metric = headline_metric(task, ctx.top_k)
    record = paired(para, seen, task, metric, ("paraphrased", "seen"), ctx, resamples, seed)
    ratio = record["paraphrased"] / record["seen"] if record["seen"] else None
    return {"metric": metric, **record, "ratio": ratio, "holds": None if ratio is None else bool(ratio >= min_ratio),
            "templates": sorted(para["template_id"].unique().tolist()) if not para.empty else []}


def load_source(params: Params, data: EvalData) -> tuple[RenderSource, tuple[Template, ...], list, pd.DataFrame]:
    """(render source, paraphrase templates, genres per item, the query donor pool: one row per user of the split)."""
    registry = load_registry(params.resolve(params.textualize.registry))
    paraphrases = load_paraphrases(params.resolve(params.evaluate.steering.paraphrase_templates), registry)
    items = pd.read_parquet(table_path(params.resolve(params.paths.canonical_dir), "items"))
    names, _, genres, _ = item_tables(items, registry.format)
    texts = pd.read_parquet(params.resolve(params.paths.examples_dir) / "user_text.parquet")
    ctx = make_context(registry, names, {int(u): str(t) for u, t in zip(texts["user_idx"], texts["text"])},
                       params.textualize.like_threshold)
    tasks = [t for t in SET_OUT_TASKS if t in data.frames]
    full = load_examples(params.resolve(params.paths.examples_dir), tasks, data.split)
    source = RenderSource(ctx=ctx, templates={t.id: t for t in (*registry.templates, *paraphrases)},
                          histories={task: histories_of(frame) for task, frame in full.items()})
    pool = pd.DataFrame(columns=["user_idx", "target", "query"])
    if "query" in full:
        first = full["query"].drop_duplicates("user_idx")
        pool = pd.DataFrame({"user_idx": first["user_idx"].to_numpy(dtype=np.int64),
                             "target": [first_target(t) for t in first["target_items"]],
                             "query": first["query"].astype(str).to_numpy()})
    return source, paraphrases, genres, pool


def _cut(pairs: pd.DataFrame, users: np.ndarray) -> dict[str, int]:
    """{pairs, pairs_cut} of `same_tokens` restricted to `users`."""
    sub = pairs[pairs["user_idx"].isin(users)]
    return {"pairs": int(len(sub)), "pairs_cut": int(sub["same"].sum())}


def _swaps(task: str, seen_in: pd.DataFrame, seen_out: pd.DataFrame, arm: dict[str, pd.DataFrame],
           new: pd.DataFrame, params: Params, built, ctx: MetricContext, boot: tuple[int, int]) -> dict[str, Any]:
    """The objective- or query-swap record of `task`, with how many pairs the left cut made identical."""
    tok, spec = built.backbone.tokenizer, built.spec
    if task == "multi_objective":
        rec = objective_swap(seen_out, arm["objective_swap"], ctx, params.textualize.like_threshold, *boot)
        watch = seen_in[seen_in["objective"] == "watch"]
        pairs = same_tokens(watch, pd.concat([seen_in[seen_in["objective"] == "like"], new], ignore_index=True),
                            tok, spec)
        rated = pd.to_numeric(seen_out["rating"], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        users = seen_out["user_idx"].to_numpy()
        threshold = params.textualize.like_threshold
        for group, sel in (("liked", rated >= threshold), ("not_liked", rated < threshold)):
            rec[group].update(_cut(pairs, np.unique(users[sel])))
        return rec
    rec = query_swap(seen_out, arm["query_swap"], ctx, *boot)
    return {**rec, **_cut(same_tokens(seen_in, new, tok, spec), seen_in["user_idx"].unique())}


def run_steering(params: Params, data: EvalData, model_rows: dict[str, pd.DataFrame], built,
                 cfg: InferenceConfig) -> tuple[dict[str, Any], dict[str, float]]:
    """(eval.json `steering`, seconds per task) for the model `built` (components.model.build.load_trained) whose rows
    per task are `model_rows` (in `data.frames` order); see the module docstring."""
    ev, st = params.evaluate, params.evaluate.steering
    model = built.model
    ctx = MetricContext(ks=tuple(ev.ks), top_k=ev.top_k, tail_items=frozenset(int(i) for i in data.tail_items),
                        genres=data.genres, mask_format=data.mask_format)
    boot = (ev.bootstrap_resamples, params.seed + ev.bootstrap_seed_offset)
    source, paraphrases, genres, pool = load_source(params, data)
    priority = user_priority(params, data.n_users)
    vectors = catalogue_vectors(model)
    out: dict[str, Any] = {"paraphrase": {}}
    rows_added: dict[str, dict[str, int]] = {}
    seconds: dict[str, float] = {}
    for task in (t for t in SET_OUT_TASKS if t in data.frames and t in model_rows):
        t0 = time.perf_counter()
        frame, answered = data.frames[task], model_rows[task]
        if not frame["user_idx"].reset_index(drop=True).equals(answered["user_idx"].reset_index(drop=True)):
            raise ValueError(f"steering {task}: the model's rows are not in the order of the evaluated rows")
        users = sample_users(frame["user_idx"].to_numpy(), st.users, priority)
        mask = ((frame["template_kind"] == "seen") & frame["user_idx"].isin(users)).to_numpy(dtype=bool)
        seen_in = frame[mask].reset_index(drop=True)
        seen_out = answered[mask].reset_index(drop=True).assign(rating=seen_in["rating"].to_numpy())
        new = {ARMS[2]: paraphrase_rows(seen_in, [t for t in paraphrases if t.task == task], priority, source)}
        if task == "multi_objective":
            new[ARMS[0]] = objective_rows(seen_in, source, params.textualize.like_threshold)
        if task == "query":
            donors = pick_donors(users, pool, genres, np.random.default_rng(params.seed + st.seed_offset))
            new[ARMS[1]] = query_rows(seen_in, donors, pool, source)
        filled = [f for f in new.values() if not f.empty]
        pred = (predict_views(model, built.backbone.tokenizer, built.spec, task, data, {FULL: vectors}, cfg,
                              frame=pd.concat(filled, ignore_index=True))[FULL] if filled else answered.iloc[:0])
        arm = {name: pred[pred["template_kind"] == name].reset_index(drop=True) for name in ARMS}
        gate = float(model.user_head.task_gate[TASKS.index(task)])
        out["paraphrase"][task] = {**paraphrase_effect(task, seen_out, arm["paraphrase"], ctx, st.paraphrase_min_ratio,
                                                       *boot), "gate": gate}
        if task in ("multi_objective", "query"):
            swap = ARMS[0] if task == "multi_objective" else ARMS[1]
            out[swap] = {**_swaps(task, seen_in, seen_out, arm, new[swap], params, built, ctx, boot), "gate": gate}
        rows_added[task] = {name: len(f) for name, f in arm.items() if len(f)}
        seconds[task] = time.perf_counter() - t0
    out["meta"] = {"users": st.users, "paraphrase_templates": str(st.paraphrase_templates),
                   "paraphrase_min_ratio": st.paraphrase_min_ratio, "donor_seed": params.seed + st.seed_offset,
                   "bootstrap": {"resamples": boot[0], "seed": boot[1]}, "rows_added": rows_added}
    return out, seconds


def summary_lines(section: dict[str, Any] | None) -> list[str]:
    """The CLI summary of eval.json `steering`: one line per test (diff, interval, holds)."""
    if not section:
        return []

    def line(name: str, rec: dict[str, Any], metric: str, gate: float) -> str:
        if not rec.get("users"):
            return f"  steering {name}: no user"
        lo, hi = rec["ci95"]
        return (f"  steering {name} ({metric}, gate {gate:g}, {rec['users']} users): {rec['diff']:+.4f} "
                f"[{lo:+.4f}, {hi:+.4f}] holds={rec['holds']}")

    out = []
    if "objective_swap" in section:
        obj = section["objective_swap"]
        out += [line(f"objective swap {g}", obj[g], obj["metric"], obj["gate"]) for g in ("liked", "not_liked")]
    if "query_swap" in section:
        out.append(line("query swap", section["query_swap"], section["query_swap"]["metric"],
                        section["query_swap"]["gate"]))
    out += [line(f"paraphrase {task}", rec, rec["metric"], rec["gate"])
            + ("" if rec.get("ratio") is None else f" ratio={rec['ratio']:.3f}")
            for task, rec in section.get("paraphrase", {}).items()]
    return out
