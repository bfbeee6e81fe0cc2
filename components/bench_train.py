"""`unirec benchmark train`: training throughput of unirec vs a naive LLM recommender, same run.

* unirec: items are ONE `[ITEM]` slot each (fused vector), set-out losses from the `[UM]` read-outs,
  LM-head logits only at answer / label positions.
* naive: the same backbone (same layer truncation, same LoRA config) as a plain Hugging Face causal
  LM; every `<item:IDX>` is written out as the item's title in text tokens, set-out targets are the
  target item's title, and the standard LM loss computes full-vocabulary logits at EVERY position.

Both train on the same examples (``benchmark.examples_per_task`` training examples of every task,
grouped into the same single-task batches of ``benchmark.batch_size``), with the same precision and
threads; the first ``benchmark.warmup_steps`` steps of each are not timed. Writes
``metrics/bench_train.json`` = ``{"unirec": {...}, "naive": {...}, "speedup", "peak_rss_gib"}`` where
speedup = unirec examples/s ÷ naive examples/s.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd
import torch
from peft import LoraConfig, get_peft_model

from components.config import Params
from components.model.backbone import load_backbone
from components.model.batching import collate
from components.model.build import build_model
from components.model.data import encode_frames, load_examples
from components.model.prompting import PLACEHOLDER, SET_OUT_TASKS
from components.tables import table_path
from components.textualize.registry import load_registry
from components.textualize.text import item_name
from components.train import peak_rss_gib


@dataclass
class BenchTrainReport:
    result: dict

    def summary(self) -> str:
        u, n = self.result["unirec"], self.result["naive"]
        return (f"benchmark train ({self.result['examples']} examples, {self.result['steps']} timed steps each):\n"
                f"  unirec {u['examples_per_s']:.2f} examples/s, {u['tokens_per_s']:.0f} tokens/s, "
                f"{u['tokens_per_example']:.0f} tokens/example\n"
                f"  naive  {n['examples_per_s']:.2f} examples/s, {n['tokens_per_s']:.0f} tokens/s, "
                f"{n['tokens_per_example']:.0f} tokens/example\n"
                f"  speedup {self.result['speedup']:.2f}x, peak RSS {self.result['peak_rss_gib']:.2f} GiB")


def item_names(params: Params) -> dict[int, str]:
    """item idx → display name ('Toy Story (1995)'), as the prompts render titles."""
    items = pd.read_parquet(table_path(params.resolve(params.paths.canonical_dir), "items"))
    fmt = load_registry(params.resolve(params.textualize.registry)).format
    return {int(r.idx): item_name(r.title, r.year, str(r.item_id), fmt) for r in items.itertuples()}


def naive_text(row: dict, names: dict[int, str]) -> str:
    """Prompt with every item written as its title, followed by the answer in text."""
    prompt = PLACEHOLDER.sub(lambda m: names[int(m.group(1))], str(row["prompt"]))
    if row["task"] in SET_OUT_TASKS:
        answer = names[int(row["target_items"][0])]
    else:
        answer = str(row["target_text"])
    return f"{prompt} {answer}"


def _time_steps(batches: list, step: Callable[[object], int], warmup: int) -> dict[str, float]:
    tokens = examples = 0
    seconds = 0.0
    for i, (batch, n_examples) in enumerate(batches):
        start = time.perf_counter()
        n_tokens = step(batch)
        elapsed = time.perf_counter() - start
        if i >= warmup:
            seconds, tokens, examples = seconds + elapsed, tokens + n_tokens, examples + n_examples
    seconds = max(seconds, 1e-9)
    return {"tokens_per_s": tokens / seconds, "examples_per_s": examples / seconds, "seconds": seconds,
            "tokens_per_example": tokens / max(examples, 1), "examples": examples}


def benchmark_train(params: Params) -> BenchTrainReport:
    cfg, train_cfg = params.benchmark, params.train
    if train_cfg.num_threads:
        torch.set_num_threads(train_cfg.num_threads)
    tasks = [t for t, w in train_cfg.task_weights.items() if w > 0]
    frames = load_examples(params.resolve(params.paths.examples_dir), tasks, "train", cfg.examples_per_task,
                           params.seed)
    groups = [(task, frame.iloc[s:s + cfg.batch_size]) for task, frame in frames.items()
              for s in range(0, len(frame), cfg.batch_size)]
    autocast = train_cfg.precision.startswith("bf16")

    built = build_model(params)
    model = built.model.train()
    encoded = encode_frames(frames, built.backbone.tokenizer, built.spec, progress=False)
    pad = int(built.backbone.tokenizer.pad_token_id)
    unirec_batches, cursor = [], {t: 0 for t in tasks}
    for task, frame in groups:
        chunk = encoded[task][cursor[task]:cursor[task] + len(frame)]
        cursor[task] += len(frame)
        unirec_batches.append((collate(chunk, pad), len(chunk)))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=train_cfg.lr)

    def unirec_step(batch) -> int:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = torch.stack(list(model.losses(batch).values())).sum()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return batch.num_tokens

    unirec = _time_steps(unirec_batches, unirec_step, cfg.warmup_steps)
    del model, built, opt

    backbone = load_backbone(params)
    llm = backbone.model
    if params.lora.enabled:
        target = params.lora.target_modules
        llm = get_peft_model(llm, LoraConfig(r=params.lora.r, lora_alpha=params.lora.alpha,
                                             lora_dropout=params.lora.dropout, task_type="CAUSAL_LM",
                                             target_modules=target[0] if target == ["all-linear"] else target))
    llm.train()
    names = item_names(params)
    tok = backbone.tokenizer
    naive_batches = []
    for _, frame in groups:
        texts = [naive_text(r, names) for r in frame.to_dict("records")]
        enc = tok(texts, return_tensors="pt", padding=True, truncation=True, max_length=cfg.naive_max_tokens)
        labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
        naive_batches.append(((enc, labels), len(texts)))
    naive_opt = torch.optim.AdamW([p for p in llm.parameters() if p.requires_grad], lr=train_cfg.lr)

    def naive_step(batch) -> int:
        enc, labels = batch
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = llm(**enc, labels=labels).loss  # full-vocabulary logits at every position
        loss.backward()
        naive_opt.step()
        naive_opt.zero_grad(set_to_none=True)
        return int(enc["attention_mask"].sum())

    naive = _time_steps(naive_batches, naive_step, cfg.warmup_steps)
    result = {"unirec": unirec, "naive": naive, "speedup": unirec["examples_per_s"] / naive["examples_per_s"],
              "peak_rss_gib": peak_rss_gib(), "examples": sum(n for _, n in unirec_batches),
              "steps": len(groups) - cfg.warmup_steps, "backbone_layers": backbone.num_layers,
              "batch_size": cfg.batch_size, "precision": train_cfg.precision,
              "threads": torch.get_num_threads()}
    out = params.resolve(params.paths.metrics_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_train.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return BenchTrainReport(result)
