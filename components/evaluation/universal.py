"""Predictions of the universal model per task, as the row frames `scoring.task_metrics` reads.

One forward pass per length-bucketed batch (eval mode, `torch.inference_mode`, the decoder and greedy generation
under optional bf16 autocast; heads, verbaliser logits and scores in float32):

* set-out ranking tasks: the M user vectors of each prompt are scored against the output vectors of
  ALL items (max over M), seen items excluded, cold-start restricted to the cold items (`rank_rows`);
* candidate_choice: the same scores restricted to the saved list of the prompt;
* ctr: p(yes) = softmax over the two verbaliser logits at the answer slot; rating: the expectation of
  1..5 under the softmax of the five verbaliser logits;
* text / infill: greedy generation after [LM] for the whole batch at once
  (`components.model.inference.generate_batch`, `generation_batch_size` prompts per batch), decoded.

`predict_views` also answers for ablated views of the same model (components/model/ablations.py) from the same
decoder states, and with `shared_prefix` decodes the common prefix of a user's rows of one template once
(components/model/prefix.py); a set-out task whose gate is 0 reads no decoder state and skips the pass.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm
from transformers import PreTrainedTokenizerBase

from components.config import TASKS
from components.evaluation.rows import SET_OUT_RANKING, EvalData, first_target, rank_rows
from components.model.ablations import FULL, SHARES_DECODER, ablation
from components.model.batching import Batch, collate
from components.model.index import score_candidate_lists
from components.model.inference import InferenceConfig, autocast, decoder_states, generate_batch, length_buckets
from components.model.prefix import group_buckets, shared_prefix_states, shared_prefixes
from components.model.prompting import TEXT_TASKS, PromptSpec, encode_example
from components.model.universal import UniversalRecModel
from components.model.verbaliser import ctr_probability, rating_expectation

KEEP = ("template_id", "template_kind", "user_idx")
SET_OUT_TASKS = (*SET_OUT_RANKING, "candidate_choice")
"""Tasks answered by the user vectors of the `[UM]` slots."""


def hidden_outputs(model: UniversalRecModel, task: str, hidden: torch.Tensor, batch: Batch, rows: list[dict],
                   data: EvalData, item_vecs: torch.Tensor, top_k: int) -> list[dict]:
    """Per-row outputs of one single-task set-out / ctr / rating batch from its decoder states `hidden`
    `(B, T, H)` float32 (rows in batch order); `item_vecs` `(N, D)` the output vectors of the same model state."""
    if task in SET_OUT_TASKS:
        users = model.user_vectors(hidden, batch).float()  # (S, M, D)
        return set_out_outputs(task, users, batch, rows, data, item_vecs, top_k)
    if task in ("ctr", "rating"):
        logits = model.answer_logits(hidden, batch, task, torch.arange(batch.answer_rows.numel())).float()
        if task == "ctr":
            p = ctr_probability(logits).double().numpy()
            return [{"label": int(r["label"]), "score": float(v), "prob": float(v)} for r, v in zip(rows, p)]
        pred = rating_expectation(logits).double().numpy()
        return [{"rating": float(r["rating"]), "pred": float(v)} for r, v in zip(rows, pred)]
    raise ValueError(f"{task!r} is not a set-out, ctr or rating task")


def _text_outputs(model: UniversalRecModel, batch: Batch, rows: list[dict], cfg: InferenceConfig,
                  tokenizer: PreTrainedTokenizerBase, spec: PromptSpec) -> list[dict]:
    with autocast(cfg.autocast_bf16):  # bf16: same quality, 1.5-1.9x faster (components/model/inference.py)
        ids = generate_batch(model, batch, cfg.max_new_tokens, spec.eos_id)
    return [{"generated": tokenizer.decode(i, skip_special_tokens=True).strip(),
             "target_text": str(r["target_text"])} for i, r in zip(ids, rows)]


def set_out_outputs(task: str, users: torch.Tensor, batch: Batch, rows: list[dict], data: EvalData,
                    item_vecs: torch.Tensor, top_k: int) -> list[dict]:
    """Per-row outputs of a set-out batch from its user vectors `users` `(S, M, D)` float32: the target's
    rank and the top-k of the full ranking (SET_OUT_RANKING tasks), or the scores of the saved list
    (candidate_choice)."""
    if task in SET_OUT_RANKING:
        scores = torch.einsum("smd,nd->smn", users, item_vecs).amax(1).numpy()  # (S, N)
        targets = [first_target(r["target_items"]) for r in rows]
        excludes = [data.exclude(task, int(r["user_idx"])) for r in rows]
        ranks, top = rank_rows(scores, targets, excludes, top_k, data.allowed(task))
        return [{"rank": int(k), "top": t, "objective": r.get("objective")} for k, t, r in zip(ranks, top, rows)]
    if task != "candidate_choice":
        raise ValueError(f"{task!r} is not a set-out task ({list(SET_OUT_TASKS)})")
    cand = score_candidate_lists(users, item_vecs, batch.candidates).numpy()
    out = []
    for r, s in zip(rows, cand):
        listed = [int(i) for i in r["candidates"]]
        out.append({"cand_scores": s[:len(listed)].astype(np.float64),
                    "positive_col": listed.index(first_target(r["target_items"]))})
    return out


def _decoder_view(views: dict[str, torch.Tensor]) -> str:
    """The view whose model state runs the decoder: FULL, unless the one view changes the decoder's inputs."""
    own = [n for n in views if n != FULL and not SHARES_DECODER[n]]
    if own and len(views) > 1:
        raise ValueError(f"views {list(views)}: {own[0]} changes the decoder's inputs and cannot share its pass")
    return own[0] if own else FULL


def needs_decoder(model: UniversalRecModel, task: str, views: dict[str, torch.Tensor]) -> bool:
    """Whether any view of a set-out / ctr / rating task reads the decoder's states. A set-out task whose gate is 0
    (`select-gates` chose the history path alone) multiplies everything the states give by 0, and `llm_off` answers
    ctr / rating from the prior alone: then the pass is skipped (the outputs are the same with zero states)."""
    if task not in SET_OUT_TASKS:
        return set(views) != {"llm_off"}
    gate = float(model.user_head.task_gate[TASKS.index(task)])
    return any(name == "history_off" or (name != "llm_off" and gate != 0.0) for name in views)


def predict_views(model: UniversalRecModel, tokenizer: PreTrainedTokenizerBase, spec: PromptSpec, task: str,
                  data: EvalData, views: dict[str, torch.Tensor], cfg: InferenceConfig,
                  frame: pd.DataFrame | None = None) -> dict[str, pd.DataFrame]:
    """Row frames of `task` per view (`FULL` or an ablation of components/model/ablations.py, each with its output
    item vectors `(N, D)` float32 computed under it) from ONE decoder pass per batch: the views act after the decoder.
    `frame`: the rows (default `data.frames[task]`, each sampled user's assigned templates); text tasks: FULL only."""
    frame = data.frames[task] if frame is None else frame
    if task in TEXT_TASKS and set(views) != {FULL}:
        raise ValueError(f"{task}: text tasks have no ablated views ({list(views)})")
    pass_view = _decoder_view(views)
    decoder = task in TEXT_TASKS or needs_decoder(model, task, views)
    rows = frame.to_dict("records")
    encoded = [encode_example(r, tokenizer, spec, with_target=task not in TEXT_TASKS) for r in rows]
    outputs: dict[str, list[dict]] = {name: [{} for _ in rows] for name in views}
    pad_id = int(tokenizer.pad_token_id)
    model.eval()
    lengths = [len(e.input_ids) for e in encoded]
    groups = (frame["user_idx"].astype(str) + "|" + frame["template_id"].astype(str)).to_numpy()
    shared = cfg.shared_prefix and task not in TEXT_TASKS
    size = (cfg.generation_batch_size or cfg.batch_size) if task in TEXT_TASKS else cfg.batch_size
    buckets = group_buckets(lengths, groups, shared_prefixes(encoded, groups), size) if shared \
        else length_buckets(lengths, size)
    with torch.inference_mode():
        for idx in tqdm(buckets, desc=f"evaluate {task}", leave=False, disable=None):
            batch = collate([encoded[i] for i in idx], pad_id)
            batch_rows = [rows[i] for i in idx]
            if task in TEXT_TASKS:
                results = {FULL: _text_outputs(model, batch, batch_rows, cfg, tokenizer, spec)}
            else:
                with ablation(model, pass_view):
                    if not decoder:  # no view reads the states (see `needs_decoder`): zeros give the same outputs
                        hidden = torch.zeros((*batch.input_ids.shape, model.fusion.hidden_size))
                    elif shared:
                        hidden = shared_prefix_states(model, batch, torch.from_numpy(pd.factorize(groups[idx])[0]), cfg)
                    else:
                        hidden = decoder_states(model, batch, cfg)
                results = {}
                for name, vecs in views.items():
                    with ablation(model, name):
                        results[name] = hidden_outputs(model, task, hidden, batch, batch_rows, data, vecs, cfg.top_k)
            for name, res in results.items():
                for i, out in zip(idx, res):
                    outputs[name][int(i)] = out
    base = frame[list(KEEP)].reset_index(drop=True)
    return {name: pd.concat([base, pd.DataFrame(out)], axis=1) for name, out in outputs.items()}


def predict_task(model: UniversalRecModel, tokenizer: PreTrainedTokenizerBase, spec: PromptSpec, task: str,
                 data: EvalData, item_vecs: torch.Tensor, cfg: InferenceConfig) -> pd.DataFrame:
    """Row frame of `task` (the sampled users, their assigned templates) for `scoring.task_metrics`, in file order.

    `item_vecs` `(N, D)` float32 are the model's output item vectors in eval mode."""
    return predict_views(model, tokenizer, spec, task, data, {FULL: item_vecs}, cfg)[FULL]
