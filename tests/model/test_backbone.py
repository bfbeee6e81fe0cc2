"""`load_backbone`: tiny (offline, deterministic), special tokens, truncation, hf_dir, and the real GGUF (slow)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from components.config import Params
from components.model.backbone import CACHE_MARKER, Backbone, BackboneError, decoder_layers, load_backbone

REPO = Path(__file__).resolve().parents[2]
GGUF = REPO / "models" / "gguf" / "SmolLM2-135M-Instruct.Q4_1.gguf"
TINY = {"backbone.source": "tiny"}


def _tokens(params: Params) -> dict[str, str]:
    return {"item": params.model.item_token, "user": params.model.user_token, "lm": params.model.lm_token}


def _assert_special_tokens(bb: Backbone, params: Params) -> None:
    tok = bb.tokenizer
    assert set(bb.special_ids) == {"item", "user", "lm"}
    assert len(set(bb.special_ids.values())) == 3
    for key, text in _tokens(params).items():
        token_id = bb.special_ids[key]
        assert tok.encode(text, add_special_tokens=False) == [token_id]
        assert tok.encode(f"watched{text}, then {text}.", add_special_tokens=False).count(token_id) == 2
    emb = bb.model.get_input_embeddings().weight
    assert emb.shape[0] == len(tok) > max(bb.special_ids.values())
    mean = emb[: min(bb.special_ids.values())].detach().float().mean(0)
    for token_id in bb.special_ids.values():  # new rows start at the mean embedding
        torch.testing.assert_close(emb[token_id].detach().float(), mean, atol=1e-2, rtol=1e-2)
    assert tok.pad_token_id is not None and bb.model.config.pad_token_id == tok.pad_token_id


def test_tiny_builds_offline_and_deterministically(make_params, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    params = make_params(TINY)
    torch.manual_seed(123)
    expected = torch.rand(1)
    torch.manual_seed(123)
    a, b = load_backbone(params), load_backbone(params)
    assert torch.equal(torch.rand(1), expected), "building the tiny model must not consume the global RNG"
    assert a.tokenizer.get_vocab() == b.tokenizer.get_vocab()
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert a.hidden_size == params.backbone.tiny.hidden_size and a.num_layers == params.backbone.tiny.num_layers
    assert a.source == "tiny" and not a.model.training
    _assert_special_tokens(a, params)
    # new rows start at the mean of the original rows (tied lm_head shares them)
    emb = a.model.get_input_embeddings().weight.detach()
    first_new = min(a.special_ids.values())
    assert torch.allclose(emb[a.special_ids["item"]], emb[:first_new].mean(0), atol=1e-6)
    assert a.model.get_output_embeddings().weight is a.model.get_input_embeddings().weight
    ids = a.tokenizer(["a [ITEM] b", "x"], padding=True, return_tensors="pt")
    logits = a.model(**ids).logits
    assert logits.shape == (2, ids["input_ids"].shape[1], len(a.tokenizer))


def test_other_seed_gives_other_weights(make_params) -> None:
    a = load_backbone(make_params(TINY))
    b = load_backbone(make_params({**TINY, "backbone.tiny.seed": 1}))
    assert not torch.equal(a.model.get_input_embeddings().weight, b.model.get_input_embeddings().weight)


def test_layer_truncation_and_dtype(make_params) -> None:
    params = make_params({**TINY, "backbone.tiny.num_layers": 3, "backbone.num_layers": 1,
                          "backbone.dtype": "bfloat16"})
    bb = load_backbone(params)
    assert len(decoder_layers(bb.model)) == 1 == bb.num_layers == bb.model.config.num_hidden_layers
    assert bb.model.get_input_embeddings().weight.dtype == torch.bfloat16
    out = bb.model(**bb.tokenizer(["some text"], return_tensors="pt"), output_hidden_states=True)
    assert len(out.hidden_states) == 2  # embeddings + one layer
    with pytest.raises(BackboneError, match="only 3 decoder layers"):
        load_backbone(make_params({**TINY, "backbone.tiny.num_layers": 3, "backbone.num_layers": 4}))


def test_hf_dir_loads_a_saved_model(make_params, tmp_path: Path) -> None:
    params = make_params(TINY)
    tiny = load_backbone(params)
    folder = tmp_path / "hf_model"
    tiny.model.save_pretrained(folder)
    tiny.tokenizer.save_pretrained(folder)
    bb = load_backbone(make_params({"backbone.source": "hf_dir", "backbone.hf_dir": str(folder)}))
    # the saved model already has the three tokens: no new rows, same ids
    assert bb.special_ids == tiny.special_ids and len(bb.tokenizer) == len(tiny.tokenizer)
    _assert_special_tokens(bb, params)
    batch = tiny.tokenizer(["a [ITEM] b"], return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(bb.model(**batch).logits, tiny.model(**batch).logits)


def test_hf_dir_errors(make_params, tmp_path: Path) -> None:
    with pytest.raises(BackboneError, match="no config.json"):
        load_backbone(make_params({"backbone.source": "hf_dir", "backbone.hf_dir": str(tmp_path / "nope")}))


def test_missing_gguf_says_run_fetch(make_params, tmp_path: Path) -> None:
    params = make_params({"backbone.gguf_file": str(tmp_path / "absent.gguf"),
                          "backbone.cache_dir": str(tmp_path / "cache")})
    with pytest.raises(BackboneError, match="unirec fetch"):
        load_backbone(params)


def test_foreign_cache_dir_is_not_overwritten(make_params, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "keep.txt").write_text("mine")
    params = make_params({"backbone.gguf_file": str(GGUF), "backbone.cache_dir": str(cache)})
    with pytest.raises(BackboneError, match="not a complete unirec backbone cache"):
        load_backbone(params)
    assert (cache / "keep.txt").read_text() == "mine"


@pytest.mark.slow
@pytest.mark.skipif(not GGUF.is_file(), reason=f"{GGUF} absent (run `unirec fetch`)")
def test_gguf_to_cache_and_reload_identical(make_params, tmp_path: Path) -> None:
    params = make_params({"backbone.gguf_file": str(GGUF), "backbone.cache_dir": str(tmp_path / "cache")})
    start = time.perf_counter()
    first = load_backbone(params)
    cold = time.perf_counter() - start
    assert (tmp_path / "cache" / CACHE_MARKER).is_file()
    assert (tmp_path / "cache" / "model.safetensors").is_file() and (tmp_path / "cache" / "tokenizer.json").is_file()
    start = time.perf_counter()
    second = load_backbone(params)
    warm = time.perf_counter() - start
    assert warm < cold
    assert first.hidden_size == 576 and first.num_layers == 30
    assert first.tokenizer.pad_token == first.tokenizer.eos_token == "<|im_end|>"
    _assert_special_tokens(first, params)
    assert first.special_ids == second.special_ids == {"item": 49152, "user": 49153, "lm": 49154}
    batch = first.tokenizer(["The capital of France is"], return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(first.model(**batch).logits, second.model(**batch).logits)
