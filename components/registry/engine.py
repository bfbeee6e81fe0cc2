"""The served recommender: a model bundle (see bundle.py) loaded once, answering validated requests.

Per request row one prompt is rendered (ctr / rating: one per requested item) with the task's template
from the bundled prompt registry (`textualize.examples.render`), exactly as `unirec textualize` renders
evaluation rows: the last `textualize.max_history` history items, the user's profile text, the query /
objective / candidates / target. Prompts are encoded (`model.prompting.encode_example`), length-bucketed
and batched (`model.batching.collate`), and answered in one forward pass per batch:

* next_item, multi_objective, query, long_tail: the M user vectors `(S, M, D)` are searched in the faiss
  index of the bundle (`CandidateIndex.topk`, seen items excluded) → k item ids and max-over-M scores;
* cold_start: the same over the cold items only (an exact index of their vectors);
* candidate_choice: max-over-M scores of the row's candidates, best k;
* ctr: p(yes) from the yes/no verbaliser logits; rating: the expected rating (1..5) under the verbaliser
  softmax — one output row per requested item, ranked by that score;
* text, infill: greedy generation after [LM] (`model.inference.generate_batch`).

Before any forward pass a request's cost is capped (requests.py): rows x `max_new_tokens` of a text task within
`registry.serving.max_request_new_tokens`, its prompts' tokens within `max_request_prompt_tokens` (HTTP 400).

`encode_example` / `collate` need a target on set-out rows and an answer word on ctr / rating rows (the
training losses read them); serving prompts carry a placeholder there (`_PLACEHOLDER_ANSWER`, the row's
last history item or first candidate) that inference never reads.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from components.artifacts import ArtifactError, load_npy
from components.config import Params, load_params
from components.model.inference import generate_batch, length_buckets
from components.indexing import load_item_index
from components.manifest import MANIFEST_FILE
from components.model.batching import Batch, collate
from components.model.build import Built, load_trained
from components.model.index import CandidateIndex, TorchIndex, score_candidate_lists
from components.model.prompting import TEXT_TASKS, VERBALISERS, encode_example
from components.model.verbaliser import ctr_probability, rating_expectation
from components.registry.bundle import verify_backbone
from components.registry.requests import (SCORED_TASKS, Catalogue, Options, RequestError, Row,
                                          check_generation_cost, check_prompt_cost, parse_options, parse_rows)
from components.textualize.examples import Instance, make_context, render
from components.textualize.registry import SET_OUT_TASKS, load_registry

log = logging.getLogger(__name__)
_PLACEHOLDER_ANSWER = {"ctr": {"answer": VERBALISERS["ctr"][0]}, "rating": {"rating": VERBALISERS["rating"][0]},
                       "text": {"genres": ""}, "infill": {"spans": ""}}
ITEM_COLUMNS = ["request", "task", "rank", "item_id", "title", "score"]
TEXT_COLUMNS = ["request", "task", "text"]


class Recommender:
    """A loaded bundle: model, faiss index, catalogue and prompt registry (load with `Recommender.load`)."""

    def __init__(self, params: Params, built: Built, index: CandidateIndex, vectors: np.ndarray) -> None:
        self.params, self.built = params, built
        self.registry = load_registry(params.resolve(params.textualize.registry))
        self.catalogue = Catalogue.load(params, self.registry)
        if self.catalogue.n_items != index.n_items:
            raise RuntimeError(f"the index holds {index.n_items} items, the catalogue {self.catalogue.n_items}")
        self.index = index
        self.item_vectors = torch.from_numpy(vectors)  # (N, D) float32
        cold = self.catalogue.cold_items
        self.cold_index = TorchIndex(vectors[cold]) if len(cold) else None  # exact, over the cold items only
        self.context = make_context(self.registry, self.catalogue.item_name, self.catalogue.user_text,
                                    params.textualize.like_threshold, self.catalogue.ratings)
        self.pad_id = int(built.backbone.tokenizer.pad_token_id)

    @classmethod
    def load(cls, bundle: Path) -> "Recommender":
        """Load `bundle` (a directory written by `bundle.build_bundle`; its params.yaml is relative to it)."""
        start = time.perf_counter()
        params = load_params(bundle / "params.yaml")
        if not (params.resolve(params.train.out_dir) / MANIFEST_FILE).is_file():  # load_trained would say: train
            raise ArtifactError(f"{bundle}: registered before model files carried their sha256 ({MANIFEST_FILE}), "
                                "so they cannot be verified: train and register the model again")
        verify_backbone(bundle, params)
        if params.registry.serving.num_threads:
            torch.set_num_threads(params.registry.serving.num_threads)
        model_dir = params.resolve(params.train.out_dir)
        built = load_trained(params, model_dir, params.resolve(params.select_gates.out_file))
        index = load_item_index(params.resolve(params.index.out_dir), model_dir / "item_vectors.npy", params.index)
        vectors = np.ascontiguousarray(load_npy(model_dir / "item_vectors.npy", "train"), dtype=np.float32)
        engine = cls(params, built, index, vectors)
        log.info("unirec model loaded from %s in %.1f s", bundle, time.perf_counter() - start)
        return engine

    # ------------------------------------------------------------------ requests
    def predict(self, frame: pd.DataFrame, options: Mapping[str, object] | None) -> pd.DataFrame:
        """Validated answers to the rows of `frame` (columns `ITEM_COLUMNS`, or `TEXT_COLUMNS` for text tasks)."""
        limits = self.params.registry.serving
        opts = parse_options(options, self.registry, limits)
        rows = parse_rows(frame, self.catalogue, opts, limits)
        if opts.task in TEXT_TASKS:
            check_generation_cost(len(rows), limits)
        prompts = self._prompts(rows, opts)
        outputs = self._infer(prompts, self._encode(prompts, opts), rows, opts)
        columns = TEXT_COLUMNS if opts.task in TEXT_TASKS else ITEM_COLUMNS
        return pd.DataFrame(outputs, columns=columns)

    def _prompts(self, rows: list[Row], opts: Options) -> list[tuple[int, int | None, dict]]:
        """(row number, asked item or None, rendered example row) per prompt."""
        template = self.registry.by_id(opts.template_id)
        cap = self.params.textualize.max_history
        out = []
        for n, row in enumerate(rows):
            hist = row.history[-cap:]
            base = dict(user=row.user, history=hist, answers=_PLACEHOLDER_ANSWER.get(opts.task, {}))
            if opts.task in SCORED_TASKS:
                for item in row.items:
                    inst = Instance(**base, target=item, target_items=(item,))
                    out.append((n, item, render(inst, template, opts.task, "serve", self.context)))
                continue
            inst = Instance(**base, target_items=(row.items[0] if row.items else int(hist[-1]),),
                            candidates=tuple(row.items), objective=opts.objective, query=opts.query,
                            passage=opts.query)
            out.append((n, None, render(inst, template, opts.task, "serve", self.context)))
        return out

    def _encode(self, prompts: list[tuple[int, int | None, dict]], opts: Options) -> list:
        """Tokenised prompts; stops with a `RequestError` as soon as they exceed `max_request_prompt_tokens`
        (so an oversized request costs at most that many tokens of tokenising, and no forward pass)."""
        tokenizer, spec, limits = self.built.backbone.tokenizer, self.built.spec, self.params.registry.serving
        encoded, tokens = [], 0
        for prompt in prompts:
            encoded.append(encode_example(prompt[2], tokenizer, spec, with_target=opts.task not in TEXT_TASKS))
            tokens += len(encoded[-1].input_ids)
            check_prompt_cost(len(prompts), tokens, limits, complete=len(encoded) == len(prompts))
        return encoded

    @torch.inference_mode()
    def _infer(self, prompts: list[tuple[int, int | None, dict]], encoded: list, rows: list[Row],
               opts: Options) -> list[dict]:
        task = opts.task
        results: list[list[dict]] = [[] for _ in rows]
        batch_size = self.params.registry.serving.batch_size
        self.built.model.eval()
        for idx in length_buckets([len(e.input_ids) for e in encoded], batch_size):
            batch = collate([encoded[i] for i in idx], self.pad_id)
            for i, answer in zip(idx, self._answer_batch(batch, [prompts[i] for i in idx], rows, opts)):
                results[prompts[int(i)][0]].extend(answer)
        out = []
        for n, answers in enumerate(results):
            if task in SCORED_TASKS:  # rank the row's items by score
                answers = sorted(answers, key=lambda a: -a["score"])
            for rank, a in enumerate(answers, start=1):
                out.append({"request": n, "task": task, **({"rank": rank} if "text" not in a else {}), **a})
        return out

    def _hidden(self, batch: Batch) -> torch.Tensor:
        """Decoder states `(B, T, H)` (optionally under bf16 autocast), as float32."""
        autocast = (torch.autocast("cpu", dtype=torch.bfloat16) if self.params.registry.serving.autocast_bf16
                    else contextlib.nullcontext())
        with autocast:
            hidden = self.built.model.hidden_states(batch)
        return hidden.float()

    def _item(self, idx: int, score: float) -> dict:
        cat = self.catalogue
        return {"item_id": cat.item_raw[idx], "title": cat.item_name[idx], "score": float(score)}

    def _answer_batch(self, batch: Batch, prompts: list[tuple[int, int | None, dict]], rows: list[Row],
                      opts: Options) -> list[list[dict]]:
        """Answers per prompt of one batch (prompt order)."""
        model, task = self.built.model, opts.task
        if task in TEXT_TASKS:
            ids = generate_batch(model, batch, self.params.registry.serving.max_new_tokens, self.built.spec.eos_id)
            tok = self.built.backbone.tokenizer
            return [[{"text": tok.decode(i, skip_special_tokens=True).strip()}] for i in ids]
        hidden = self._hidden(batch)
        if task in SCORED_TASKS:
            logits = model.answer_logits(hidden, batch, task, torch.arange(batch.answer_rows.numel())).float()
            values = ctr_probability(logits) if task == "ctr" else rating_expectation(logits)  # (A,)
            return [[self._item(int(p[1]), float(v))] for p, v in zip(prompts, values.tolist())]
        users = model.user_vectors(hidden, batch).float()  # (S, M, D)
        seen = [rows[p[0]].seen for p in prompts]
        if task == "candidate_choice":
            scores = score_candidate_lists(users, self.item_vectors, batch.candidates).numpy()  # (S, C)
            out = []
            for p, s in zip(prompts, scores):
                cands = rows[p[0]].items
                order = np.argsort(-s[:len(cands)], kind="stable")[:opts.k]
                out.append([self._item(cands[j], s[j]) for j in order])
            return out
        if task == "cold_start":
            cold = self.catalogue.cold_items
            exclude = [np.searchsorted(cold, s[np.isin(s, cold)]) for s in seen]
            ids, scores = self.cold_index.topk(users.numpy(), opts.k, exclude)  # (S, k) positions among cold items
            ids = cold[ids]
        elif task in SET_OUT_TASKS:
            ids, scores = self.index.topk(users.numpy(), opts.k, seen)  # (S, k)
        else:  # pragma: no cover - parse_options admits only TASKS
            raise RequestError(f"unknown task {task!r}")
        return [[self._item(int(i), float(v)) for i, v in zip(r_ids, r_scores)] for r_ids, r_scores in zip(ids, scores)]
