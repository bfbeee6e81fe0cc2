"""Assemble a `UniversalRecModel` from params, and save / reload its trained artefacts.

Trainable parts: LoRA adapters (PEFT; or the whole backbone with `lora.enabled: false`), the input
rows of the three special tokens (`UniversalRecModel.special_rows`), `ItemFusion` (ID table + modality MLPs), `SetQueryHead`, `ItemProjection`, the `VerbaliserPrior` scalars (`model.verbaliser_prior`), the `RatingEstimator` (`model.rating_prior_window`).
Frozen: the backbone weights and the item text (and extra-modality) embeddings.

Artefacts (``train.out_dir``): ``adapter/`` (PEFT ``save_pretrained``: adapter_config.json +
adapter_model.safetensors), ``modules.safetensors`` (fusion, heads, special-token embedding rows),
``item_vectors.npy`` (output item vectors of the whole catalogue, eval mode), ``model.json`` and ``MANIFEST.json``
(the sha256 of each of them, components/manifest.py). `load_trained` checks every recorded file, and the frozen item
tables it reads against embed-items' manifest, before it loads the backbone.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import save_file

from components.artifacts import load_npy, load_safetensors, reading
from components.collab import COLLAB_MODALITY, NEIGHBOURS_FILE
from components.config import Params
from components.manifest import verify_manifest, write_manifest
from components.model.backbone import Backbone, load_backbone
from components.model.fusion import ItemFusion
from components.model.heads import ItemProjection, SetQueryHead
from components.model.modes import eval_mode
from components.model.neighbours import ItemNeighbours
from components.model.prompting import PromptSpec, make_spec
from components.model.rating import RatingEstimator
from components.model.universal import UniversalRecModel
from components.model.verbaliser import VerbaliserPrior

MODULE_PREFIXES = ("fusion.", "user_head.", "item_head.", "special_rows", "verbaliser_prior.", "rating_estimator.",
                   "neighbours.")


@dataclass
class Built:
    model: UniversalRecModel
    backbone: Backbone
    spec: PromptSpec


def item_statistics(params: Params, n_items: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(`id_known` (N,) bool: item has training interactions, `log_prob` (N,) of train frequency, +1 smoothed,
    the mean training rating (0 when the data has no ratings))."""
    train = pd.read_parquet(params.resolve(params.paths.splits_dir) / "train.parquet", columns=["item_idx", "rating"])
    counts = np.bincount(train["item_idx"].to_numpy(), minlength=n_items).astype(np.float64)
    id_known = torch.from_numpy(counts > 0)
    log_prob = torch.from_numpy(np.log((counts + 1.0) / (counts + 1.0).sum()))
    ratings = train["rating"].astype("Float64").to_numpy(dtype=float, na_value=np.nan)
    mean_rating = float(np.nanmean(ratings)) if np.isfinite(ratings).any() else 0.0
    return id_known, log_prob, mean_rating


def load_modalities(params: Params) -> dict[str, torch.Tensor]:
    """Frozen item tables from `embed_items.out_dir`: text.npy plus every extra modality, `(N, d_m)` each."""
    folder = params.resolve(params.embed_items.out_dir)
    names = ["text", *params.embed_items.extra_modalities] + (
        [COLLAB_MODALITY] if params.embed_items.collab.enabled else [])
    missing = [n for n in names if not (folder / f"{n}.npy").is_file()]
    if missing:
        raise FileNotFoundError(f"{folder}: missing {missing}.npy; run `unirec embed-items` first")
    verify_manifest(folder, "embed-items", [f"{n}.npy" for n in names])
    return {n: torch.from_numpy(load_npy(folder / f"{n}.npy", "embed-items").astype(np.float32)) for n in names}


def load_neighbours(params: Params, n_items: int) -> ItemNeighbours | None:
    """The item-neighbourhood term (`model.item_neighbours`) over `<embed_items.out_dir>/neighbours.npy`, or None when off."""
    cfg = params.model.item_neighbours
    if not cfg.window:
        return None
    path = params.resolve(params.embed_items.out_dir) / f"{NEIGHBOURS_FILE}.npy"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; model.item_neighbours needs it, run `unirec embed-items` "
                                "with embed_items.neighbours.enabled: true")
    verify_manifest(path.parent, "embed-items", [path.name])
    factors = torch.from_numpy(load_npy(path, "embed-items").astype(np.float32))
    if factors.shape[0] != n_items:
        raise ValueError(f"{path}: {factors.shape[0]} rows for {n_items} items; re-run `unirec embed-items`")
    return ItemNeighbours(factors, cfg.window, cfg.decay, cfg.weight)


def token_embedding_rms(llm: torch.nn.Module) -> float:
    """Per-coordinate RMS of the backbone's input token embeddings (the scale a fused item enters at)."""
    table = llm.get_input_embeddings().weight.detach()
    return float(table.float().pow(2).mean().sqrt())


ItemTables = tuple[dict[str, torch.Tensor], ItemNeighbours | None]
"""The frozen item tables a model reads: modality name → `(N, d_m)`, and the item-neighbourhood term (or None)."""


def item_tables(params: Params) -> ItemTables:
    """`load_modalities` and `load_neighbours` (their files checked against embed-items' manifest)."""
    modalities = load_modalities(params)
    return modalities, load_neighbours(params, next(iter(modalities.values())).shape[0])


def build_model(params: Params, backbone: Backbone | None = None, apply_lora: bool = True,
                tables: ItemTables | None = None) -> Built:
    """Backbone (+ fresh LoRA when `apply_lora`) + fusion + heads, ready to train; special-token rows trainable.
    The item tables (`tables`, else read and checked here) come before the backbone: a changed file fails first."""
    torch.manual_seed(params.seed + params.train.seed_offset)
    modalities, neighbours = tables or item_tables(params)
    backbone = backbone or load_backbone(params)
    n_items = next(iter(modalities.values())).shape[0]
    id_known, log_prob, mean_rating = item_statistics(params, n_items)
    llm = backbone.model
    if params.lora.enabled and apply_lora:
        target = params.lora.target_modules
        config = LoraConfig(r=params.lora.r, lora_alpha=params.lora.alpha, lora_dropout=params.lora.dropout,
                            target_modules=target[0] if target == ["all-linear"] else target,
                            task_type="CAUSAL_LM")
        llm = get_peft_model(llm, config)
    elif not params.lora.enabled:
        for p in llm.parameters():
            p.requires_grad_(True)
    backbone.model.get_input_embeddings().weight.requires_grad_(False)  # special rows live in the model
    h = backbone.hidden_size
    spec = make_spec(backbone.tokenizer, backbone.special_ids, params.model.num_user_tokens,
                     params.train.max_prompt_tokens, params.train.max_target_tokens)
    model = UniversalRecModel(
        llm=llm,
        fusion=ItemFusion.from_params(params.model, modalities, n_items, h, id_known,
                                      output_rms=token_embedding_rms(backbone.model)),
        user_head=SetQueryHead.from_params(params.model, h, neighbours.dim if neighbours else 0),
        item_head=ItemProjection.from_params(params.model, h, n_items),
        verbaliser_ids=spec.verbaliser_ids, temperature=params.model.temperature,
        num_negatives=params.model.num_negatives, item_log_prob=log_prob, special_ids=backbone.special_ids,
        full_softmax=params.model.softmax == "full", history_window=params.model.history_skip_items,
        verbaliser_prior=VerbaliserPrior({t: len(ids) for t, ids in spec.verbaliser_ids.items()},
                                         params.model.temperature) if params.model.verbaliser_prior else None,
        rating_estimator=RatingEstimator(h, n_items, params.model.rating_prior_window, mean_rating)
        if params.model.rating_prior_window else None,
        neighbours=neighbours)
    return Built(model=model, backbone=backbone, spec=spec)


def trainable_summary(model: UniversalRecModel) -> dict[str, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"parameters": total, "trainable": trainable}


def module_state(model: UniversalRecModel) -> dict[str, torch.Tensor]:
    """Fusion/head weights and the special-token rows (what the LoRA adapter does not hold)."""
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if k.startswith(MODULE_PREFIXES)}


def save_artifacts(built: Built, params: Params, out_dir: Path) -> dict[str, str]:
    """Write adapter, modules, item vectors, model.json and their MANIFEST.json under `out_dir`; returns the file
    map."""
    out_dir.mkdir(parents=True, exist_ok=True)
    model = built.model
    files = {"modules": str(out_dir / "modules.safetensors"), "item_vectors": str(out_dir / "item_vectors.npy")}
    if params.lora.enabled:
        # the (resized) embedding matrix is frozen and rebuilt identically at load: keep it out of the adapter
        model.llm.save_pretrained(out_dir / "adapter", save_embedding_layers=False)
        files["adapter"] = str(out_dir / "adapter")
    else:
        model.causal_lm().save_pretrained(out_dir / "backbone_full")
        files["backbone_full"] = str(out_dir / "backbone_full")
    save_file(module_state(model), files["modules"])
    with eval_mode(model), torch.no_grad():
        np.save(files["item_vectors"], model.item_vectors().float().cpu().numpy())
    meta = {"backbone": built.backbone.name, "source": built.backbone.source, "layers": built.backbone.num_layers,
            "special_ids": built.backbone.special_ids, "lora": params.lora.model_dump(),
            "n_items": model.n_items, "retrieval_dim": params.model.retrieval_dim}
    (out_dir / "model.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    write_manifest(out_dir, [Path(f) for f in files.values()] + [out_dir / "model.json"], "train")
    return files


def read_gates(path: Path) -> dict[str, float]:
    """task → hidden-state gate from a `select_gates.out_file` (`unirec select-gates`; missing tasks keep 1)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no gates file; run `unirec select-gates` first")
    try:
        gates = json.loads(path.read_text(encoding="utf-8"))["gates"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: not a gates file ({{\"gates\": {{task: value}}}}): {exc}") from None
    if not isinstance(gates, dict):
        raise ValueError(f"{path}: 'gates' must map task -> value")
    return {str(t): float(g) for t, g in gates.items()}


def load_trained(params: Params, out_dir: Path | None = None, gates_file: Path | None = None) -> Built:
    """Rebuild the model from params and load the saved artefacts (inverse of `save_artifacts`); with
    `gates_file` (`select_gates.out_file`) the chosen per-task hidden-state gates are applied, else every gate is 1.
    Every file of `out_dir`'s manifest and the item tables are checked (sha256) before the backbone loads."""
    out_dir = out_dir or params.resolve(params.train.out_dir)
    if not (out_dir / "modules.safetensors").is_file():
        raise FileNotFoundError(f"{out_dir}: no trained model (modules.safetensors); run `unirec train` first")
    verify_manifest(out_dir, "train")
    tables = item_tables(params)
    backbone = load_backbone(params)
    if not params.lora.enabled:
        backbone.model = type(backbone.model).from_pretrained(out_dir / "backbone_full")
    built = build_model(params, backbone, apply_lora=False, tables=tables)
    if params.lora.enabled:
        with reading(out_dir / "adapter", "train"):
            built.model.llm = PeftModel.from_pretrained(backbone.model, out_dir / "adapter")
    state = load_safetensors(out_dir / "modules.safetensors", "train")
    missing = built.model.load_state_dict(state, strict=False)
    bad = [k for k in missing.missing_keys if k.startswith(MODULE_PREFIXES)]
    if bad or missing.unexpected_keys:
        raise RuntimeError(f"{out_dir}/modules.safetensors does not match the model: missing {bad}, "
                           f"unexpected {missing.unexpected_keys}")
    if gates_file is not None:
        built.model.user_head.set_task_gates(read_gates(gates_file))
    built.model.eval()
    return built
