"""ItemFusion: shapes, cold items (text only, independent of their ID row), modality dropout, gradients."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from components.config import ModelParams, load_params
from components.model.fusion import ItemFusion

REPO = Path(__file__).resolve().parents[2]
N_ITEMS, D_TEXT, D_IMAGE, HIDDEN = 12, 10, 6, 16
COLD = (3, 7)


@lru_cache(maxsize=1)
def model_params() -> ModelParams:
    return load_params(REPO / "params.yaml").model.model_copy(update={"id_dim": 8, "fusion_dim": 12})


def make_fusion(modality_dropout: float = 0.2, image: bool = False, seed: int = 0) -> ItemFusion:
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    modalities = {"text": torch.randn(N_ITEMS, D_TEXT, generator=gen)}
    if image:
        modalities["image"] = torch.randn(N_ITEMS, D_IMAGE, generator=gen)
    id_known = torch.ones(N_ITEMS, dtype=torch.bool)
    id_known[list(COLD)] = False
    params = model_params().model_copy(update={"modality_dropout": modality_dropout})
    return ItemFusion.from_params(params, modalities, N_ITEMS, HIDDEN, id_known)


def text_only(fusion: ItemFusion, items: torch.Tensor) -> torch.Tensor:
    """Reference: the text modality alone through its MLP, RMSNorm and the output MLP."""
    text = fusion.modality_mlps["text"](fusion.frozen_table("text")[items])
    return fusion.output_mlp(fusion.norm(text))


@given(shape=st.lists(st.integers(1, 4), min_size=0, max_size=3), seed=st.integers(0, 10_000))
@settings(max_examples=40, deadline=None)
def test_output_shape_for_any_leading_dims(shape: list[int], seed: int) -> None:
    fusion = make_fusion().eval()
    items = torch.randint(0, N_ITEMS, tuple(shape), generator=torch.Generator().manual_seed(seed))
    out = fusion(items)
    assert out.shape == (*shape, HIDDEN)
    assert torch.isfinite(out).all()


def test_all_items_matches_forward() -> None:
    fusion = make_fusion().eval()
    with torch.no_grad():
        assert torch.allclose(fusion.all_items(), fusion(torch.arange(N_ITEMS)))
    assert fusion.all_items().shape == (N_ITEMS, HIDDEN)


def test_cold_item_uses_text_only_and_ignores_its_id_row() -> None:
    fusion = make_fusion().eval()
    cold = torch.tensor(COLD)
    with torch.no_grad():
        before = fusion(cold)
        assert torch.allclose(before, text_only(fusion, cold), atol=1e-6)
        fusion.id_embedding.weight[cold] = torch.nan  # untrained / garbage row must not leak in
        after = fusion(cold)
    assert torch.isfinite(after).all()
    assert torch.equal(before, after)


def test_known_item_uses_its_id() -> None:
    fusion = make_fusion().eval()
    warm = torch.tensor([0, 1, 2])
    with torch.no_grad():
        assert not torch.allclose(fusion(warm), text_only(fusion, warm))


def test_forced_drop_gives_text_only() -> None:
    fusion = make_fusion().eval()
    items = torch.arange(N_ITEMS).reshape(3, 4)
    with torch.no_grad():
        assert torch.allclose(fusion(items, drop_id=True), text_only(fusion, items), atol=1e-6)
        # per-row bool broadcast over the row's items: row 1 dropped, rows 0 and 2 not
        out = fusion(items, drop_id=torch.tensor([[False], [True], [False]]))
        assert torch.allclose(out[1], text_only(fusion, items[1]), atol=1e-6)
        assert torch.allclose(out[0], fusion(items[0]))


@given(drop=st.lists(st.booleans(), min_size=N_ITEMS, max_size=N_ITEMS))
@settings(max_examples=25, deadline=None)
def test_id_mask_never_uses_unknown_or_dropped_ids(drop: list[bool]) -> None:
    fusion = make_fusion().eval()
    items = torch.arange(N_ITEMS)
    use = fusion.id_mask(items, torch.tensor(drop))
    assert torch.equal(use, fusion.id_known & ~torch.tensor(drop))


def test_modality_dropout_only_in_train_mode() -> None:
    fusion = make_fusion(modality_dropout=0.5)
    items = torch.arange(N_ITEMS).repeat(50)  # 600 item slots
    with torch.no_grad():
        fusion.eval()
        eval_a, eval_b = fusion(items), fusion(items)
        assert torch.equal(eval_a, eval_b)
        fusion.train()
        torch.manual_seed(1)
        used = fusion.id_mask(items)
        warm = fusion.id_known[items]
        assert not used[~warm].any()  # cold stays off
        dropped_share = 1 - used[warm].float().mean().item()
        assert 0.35 < dropped_share < 0.65  # ~ Bernoulli(0.5) over 500 warm slots
        train_out = fusion(items)
        ref_dropped = text_only(fusion, items)
        dropped_rows = torch.isclose(train_out, ref_dropped, atol=1e-6).all(dim=-1)
        assert dropped_rows.any() and not dropped_rows.all()


def test_zero_dropout_train_equals_eval() -> None:
    fusion = make_fusion(modality_dropout=0.0)
    items = torch.arange(N_ITEMS)
    with torch.no_grad():
        assert torch.equal(fusion.train()(items), fusion.eval()(items))


def test_extra_modality_changes_the_vector() -> None:
    with_image = make_fusion(image=True).eval()
    assert set(with_image.frozen_names) == {"text", "image"}
    items = torch.arange(N_ITEMS)
    with torch.no_grad():
        base = with_image(items)
        with_image.frozen_table("image").mul_(2.0)
        assert not torch.allclose(base, with_image(items))


def test_gradients_reach_parameters_not_buffers() -> None:
    fusion = make_fusion(image=True).train()
    fusion(torch.arange(N_ITEMS)).pow(2).sum().backward()
    names = {name for name, _ in fusion.named_parameters()}
    assert not any(name.startswith("frozen_") or name == "id_known" for name in names)
    for name, buf in fusion.named_buffers():
        assert not buf.requires_grad and buf.grad is None, name
    for name, param in fusion.named_parameters():
        assert param.grad is not None, name
    id_grad = fusion.id_embedding.weight.grad
    assert torch.all(id_grad[list(COLD)] == 0)  # cold rows never trained
    assert fusion.modality_mlps["text"][0].weight.grad.abs().sum() > 0


def test_invalid_construction() -> None:
    params = model_params()
    text = {"text": torch.randn(N_ITEMS, D_TEXT)}
    known = torch.ones(N_ITEMS, dtype=torch.bool)
    with pytest.raises(ValueError, match="frozen modality"):
        ItemFusion.from_params(params, {}, N_ITEMS, HIDDEN, known)
    with pytest.raises(ValueError, match="id_known"):
        ItemFusion.from_params(params, text, N_ITEMS, HIDDEN, known[:-1])
    with pytest.raises(ValueError, match="modality 'text'"):
        ItemFusion.from_params(params, {"text": torch.randn(N_ITEMS + 1, D_TEXT)}, N_ITEMS, HIDDEN, known)
    with pytest.raises(ValueError, match="reserved"):
        ItemFusion.from_params(params, {"id": torch.randn(N_ITEMS, 3)}, N_ITEMS, HIDDEN, known)


def make_fusion_with_collab(seed: int = 0) -> ItemFusion:
    """Text + a behavioural `collab` table whose cold rows are zero (as components/collab.py writes them)."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    collab = torch.randn(N_ITEMS, 5, generator=gen)
    collab[list(COLD)] = 0.0
    id_known = torch.ones(N_ITEMS, dtype=torch.bool)
    id_known[list(COLD)] = False
    modalities = {"text": torch.randn(N_ITEMS, D_TEXT, generator=gen), "collab": collab}
    return ItemFusion.from_params(model_params(), modalities, N_ITEMS, HIDDEN, id_known)


def test_collab_modality_follows_the_id_mask() -> None:
    """Cold items and dropped IDs read neither the ID nor the collaborative row: text only."""
    fusion = make_fusion_with_collab().eval()
    cold, warm = torch.tensor(COLD), torch.tensor([0, 1, 2])
    with torch.no_grad():
        assert torch.allclose(fusion(cold), text_only(fusion, cold), atol=1e-6)
        assert torch.allclose(fusion(warm, drop_id=True), text_only(fusion, warm), atol=1e-6)
        with_collab = fusion(warm)
        fusion.frozen_table("collab")[warm] = 0.0  # a warm item's collab row does change its vector
        assert not torch.allclose(with_collab, fusion(warm))


def test_behavioural_modality_alone_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one frozen modality"):
        ItemFusion.from_params(model_params(), {"collab": torch.zeros(N_ITEMS, 3)}, N_ITEMS, HIDDEN,
                               torch.ones(N_ITEMS, dtype=torch.bool))


def test_standardise_centres_present_rows_and_zeroes_absent_ones() -> None:
    from components.model.fusion import standardise
    table = torch.tensor([[1.0, 10.0], [3.0, 10.0], [5.0, 10.0], [100.0, 100.0]])
    present = torch.tensor([True, True, True, False])
    out = standardise(table, present)
    # column 0: mean 3, std 2 -> (-1, 0, 1); column 1 is constant -> centred only; absent row -> 0
    assert torch.allclose(out, torch.tensor([[-1.0, 0.0], [0.0, 0.0], [1.0, 0.0], [0.0, 0.0]]))


def test_fused_vectors_enter_at_the_token_embedding_scale() -> None:
    id_known = torch.ones(N_ITEMS, dtype=torch.bool)
    text = torch.randn(N_ITEMS, D_TEXT) * 50 + 7  # badly scaled, off-centre encoder output
    fusion = ItemFusion.from_params(model_params(), {"text": text}, N_ITEMS, HIDDEN, id_known, output_rms=0.13).eval()
    with torch.no_grad():
        out = fusion.all_items()
    rms = out.pow(2).mean(-1).sqrt()
    assert torch.allclose(rms, torch.full_like(rms, 0.13), rtol=1e-3)
    stored = fusion.frozen_table("text")
    assert torch.allclose(stored.mean(0), torch.zeros(D_TEXT), atol=1e-5)
