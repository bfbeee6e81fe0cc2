"""Recent-history pooling and the output ID rows: vectorised code against a naive loop; masking."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from components.config import load_params
from components.model.heads import ItemProjection, SetQueryHead
from components.model.history import CausalHistoryEncoder, HistoryReader, recent_item_mean
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
    head = SetQueryHead(16, 8, l2_normalize=True, history_reader=HistoryReader("mean", 16, 3)).eval()
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


def _encoder(layers: int = 2) -> "CausalHistoryEncoder":
    torch.manual_seed(0)
    return CausalHistoryEncoder(12, 8, layers, 2, 0.0, max_items=6).eval()


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(1, 9), min_size=1, max_size=4), st.integers(0, 10_000))
def test_causal_encoder_rows_are_causal_and_independent(lengths: list[int], seed: int) -> None:
    """Output t of a row depends on items 0..t of that row only: not on later items, padding or other rows."""
    gen = torch.Generator().manual_seed(seed)
    enc, width = _encoder(), max(lengths)
    table = torch.randn(len(lengths), width, 12, generator=gen)
    counts = torch.tensor(lengths)
    with torch.no_grad():
        out = enc(table, counts)
        for r, n in enumerate(lengths):
            alone = enc(table[r: r + 1, :n], counts[r: r + 1])[0]
            torch.testing.assert_close(out[r, :n], alone, rtol=1e-4, atol=1e-5)
            t = int(torch.randint(0, n, (1,), generator=gen))
            changed = table[r: r + 1, :n].clone()
            changed[0, t + 1:] = torch.randn(n - t - 1, 12, generator=gen)
            torch.testing.assert_close(enc(changed, counts[r: r + 1])[0, : t + 1], alone[: t + 1],
                                       rtol=1e-4, atol=1e-5)


def test_causal_encoder_reads_the_whole_prefix() -> None:
    """Unlike the mean path's window, the last output sees the oldest item (one layer is enough)."""
    enc = _encoder(layers=1)
    table, counts = torch.randn(1, 9, 12), torch.tensor([9])
    changed = table.clone()
    changed[0, 0] = torch.randn(12)
    with torch.no_grad():
        a, b = enc(table, counts)[0], enc(changed, counts)[0]
    assert not torch.allclose(a[8], b[8])


def test_attention_reader_reads_the_last_item_before_each_position() -> None:
    enc = _encoder()
    reader = HistoryReader("attention", 12, 4, enc, 8)
    assert reader.context == 6 and HistoryReader("mean", 12, 4).context == 4  # what a scorer feeds each
    fused = torch.randn(5, 12)
    rows, cols = torch.tensor([0, 0, 0, 2, 2]), torch.tensor([1, 3, 4, 0, 2])
    read_rows, read_cols = torch.tensor([0, 0, 0, 1, 2, 2]), torch.tensor([0, 3, 9, 5, 1, 7])
    with torch.no_grad():
        got = reader(fused, rows, cols, 3, read_rows, read_cols)
        row0 = enc(fused[:3].unsqueeze(0), torch.tensor([3]))[0]
        row2 = enc(fused[3:].unsqueeze(0), torch.tensor([2]))[0]
    torch.testing.assert_close(got[0], torch.zeros(8))  # no item at or before col 0 of row 0
    torch.testing.assert_close(got[1], row0[1])  # cols 1, 3 → the second item
    torch.testing.assert_close(got[2], row0[2])
    torch.testing.assert_close(got[3], torch.zeros(8))  # row 1 has no items
    torch.testing.assert_close(got[4], row2[0])
    torch.testing.assert_close(got[5], row2[1])
    assert reader.out_dim == 8
