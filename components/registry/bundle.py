"""The model bundle: every file the served model reads, in one directory logged as the pyfunc artifact.

Layout (paths relative to the bundle; its ``params.yaml`` is the EFFECTIVE configuration of the run, with
the paths below rewritten to point inside the bundle, so `load_params(bundle / "params.yaml")` works on
any machine):

    params.yaml                 effective params (overrides applied), paths rewritten
    model/                      train.out_dir: adapter/, modules.safetensors, item_vectors.npy, model.json
    gates.json                  select_gates.out_file: the per-task hidden-state gates chosen on validation
    index/                      index.out_dir: items.faiss + meta.json (built from model/item_vectors.npy)
    data/embeddings/            frozen item tables the model reads (text.npy, collab.npy, neighbours.npy, extras)
    data/splits/                train / valid / cold / cold_items (stored histories, item statistics)
    data/canonical/             items.parquet (titles), id_maps/{items,users}.parquet (original ids)
    data/examples/              user_text.parquet (the profile text of every user)
    prompts/registry.yaml       the prompt registry the model was trained with
    backbone.json               the backbone reference: source, absolute folder, sha256 of its files

The backbone weights are NOT copied (SmolLM2's cache is 517 MB): `backbone.json` records the absolute
folder (`backbone.cache_dir` for gguf, `backbone.hf_dir` for hf_dir) and the sha256 of its weight,
config and tokenizer files; `verify_backbone` checks them before loading. The tiny test backbone
(`backbone.source: tiny`) is rebuilt from params (seeded), so it references nothing.

`verify_sources` checks, before anything is copied or logged, the model, index and item-table files against the
sha256 their steps recorded (components/manifest.py), and that the index was built from this model's item vectors;
the manifests travel in the bundle, so the served model checks its copies again when it loads.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import yaml

from components.artifacts import ArtifactError, read_json
from components.config import Params
from components.indexing import META_FILE, VECTORS_FILE
from components.manifest import MANIFEST_FILE, recorded, verify_manifest
from components.utils import sha256_of
from components.tables import id_map_path, table_path

BACKBONE_FILE = "backbone.json"
BACKBONE_PATTERNS = ("*.safetensors", "*.json", "*.jinja")
EMBEDDING_PATTERNS = ("*.npy", "meta.json", MANIFEST_FILE)
SPLIT_FILES = ("train", "valid", "cold", "cold_items")
EXAMPLE_FILES = ("user_text.parquet",)
INDEPENDENT_SECTIONS = ("paths", "fetch", "mlflow", "benchmark", "baselines", "evaluate", "orchestration")
"""Params sections that do not change what the served model answers (left out of the fingerprint)."""


class BundleError(ValueError):
    """A file the bundle needs is missing, or the referenced backbone does not match."""


def _copy(src: Path, dst: Path, what: str) -> None:
    if not src.exists():
        raise BundleError(f"{src}: {what} not found")
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.is_dir():
        shutil.copytree(src, dst)
    else:
        shutil.copy2(src, dst)


def backbone_reference(params: Params) -> dict[str, Any]:
    """{source, folder, files: {name: sha256}} of the backbone files the model needs (tiny: nothing)."""
    cfg = params.backbone
    if cfg.source == "tiny":
        return {"source": "tiny", "folder": None, "files": {}}
    folder = params.resolve(cfg.cache_dir if cfg.source == "gguf" else str(cfg.hf_dir)).resolve()
    files = sorted({p for pattern in BACKBONE_PATTERNS for p in folder.glob(pattern)})
    if not any(p.suffix == ".safetensors" for p in files):
        raise BundleError(f"{folder}: no backbone weights (*.safetensors); run `unirec embed-items` (which writes "
                          f"the backbone cache) or fix backbone.{'cache_dir' if cfg.source == 'gguf' else 'hf_dir'}")
    return {"source": cfg.source, "folder": str(folder), "files": {p.name: sha256_of(p) for p in files}}


def verify_backbone(bundle: Path, params: Params) -> None:
    """Check that the backbone files `backbone.json` references exist here with the recorded sha256."""
    ref = json.loads((bundle / BACKBONE_FILE).read_text(encoding="utf-8"))
    if ref["source"] != params.backbone.source:
        raise BundleError(f"{bundle}/{BACKBONE_FILE}: source {ref['source']!r} but params say "
                          f"{params.backbone.source!r}")
    for name, digest in ref["files"].items():
        path = Path(ref["folder"]) / name
        if not path.is_file():
            raise BundleError(f"{path}: backbone file referenced by the registered model is missing on this machine "
                              "(the backbone is referenced, not copied): run `unirec fetch && unirec embed-items`")
        if sha256_of(path) != digest:
            raise BundleError(f"{path}: sha256 differs from the one recorded at registration ({digest[:12]}): the "
                              "backbone changed since the model was registered")


def verify_sources(params: Params) -> None:
    """The trained model, its index and the item tables unchanged since their steps wrote them (sha256 against each
    folder's manifest), the index built from exactly this model's item vectors; `ArtifactError` naming the file."""
    model_dir, index_dir = params.resolve(params.train.out_dir), params.resolve(params.index.out_dir)
    verify_manifest(model_dir, "train")
    verify_manifest(index_dir, "index")
    verify_manifest(params.resolve(params.embed_items.out_dir), "embed-items")
    built_from = read_json(index_dir / META_FILE, "index").get("vectors_sha256")
    vectors = recorded(model_dir, "train").get(VECTORS_FILE)
    if built_from != vectors:
        raise ArtifactError(f"{index_dir / META_FILE}: the index was built from item vectors with sha256 "
                            f"{str(built_from)[:12]}, but {model_dir / VECTORS_FILE} has {str(vectors)[:12]}: "
                            "re-run `unirec index` after training")


def bundle_params(params: Params) -> dict[str, Any]:
    """The effective params as a plain dict, with the bundled paths rewritten (see the module docstring)."""
    raw = params.model_dump(mode="json", by_alias=True, exclude={"root"})
    raw["paths"].update(canonical_dir="data/canonical", splits_dir="data/splits", examples_dir="data/examples")
    raw["embed_items"]["out_dir"] = "data/embeddings"
    raw["train"].update(out_dir="model", checkpoint_dir="checkpoints")
    raw["index"]["out_dir"] = "index"
    raw["select_gates"]["out_file"] = "gates.json"
    raw["textualize"]["registry"] = "prompts/registry.yaml"
    raw["mlflow"]["tracking_uri"] = params.tracking_uri()
    for section, key in (("backbone", "gguf_file"), ("backbone", "cache_dir"), ("backbone", "hf_dir"),
                         ("embed_items", "encoder_dir")):
        if raw[section].get(key):
            raw[section][key] = str(params.resolve(raw[section][key]).resolve())
    return raw


def build_bundle(params: Params, dst: Path) -> Path:
    """Copy every file the served model reads into `dst` (must not exist) and write its params.yaml."""
    if dst.exists():
        raise BundleError(f"{dst}: already exists")
    model_dir = params.resolve(params.train.out_dir)
    if not (model_dir / "modules.safetensors").is_file():
        raise BundleError(f"{model_dir}: no trained model (modules.safetensors); run `unirec train` first")
    _copy(model_dir, dst / "model", "trained model folder (train.out_dir)")
    _copy(params.resolve(params.select_gates.out_file), dst / "gates.json",
          "hidden-state gates (select_gates.out_file; run `unirec select-gates`)")
    _copy(params.resolve(params.index.out_dir), dst / "index", "faiss index (index.out_dir; run `unirec index`)")
    embeddings = params.resolve(params.embed_items.out_dir)
    for pattern in EMBEDDING_PATTERNS:
        for path in sorted(embeddings.glob(pattern)):
            _copy(path, dst / "data" / "embeddings" / path.name, "item embeddings")
    splits = params.resolve(params.paths.splits_dir)
    for name in SPLIT_FILES:
        _copy(splits / f"{name}.parquet", dst / "data" / "splits" / f"{name}.parquet", "split file (run `unirec split`)")
    canonical = params.resolve(params.paths.canonical_dir)
    for src, rel in ((table_path(canonical, "items"), "items.parquet"),
                     (id_map_path(canonical, "items"), "id_maps/items.parquet"),
                     (id_map_path(canonical, "users"), "id_maps/users.parquet")):
        _copy(src, dst / "data" / "canonical" / rel, "canonical table (run `unirec validate`)")
    examples = params.resolve(params.paths.examples_dir)
    for name in EXAMPLE_FILES:
        _copy(examples / name, dst / "data" / "examples" / name, "textualised text (run `unirec textualize`)")
    _copy(params.resolve(params.textualize.registry), dst / "prompts" / "registry.yaml", "prompt registry")
    (dst / BACKBONE_FILE).write_text(json.dumps(backbone_reference(params), indent=2) + "\n", encoding="utf-8")
    (dst / "params.yaml").write_text(yaml.safe_dump(bundle_params(params), sort_keys=False), encoding="utf-8")
    return dst


def file_digests(bundle: Path) -> dict[str, str]:
    """sha256 of every bundle file except params.yaml, by path relative to the bundle."""
    return {str(p.relative_to(bundle)): sha256_of(p) for p in sorted(bundle.rglob("*"))
            if p.is_file() and p.name != "params.yaml" and "__pycache__" not in p.parts}


def fingerprint(bundle: Path, eval_sha256: str | None) -> str:
    """sha256 of what a registered version answers with: the bundle files, the serving-relevant params
    (every section but `INDEPENDENT_SECTIONS`; of `registry` only `serving`) and the eval figures' file."""
    raw = yaml.safe_load((bundle / "params.yaml").read_text(encoding="utf-8"))
    relevant = {k: v for k, v in raw.items() if k not in INDEPENDENT_SECTIONS}
    relevant["registry"] = {"serving": raw["registry"]["serving"]}
    payload = {"files": file_digests(bundle), "params": relevant, "eval": eval_sha256}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
