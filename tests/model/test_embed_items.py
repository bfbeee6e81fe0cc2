"""`embed_items` on the tiny fixture (ingest → validate → split → textualize, once per module), tiny backbone."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from components.config import Params
from components.embed_items import EmbedItemsError, EmbedItemsReport, embed_items, mean_pool
from components.ingest import ingest
from components.model.inference import token_buckets
from components.model.backbone import load_backbone
from components.split import split
from components.tables import id_map_path
from components.textualize import textualize
from components.validate import validate

TINY = {"backbone.source": "tiny", "embed_items.batch_size": 7}
_BUILT: dict[str, Params] = {}


@pytest.fixture
def built(make_params) -> Params:
    """Params of a tmp project where the real steps up to textualize have run (built once per module)."""
    if "tiny" not in _BUILT:
        params = make_params(TINY)
        ingest(params)
        validate(params)
        split(params)
        textualize(params, progress=False)
        _BUILT["tiny"] = params
    return _BUILT["tiny"]


def _with(make_params, built: Params, tmp_path: Path, **overrides: object) -> Params:
    """Params reading the built canonical/examples folders and writing under this test's tmp_path."""
    return make_params({**TINY, "paths.canonical_dir": str(built.resolve(built.paths.canonical_dir)),
                        "paths.examples_dir": str(built.resolve(built.paths.examples_dir)),
                        "paths.splits_dir": str(built.resolve(built.paths.splits_dir)),
                        "embed_items.out_dir": str(tmp_path / "emb"), **overrides})


def test_shape_dtype_id_map_meta_and_determinism(make_params, built: Params, tmp_path: Path) -> None:
    report = embed_items(built, progress=False)
    assert isinstance(report, EmbedItemsReport) and "embed-items" in report.summary()
    out = built.resolve(built.embed_items.out_dir)
    text = np.load(out / "text.npy")
    id_map = pd.read_parquet(id_map_path(built.resolve(built.paths.canonical_dir), "items"))
    n = len(id_map)
    assert text.dtype == np.float32 and text.shape == (n, built.backbone.tiny.hidden_size)
    assert np.isfinite(text).all() and np.unique(text.round(5), axis=0).shape[0] > 1
    copied = pd.read_parquet(out / "id_map.parquet")
    assert copied["idx"].tolist() == list(range(n))
    assert dict(zip(copied["raw_id"], copied["idx"])) == dict(zip(id_map["raw_id"], id_map["idx"]))
    meta = json.loads((out / "meta.json").read_text())
    assert meta["n_items"] == n and meta["dims"] == {"text": text.shape[1], "collab": built.embed_items.collab.dim}
    assert meta["encoder"] == "backbone" and meta["backbone_source"] == "tiny"
    assert meta["num_layers"] == built.backbone.tiny.num_layers
    assert meta["throughput"]["items_per_s"] > 0 and meta["throughput"]["batches"] >= n / built.embed_items.batch_size
    assert "items/s" in report.summary() and report.throughput["encode_seconds"] > 0
    # second run (other batch size → other batch composition) gives the same rows, first run's bytes exactly
    again = _with(make_params, built, tmp_path)
    embed_items(again, progress=False)
    assert np.array_equal(np.load(tmp_path / "emb" / "text.npy"), text)
    other = _with(make_params, built, tmp_path, **{"embed_items.batch_size": 64, "embed_items.out_dir":
                                                  str(tmp_path / "emb64")})
    embed_items(other, progress=False)
    np.testing.assert_allclose(np.load(tmp_path / "emb64" / "text.npy"), text, atol=3e-2)


def test_row_i_is_item_i(built: Params) -> None:
    """Row i equals the embedding of item i's text computed alone (fp32, no autocast)."""
    out = built.resolve(built.embed_items.out_dir)
    if not (out / "text.npy").is_file():
        embed_items(built, progress=False)
    text = np.load(out / "text.npy")
    texts = pd.read_parquet(built.resolve(built.paths.examples_dir) / "item_text.parquet").set_index("item_idx")
    bb = load_backbone(built)
    for i in (0, len(text) - 1):
        batch = bb.tokenizer([texts.loc[i, "text"]], truncation=True, max_length=built.embed_items.max_tokens,
                             return_tensors="pt")
        with torch.no_grad():
            h = bb.model.base_model(**batch).last_hidden_state
        np.testing.assert_allclose(mean_pool(h, batch["attention_mask"])[0].numpy(), text[i], atol=3e-2)


def test_mean_pool_ignores_padding() -> None:
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    assert torch.equal(mean_pool(hidden, torch.tensor([[1, 1, 0]])), torch.tensor([[2.0, 3.0]]))


def test_missing_item_text_is_a_clear_error(make_params, built: Params, tmp_path: Path) -> None:
    examples = tmp_path / "examples"
    examples.mkdir()
    texts = pd.read_parquet(built.resolve(built.paths.examples_dir) / "item_text.parquet")
    texts[texts["item_idx"] != 3].to_parquet(examples / "item_text.parquet", index=False)
    params = _with(make_params, built, tmp_path, **{"paths.examples_dir": str(examples)})
    match = r"does not cover the canonical item id map.*1 idx missing \(e.g. \[3\]\)"
    with pytest.raises(EmbedItemsError, match=match):
        embed_items(params, progress=False)
    assert not (tmp_path / "emb").exists()


def test_extra_modalities_validated_and_copied(make_params, built: Params, tmp_path: Path) -> None:
    n = len(pd.read_parquet(id_map_path(built.resolve(built.paths.canonical_dir), "items")))
    good = tmp_path / "image.npy"
    np.save(good, np.arange(n * 3, dtype=np.float64).reshape(n, 3))
    params = _with(make_params, built, tmp_path, **{"embed_items.extra_modalities": {"image": str(good)}})
    report = embed_items(params, progress=False)
    assert report.dims["image"] == 3
    copied = np.load(tmp_path / "emb" / "image.npy")
    assert copied.dtype == np.float32 and np.array_equal(copied, np.load(good).astype(np.float32))

    cases = {"short": (np.zeros((n - 1, 3), np.float32), f"has {n - 1} rows but the canonical id map has {n} items"),
             "flat": (np.zeros(n, np.float32), "must be a 2-D numeric array"),
             "nan": (np.full((n, 2), np.nan, np.float32), "non-finite values")}
    for name, (arr, message) in cases.items():
        path = tmp_path / f"{name}.npy"
        np.save(path, arr)
        bad = _with(make_params, built, tmp_path, **{"embed_items.extra_modalities": {name: str(path)}})
        with pytest.raises(EmbedItemsError, match=message):
            embed_items(bad, progress=False)
    missing = _with(make_params, built, tmp_path, **{"embed_items.extra_modalities": {"x": str(tmp_path / "no.npy")}})
    with pytest.raises(EmbedItemsError, match="not found"):
        embed_items(missing, progress=False)


def test_hf_dir_encoder(make_params, built: Params, tmp_path: Path) -> None:
    bb = load_backbone(built)
    folder = tmp_path / "encoder"
    bb.model.base_model.save_pretrained(folder)
    bb.tokenizer.save_pretrained(folder)
    params = _with(make_params, built, tmp_path, **{"embed_items.encoder": "hf_dir",
                                                    "embed_items.encoder_dir": str(folder)})
    report = embed_items(params, progress=False)
    assert report.encoder.startswith("hf_dir:")
    reference = built.resolve(built.embed_items.out_dir) / "text.npy"
    if not reference.is_file():
        embed_items(built, progress=False)
    np.testing.assert_allclose(np.load(tmp_path / "emb" / "text.npy"), np.load(reference), atol=1e-5)


def test_refuses_to_replace_a_foreign_folder(make_params, built: Params, tmp_path: Path) -> None:
    (tmp_path / "emb").mkdir()
    (tmp_path / "emb" / "notes.txt").write_text("keep")
    with pytest.raises(EmbedItemsError, match="refusing to replace"):
        embed_items(_with(make_params, built, tmp_path), progress=False)
    assert (tmp_path / "emb" / "notes.txt").read_text() == "keep"


def test_token_buckets_fill_a_token_budget_in_length_order() -> None:
    """Batch size inversely proportional to length: rows × the batch's longest ≤ the budget, at most max_items rows,
    every row once, in stable length order; a row longer than the budget is a batch of its own."""
    lengths = [5, 3, 9, 1, 2, 2, 7, 30]
    buckets = token_buckets(lengths, 10, 3)
    assert [b.tolist() for b in buckets] == [[3, 4, 5], [1, 0], [6], [2], [7]]
    assert sorted(i for b in buckets for i in b.tolist()) == list(range(len(lengths)))
    for b in buckets:
        assert len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 10
    assert [len(b) for b in token_buckets([4] * 10 + [16] * 4, 32, 100)] == [8, 2, 2, 2]
    assert token_buckets([], 10, 3) == []
