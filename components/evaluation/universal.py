"""Predictions of the universal model per task, as the row frames `scoring.task_metrics` reads.

One forward pass per length-bucketed batch (eval mode, `torch.inference_mode`, the decoder under
optional bf16 autocast; heads, verbaliser logits and scores in float32):

* set-out ranking tasks: the M user vectors of each prompt are scored against the output vectors of
  ALL items (max over M), seen items excluded, cold-start restricted to the cold items (`rank_rows`);
* candidate_choice: the same scores restricted to the saved list of the prompt;
* ctr: p(yes) = softmax over the two verbaliser logits at the answer slot; rating: the expectation of
  1..5 under the softmax of the five verbaliser logits;
* text / infill: greedy generation after [LM] for the whole batch at once (`generate_batch`: prompts
  left-padded, KV cache), decoded. It gives the tokens of the row-by-row `UniversalRecModel.generate_ids`
  (16 of 16 ml-100k infill rows identical) about 6x faster (16 rows x 24 tokens on 2 threads: 2.7 s vs
  16.1 s), and runs in float32 even with `autocast_bf16`: bf16 was no faster there and changed 9 of 16
  outputs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm
from transformers import PreTrainedTokenizerBase

from components.evaluation.rows import SET_OUT_RANKING, EvalData, first_target, rank_rows
from components.model.batching import Batch, collate
from components.model.index import score_candidate_lists
from components.model.prompting import TEXT_TASKS, PromptSpec, encode_example
from components.model.universal import UniversalRecModel
from components.model.verbalizer import ctr_probability, rating_expectation

KEEP = ("template_id", "template_kind", "user_idx")
SET_OUT_TASKS = (*SET_OUT_RANKING, "candidate_choice")
"""Tasks answered by the user vectors of the `[UM]` slots."""


@dataclass(frozen=True)
class InferenceConfig:
    batch_size: int
    top_k: int
    max_new_tokens: int
    autocast_bf16: bool


def length_buckets(lengths: Sequence[int], batch_size: int) -> list[np.ndarray]:
    """Row indices grouped into batches of `batch_size` after a stable sort by length (tight padding)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = np.argsort(np.asarray(lengths, dtype=np.int64), kind="stable")
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def _autocast(enabled: bool) -> contextlib.AbstractContextManager:
    return torch.autocast("cpu", dtype=torch.bfloat16) if enabled else contextlib.nullcontext()


def decoder_states(model: UniversalRecModel, batch: Batch, cfg: InferenceConfig) -> torch.Tensor:
    """Decoder states `(B, T, H)` (under bf16 autocast when enabled), returned as float32: the heads,
    verbaliser logits and scores that follow run in float32, outside autocast."""
    with _autocast(cfg.autocast_bf16):
        hidden = model.hidden_states(batch)
    return hidden.float()


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


def generate_batch(model: UniversalRecModel, batch: Batch, max_new_tokens: int, eos_id: int) -> list[list[int]]:
    """Greedy tokens after `[LM]` for every row of a batch of prompts (encoded with `with_target=False`),
    up to the first EOS (excluded); the batch's right padding is moved to the left for `generate`."""
    embeds = model.input_embeddings(batch)  # (B, T, H), right-padded
    width = embeds.shape[1]
    shift = width - batch.attention_mask.sum(1)  # (B,) padding per row
    index = (torch.arange(width, device=embeds.device)[None, :] - shift[:, None]) % width  # (B, T)
    left = embeds.gather(1, index.unsqueeze(-1).expand_as(embeds))
    mask = batch.attention_mask.gather(1, index)
    out = model.llm.generate(inputs_embeds=left, attention_mask=mask, max_new_tokens=max_new_tokens,
                             do_sample=False, eos_token_id=eos_id, pad_token_id=eos_id)
    rows = out.tolist()
    return [ids[: ids.index(eos_id)] if eos_id in ids else ids for ids in rows]


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


def catalogue_vectors(model: UniversalRecModel) -> torch.Tensor:
    """Output vectors of every item `(N, D)` float32, eval mode, no autocast (cold items: text-only)."""
    model.eval()
    with torch.inference_mode():
        return model.item_vectors().float()
