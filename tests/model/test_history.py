"""Recent-history pooling and the output ID rows: vectorised code against a naive loop; masking."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from components.config import load_params
from components.model.heads import ItemProjection, SetQueryHead
from components.model.history import recent_item_mean
from tests.conftest import REPO

MODEL = load_params(REPO / "params.yaml").model


def naive_mean(fused, rows, cols, read_rows, read_cols, window):  # noqa: ANN001, ANN201 - reference
    out = []
    for r, c in zip(read_rows.tolist(), read_cols.tolist()):
        picked = [fused[p] for p in range(len(rows)) if rows[p] == r and cols[p] <= c][-window:]
        out.append(torch.stack(picked).mean(0) if picked else torch.zeros(fused.shape[1]))
    return torch.stack(out)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.booleans(), min_size=1, max_size=12), min_size=1, max_size=4),
       st.integers(1, 6), st.integers(0, 10_000))
def test_recent_item_mean_matches_a_loop(slots: list[list[bool]], window: int, seed: int) -> None:
    """slots[b][t]: position t of row b holds an item; every position is also a read position."""
    gen = torch.Generator().manual_seed(seed)
    rows = [b for b, row in enumerate(slots) for t, is_item in enumerate(row) if is_item]
    cols = [t for row in slots for t, is_item in enumerate(row) if is_item]
    fused = torch.randn(len(rows), 3, generator=gen)
    read_rows = torch.tensor([b for b, row in enumerate(slots) for _ in row], dtype=torch.long)
    read_cols = torch.tensor([t for row in slots for t in range(len(row))], dtype=torch.long)
    got = recent_item_mean(fused, torch.tensor(rows, dtype=torch.long), torch.tensor(cols, dtype=torch.long),
                           len(slots), read_rows, read_cols, window)
    want = naive_mean(fused, rows, cols, read_rows, read_cols, window)
    assert got.shape == (len(read_rows), 3)
    assert torch.allclose(got, want, atol=1e-6)


def test_recent_item_mean_hand_computed_and_errors() -> None:
    # one row: items 1, 2, 3 at positions 0, 1, 3; read at 2 with window 2 -> mean(1, 2); at 3 -> mean(2, 3)
    fused = torch.tensor([[1.0], [2.0], [3.0]])
    rows, cols = torch.tensor([0, 0, 0]), torch.tensor([0, 1, 3])
    got = recent_item_mean(fused, rows, cols, 2, torch.tensor([0, 0, 1]), torch.tensor([2, 3, 0]), 2)
    assert got.squeeze(1).tolist() == [1.5, 2.5, 0.0]  # row 1 has no item: 0
    try:
        recent_item_mean(fused, torch.tensor([0, 0, 0]), torch.tensor([3, 1, 0]), 1, rows, cols, 2)
    except ValueError as exc:
        assert "(row, col) order" in str(exc)
    else:
        raise AssertionError("unordered item slots must be rejected")


def test_history_path_changes_the_user_vector_and_is_required() -> None:
    head = SetQueryHead(16, 8, l2_normalize=True, history_path=True).eval()
    hidden = torch.randn(3, 16)
    a, b = head(hidden, torch.randn(3, 16)), head(hidden, torch.randn(3, 16))
    assert not torch.allclose(a, b)
    for bad in (lambda: head(hidden), lambda: SetQueryHead(16, 8, True)(hidden, torch.randn(3, 16))):
        try:
            bad()
        except ValueError as exc:
            assert "history" in str(exc)
        else:
            raise AssertionError("a history input must be given exactly when the head has a history path")


def test_output_id_rows_start_at_zero_and_follow_the_id_mask() -> None:
    proj = ItemProjection.from_params(MODEL.model_copy(update={"output_id_embedding": True}), 16, n_items=5).eval()
    fused, ids = torch.randn(5, 16), torch.arange(5)
    with torch.no_grad():
        base = proj(fused, ids)
        assert torch.allclose(base, proj(fused))  # zero-initialised rows change nothing
        proj.output_ids.weight.normal_()
        use = torch.tensor([True, False, True, False, True])
        moved = proj(fused, ids, use)
    assert not torch.allclose(moved[use], base[use])
    assert torch.allclose(moved[~use], base[~use])  # items without their ID keep the content-only vector
    off = ItemProjection.from_params(MODEL.model_copy(update={"output_id_embedding": False}), 16, n_items=5)
    assert off.output_ids is None
