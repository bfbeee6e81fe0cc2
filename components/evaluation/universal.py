"""Predictions of the universal model per task, as the row frames `scoring.task_metrics` reads.

One forward pass per length-bucketed batch (eval mode, `torch.inference_mode`, the decoder under
optional bf16 autocast; heads, verbaliser logits and scores in float32):

* set-out ranking tasks: the M user vectors of each prompt are scored against the output vectors of
  ALL items (max over M), seen items excluded, cold-start restricted to the cold items (`rank_rows`);
* candidate_choice: the same scores restricted to the saved list of the prompt;
* ctr: p(yes) = softmax over the two verbaliser logits at the answer slot; rating: the expectation of
  1..5 under the softmax of the five verbaliser logits;
* text / infill: greedy generation after [LM] for the whole batch at once
  (`components.model.inference.generate_batch`), decoded.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm
from transformers import PreTrainedTokenizerBase

from components.evaluation.rows import SET_OUT_RANKING, EvalData, first_target, rank_rows
from components.model.batching import Batch, collate
from components.model.index import score_candidate_lists
from components.model.inference import InferenceConfig, decoder_states, generate_batch, length_buckets
from components.model.prompting import TEXT_TASKS, PromptSpec, encode_example
from components.model.universal import UniversalRecModel
from components.model.verbaliser import ctr_probability, rating_expectation

KEEP = ("template_id", "template_kind", "user_idx")
SET_OUT_TASKS = (*SET_OUT_RANKING, "candidate_choice")
"""Tasks answered by the user vectors of the `[UM]` slots."""


def _users(model: UniversalRecModel, batch: Batch, cfg: InferenceConfig) -> torch.Tensor:
    return model.user_vectors(decoder_states(model, batch, cfg), batch).float()  # (S, M, D)


def _batch_outputs(model: UniversalRecModel, task: str, batch: Batch, rows: list[dict], data: EvalData,
                   item_vecs: torch.Tensor, cfg: InferenceConfig, tokenizer: PreTrainedTokenizerBase,
                   spec: PromptSpec) -> list[dict]:
    """Per-row outputs of one single-task batch (rows in batch order)."""
    if task in SET_OUT_TASKS:
        return set_out_outputs(task, _users(model, batch, cfg), batch, rows, data, item_vecs, cfg.top_k)
    if task in ("ctr", "rating"):
        hidden = decoder_states(model, batch, cfg)
        logits = model.answer_logits(hidden, batch, task, torch.arange(batch.answer_rows.numel())).float()
        if task == "ctr":
            p = ctr_probability(logits).double().numpy()
            return [{"label": int(r["label"]), "score": float(v), "prob": float(v)} for r, v in zip(rows, p)]
        pred = rating_expectation(logits).double().numpy()
        return [{"rating": float(r["rating"]), "pred": float(v)} for r, v in zip(rows, pred)]
    if task in TEXT_TASKS:
        ids = generate_batch(model, batch, cfg.max_new_tokens, spec.eos_id)  # float32: see the module docstring
        return [{"generated": tokenizer.decode(i, skip_special_tokens=True).strip(),
                 "target_text": str(r["target_text"])} for i, r in zip(ids, rows)]
    raise ValueError(f"unknown task {task!r}")


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


def predict_task(model: UniversalRecModel, tokenizer: PreTrainedTokenizerBase, spec: PromptSpec, task: str,
                 data: EvalData, item_vecs: torch.Tensor, cfg: InferenceConfig) -> pd.DataFrame:
    """Row frame of `task` (every template, the sampled users) for `scoring.task_metrics`, in file order.

    `item_vecs` `(N, D)` float32 are the model's output item vectors in eval mode."""
    frame = data.frames[task]
    rows = frame.to_dict("records")
    encoded = [encode_example(r, tokenizer, spec, with_target=task not in TEXT_TASKS) for r in rows]
    outputs: list[dict] = [{} for _ in rows]
    pad_id = int(tokenizer.pad_token_id)
    model.eval()
    buckets = length_buckets([len(e.input_ids) for e in encoded], cfg.batch_size)
    with torch.inference_mode():
        for idx in tqdm(buckets, desc=f"evaluate {task}", leave=False, disable=None):
            batch = collate([encoded[i] for i in idx], pad_id)
            results = _batch_outputs(model, task, batch, [rows[i] for i in idx], data, item_vecs, cfg,
                                     tokenizer, spec)
            for i, res in zip(idx, results):
                outputs[int(i)] = res
    return pd.concat([frame[list(KEEP)].reset_index(drop=True), pd.DataFrame(outputs)], axis=1)
