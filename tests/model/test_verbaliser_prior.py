"""The collaborative verbaliser prior (`model.verbaliser_prior`): which item it scores, what history it
reads, that it starts as the pure LM verbaliser, that it learns, and that it survives save / reload."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from components.model.batching import collate
from components.model.build import build_model, load_trained, save_artifacts
from components.model.data import encode_frames, load_examples
from components.model.history import recent_item_mean
from components.model.prompting import encode_example


def _examples(built, params, task: str, n: int = 6):
    frames = load_examples(params.resolve(params.paths.examples_dir), [task], "train")
    return encode_frames(frames, built.backbone.tokenizer, built.spec, progress=False)[task][:n]


def test_answer_item_and_slot_follow_the_target_wherever_the_template_puts_it(model_params) -> None:
    params = model_params()
    built = build_model(params)
    for task in ("ctr", "rating"):
        frame = pd.read_parquet(params.resolve(params.paths.examples_dir) / task / "test.parquet")
        for row in frame.head(40).to_dict("records"):
            ex = encode_example(row, built.backbone.tokenizer, built.spec)
            assert ex.answer_item == int(row["target_items"][0])
            if ex.answer_slot >= 0:
                assert ex.item_ids[ex.answer_slot] == ex.answer_item
                # the target is the last slot (history first) or the first one (rating/unseen-2: target first)
                assert ex.answer_slot in (0, len(ex.item_ids) - 1)
            else:
                assert ex.answer_item not in ex.item_ids  # cut off by the left truncation


@pytest.mark.parametrize("kind", ["mean", "attention"])
def test_answer_scores_read_the_history_without_the_asked_item(model_params, kind: str) -> None:
    params = model_params({"model.history_encoder.kind": kind, "model.item_neighbours.window": 3,
                           "model.item_neighbours.weight": 1.5})
    built = build_model(params)
    model = built.model.eval()
    nb = model.neighbours
    examples = _examples(built, params, "ctr")
    batch = collate(examples, built.backbone.tokenizer.pad_token_id)
    rows = torch.arange(batch.answer_rows.numel())
    with torch.no_grad():
        scores = model.answer_scores(batch, rows)
        items = model.item_vectors()
    for a, ex in enumerate(examples):
        history_ids = [i for k, i in enumerate(ex.item_ids) if k != ex.answer_slot]
        n = len(history_ids)
        with torch.no_grad():
            fused = model.fusion(torch.tensor(history_ids), torch.zeros(n, dtype=torch.bool)).float()
            if kind == "mean":  # by hand: the mean of the last history_skip_items other items
                summary = fused[-params.model.history_skip_items:].mean(0, keepdim=True)
            else:  # the reader over this row alone, read after its last item
                summary = model.user_head.history_reader(fused, torch.zeros(n, dtype=torch.long), torch.arange(n), 1,
                                                         torch.tensor([0]), torch.tensor([n]))
            # + β Σ_r decay^r f(h_r) over the 3 most recent other items (those with a trained ID)
            recent = history_ids[::-1][:3]
            block = 1.5 * sum((nb.decay ** r * nb.factors[i] * float(model.fusion.id_known[i])
                               for r, i in enumerate(recent)), torch.zeros(nb.dim))
            assert len(recent) < 2 or block.abs().sum() > 0
            user = model.user_head.history_vectors(torch.cat([summary, block.unsqueeze(0)], dim=-1))[0]
        expected = float(user @ items[ex.answer_item])
        assert abs(float(scores[a]) - expected) < 1e-4, (a, float(scores[a]), expected)


def test_recent_mean_without_the_answer_slot_matches_by_hand() -> None:
    fused = torch.arange(12, dtype=torch.float32).reshape(6, 2)  # 6 slots, H = 2
    item_rows, item_cols = torch.tensor([0, 0, 0, 1, 1, 1]), torch.tensor([1, 2, 5, 0, 3, 4])
    is_answer = torch.tensor([False, False, True, True, False, False])  # row 0: target last, row 1: first
    keep = ~is_answer
    out = recent_item_mean(fused[keep], item_rows[keep], item_cols[keep], 2, torch.tensor([0, 1]),
                           torch.tensor([9, 9]), window=5)
    assert torch.equal(out, torch.stack([fused[[0, 1]].mean(0), fused[[4, 5]].mean(0)]))


def test_prior_starts_at_zero_learns_and_reloads(model_params) -> None:
    params = model_params()
    with_prior = build_model(params)
    without = build_model(params.model_copy(update={"model": params.model.model_copy(
        update={"verbaliser_prior": False})}))
    assert without.model.verbaliser_prior is None and with_prior.model.verbaliser_prior is not None
    without.model.load_state_dict(with_prior.model.state_dict(), strict=False)
    batch = collate(_examples(with_prior, params, "ctr"), with_prior.backbone.tokenizer.pad_token_id)
    rows = torch.arange(batch.answer_rows.numel())
    for m in (with_prior.model, without.model):
        m.eval()
    with torch.no_grad():
        h = with_prior.model.hidden_states(batch)
        torch.testing.assert_close(with_prior.model.answer_logits(h, batch, "ctr", rows).float(),
                                   without.model.answer_logits(h, batch, "ctr", rows).float())
    model = with_prior.model.train()
    optimizer = torch.optim.Adam(model.verbaliser_prior.parameters(), lr=0.05)
    for _ in range(3):
        loss = model.losses(batch)["ctr"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert float(model.verbaliser_prior.scale["ctr"].detach().abs().sum()) > 0, "the prior scale did not learn"
    assert float(model.verbaliser_prior.scale["rating"].detach().abs().sum()) == 0  # no rating rows in the batch
    out = params.resolve(params.train.out_dir)
    save_artifacts(with_prior, params, out)
    model.eval()
    reloaded = load_trained(params, out).model
    with torch.no_grad():
        torch.testing.assert_close(reloaded.answer_logits(reloaded.hidden_states(batch), batch, "ctr", rows),
                                   model.answer_logits(model.hidden_states(batch), batch, "ctr", rows))
