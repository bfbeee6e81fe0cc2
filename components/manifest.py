"""The sha256 of every file a step writes, recorded in its output folder and checked before the files are used.

A step that writes model files (`unirec train`: ``train.out_dir``; `unirec index`: ``index.out_dir``; `unirec
baselines`: ``baselines.out_dir``; `unirec embed-items`: ``embed_items.out_dir``) ends with `write_manifest`, which
records ``{file: sha256}`` (paths relative to the folder, POSIX separators) in ``<folder>/MANIFEST.json``. A reader
calls `verify_manifest` first — before loading a backbone or running anything long — and gets ONE `ArtifactError`
naming the file and the command that rewrites it when a file changed, is missing or was never recorded:

    models/index/items.faiss: sha256 mismatch with models/index/MANIFEST.json (changed since `unirec index` wrote
    it: truncated, corrupt or edited): re-run `unirec index`

A file is hashed once per check, streamed (`sha256_of`), so a check costs one read of the files it covers. The
manifest is deterministic (no times), so an unchanged output stays byte-identical for DVC and the registry's
fingerprint.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from components.artifacts import ArtifactError, missing, read_json
from components.utils import sha256_of

__all__ = ["MANIFEST_FILE", "write_manifest", "verify_manifest", "recorded"]

MANIFEST_FILE = "MANIFEST.json"


def _files(folder: Path, paths: Iterable[Path]) -> list[Path]:
    """`paths` (files, or folders standing for every file under them) as files, each inside `folder`."""
    out: list[Path] = []
    for path in paths:
        path = Path(path)
        if not path.resolve().is_relative_to(folder.resolve()):
            raise ValueError(f"{path}: not inside {folder}; a manifest records the files of its own folder")
        if path.is_dir():
            out += [p for p in path.rglob("*") if p.is_file()]
        elif path.is_file():
            out.append(path)
        else:
            raise FileNotFoundError(f"{path}: cannot be recorded in {folder / MANIFEST_FILE}: no such file")
    return [p for p in out if p.name != MANIFEST_FILE]


def write_manifest(folder: Path, paths: Iterable[Path], producer: str) -> Path:
    """Record the sha256 of `paths` (files or folders under `folder`) in ``<folder>/MANIFEST.json``; `producer` is
    the command that wrote them, without ``unirec`` (``train``). Replaces an earlier manifest. → its path."""
    files = {p.resolve().relative_to(folder.resolve()).as_posix(): sha256_of(p) for p in _files(folder, paths)}
    path = folder / MANIFEST_FILE
    payload = {"producer": producer, "files": dict(sorted(files.items()))}
    path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return path


def recorded(folder: Path, producer: str) -> dict[str, str]:
    """``{file: sha256}`` of ``<folder>/MANIFEST.json`` (ArtifactError when it is missing, unreadable or written by
    another command)."""
    path = folder / MANIFEST_FILE
    if not path.is_file():
        raise missing(path, producer)
    payload = read_json(path, producer)
    files = payload.get("files") if isinstance(payload, dict) else None
    if not isinstance(files, dict):
        raise ArtifactError(f"{path}: not a manifest ({{\"producer\", \"files\": {{file: sha256}}}}): "
                            f"re-run `unirec {producer}`")
    if payload.get("producer") != producer:
        raise ArtifactError(f"{path}: written by `unirec {payload.get('producer')}`, but this folder is read as the "
                            f"output of `unirec {producer}`: check the paths in params.yaml, or re-run "
                            f"`unirec {producer}`")
    return {str(k): str(v) for k, v in files.items()}


def verify_manifest(folder: Path, producer: str, names: Iterable[str] | None = None) -> None:
    """Check the files `names` of `folder` (relative paths; a folder name covers every file recorded under it;
    None: every recorded file) against ``<folder>/MANIFEST.json`` written by `unirec <producer>`.

    Raises `ArtifactError` naming the first file that is missing, not recorded, or whose sha256 differs."""
    manifest = folder / MANIFEST_FILE
    files = recorded(folder, producer)
    if names is None:
        todo = sorted(files)
    else:
        todo = []
        for name in names:
            name = Path(name).as_posix()
            covered = sorted(f for f in files if f == name or f.startswith(name + "/"))
            if not covered:
                raise ArtifactError(f"{folder / name}: not recorded in {manifest} (not written by `unirec {producer}`"
                                    f"): re-run `unirec {producer}`")
            todo += covered
    for name in todo:
        path = folder / name
        if not path.is_file():
            raise missing(path, producer)
        if sha256_of(path) != files[name]:
            raise ArtifactError(f"{path}: sha256 mismatch with {manifest} (changed since `unirec {producer}` wrote "
                                f"it: truncated, corrupt or edited): re-run `unirec {producer}`")
