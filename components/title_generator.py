"""The generative competitor of `unirec benchmark retrieval`: a LoRA adapter trained to write the next item's title.

A generative recommender (P5, TIGER-style title generation) answers a next-item prompt by decoding the item's name;
the set-out side answers it with one forward pass and an index search. For the comparison to say something about
the two ways of answering, the generative side must have been trained to answer:

* same backbone, same prompts, same item inputs: the trained model's frozen backbone, fusion (item slots) and
  special-token rows, and a SECOND LoRA adapter (``title``, the model's `lora` configuration) added next to the
  model's own (``default``); while it is active the model's own adapter is off (PEFT: one active adapter);
* trained for the same budget as the model's LoRA phase: ``benchmark.generator_steps`` optimizer steps (null =
  `train.max_steps`) of `train.batch_size` rows, AdamW at `train.lr` with `train.warmup_steps` of linear warm-up
  then cosine decay to 10 % (as the model's LoRA phase), under bf16 autocast when `train.precision` is bf16;
* rows: the next_item TRAINING examples (every seen template), each ending in `[LM]` with the target item's name
  (" Title (Year)" + EOS, as `title_sequences` tokenises the trie) as teacher-forced target; cross-entropy on the
  target tokens only (`UniversalRecModel.losses` of a text row). Test and validation rows are never read.

The adapter is saved under ``benchmark.generator_dir`` with ``meta.json`` (steps, loss curve, seconds, and the
sha256 of the model file it was trained on; MANIFEST.json holds the adapter files' sha256, checked before reuse);
`load_or_train` reuses it while that model is unchanged.
"""

from __future__ import annotations

import json
import logging
import time

import numpy as np
import pandas as pd
import torch
from peft import LoraConfig
from tqdm import tqdm

from components.artifacts import reading
from components.config import Params
from components.manifest import verify_manifest, write_manifest
from components.model.batching import collate
from components.model.build import Built
from components.model.data import examples_file
from components.model.prompting import encode_example
from components.model.warmup import lr_factor
from components.utils import sha256_of

log = logging.getLogger(__name__)

ADAPTER = "title"
"""Name of the title-generation adapter next to the model's own (`default`)."""
MODEL_ADAPTER = "default"
PRODUCER = "benchmark retrieval"
"""The command that writes the adapter (named in integrity errors)."""


def title_rows(params: Params, names: dict[int, str]) -> list[dict]:
    """The next_item training rows as text rows: the prompt ending in `[LM]`, target = " " + the target's name."""
    path = examples_file(params.resolve(params.paths.examples_dir), "next_item", "train")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; run `unirec textualize` first")
    frame = pd.read_parquet(path)
    return [{**r, "task": "text", "target_text": names[int(r["target_items"][0])]}
            for r in frame.to_dict("records") if r["target_items"] is not None and len(r["target_items"])]


def _steps(params: Params) -> int:
    steps = params.benchmark.generator_steps
    return params.train.max_steps if steps is None else steps


def _lora_config(params: Params) -> LoraConfig:
    target = params.lora.target_modules
    return LoraConfig(r=params.lora.r, lora_alpha=params.lora.alpha, lora_dropout=params.lora.dropout,
                      target_modules=target[0] if target == ["all-linear"] else target, task_type="CAUSAL_LM")


def train_title_adapter(params: Params, built: Built, rows: list[dict], steps: int) -> dict:
    """Add the `title` adapter to `built.model.llm` and train it for `steps` steps on `rows` (the rest frozen, eval
    mode: no dropout anywhere); leaves the model's own adapter active. Returns the training record."""
    model, tok, spec = built.model, built.backbone.tokenizer, built.spec
    llm = model.llm
    if not hasattr(llm, "add_adapter") or not hasattr(llm, "peft_config"):
        raise ValueError("the title generator needs a LoRA model (lora.enabled: true)")
    llm.add_adapter(ADAPTER, _lora_config(params))
    llm.set_adapter(ADAPTER)
    for name, p in model.named_parameters():
        p.requires_grad_(f".{ADAPTER}." in name)
    trainable = [p for p in model.parameters() if p.requires_grad]
    cfg = params.train
    optimizer = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: float(lr_factor(s, cfg.warmup_steps, steps)))
    rng = np.random.default_rng(params.seed + cfg.seed_offset)
    pad = int(tok.pad_token_id)
    bf16 = cfg.precision.startswith("bf16")
    model.eval()
    curve, start, tokens = [], time.perf_counter(), 0
    for step in tqdm(range(steps), desc="train title adapter", leave=False, disable=None):
        batch = collate([encode_example(rows[i], tok, spec) for i in rng.integers(0, len(rows), cfg.batch_size)], pad)
        tokens += int(batch.attention_mask.sum())
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model.losses(batch)["text"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(trainable, cfg.grad_clip)
        optimizer.step()
        scheduler.step()
        if step % max(1, cfg.log_every_n_steps) == 0 or step == steps - 1:
            curve.append([step + 1, float(loss.detach())])
        if (step + 1) % max(1, cfg.val_check_interval) == 0:  # a log line per validation interval (no TTY: no bar)
            log.info("title adapter: step %d/%d, loss %.3f, %.0f s", step + 1, steps, float(loss.detach()),
                     time.perf_counter() - start)
    seconds = time.perf_counter() - start
    for p in trainable:
        p.requires_grad_(False)
    llm.set_adapter(MODEL_ADAPTER)
    return {"steps": steps, "batch_size": cfg.batch_size, "lr": cfg.lr, "rows": len(rows), "seconds": seconds,
            "tokens_per_s": tokens / seconds if seconds else 0.0, "first_loss": curve[0][1], "last_loss": curve[-1][1],
            "curve": curve, "precision": cfg.precision}


def load_or_train(params: Params, built: Built, names: dict[int, str]) -> dict:
    """Load the `title` adapter from `benchmark.generator_dir` when it was trained on this model file for the same
    steps; else train it there. Returns its training record (meta.json)."""
    folder = params.resolve(params.benchmark.generator_dir)
    model_file = params.resolve(params.train.out_dir) / "modules.safetensors"
    fingerprint = {"model_sha256": sha256_of(model_file), "steps": _steps(params), "seed": params.seed}
    meta_file, adapter = folder / "meta.json", folder / ADAPTER
    if meta_file.is_file() and adapter.is_dir():
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
        if all(meta.get(k) == v for k, v in fingerprint.items()):
            verify_manifest(folder, PRODUCER, [ADAPTER])
            with reading(adapter, PRODUCER):
                built.model.llm.load_adapter(str(adapter), adapter_name=ADAPTER)
            built.model.llm.set_adapter(MODEL_ADAPTER)
            log.info("title adapter: reused %s (trained %d steps on this model)", adapter, meta["steps"])
            return meta
    log.info("title adapter: training %d steps (benchmark.generator_steps) into %s", fingerprint["steps"], folder)
    record = {**fingerprint, **train_title_adapter(params, built, title_rows(params, names), fingerprint["steps"])}
    folder.mkdir(parents=True, exist_ok=True)
    built.model.llm.save_pretrained(str(folder), selected_adapters=[ADAPTER])
    write_manifest(folder, [adapter], PRODUCER)
    meta_file.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return record

