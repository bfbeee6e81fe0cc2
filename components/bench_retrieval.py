"""`unirec benchmark retrieval`: sequence-in-set-out vs a trained generative recommender (trie-constrained beam search).

Both sides use the SAME backbone, fusion module and prompts (`load_trained`; ``benchmark.retrieval_users`` test users,
a seeded random subset of those with a row of template ``benchmark.retrieval_template`` in
``data/examples/next_item/test.parquet``), one user at a time (batch size 1):

* set-out: the model's own LoRA adapter; the next_item prompt ending in M `[UM]` tokens, ONE forward pass →
  `(1, M, D)` user vectors → `CandidateIndex.topk` (``index.kind``) over the whole catalogue → K items.
* beam: a second LoRA adapter trained to write the next item's title for the same number of steps as the model's
  LoRA phase (components/title_generator.py); the same prompt text ending in `[LM]`, fused item vectors injected
  (`input_embeddings`) and fed as ``inputs_embeds`` to the causal LM's ``generate`` with K beams / K returned
  sequences, constrained by a `TitleTrie` of every item's tokenised name (" " + "Title (Year)", then EOS); each
  finished beam maps back to its item id(s), duplicates merged, cut to K.

Seen items (the user's train + valid interactions) are excluded on BOTH sides: the index through its
``exclude`` list, the beam search by pruning the trie per user (per-node live counts; a title whose
items are all seen is unreachable), which costs O(seen items × title tokens) per user and is timed.
Latency per user covers prompt encoding → K item ids; the index, the trie and the switch between the two
adapters are outside the timer. The two sides are timed interleaved (user 1 set-out, user 1 beam, user 2
set-out, ...), so the speed-up is a paired ratio that a drifting shared CPU does not bias. Quality: HR@K and
NDCG@K of the test item on both sides, and their paired difference (set-out − beam) with a 95 % bootstrap interval
over the users (`evaluate.bootstrap_resamples`, seed + `evaluate.bootstrap_seed_offset`). Writes
``<paths.metrics_dir>/bench_retrieval.json``.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable, Iterable, Mapping, Sequence

import faiss
import numpy as np
import pandas as pd
import torch
from tqdm import tqdm
from transformers import PreTrainedTokenizerBase

from components.bench_train import item_names
from components.config import Params
from components.evaluation.bootstrap import UserScores, paired_bootstrap, verdict
from components.model.batching import Batch, collate
from components.model.build import load_trained
from components.model.data import examples_file
from components.model.inference import catalogue_index, recommend
from components.model.prompting import encode_example
from components.model.universal import UniversalRecModel
from components.title_generator import ADAPTER, MODEL_ADAPTER, load_or_train


class TitleTrie:
    """Prefix tree over item token sequences (each ending in EOS) for constrained decoding.

    Node 0 is the root; the EOS edge of a complete title leads to a terminal node holding the ids of
    every item with exactly that token sequence. `pruned(items)` gives a view (sharing the tree) in
    which those items no longer count: a branch whose items are all removed is never allowed.
    """

    def __init__(self, sequences: Mapping[int, Sequence[int]], eos_id: int) -> None:
        self.eos_id = eos_id
        self._children: list[dict[int, int]] = [{}]
        self._count: list[int] = [0]  # items at or below each node
        self._terminal: dict[int, list[int]] = {}  # terminal node → item ids
        self._paths: dict[int, list[int]] = {}  # item id → nodes on its path (root first)
        self._removed: dict[int, int] = {}
        self._excluded: frozenset[int] = frozenset()
        for item, tokens in sequences.items():
            if self.eos_id in tokens:
                raise ValueError(f"item {item}: its token sequence contains the EOS id {eos_id}")
            node, path = 0, [0]
            self._count[0] += 1
            for tok in [*tokens, eos_id]:
                child = self._children[node].get(tok)
                if child is None:
                    child = len(self._children)
                    self._children[node][tok] = child
                    self._children.append({})
                    self._count.append(0)
                node = child
                self._count[node] += 1
                path.append(node)
            self._terminal.setdefault(node, []).append(int(item))
            self._paths[int(item)] = path

    @property
    def n_items(self) -> int:
        return self._count[0] - self._removed.get(0, 0)

    def lengths(self) -> list[int]:
        """Token count of every item's sequence, EOS included (one entry per item)."""
        return [len(path) - 1 for path in self._paths.values()]

    def _live(self, node: int) -> bool:
        return self._count[node] - self._removed.get(node, 0) > 0

    def _walk(self, prefix_ids: Iterable[int]) -> int | None:
        node = 0
        for tok in prefix_ids:
            node = self._children[node].get(int(tok), -1)
            if node < 0 or not self._live(node):
                return None
        return node

    def allowed(self, prefix_ids: Sequence[int]) -> list[int]:
        """Tokens that extend `prefix_ids` towards a (non-pruned) title; EOS only after a complete one.

        Empty for a prefix that leaves the trie or has already ended in EOS.
        """
        node = self._walk(prefix_ids)
        if node is None:
            return []
        return [tok for tok, child in self._children[node].items() if self._live(child)]

    def items(self, sequence: Sequence[int]) -> list[int]:
        """Item ids of a generated sequence: its tokens up to and including the first EOS must be a
        complete title (anything after that EOS, e.g. padding, is ignored); [] otherwise."""
        seq = [int(t) for t in sequence]
        if self.eos_id not in seq:
            return []
        node = self._walk(seq[: seq.index(self.eos_id) + 1])
        if node is None:
            return []
        return [i for i in self._terminal.get(node, []) if i not in self._excluded]

    def pruned(self, items: Iterable[int]) -> "TitleTrie":
        """A view of this trie without `items` (unknown ids ignored); O(Σ title length) to build."""
        view = copy.copy(self)
        view._removed, view._excluded = dict(self._removed), self._excluded | {int(i) for i in items}
        for item in view._excluded - self._excluded:
            for node in self._paths.get(item, []):
                view._removed[node] = view._removed.get(node, 0) + 1
        return view


class RetrievalBenchmark(dict):
    """The JSON written to bench_retrieval.json (a dict), with a one-screen summary for the CLI."""

    def summary(self) -> str:
        s, b, k = self["set_out"], self["beam"], self["k"]
        return (f"benchmark retrieval ({self['users']} users of {self['template']}, K={k}, batch size 1):\n"
                f"  set-out p50 {s['p50_ms']:.1f} ms, p95 {s['p95_ms']:.1f} ms, {s['users_per_s']:.2f} users/s, "
                f"HR@{k} {s[f'hr@{k}']:.3f}, NDCG@{k} {s[f'ndcg@{k}']:.3f}\n"
                f"  beam    p50 {b['p50_ms']:.1f} ms, p95 {b['p95_ms']:.1f} ms, {b['users_per_s']:.2f} users/s, "
                f"HR@{k} {b[f'hr@{k}']:.3f}, NDCG@{k} {b[f'ndcg@{k}']:.3f} (title adapter, "
                f"{b['adapter']['steps']} steps)\n"
                f"  speedup (beam p50 / set-out p50) {self['speedup_p50']:.1f}x")


def title_sequences(names: Mapping[int, str], tokenizer: PreTrainedTokenizerBase) -> dict[int, list[int]]:
    """item idx → token ids of " " + name (how text follows `[LM]` in training targets)."""
    return {i: tokenizer.encode(" " + name, add_special_tokens=False) for i, name in names.items()}


def seen_items(params: Params) -> dict[int, list[int]]:
    """user idx → items of the user's train and valid interactions (everything before the test item)."""
    folder = params.resolve(params.paths.splits_dir)
    frames = [pd.read_parquet(folder / f"{s}.parquet", columns=["user_idx", "item_idx"]) for s in ("train", "valid")]
    both = pd.concat(frames, ignore_index=True)
    return {int(u): sorted(set(g.tolist())) for u, g in both.groupby("user_idx")["item_idx"]}


def benchmark_rows(params: Params) -> list[dict]:
    """One test row of `retrieval_template` for each of `retrieval_users` users drawn at random (seeded by `seed`)
    from those who have one (all of them when fewer), in the seeded order."""
    cfg = params.benchmark
    frame = pd.read_parquet(examples_file(params.resolve(params.paths.examples_dir), "next_item", "test"))
    frame = frame[frame["template_id"] == cfg.retrieval_template].drop_duplicates("user_idx")
    if frame.empty:
        raise ValueError(f"benchmark.retrieval_template {cfg.retrieval_template!r}: no next_item test rows")
    order = np.random.default_rng(params.seed).permutation(len(frame))[: cfg.retrieval_users]
    return frame.iloc[order].to_dict("records")


@torch.inference_mode()
def beam_search_items(model: UniversalRecModel, batch: Batch, trie: TitleTrie, k: int,
                      max_new_tokens: int) -> tuple[list[int], int]:
    """Trie-constrained beam search (K beams, K returned sequences) after `[LM]` for ONE prompt.

    `batch` holds one row encoded with `with_target=False` (ending in `[LM]`); its `(1, T, H)` input
    embeddings (fused item vectors injected) go to the causal LM's `generate` as `inputs_embeds`, which
    returns `(K, L)` new tokens. Returns (up to k distinct item ids in beam order, number of the K
    sequences that are complete titles of `trie`).
    """
    eos = trie.eos_id
    out = model.llm.generate(
        inputs_embeds=model.input_embeddings(batch), attention_mask=batch.attention_mask, num_beams=k,
        num_return_sequences=k, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos,
        pad_token_id=eos, prefix_allowed_tokens_fn=lambda _b, ids: trie.allowed(ids.tolist()) or [eos])
    found = [trie.items(seq) for seq in out.tolist()]
    items: list[int] = []
    for ids in found:
        items += [i for i in ids if i not in items]
    return items[:k], sum(bool(ids) for ids in found)


def _timed_pairs(rows: list[dict], sides: Sequence[Callable[[dict], list[int]]], warmup: int,
                 desc: str, prepare: Sequence[Callable[[], None]] | None = None
                 ) -> list[tuple[list[list[int]], list[float]]]:
    """Run every side on rows[:warmup] untimed, then on each row every side in turn, timed → per side
    (item lists, seconds per row). Interleaved per user, so both sides of a row run under the same machine
    state: a shared CPU's speed drifts by ~20 % over minutes (measured), which would bias a ratio of two
    sides timed minutes apart. `prepare[i]` runs untimed before each call of side i (e.g. an adapter switch)."""
    prepare = prepare or [lambda: None for _ in sides]
    for row in rows[:warmup]:
        for ready, fn in zip(prepare, sides):
            ready()
            fn(row)
    out: list[tuple[list[list[int]], list[float]]] = [([], []) for _ in sides]
    for row in tqdm(rows, desc=desc, leave=False, disable=None):
        for ready, fn, (results, seconds) in zip(prepare, sides, out):
            ready()
            start = time.perf_counter()
            results.append(fn(row))
            seconds.append(time.perf_counter() - start)
    return out


def _per_user(results: list[list[int]], targets: list[int], k: int) -> dict[str, np.ndarray]:
    """`{hr@k, ndcg@k}` → `(U,)` per-user terms (1 / log2(rank + 1) within K for NDCG)."""
    hits = np.array([t in r[:k] for r, t in zip(results, targets)], dtype=np.float64)
    gains = np.array([1.0 / np.log2(r[:k].index(t) + 2) if t in r[:k] else 0.0 for r, t in zip(results, targets)])
    return {f"hr@{k}": hits, f"ndcg@{k}": gains}


def paired_comparison(a: dict[str, np.ndarray], b: dict[str, np.ndarray], users: np.ndarray, resamples: int,
                      seed: int) -> dict[str, dict]:
    """Per metric `{a, b, diff = a − b, ci95, users, verdict}`: paired bootstrap over the benchmark's users."""
    out = {}
    for metric in a:
        one = [UserScores(metric, users, v, np.ones(len(users), dtype=np.int64)) for v in (a[metric], b[metric])]
        res = paired_bootstrap(one[0], one[1], resamples, seed)
        out[metric] = {"set_out": res["a"], "beam": res["b"], "diff": res["diff"], "ci95": res["ci95"],
                       "users": res["users"], "verdict": verdict(*res["ci95"], lower_is_better=False)}
    return out


def _side(results: list[list[int]], seconds: list[float], per_user: dict[str, np.ndarray], k: int) -> dict:
    ms = np.asarray(seconds) * 1000.0
    hits, gains = per_user[f"hr@{k}"], per_user[f"ndcg@{k}"]
    return {"p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95)),
            "mean_ms": float(ms.mean()), "users_per_s": len(ms) / float(np.sum(seconds)),
            f"hr@{k}": float(np.mean(hits)), f"ndcg@{k}": float(np.mean(gains)),
            "users_with_fewer_than_k": sum(len(r) < k for r in results)}


def benchmark_retrieval(params: Params) -> RetrievalBenchmark:
    """Time set-out retrieval and trie-constrained beam search per user; write bench_retrieval.json."""
    cfg, k = params.benchmark, params.benchmark.retrieval_k
    if params.train.num_threads:
        torch.set_num_threads(params.train.num_threads)
        faiss.omp_set_num_threads(params.train.num_threads)
    built = load_trained(params, gates_file=params.resolve(params.select_gates.out_file))
    model, tok, spec = built.model.eval(), built.backbone.tokenizer, built.spec
    pad = int(tok.pad_token_id)
    rows = benchmark_rows(params)
    seen = seen_items(params)
    targets = [int(r["target_items"][0]) for r in rows]
    autocast = params.train.precision.startswith("bf16")

    start = time.perf_counter()
    index = catalogue_index(model, params.index)
    index_build_s = time.perf_counter() - start
    start = time.perf_counter()
    names = item_names(params)
    trie = TitleTrie(title_sequences(names, tok), spec.eos_id)
    trie_build_s = time.perf_counter() - start
    if trie.n_items != model.n_items:
        raise ValueError(f"items table has {trie.n_items} items, the model {model.n_items}")
    lengths = trie.lengths()

    def set_out(row: dict) -> list[int]:
        batch = collate([encode_example(row, tok, spec)], pad)
        ids, _ = recommend(model, index, batch, k, [seen.get(int(row["user_idx"]), [])])
        return ids[0].tolist()

    complete: dict[str, int] = {}  # example_id → returned sequences that are complete (unseen) titles

    def beam(row: dict) -> list[int]:
        batch = collate([encode_example({**row, "task": "text"}, tok, spec, with_target=False)], pad)
        user_trie = trie.pruned(seen.get(int(row["user_idx"]), []))
        items, n_complete = beam_search_items(model, batch, user_trie, k, cfg.retrieval_max_new_tokens)
        complete[str(row["example_id"])] = n_complete
        return items

    generator = load_or_train(params, built, names)
    llm = model.llm
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        (set_results, set_seconds), (beam_results, beam_seconds) = _timed_pairs(
            rows, (set_out, beam), cfg.retrieval_warmup, "set-out + beam",
            prepare=(lambda: llm.set_adapter(MODEL_ADAPTER), lambda: llm.set_adapter(ADAPTER)))
    llm.set_adapter(MODEL_ADAPTER)
    set_hits, beam_hits = _per_user(set_results, targets, k), _per_user(beam_results, targets, k)
    result = RetrievalBenchmark({
        "users": len(rows), "k": k, "template": cfg.retrieval_template, "warmup": cfg.retrieval_warmup,
        "threads": torch.get_num_threads(), "precision": params.train.precision,
        "backbone_layers": built.backbone.num_layers, "n_items": model.n_items,
        "prompt_tokens_mean": float(np.mean([len(encode_example(r, tok, spec).input_ids) for r in rows])),
        "set_out": {**_side(set_results, set_seconds, set_hits, k), "index_kind": params.index.kind,
                    "index_build_s": index_build_s},
        "beam": {**_side(beam_results, beam_seconds, beam_hits, k), "num_beams": k,
                 "max_new_tokens": cfg.retrieval_max_new_tokens, "longest_title_tokens": max(lengths),
                 "titles_longer_than_max_new_tokens": sum(n > cfg.retrieval_max_new_tokens for n in lengths),
                 "trie_build_s": trie_build_s,
                 "complete_sequence_fraction": sum(complete.values()) / (len(complete) * k),
                 "adapter": {k_: v for k_, v in generator.items() if k_ != "curve"},
                 "adapter_loss_curve": generator.get("curve", [])},
        "timing": "interleaved: each user's set-out then beam, back to back (warm-up users untimed; the adapter "
                  "switch before each side untimed)",
        "users_sample": f"a random subset (seed {params.seed}) of the users with a {cfg.retrieval_template} test row",
        "seen_items": "excluded on both sides (train + valid items of the user): set-out via the index "
                      "exclude list, beam by pruning the title trie per user (timed)",
        "sample": {"user_idx": int(rows[0]["user_idx"]), "target": names[targets[0]],
                   "set_out": [names[i] for i in set_results[0]], "beam": [names[i] for i in beam_results[0]]},
    })
    result["speedup_p50"] = result["beam"]["p50_ms"] / result["set_out"]["p50_ms"]
    users = np.array([int(r["user_idx"]) for r in rows], dtype=np.int64)
    order = np.argsort(users)
    result["comparison"] = paired_comparison(
        {m: v[order] for m, v in set_hits.items()}, {m: v[order] for m, v in beam_hits.items()}, users[order],
        params.evaluate.bootstrap_resamples, params.seed + params.evaluate.bootstrap_seed_offset)
    out = params.resolve(params.paths.metrics_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_retrieval.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return result
