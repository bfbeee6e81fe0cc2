"""Prompt assembly and batching: [ITEM] slots, [UM] queries, dense targets, answer and label positions."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from components.model.backbone import load_backbone
from components.model.batching import collate
from components.model.prompting import encode_example, make_spec, tokenize_prompt


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from tests.conftest import params_in

    params = params_in(tmp_path_factory.mktemp("prompting"), {"backbone.source": "tiny"})
    backbone = load_backbone(params)
    spec = make_spec(backbone.tokenizer, backbone.special_ids, num_user_tokens=3, max_prompt_tokens=64,
                     max_target_tokens=8)
    return backbone, spec


def _row(task: str, prompt: str, **kw) -> dict:
    return {"task": task, "prompt": prompt, "target_items": kw.get("targets", []), "candidates": kw.get("cands", []),
            "target_text": kw.get("text"), "example_id": "x"}


def test_placeholders_become_single_item_slots(tiny) -> None:
    backbone, spec = tiny
    ids, items = tokenize_prompt("History: <item:5>, <item:12> then <item:5>.", backbone.tokenizer, spec.item_id)
    assert items == [5, 12, 5] and ids.count(spec.item_id) == 3


def test_next_item_has_um_tail_and_dense_targets(tiny) -> None:
    backbone, spec = tiny
    ex = encode_example(_row("next_item", "Seen <item:1>, <item:2>, <item:3>. Next?", targets=[9]),
                        backbone.tokenizer, spec)
    assert ex.input_ids[-3:] == [spec.user_id] * 3 and ex.user_positions == [len(ex.input_ids) - 3 + i for i in range(3)]
    assert ex.item_ids == [1, 2, 3] and [ex.input_ids[p] for p in ex.item_positions] == [spec.item_id] * 3
    assert ex.dense_positions == ex.item_positions and ex.dense_targets == [2, 3, 9] and ex.targets == [9]


def test_verbalised_answer_sits_at_the_last_prompt_token(tiny) -> None:
    backbone, spec = tiny
    ex = encode_example(_row("rating", "Rate <item:4>.", targets=[4], text="4"), backbone.tokenizer, spec)
    assert ex.answer_position == len(ex.input_ids) - 1 and ex.answer_index == 3 and not ex.user_positions
    with pytest.raises(ValueError, match="not one of"):
        encode_example(_row("ctr", "Click <item:4>?", targets=[4], text="maybe"), backbone.tokenizer, spec)


def test_text_labels_follow_lm_token(tiny) -> None:
    backbone, spec = tiny
    ex = encode_example(_row("text", "Describe <item:1>.", text="Comedy, Drama"), backbone.tokenizer, spec)
    lm = ex.input_ids.index(spec.lm_id)
    assert ex.label_positions[0] == lm and ex.labels[-1] == spec.eos_id
    # teacher forcing: the token at position p + 1 is the label of position p
    assert [ex.input_ids[p + 1] for p in ex.label_positions[:-1]] == ex.labels[:-1]


def test_long_prompts_are_cut_from_the_left_keeping_the_tail(tiny) -> None:
    backbone, spec = tiny
    prompt = "Items: " + ", ".join(f"<item:{i}>" for i in range(60)) + ". Next?"
    ex = encode_example(_row("next_item", prompt, targets=[99]), backbone.tokenizer, spec)
    assert len(ex.input_ids) == spec.max_prompt_tokens and ex.input_ids[-3:] == [spec.user_id] * 3
    assert ex.item_ids == list(range(60))[-len(ex.item_ids):] and ex.dense_targets[-1] == 99


@given(st.lists(st.tuples(st.sampled_from(["next_item", "ctr", "text", "candidate_choice"]),
                          st.lists(st.integers(0, 50), min_size=1, max_size=6)), min_size=1, max_size=6))
@settings(max_examples=40, deadline=None)
def test_collate_addresses_every_slot(tiny, rows) -> None:
    backbone, spec = tiny
    examples = []
    for task, items in rows:
        prompt = "Seen " + " ".join(f"<item:{i}>" for i in items) + "."
        kw = {"targets": [items[-1]], "text": "yes" if task == "ctr" else "Drama",
              "cands": list(range(20)) if task == "candidate_choice" else []}
        examples.append(encode_example(_row(task, prompt, **kw), backbone.tokenizer, spec))
    batch = collate(examples, backbone.tokenizer.pad_token_id)
    b, t = batch.input_ids.shape
    assert b == len(examples) and t == max(len(e.input_ids) for e in examples)
    assert (batch.input_ids[batch.item_rows, batch.item_cols] == spec.item_id).all()
    assert batch.item_ids.tolist() == [i for e in examples for i in e.item_ids]
    if batch.user_rows.numel():
        rows_ = batch.user_rows.unsqueeze(1).expand_as(batch.user_cols)
        assert (batch.input_ids[rows_, batch.user_cols] == spec.user_id).all()
    assert (batch.attention_mask[batch.label_rows, batch.label_cols] == 1).all()
    assert batch.attention_mask.sum(1).tolist() == [len(e.input_ids) for e in examples]


def test_history_slots_follow_history_start_through_the_left_cut(tiny) -> None:
    """Only the history run is what the history path reads: candidates written before or after it, and the
    asked-about item, are not history; a left cut keeps the flags of the kept slots."""
    backbone, spec = tiny
    cands = "".join(f"<item:{i}>" for i in (40, 41, 42))
    after = _row("candidate_choice", f"Seen <item:1><item:2>. Pick among {cands}.", targets=[41], cands=[40, 41, 42])
    ex = encode_example({**after, "history_start": 0, "n_history": 2}, backbone.tokenizer, spec)
    assert ex.history_slots == [True, True, False, False, False]
    before = _row("candidate_choice", f"Pick among {cands} for a user who saw <item:1><item:2>.", targets=[41],
                  cands=[40, 41, 42])
    ex = encode_example({**before, "history_start": 3, "n_history": 2}, backbone.tokenizer, spec)
    assert ex.history_slots == [False, False, False, True, True]
    ctr = encode_example({**_row("ctr", "Seen <item:1><item:2><item:3>. Click <item:9>?", targets=[9], text="yes"),
                          "history_start": 0, "n_history": 3}, backbone.tokenizer, spec)
    batch = collate([ctr], backbone.tokenizer.pad_token_id or 0)
    assert batch.item_is_history.tolist() == [True, True, True, False]  # the asked-about item is not history
    long = "Items: " + "".join(f"<item:{i}>" for i in range(120)) + " vs <item:500>."
    cut = encode_example({**_row("ctr", long + " Click?", targets=[500], text="no"), "history_start": 0,
                          "n_history": 120}, backbone.tokenizer, spec)
    assert len(cut.item_ids) < 121 and cut.history_slots == [True] * (len(cut.item_ids) - 1) + [False]
    with pytest.raises(ValueError, match="history_start 2 \\+ n_history 2 exceeds its 3"):
        encode_example({**after, "prompt": "Seen <item:1><item:2><item:3>.", "history_start": 2, "n_history": 2},
                       backbone.tokenizer, spec)
    hand_built = encode_example(after, backbone.tokenizer, spec)  # no history_start column: all slots history
    assert collate([hand_built], 0).item_is_history.all()
