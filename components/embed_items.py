"""Pipeline step `embed-items`: one frozen text embedding per item (+ extra modality vectors).

Text vector of item i = attention-mask-aware mean of the last hidden states (B, T, H) of a frozen encoder
over the item text of ``<paths.examples_dir>/item_text.parquet`` (written by `textualize`), truncated to
``embed_items.max_tokens`` tokens. Encoder ``backbone``: the decoder stack of `load_backbone(params)`
(so ``backbone.num_layers`` truncation applies); ``hf_dir``: another local Hugging Face encoder folder.

Outputs (``embed_items.out_dir``, replaced as a whole):
* ``text.npy`` float32 (n_items, H), row i = item idx i of the canonical id map;
* ``id_map.parquet`` (raw_id, idx) copied from ``<paths.canonical_dir>/id_maps/items.parquet``;
* ``<name>.npy`` float32 (n_items, d) for every ``embed_items.extra_modalities`` entry (validated);
* ``collab.npy`` float32 (n_items, collab.dim) when ``embed_items.collab.enabled``: collaborative vectors
  from the training split only (components/collab.py);
* ``neighbours.npy`` float32 (n_items, neighbours.rank) when ``embed_items.neighbours.enabled``: the
  item-neighbourhood factors of ``model.item_neighbours``, from the training split only;
* ``meta.json``: encoder, backbone source, layers, dim per modality, n_items, seconds;
* ``MANIFEST.json``: the sha256 of every file above (components/manifest.py), which the model and the experts check
  before they read a table.

Batching: items sorted by token length (stable), each forward pass as many consecutive items as fit
``embed_items.batch_tokens`` padded tokens, at most ``embed_items.batch_size`` (`inference.token_buckets`): the batch
size is inversely proportional to the text length, and a batch pads only to its own longest item. The report and
meta.json give the encoder's throughput (items/s, tokens/s, batches).

Deterministic: fixed batch order and composition, no sampling, inference mode.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from components.artifacts import read_parquet
from components.collab import COLLAB_MODALITY, NEIGHBOURS_FILE, collaborative_vectors, neighbour_factors
from components.config import Params
from components.manifest import write_manifest
from components.model.inference import token_buckets
from components.tables import id_map_path

__all__ = ["EmbedItemsError", "EmbedItemsReport", "embed_items", "mean_pool", "encode_texts"]
log = logging.getLogger(__name__)
MODALITY_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")


class EmbedItemsError(ValueError):
    """Inputs of `embed-items` are missing or inconsistent (coverage, extra modality shape, ...)."""


@dataclass
class EmbedItemsReport:
    n_items: int
    dims: dict[str, int]
    """modality name ("text", extras) → vector width."""
    encoder: str
    """"backbone:<source>:<name>" or "hf_dir:<folder>"."""
    num_layers: int | None
    out_dir: str
    seconds: float = 0.0
    throughput: dict[str, float] = field(default_factory=dict)
    """The text encoder alone (model load excluded): items_per_s, tokens_per_s, encode_seconds, batches."""
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        dims = ", ".join(f"{k} {self.n_items}x{v}" for k, v in self.dims.items())
        layers = f", {self.num_layers} layers" if self.num_layers is not None else ""
        lines = [f"embed-items: {self.n_items} items with {self.encoder}{layers} → {dims} in {self.out_dir} "
                 f"({self.seconds:.1f}s)"]
        if self.throughput:
            t = self.throughput
            lines.append(f"  encoder: {t['items_per_s']:.1f} items/s, {t['tokens_per_s']:.0f} tokens/s "
                         f"({int(t['batches'])} batches in {t['encode_seconds']:.1f} s)")
        return "\n".join(lines + [f"  note: {n}" for n in self.notes])


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `hidden` (B, T, H) over positions where `mask` (B, T) is 1 → float32 (B, H)."""
    m = mask.to(torch.float32).unsqueeze(-1)
    return (hidden.to(torch.float32) * m).sum(1) / m.sum(1).clamp_min(1.0)


def encode_texts(encoder: torch.nn.Module, tokenizer: object, texts: list[str], batch_tokens: int, max_tokens: int,
                 autocast_bf16: bool, progress: bool = True, max_items: int | None = None,
                 stats: dict[str, float] | None = None) -> np.ndarray:
    """Mean-pooled last hidden states of `encoder` for `texts` → float32 (N, H), row order = `texts`.

    `encoder(input_ids (B, T), attention_mask (B, T))` must return `.last_hidden_state` (B, T, H).
    Texts are sorted by token length (stable) and batched by `token_buckets`: each batch holds as many as fit
    `batch_tokens` padded tokens (at most `max_items`; None = no cap) and pads to its own longest text; results
    are put back in order. `stats`, when given, receives the throughput (items/s, tokens/s, seconds, batches).
    """
    start = time.perf_counter()
    lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=True, truncation=True,
                                             max_length=max_tokens)["input_ids"]]
    batches = token_buckets(lengths, batch_tokens, max_items or max(1, len(texts)))
    device = next(encoder.parameters()).device
    out: np.ndarray | None = None
    with torch.inference_mode(), tqdm(total=len(texts), desc="embed-items", unit="item",
                                      disable=None if progress else True) as bar:
        for rows in batches:
            batch = tokenizer([texts[i] for i in rows], padding=True, truncation=True, max_length=max_tokens,
                              return_tensors="pt").to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast_bf16):
                hidden = encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
            pooled = mean_pool(hidden, batch["attention_mask"]).cpu().numpy()
            if out is None:
                out = np.zeros((len(texts), pooled.shape[1]), dtype=np.float32)
            out[rows] = pooled
            bar.update(len(rows))
    if out is None:
        raise EmbedItemsError("no item texts to embed")
    if stats is not None:
        seconds = time.perf_counter() - start
        stats.update(items_per_s=len(texts) / seconds, tokens_per_s=sum(lengths) / seconds,
                     encode_seconds=seconds, batches=float(len(batches)))
    return out


def _read_inputs(params: Params) -> tuple[pd.DataFrame, list[str]]:
    """Canonical item id map (raw_id, idx) and the item texts in idx order; checks coverage."""
    map_path = id_map_path(params.resolve(params.paths.canonical_dir), "items")
    text_path = params.resolve(params.paths.examples_dir) / "item_text.parquet"
    for path, step in ((map_path, "validate"), (text_path, "textualize")):
        if not path.is_file():
            raise EmbedItemsError(f"{path}: not found — run `unirec {step}` first")
    id_map = read_parquet(map_path, "validate").sort_values("idx", kind="stable").reset_index(drop=True)
    n = len(id_map)
    if not np.array_equal(id_map["idx"].to_numpy(), np.arange(n)):
        raise EmbedItemsError(f"{map_path}: item idx is not contiguous 0..{n - 1}")
    texts = read_parquet(text_path, "textualize", columns=["item_idx", "text"])
    idx = texts["item_idx"].to_numpy()
    missing = np.setdiff1d(np.arange(n), idx)
    extra = np.setdiff1d(idx, np.arange(n))
    if len(missing) or len(extra) or texts["item_idx"].duplicated().any():
        raise EmbedItemsError(
            f"{text_path} does not cover the canonical item id map ({n} items, {map_path}): "
            f"{len(missing)} idx missing (e.g. {missing[:5].tolist()}), {len(extra)} unknown idx "
            f"(e.g. {extra[:5].tolist()}), {int(texts['item_idx'].duplicated().sum())} duplicated — "
            "re-run `unirec textualize` after `unirec validate`")
    texts = texts.set_index("item_idx").loc[np.arange(n), "text"]
    empty = texts.isna() | (texts.astype("string").str.strip() == "")
    if empty.any():
        raise EmbedItemsError(f"{text_path}: {int(empty.sum())} items have no text "
                              f"(e.g. idx {texts.index[empty.to_numpy()][:5].tolist()})")
    return id_map, texts.astype(str).tolist()


def _load_extra(params: Params, n_items: int) -> dict[str, np.ndarray]:
    """Validate every ``embed_items.extra_modalities`` .npy: 2-D, numeric, n_items rows, finite."""
    out: dict[str, np.ndarray] = {}
    for name, file in params.embed_items.extra_modalities.items():
        where = f"embed_items.extra_modalities.{name}"
        if not MODALITY_NAME.match(name) or name in {"text", "id_map", "meta", COLLAB_MODALITY}:
            raise EmbedItemsError(f"{where}: invalid modality name (letters, digits, _ or -; not text/id_map/meta/"
                                  f"{COLLAB_MODALITY})")
        path = params.resolve(file)
        if not path.is_file():
            raise EmbedItemsError(f"{where}: {path} not found")
        try:
            arr = np.load(path, allow_pickle=False)
        except ValueError as exc:
            raise EmbedItemsError(f"{where}: {path} is not a plain .npy array ({exc})") from exc
        if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.number):
            raise EmbedItemsError(f"{where}: {path} must be a 2-D numeric array (n_items, d), got shape "
                                  f"{arr.shape} dtype {arr.dtype}")
        if arr.shape[0] != n_items:
            raise EmbedItemsError(f"{where}: {path} has {arr.shape[0]} rows but the canonical id map has "
                                  f"{n_items} items (row i must be item idx i)")
        bad = ~np.isfinite(arr).all(axis=1)
        if bad.any():
            raise EmbedItemsError(f"{where}: {path} has non-finite values in {int(bad.sum())} rows "
                                  f"(e.g. {np.flatnonzero(bad)[:5].tolist()})")
        out[name] = arr.astype(np.float32)
    return out


def _encoder(params: Params) -> tuple[torch.nn.Module, object, str, int | None]:
    """(encoder returning last_hidden_state, tokenizer, description, decoder layers) for the configured encoder."""
    cfg = params.embed_items
    if cfg.encoder == "backbone":
        from components.model.backbone import load_backbone

        bb = load_backbone(params)
        return bb.model.base_model, bb.tokenizer, f"backbone:{bb.source}:{bb.name}", bb.num_layers
    from transformers import AutoModel, AutoTokenizer

    folder = params.resolve(cfg.encoder_dir or "")
    if not (folder / "config.json").is_file():
        raise EmbedItemsError(f"{folder}: embed_items.encoder_dir is not a Hugging Face model folder (no config.json)")
    model = AutoModel.from_pretrained(folder, local_files_only=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise EmbedItemsError(f"{folder}: tokenizer has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer, f"hf_dir:{cfg.encoder_dir}", getattr(model.config, "num_hidden_layers", None)


def embed_items(params: Params, progress: bool = True) -> EmbedItemsReport:
    """Embed every item's text with the frozen encoder; write text.npy, id_map, extras and meta.json."""
    start = time.perf_counter()
    cfg = params.embed_items
    id_map, texts = _read_inputs(params)
    n = len(texts)
    extras = _load_extra(params, n)
    encoder, tokenizer, description, layers = _encoder(params)
    encoder.requires_grad_(False)
    loaded = time.perf_counter()
    throughput: dict[str, float] = {}
    text = encode_texts(encoder, tokenizer, texts, cfg.batch_tokens, cfg.max_tokens, cfg.autocast_bf16, progress,
                        max_items=cfg.batch_size, stats=throughput)
    if not np.isfinite(text).all():
        raise EmbedItemsError(f"the encoder produced non-finite vectors for {int((~np.isfinite(text)).any(1).sum())}"
                              " items")
    log.info("embedded %d items in %.1f s, %.1f items/s (encoder load %.1f s)", n, time.perf_counter() - loaded,
             throughput["items_per_s"], loaded - start)
    out = params.resolve(cfg.out_dir)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    np.save(tmp / "text.npy", text)
    id_map[["raw_id", "idx"]].to_parquet(tmp / "id_map.parquet", index=False)
    for name, arr in extras.items():
        np.save(tmp / f"{name}.npy", arr)
    train = pd.read_parquet(params.resolve(params.paths.splits_dir) / "train.parquet",
                            columns=["user_idx", "item_idx", "order"]) if cfg.collab.enabled or cfg.neighbours.enabled else None
    if cfg.collab.enabled:
        extras[COLLAB_MODALITY] = collaborative_vectors(train, n, cfg.collab.dim, cfg.collab.window, params.seed)
        np.save(tmp / f"{COLLAB_MODALITY}.npy", extras[COLLAB_MODALITY])
    if cfg.neighbours.enabled:
        factors = neighbour_factors(train, n, cfg.neighbours.rank, params.seed)
        np.save(tmp / f"{NEIGHBOURS_FILE}.npy", factors)
        log.info("item-neighbourhood factors %dx%d", *factors.shape)
    dims = {"text": int(text.shape[1]), **{k: int(v.shape[1]) for k, v in extras.items()}}
    report = EmbedItemsReport(n_items=n, dims=dims, encoder=description, num_layers=layers, out_dir=str(cfg.out_dir),
                              throughput=throughput)
    report.seconds = time.perf_counter() - start
    meta = {"encoder": cfg.encoder, "encoder_name": description, "backbone_source": params.backbone.source,
            "num_layers": layers, "max_tokens": cfg.max_tokens, "autocast_bf16": cfg.autocast_bf16,
            "batch_tokens": cfg.batch_tokens, "batch_size": cfg.batch_size,
            "dims": dims, "n_items": n, "dtype": "float32", "seconds": round(report.seconds, 2),
            "throughput": {k: round(v, 2) for k, v in throughput.items()}}
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    write_manifest(tmp, [tmp], "embed-items")
    _replace_dir(tmp, out)
    return report


def _replace_dir(tmp: Path, out: Path) -> None:
    """Swap `tmp` in as `out`; refuses to delete an `out` that is not an earlier embed-items output."""
    if out.exists():
        if any(out.iterdir()) and not (out / "meta.json").is_file():
            shutil.rmtree(tmp)
            raise EmbedItemsError(f"{out}: embed_items.out_dir exists and is not an embed-items output "
                                  "(no meta.json); refusing to replace it")
        shutil.rmtree(out)
    tmp.rename(out)
