"""components/manifest.py: the sha256 of a step's output files, recorded when written and checked before use."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from components.artifacts import ArtifactError
from components.manifest import MANIFEST_FILE, recorded, verify_manifest, write_manifest
from components.utils import sha256_of


def _folder(tmp_path: Path) -> Path:
    folder = tmp_path / "unirec"
    (folder / "adapter").mkdir(parents=True)
    (folder / "modules.safetensors").write_bytes(b"weights" * 100)
    (folder / "adapter" / "adapter_model.safetensors").write_bytes(b"lora" * 100)
    (folder / "adapter" / "adapter_config.json").write_text("{}", encoding="utf-8")
    (folder / "model.json").write_text("{}", encoding="utf-8")
    return folder


def test_records_relative_paths_and_sha256_deterministically(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    path = write_manifest(folder, [folder / "modules.safetensors", folder / "adapter"], "train")
    payload = json.loads(path.read_text(encoding="utf-8"))
    assert path == folder / MANIFEST_FILE and payload["producer"] == "train"
    assert payload["files"] == {"adapter/adapter_config.json": sha256_of(folder / "adapter" / "adapter_config.json"),
                                "adapter/adapter_model.safetensors": sha256_of(folder / "adapter" /
                                                                               "adapter_model.safetensors"),
                                "modules.safetensors": sha256_of(folder / "modules.safetensors")}
    first = path.read_bytes()
    write_manifest(folder, [folder / "adapter", folder / "modules.safetensors"], "train")  # order does not matter
    assert path.read_bytes() == first
    verify_manifest(folder, "train")
    verify_manifest(folder, "train", ["adapter", "modules.safetensors"])
    assert set(recorded(folder, "train")) == set(payload["files"])
    write_manifest(folder, [folder], "train")  # the whole folder: every file but the manifest itself
    assert set(recorded(folder, "train")) == set(payload["files"]) | {"model.json"}


def test_a_changed_file_is_named_with_the_command_that_rewrites_it(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    write_manifest(folder, [folder], "train")
    (folder / "adapter" / "adapter_model.safetensors").write_bytes(b"LORA" * 100)  # same size, other bytes
    with pytest.raises(ArtifactError) as err:
        verify_manifest(folder, "train")
    assert str(err.value) == (f"{folder}/adapter/adapter_model.safetensors: sha256 mismatch with "
                              f"{folder}/MANIFEST.json (changed since `unirec train` wrote it: truncated, corrupt or "
                              "edited): re-run `unirec train`")
    verify_manifest(folder, "train", ["modules.safetensors"])  # only the files asked for are read
    with pytest.raises(ArtifactError, match="adapter_model.safetensors: sha256 mismatch"):
        verify_manifest(folder, "train", ["adapter"])


def test_missing_manifest_missing_file_unrecorded_file_and_foreign_manifest(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    with pytest.raises(ArtifactError, match=r"unirec/MANIFEST\.json: not found: run `unirec train` first"):
        verify_manifest(folder, "train")
    write_manifest(folder, [folder / "modules.safetensors"], "train")
    with pytest.raises(ArtifactError, match=r"model\.json: not recorded in .*MANIFEST\.json .*re-run `unirec train`"):
        verify_manifest(folder, "train", ["model.json"])
    (folder / "modules.safetensors").unlink()
    with pytest.raises(ArtifactError, match=r"modules\.safetensors: not found: run `unirec train` first"):
        verify_manifest(folder, "train")
    write_manifest(folder, [folder / "model.json"], "index")
    with pytest.raises(ArtifactError, match=r"written by `unirec index`, but this folder is read as the output of "
                                            r"`unirec train`"):
        verify_manifest(folder, "train")
    (folder / MANIFEST_FILE).write_text('{"producer": "train", "files": ', encoding="utf-8")
    with pytest.raises(ArtifactError, match=r"MANIFEST\.json: unreadable \(truncated or corrupt"):
        verify_manifest(folder, "train")
    (folder / MANIFEST_FILE).write_text('["not", "a", "manifest"]', encoding="utf-8")
    with pytest.raises(ArtifactError, match=r"MANIFEST\.json: not a manifest"):
        verify_manifest(folder, "train")


def test_only_files_of_the_folder_are_recorded(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    outside = tmp_path / "elsewhere.npy"
    outside.write_bytes(b"x")
    with pytest.raises(ValueError, match="not inside"):
        write_manifest(folder, [outside], "train")
    with pytest.raises(FileNotFoundError, match="no such file"):
        write_manifest(folder, [folder / "absent.npy"], "train")
