"""The LLM backbone: load a local causal LM + fast tokenizer and add unirec's special tokens.

Sources (``backbone.source``):
* ``gguf``   — the fetched SmolLM2 GGUF, dequantised once (``GgufConfig(dequantize=True)``) and cached as
  safetensors + tokenizer files under ``backbone.cache_dir`` (the cache holds the ORIGINAL model, without
  our special tokens); later loads read the cache (mmap, < 1 s instead of ~20 s).
* ``hf_dir`` — any local Hugging Face causal-LM folder.
* ``tiny``   — a seeded random tiny Llama with a byte-level BPE tokenizer trained on the prompt registry
  (offline, deterministic; used by tests).

Then, for every source: ``model.item_token`` / ``user_token`` / ``lm_token`` become extra special tokens
(one id each), the embedding matrix is resized and the new rows set to the mean embedding (the model
package trains these rows as separate parameters, `UniversalRecModel.special_rows`; SmolLM2 ties lm_head
to the input embedding), optional truncation to the first
``backbone.num_layers`` decoder layers, cast to ``backbone.dtype``, pad token = eos when missing
(SmolLM2: pad == eos == ``<|im_end|>``; never derive label masks from pad). Nothing contacts a model hub.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers  # noqa: E402
from torch import nn  # noqa: E402
from transformers import (AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM,  # noqa: E402
                          PreTrainedModel, PreTrainedTokenizerFast)
from transformers.utils.quantization_config import GgufConfig  # noqa: E402

from components.config import Params  # noqa: E402

__all__ = ["Backbone", "BackboneError", "load_backbone", "decoder_layers"]
log = logging.getLogger(__name__)

CACHE_MARKER = "unirec_backbone.json"
"""Written last into ``backbone.cache_dir``; its presence means the cache is complete."""
TINY_BOS, TINY_EOS = "<|im_start|>", "<|im_end|>"
"""Turn markers of the tiny tokenizer (as in SmolLM2's ChatML; eos doubles as pad, like SmolLM2)."""
TINY_EXTRA_TEXT = "0123456789 .,;:!?'\"()[]{}<>-—_/|+*=#%&@ "
"""Appended to the tiny tokenizer's training text so digits and punctuation get merges too."""


class BackboneError(RuntimeError):
    """The backbone cannot be loaded (missing file, not a causal LM, bad special token, ...)."""


@dataclass
class Backbone:
    model: PreTrainedModel
    """Causal LM (e.g. LlamaForCausalLM), eval mode, special-token rows added (mean-initialised)."""
    tokenizer: PreTrainedTokenizerFast
    special_ids: dict[str, int]
    """"item" / "user" / "lm" → id of ``model.item_token`` / ``user_token`` / ``lm_token``."""
    hidden_size: int
    source: str
    """backbone.source that produced it: gguf | hf_dir | tiny."""
    name: str
    """What was loaded: GGUF file name, hf_dir path or "tiny"."""
    num_layers: int
    """Decoder layers actually kept (after ``backbone.num_layers`` truncation)."""


def load_backbone(params: Params) -> Backbone:
    """Load the configured backbone (see module docstring) and add the three unirec special tokens."""
    cfg = params.backbone
    start = time.perf_counter()
    if cfg.source == "gguf":
        model, tokenizer, name = *_load_gguf(params), params.resolve(cfg.gguf_file).name
    elif cfg.source == "hf_dir":
        model, tokenizer = _load_hf_dir(params.resolve(cfg.hf_dir or ""))
        name = str(cfg.hf_dir)
    else:
        model, tokenizer = _build_tiny(params)
        name = "tiny"
    dtype = getattr(torch, cfg.dtype)
    model.to(dtype)
    if cfg.num_layers is not None:
        _truncate_layers(model, cfg.num_layers)
    tokens = {"item": params.model.item_token, "user": params.model.user_token, "lm": params.model.lm_token}
    special_ids = _add_special_tokens(model, tokenizer, tokens)
    model.eval()
    layers = len(decoder_layers(model))
    log.info("backbone %s (%s): %d layers, hidden %d, vocab %d, %s, loaded in %.1f s", cfg.source, name, layers,
             model.config.hidden_size, len(tokenizer), cfg.dtype, time.perf_counter() - start)
    return Backbone(model, tokenizer, special_ids, int(model.config.hidden_size), cfg.source, name, layers)


def decoder_layers(model: PreTrainedModel) -> nn.ModuleList:
    """The stack of decoder blocks (``model.model.layers`` for Llama-style models)."""
    base = model.base_model
    for attr in ("layers", "h", "blocks"):
        layers = getattr(base, attr, None)
        if isinstance(layers, nn.ModuleList):
            return layers
    raise BackboneError(f"cannot find the decoder layers of {type(model).__name__} (looked for layers/h/blocks)")


def _load_gguf(params: Params) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    gguf = params.resolve(params.backbone.gguf_file)
    cache = params.resolve(params.backbone.cache_dir)
    if not _cache_ok(cache, gguf):
        if not gguf.is_file():
            raise BackboneError(f"{gguf}: GGUF file not found — run `unirec fetch` first "
                                f"(or set backbone.gguf_file / fetch.backbone.local_path)")
        _build_cache(gguf, cache)
    start = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(cache, dtype=getattr(torch, params.backbone.dtype),
                                                 local_files_only=True)
    tokenizer = _fast_tokenizer(AutoTokenizer.from_pretrained(cache, local_files_only=True), cache)
    log.info("backbone cache %s loaded in %.2f s", cache, time.perf_counter() - start)
    return model, tokenizer


def _cache_ok(cache: Path, gguf: Path) -> bool:
    """True when `cache` is a complete cache written from a GGUF of this name and size."""
    marker = cache / CACHE_MARKER
    if not marker.is_file():
        if cache.exists() and any(cache.iterdir()):
            raise BackboneError(f"{cache}: backbone.cache_dir exists but is not a complete unirec backbone cache "
                                f"(no {CACHE_MARKER}); delete it or point backbone.cache_dir elsewhere")
        return False
    meta = json.loads(marker.read_text(encoding="utf-8"))
    if gguf.is_file() and (meta.get("gguf_name") != gguf.name or meta.get("gguf_bytes") != gguf.stat().st_size):
        log.warning("backbone cache %s was written from %s (%s B); rebuilding from %s", cache,
                    meta.get("gguf_name"), meta.get("gguf_bytes"), gguf)
        shutil.rmtree(cache)
        return False
    return True


def _build_cache(gguf: Path, cache: Path) -> None:
    """Dequantise `gguf` to fp32 and save model (safetensors) + tokenizer into `cache` (atomic rename)."""
    start = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, quantization_config=GgufConfig(dequantize=True),
        dtype=torch.float32, local_files_only=True)
    loaded = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)
    tokenized = time.perf_counter()
    tmp = cache.with_name(f"{cache.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    meta = {"gguf_name": gguf.name, "gguf_bytes": gguf.stat().st_size,
            "parameters": sum(p.numel() for p in model.parameters())}
    (tmp / CACHE_MARKER).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    if cache.exists():
        cache.rmdir()  # empty (checked by _cache_ok)
    os.replace(tmp, cache)
    log.info("backbone cache written to %s: GGUF dequantise %.1f s, tokenizer %.1f s, save %.1f s", cache,
             loaded - start, tokenized - loaded, time.perf_counter() - tokenized)


def _load_hf_dir(folder: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    if not (folder / "config.json").is_file():
        raise BackboneError(f"{folder}: backbone.hf_dir is not a Hugging Face model folder (no config.json)")
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True)
    except (ValueError, KeyError) as exc:
        raise BackboneError(f"{folder}: not loadable as a causal LM ({exc})") from exc
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise BackboneError(f"{folder}: no usable tokenizer files ({exc})") from exc
    return model, _fast_tokenizer(tokenizer, folder)


def _fast_tokenizer(tokenizer: object, where: Path) -> PreTrainedTokenizerFast:
    if not isinstance(tokenizer, PreTrainedTokenizerFast):
        raise BackboneError(f"{where}: tokenizer is {type(tokenizer).__name__}, need a fast (tokenizers) tokenizer "
                            "(a tokenizer.json)")
    return tokenizer


def _build_tiny(params: Params) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """Seeded random tiny Llama (B, T) → (B, T, V) + byte-level BPE trained on the prompt registry."""
    tiny = params.backbone.tiny
    registry = params.resolve(params.textualize.registry)
    if not registry.is_file():
        raise BackboneError(f"{registry}: prompt registry (textualize.registry) needed to train the tiny tokenizer")
    corpus = registry.read_text(encoding="utf-8").splitlines() + [TINY_EXTRA_TEXT]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=tiny.vocab_size, special_tokens=[TINY_BOS, TINY_EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator(corpus, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token=TINY_BOS, eos_token=TINY_EOS,
                                        pad_token=TINY_EOS, model_max_length=tiny.max_positions)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=tiny.hidden_size,
                         intermediate_size=tiny.intermediate_size, num_hidden_layers=tiny.num_layers,
                         num_attention_heads=tiny.num_heads, num_key_value_heads=tiny.num_kv_heads,
                         max_position_embeddings=tiny.max_positions, tie_word_embeddings=True,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(tiny.seed)
        model = LlamaForCausalLM(config)
    return model, tokenizer


def _truncate_layers(model: PreTrainedModel, n: int) -> None:
    """Keep the first `n` decoder layers and record it in the config."""
    layers = decoder_layers(model)
    if n > len(layers):
        raise BackboneError(f"backbone.num_layers={n} but the model has only {len(layers)} decoder layers")
    base = model.base_model
    for attr in ("layers", "h", "blocks"):
        if getattr(base, attr, None) is layers:
            setattr(base, attr, nn.ModuleList(list(layers)[:n]))
    model.config.num_hidden_layers = n
    if isinstance(getattr(model.config, "layer_types", None), list):
        model.config.layer_types = model.config.layer_types[:n]


def _add_special_tokens(model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast,
                        tokens: dict[str, str]) -> dict[str, int]:
    """Add `tokens` as extra special tokens (one id each); new embedding rows = mean of the old rows."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise BackboneError("tokenizer has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    before = len(tokenizer)
    added = [AddedToken(t, special=True, normalized=False, lstrip=False, rstrip=False, single_word=False)
             for t in tokens.values()]
    tokenizer.add_special_tokens({"extra_special_tokens": added}, replace_extra_special_tokens=False)
    ids: dict[str, int] = {}
    for key, text in tokens.items():
        token_id = tokenizer.convert_tokens_to_ids(text)
        for probe in (text, f"a{text}b", f"x {text} {text}."):
            pieces = tokenizer.encode(probe, add_special_tokens=False)
            if pieces.count(token_id) != probe.count(text) or (probe == text and pieces != [token_id]):
                raise BackboneError(f"special token {text!r} (model.{key}_token) does not tokenize to one id in "
                                    f"{probe!r}: {tokenizer.convert_ids_to_tokens(pieces)}")
        ids[key] = int(token_id)
    new_ids = sorted({i for i in ids.values() if i >= before})
    emb = model.get_input_embeddings().weight
    if new_ids:
        out = model.get_output_embeddings()
        ref = min(before, emb.shape[0])
        in_mean = emb[:ref].detach().float().mean(0)
        out_mean = out.weight[:ref].detach().float().mean(0) if out is not None else None
        if len(tokenizer) > emb.shape[0]:
            with torch.random.fork_rng(devices=[]):  # resize inits rows randomly (overwritten below)
                model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        with torch.no_grad():
            emb = model.get_input_embeddings().weight
            emb[new_ids] = in_mean.to(emb.dtype)
            out = model.get_output_embeddings()
            if out is not None and out.weight is not emb and out_mean is not None:
                out.weight[new_ids] = out_mean.to(out.weight.dtype)
    model.config.pad_token_id = tokenizer.pad_token_id
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return ids
