"""Prompt assembly: a textualised example → token ids with [ITEM] slots, [UM] queries and answer positions.

Each `<item:IDX>` placeholder of a rendered prompt becomes ONE `[ITEM]` token whose input embedding
the model replaces with the fused vector of item IDX. Then, by task family:

* set-out tasks (next_item, multi_objective, query, cold_start, long_tail, candidate_choice): M `[UM]`
  tokens are appended; their hidden states give the user vectors. For next_item the history is
  chronological, so every history slot also carries a dense target (the item that followed it): one
  sequence yields a retrieval target at every position, as SASRec/HSTU train.
* verbalised tasks (ctr, rating): the answer is scored from the LM-head logits at the LAST prompt
  position, restricted to the verbaliser tokens; the asked-about item and its slot are recorded
  (`answer_item`, `answer_slot`) for the collaborative prior (`verbaliser.VerbaliserPrior`).
* text tasks (text, infill): `[LM]` then the target tokens and EOS; next-token labels only there.

Over-long prompts are cut from the left (the question and the [UM] tokens at the end are kept).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import PreTrainedTokenizerBase

from components.textualize.registry import PLACEHOLDER_RE as PLACEHOLDER  # the one placeholder definition
from components.textualize.registry import SET_OUT_TASKS
from components.textualize.tasks import CTR_ANSWERS

VERBALISED_TASKS = ("ctr", "rating")
TEXT_TASKS = ("text", "infill")
DENSE_TASKS = ("next_item",)
VERBALISERS: dict[str, tuple[str, ...]] = {"ctr": (CTR_ANSWERS[1], CTR_ANSWERS[0]),
                                           "rating": ("1", "2", "3", "4", "5")}
"""Answer words per verbalised task (ctr: yes first, as `verbaliser.YES_INDEX`); textualize writes these."""


@dataclass(frozen=True)
class PromptSpec:
    """What assembly needs from the tokenizer and params."""

    item_id: int
    user_id: int
    lm_id: int
    eos_id: int
    num_user_tokens: int
    max_prompt_tokens: int
    max_target_tokens: int
    verbaliser_ids: dict[str, tuple[int, ...]]


@dataclass
class EncodedExample:
    """One example as token ids plus the positions the model reads (all positions index `input_ids`)."""

    task: str
    input_ids: list[int]
    item_positions: list[int] = field(default_factory=list)
    item_ids: list[int] = field(default_factory=list)
    user_positions: list[int] = field(default_factory=list)
    targets: list[int] = field(default_factory=list)
    candidates: list[int] = field(default_factory=list)
    dense_positions: list[int] = field(default_factory=list)
    dense_targets: list[int] = field(default_factory=list)
    answer_position: int = -1
    answer_index: int = -1
    answer_item: int = -1
    """ctr / rating: the item asked about (its `[ITEM]` slot, if kept, is `item_positions[answer_slot]`)."""
    answer_slot: int = -1
    """Index into `item_positions` of the asked-about item's slot (-1: cut off by the left truncation)."""
    label_positions: list[int] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    drop_id: bool = False
    history_slots: list[bool] = field(default_factory=list)
    """Per kept item slot: True when it belongs to the user's history (not a candidate, not the asked-about
    item) — the slots the user head's history path reads. Empty = every slot is history."""
    slot_ratings: list[float] = field(default_factory=list)
    """Per kept item slot: the user's rating the prompt writes next to it (`history_ratings` of a rated
    history), nan where none. Empty = no slot is rated."""


def verbaliser_token_ids(tokenizer: PreTrainedTokenizerBase) -> dict[str, tuple[int, ...]]:
    """One token id per verbaliser word, distinct within a task.

    Preference: the single token of " word" (how the answer follows the prompt), else the single token of
    "word", else the first token of "word"; the first rule that gives distinct ids for all words wins.
    """
    def pick(word: str, rule: int) -> int | None:
        spaced = tokenizer.encode(" " + word, add_special_tokens=False)
        bare = tokenizer.encode(word, add_special_tokens=False)
        if rule == 0:
            return spaced[0] if len(spaced) == 1 else None
        if rule == 1:
            return bare[0] if len(bare) == 1 else None
        return bare[0] if bare else None

    out: dict[str, tuple[int, ...]] = {}
    for task, words in VERBALISERS.items():
        for rule in range(3):
            ids = [pick(w, rule) for w in words]
            if None not in ids and len(set(ids)) == len(ids):
                out[task] = tuple(int(i) for i in ids)  # type: ignore[arg-type]
                break
        else:
            raise ValueError(f"verbaliser words {words} of task {task} do not map to distinct tokens")
    return out


def make_spec(tokenizer: PreTrainedTokenizerBase, special_ids: dict[str, int], num_user_tokens: int,
              max_prompt_tokens: int, max_target_tokens: int) -> PromptSpec:
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no EOS token")
    return PromptSpec(item_id=special_ids["item"], user_id=special_ids["user"], lm_id=special_ids["lm"],
                      eos_id=int(eos), num_user_tokens=num_user_tokens, max_prompt_tokens=max_prompt_tokens,
                      max_target_tokens=max_target_tokens, verbaliser_ids=verbaliser_token_ids(tokenizer))


def tokenize_prompt(text: str, tokenizer: PreTrainedTokenizerBase, item_token_id: int) -> tuple[list[int], list[int]]:
    """Token ids of `text` with each `<item:IDX>` as one [ITEM] id; returns (ids, item idx per [ITEM] slot)."""
    ids: list[int] = []
    items: list[int] = []
    cursor = 0
    for match in PLACEHOLDER.finditer(text):
        segment = text[cursor:match.start()]
        if segment:
            ids += tokenizer.encode(segment, add_special_tokens=False)
        ids.append(item_token_id)
        items.append(int(match.group(1)))
        cursor = match.end()
    if cursor < len(text):
        ids += tokenizer.encode(text[cursor:], add_special_tokens=False)
    return ids, items


def _ints(values: object) -> list[int]:
    """A list of ints from a Parquet list cell (numpy array, list or None)."""
    return [] if values is None else [int(v) for v in values]  # type: ignore[union-attr]


def _history_run(row: dict, n_items: int) -> tuple[int, int]:
    """(first history placeholder, history length) of a rendered row (`history_start`, `n_history` columns of
    textualize); a row without them (hand-built) counts every placeholder as history."""
    start, n_history = row.get("history_start"), row.get("n_history")
    if start is None or n_history is None or start != start or n_history != n_history:  # absent or NaN
        return 0, n_items
    start, n_history = int(start), int(n_history)
    if start < 0 or start + n_history > n_items:
        raise ValueError(f"example {row.get('example_id')}: history_start {start} + n_history {n_history} "
                         f"exceeds its {n_items} item placeholders")
    return start, n_history


def encode_example(row: dict, tokenizer: PreTrainedTokenizerBase, spec: PromptSpec,
                   with_target: bool = True) -> EncodedExample:
    """Encode one row of `data/examples/<task>/<split>.parquet` (see components/textualize).

    `with_target=False` leaves text tasks at `[LM]` (for generation) instead of teacher forcing the target.
    """
    task = str(row["task"])
    ids, items = tokenize_prompt(str(row["prompt"]), tokenizer, spec.item_id)
    targets = _ints(row.get("target_items"))
    tail: list[int] = []
    if task in SET_OUT_TASKS:
        tail = [spec.user_id] * spec.num_user_tokens
    elif task in TEXT_TASKS:
        tail = [spec.lm_id]
    budget = spec.max_prompt_tokens - len(tail)
    if budget < 1:
        raise ValueError(f"max_prompt_tokens {spec.max_prompt_tokens} leaves no room for the prompt")
    cut = max(0, len(ids) - budget)
    slots = [p for p, tok in enumerate(ids) if tok == spec.item_id]
    start, n_history = _history_run(row, len(items))
    kept = [(p - cut, item, start <= k < start + n_history) for k, (p, item) in enumerate(zip(slots, items)) if p >= cut]
    ids = ids[cut:] + tail
    ex = EncodedExample(task=task, input_ids=ids, item_positions=[p for p, _, _ in kept],
                        item_ids=[i for _, i, _ in kept], drop_id=task == "cold_start",
                        history_slots=[h for _, _, h in kept])
    shown = [float(r) for r in (row.get("history_ratings") if row.get("history_ratings") is not None else [])]
    if shown:
        if len(shown) != n_history:
            raise ValueError(f"example {row.get('example_id')}: {len(shown)} history_ratings for {n_history} "
                             "history items")
        ratings = [float("nan")] * len(items)
        ratings[start: start + n_history] = shown
        first_kept = len(slots) - len(kept)  # the left cut removes the first slots
        ex.slot_ratings = ratings[first_kept:]
    n_prompt = len(ids) - len(tail)
    if task in SET_OUT_TASKS:
        ex.user_positions = list(range(n_prompt, len(ids)))
        ex.targets = targets
        ex.candidates = _ints(row.get("candidates"))
        if task in DENSE_TASKS and targets and kept:
            sequence = [i for _, i, _ in kept] + [targets[0]]
            ex.dense_positions = [p for p, _, _ in kept]
            ex.dense_targets = sequence[1:]
    elif task in VERBALISED_TASKS:
        answer = str(row["target_text"]).strip()
        words = VERBALISERS[task]
        if answer not in words:
            raise ValueError(f"{task} example {row.get('example_id')}: answer {answer!r} is not one of {words}")
        ex.answer_position = n_prompt - 1
        ex.answer_index = words.index(answer)
        if len(targets) != 1:
            raise ValueError(f"{task} example {row.get('example_id')}: needs exactly one target item, got {targets}")
        ex.answer_item = targets[0]
        slots = [k for k, item in enumerate(ex.item_ids) if item == ex.answer_item]
        ex.answer_slot = slots[-1] if slots else -1  # templates name the target after the history, or once
    elif task in TEXT_TASKS and not with_target:
        pass
    elif task in TEXT_TASKS:
        target = tokenizer.encode(" " + str(row["target_text"]).strip(), add_special_tokens=False)
        target = target[: spec.max_target_tokens] + [spec.eos_id]
        start = len(ids) - 1  # the [LM] position predicts the first target token
        ex.input_ids = ids + target[:-1]
        ex.label_positions = list(range(start, start + len(target)))
        ex.labels = target
    else:
        raise ValueError(f"unknown task {task!r}")
    return ex
