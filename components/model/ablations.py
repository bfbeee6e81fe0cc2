"""Inference-time ablations of ONE loaded `UniversalRecModel`: context managers that switch a part off and
restore the model exactly on exit (nothing is re-loaded, nothing is re-trained).

| ablation | set-out tasks (user vectors) | ctr / rating (verbaliser logits) |
|---|---|---|
| `llm_off` | every task gate 0: the history path alone (`user_head.history_vectors` + the neighbourhood block) | the collaborative prior alone, without the LM-head logits (all 0) |
| `history_off` | the hidden-state path alone at gate 1: no history MLP offset, the neighbourhood block 0 | the LM-head logits alone, without the prior |
| `neighbours_off` | β = 0: `UniversalRecModel.without_neighbours` (no neighbourhood block on either side) | the same: the prior's history-path score without the block |
| `id_modality_off` | every item content-only: no ID, no collaborative modality, no output ID row, no neighbour factors | the same on the history slots and the asked-about item |

`llm_off`, `history_off` and `neighbours_off` act after the decoder (the decoder's inputs do not change), so they
can read the hidden states of the full model's pass (`SHARES_DECODER`); `id_modality_off` changes every fused
input and needs its own pass. Output item vectors must be recomputed inside the block (neighbours / IDs change them).
`history_off` runs at gate 1 whatever the task's selected gate: at gate 0 the hidden-state path would be empty.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

from components.model.universal import UniversalRecModel

FULL = "full"
"""The name of the unablated model's view."""
ABLATIONS = ("llm_off", "history_off", "neighbours_off", "id_modality_off")
SHARES_DECODER = {"llm_off": True, "history_off": True, "neighbours_off": True, "id_modality_off": False}


@contextmanager
def _gates(model: UniversalRecModel, value: float) -> Iterator[None]:
    held = model.user_head.task_gate.clone()
    model.user_head.task_gate.fill_(value)
    try:
        yield
    finally:
        model.user_head.task_gate.copy_(held)


@contextmanager
def _answer_parts(model: UniversalRecModel, parts: frozenset[str]) -> Iterator[None]:
    held = model.answer_parts
    model.answer_parts = parts
    try:
        yield
    finally:
        model.answer_parts = held


def _needs_history_path(model: UniversalRecModel, name: str) -> None:
    if model.user_head.history_reader is None:
        raise ValueError(f"ablation {name} needs the history path (model.history_skip_items > 0)")


@contextmanager
def llm_off(model: UniversalRecModel) -> Iterator[UniversalRecModel]:
    """Every hidden-state gate 0; ctr / rating answered by the verbaliser prior alone."""
    _needs_history_path(model, "llm_off")
    with _gates(model, 0.0), _answer_parts(model, frozenset({"prior"})):
        yield model


@contextmanager
def history_off(model: UniversalRecModel) -> Iterator[UniversalRecModel]:
    """The hidden-state path alone at gate 1 (no history offset, neighbourhood block 0); ctr / rating: LM logits alone."""
    _needs_history_path(model, "history_off")
    head = model.user_head
    with _gates(model, 1.0), _answer_parts(model, frozenset({"lm"})):
        head.history_on = False
        try:
            yield model
        finally:
            head.history_on = True


@contextmanager
def neighbours_off(model: UniversalRecModel) -> Iterator[UniversalRecModel]:
    """β = 0: the model without its item-neighbourhood term (a model without one is unchanged)."""
    with model.without_neighbours():
        yield model


@contextmanager
def id_modality_off(model: UniversalRecModel) -> Iterator[UniversalRecModel]:
    """Every item enters content-only: `fusion.id_known` all False, so no ID, collaborative or neighbourhood
    modality and no output ID row is read anywhere (what `drop_id=True` does for one item, for all of them)."""
    fusion = model.fusion
    held = fusion.id_known.clone()
    fusion.id_known.fill_(False)
    try:
        yield model
    finally:
        fusion.id_known.copy_(held)


SWITCHES: dict[str, Callable[[UniversalRecModel], AbstractContextManager]] = {
    "llm_off": llm_off, "history_off": history_off, "neighbours_off": neighbours_off,
    "id_modality_off": id_modality_off}


def ablation(model: UniversalRecModel, name: str) -> AbstractContextManager:
    """The context manager of ablation `name` (one of `ABLATIONS`, or `FULL`: no change) on `model`."""
    if name == FULL:
        return nullcontext(model)
    if name not in SWITCHES:
        raise ValueError(f"unknown ablation {name!r} (known: {list(ABLATIONS)})")
    return SWITCHES[name](model)
