"""`UniversalRecModel`: one LLM for every task — fused item vectors in, sets / verbalised answers / text out.

Forward pass (one per batch, whatever the tasks in it):
1. token embeddings `(B, T, H)`; every `[ITEM]` slot is replaced by `ItemFusion(item)` (non in-place,
   so gradients reach the fusion module);
2. the decoder (through PEFT/LoRA when enabled) → last hidden states `(B, T, H)` — the LM head is
   never applied to the whole sequence;
3. read-outs: `[UM]` slots → `SetQueryHead` → `(S, M, D)` user vectors; history slots of next-item
   rows → dense user vectors `(Q, 1, D)`; answer slots → verbaliser logits over K tokens; `[LM]`
   label slots → LM-head logits only there.

Losses per task: sampled softmax (in-batch + uniform negatives, log-Q) for retrieval (multi-positive for
set targets), softmax over the saved list for candidate_choice, verbaliser cross-entropy for ctr/rating,
next-token NLL for text/infill.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from components.model.batching import Batch
from components.model.fusion import ItemFusion
from components.model.heads import ItemProjection, SetQueryHead
from components.model.index import score_candidate_lists
from components.model.neighbours import ItemNeighbours
from components.model.objective import task_losses
from components.model.rating import RatingEstimator
from components.model.verbaliser import VerbaliserPrior, verbaliser_logits


class UniversalRecModel(nn.Module):
    def __init__(self, llm: nn.Module, fusion: ItemFusion, user_head: SetQueryHead, item_head: ItemProjection,
                 verbaliser_ids: dict[str, tuple[int, ...]], temperature: float, num_negatives: int,
                 item_log_prob: Tensor, special_ids: dict[str, int], full_softmax: bool = False,
                 history_window: int = 0, verbaliser_prior: VerbaliserPrior | None = None,
                 rating_estimator: RatingEstimator | None = None, neighbours: ItemNeighbours | None = None) -> None:
        super().__init__()
        if neighbours is not None and user_head.passthrough != neighbours.dim:
            raise ValueError(f"the user head passes {user_head.passthrough} columns through, the neighbourhood "
                             f"block has {neighbours.dim}")
        self.neighbours = neighbours  # model.item_neighbours: both vectors gain its block (neighbours.py)
        self.llm, self.fusion, self.user_head, self.item_head = llm, fusion, user_head, item_head
        # Trainable input rows of the special tokens ([ITEM], [UM], [LM]), kept apart from the frozen
        # (V, H) embedding matrix: they are only ever inputs, never predicted, so the LM head is untouched.
        ids = sorted(special_ids.values())
        self.register_buffer("special_token_ids", torch.tensor(ids, dtype=torch.long), persistent=False)
        table = self.causal_lm().get_input_embeddings().weight
        self.special_rows = nn.Parameter(table[ids].detach().clone().float())  # (S, H)
        self.temperature, self.num_negatives, self.full_softmax = temperature, num_negatives, full_softmax
        self.history_window = history_window
        self.verbaliser_prior = verbaliser_prior
        self.rating_estimator = rating_estimator
        self.answer_parts = frozenset({"lm", "prior"})  # what answer_logits adds up (ablations.py switches it)
        for task, ids in verbaliser_ids.items():
            self.register_buffer(f"verbaliser_{task}", torch.tensor(ids, dtype=torch.long), persistent=False)
        self.register_buffer("item_log_prob", item_log_prob.float(), persistent=False)  # (N,)

    # ------------------------------------------------------------------ pieces
    def causal_lm(self) -> nn.Module:
        """The underlying transformers causal LM (unwrapping PEFT)."""
        return self.llm.get_base_model() if hasattr(self.llm, "get_base_model") else self.llm

    def decoder(self) -> nn.Module:
        return self.causal_lm().get_decoder()

    def lm_head(self) -> nn.Module:
        return self.causal_lm().get_output_embeddings()

    @property
    def n_items(self) -> int:
        return self.fusion.n_items

    def item_vectors(self, item_ids: Tensor | None = None, drop_id: Tensor | bool | None = None) -> Tensor:
        """Output item vectors `(C, D)` of `item_ids` (all items when None).

        The output side reads the fused vectors through a stop-gradient: `ItemFusion` learns only from
        how the LLM uses items as inputs. With a shared gradient the retrieval loss's early pull of
        every output vector towards the (still user-independent) query direction also collapses the
        INPUT vectors — measured: pairwise cosine of fused inputs 0.26 at init → 0.9999 after 200
        steps, after which the LLM cannot tell items apart. `ItemProjection` learns the output map.
        """
        ids = torch.arange(self.n_items, device=self.fusion.id_known.device) if item_ids is None else item_ids
        return self.catalogue(ids, drop_id)[1]

    def catalogue(self, item_ids: Tensor | None = None, drop_id: Tensor | bool | None = None
                  ) -> tuple[Tensor, Tensor, Tensor]:
        """(fused input vectors `(C, H)` WITH gradient, output vectors `(C, D [+ 1])`, the ID mask `(C,)`) of
        `item_ids` (all items when None) from one fusion pass: one modality-dropout draw per item serves
        both sides (the collaborative warm-up reads a window's inputs as rows of it)."""
        ids = torch.arange(self.n_items, device=self.fusion.id_known.device) if item_ids is None else item_ids
        use_id = self.fusion.id_mask(ids, drop_id)  # one draw: the input and output ID rows share it
        fused = self.fusion(ids, use_id=use_id)
        out = self.item_head(fused.detach(), ids, use_id)
        if self.neighbours is not None:  # (C, D [+1] + k)
            out = torch.cat([out, self.neighbours.item_block(ids, use_id).to(out.dtype)], dim=-1)
        return fused, out, use_id

    def input_embeddings(self, batch: Batch) -> Tensor:
        """`(B, T, H)` token embeddings with the trainable special rows and the fused item vectors injected."""
        return self.embed(batch)[0]

    def embed(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """(`input_embeddings` `(B, T, H)`, the fused vectors `(P, H)` injected at the item slots)."""
        embeds = self.causal_lm().get_input_embeddings()(batch.input_ids)  # (B, T, H)
        is_special = batch.input_ids.unsqueeze(-1) == self.special_token_ids  # (B, T, S)
        if is_special.any():
            rows = is_special.any(-1)
            which = is_special.float().argmax(-1)[rows]
            embeds = embeds.index_put(rows.nonzero(as_tuple=True), self.special_rows[which].to(embeds.dtype))
        fused = embeds.new_zeros((0, embeds.shape[-1]))
        if batch.item_ids.numel():
            fused = self.fusion(batch.item_ids, batch.item_drop_id).to(embeds.dtype)  # (P, H)
            embeds = embeds.index_put((batch.item_rows, batch.item_cols), fused)
        return embeds, fused

    def encode(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """(last hidden states `(B, T, H)` of the decoder over the input embeddings, fused item inputs `(P, H)`)."""
        embeds, fused = self.embed(batch)
        out = self.decoder()(inputs_embeds=embeds, attention_mask=batch.attention_mask, use_cache=False)
        return out.last_hidden_state, fused

    def hidden_states(self, batch: Batch) -> Tensor:
        """Last hidden states `(B, T, H)` of the decoder over `input_embeddings(batch)`."""
        return self.encode(batch)[0]

    def recent_history(self, batch: Batch, fused: Tensor | None, rows: Tensor, cols: Tensor) -> Tensor | None:
        """`(R, E)` the history reader's summary of the HISTORY slots (`batch.item_is_history`: not candidates,
        not the asked-about item) at or before each read position (the mean fused input of the last
        `history_window` of them, or the causal encoder's output there), or None when the head has no history
        path. `fused` `(P, H)` of every item slot, None: recomputed (eval mode: deterministic)."""
        reader = self.user_head.history_reader
        if reader is None:
            return None
        if fused is None:
            fused = self.fusion(batch.item_ids, batch.item_drop_id) if batch.item_ids.numel() else \
                self.special_rows.new_zeros((0, self.fusion.hidden_size))
        keep = batch.item_is_history
        return self.history_summary(fused[keep].float(), batch.item_ids[keep], batch.item_rows[keep],
                                    batch.item_cols[keep], int(batch.input_ids.shape[0]), rows, cols,
                                    batch.item_drop_id[keep])

    def history_summary(self, fused: Tensor, ids: Tensor, item_rows: Tensor, item_cols: Tensor, n_rows: int,
                        read_rows: Tensor, read_cols: Tensor, drop_id: Tensor | None = None) -> Tensor:
        """What the user head's history path reads at each read position `(R, E [+ k])`: the history reader over
        the history slots (fused `(P, H)`, ids / rows / cols `(P,)` in (row, col) order, `drop_id` `(P,)` = entered
        content-only) and, with `model.item_neighbours`, the neighbourhood block appended (the head passes it through)."""
        known = self.known_ids(ids, drop_id)
        reader = self.user_head.history_reader
        out = reader(fused, item_rows, item_cols, n_rows, read_rows, read_cols)
        if self.neighbours is None:
            return out
        block = self.neighbours.user_block(known, item_rows, item_cols, n_rows, read_rows, read_cols)
        return torch.cat([out, block.to(out.dtype)], dim=-1)

    @contextmanager
    def without_neighbours(self) -> Iterator[ItemNeighbours | None]:
        """Within the block, the model has no item-neighbourhood term (`neighbours` None, the head passes nothing
        through): vectors are `(…, D [+ 1])` as without `model.item_neighbours`. Yields the detached term."""
        held, passthrough = self.neighbours, self.user_head.passthrough
        self.neighbours, self.user_head.passthrough = None, 0
        try:
            yield held
        finally:
            self.neighbours, self.user_head.passthrough = held, passthrough

    def known_ids(self, ids: Tensor, drop_id: Tensor | None = None) -> Tensor:
        """`ids` `(P,)` with -1 where the item has no trained ID or enters content-only (`drop_id` `(P,)`): what the
        item-neighbourhood factors of the history path read."""
        known = self.fusion.id_known[ids] if drop_id is None else self.fusion.id_known[ids] & ~drop_id
        return torch.where(known, ids, -1)

    @staticmethod
    def user_token_states(hidden: Tensor, batch: Batch) -> Tensor:
        """`(S, M, H)` hidden states of the `[UM]` slots of the set-out rows."""
        rows = batch.user_rows.unsqueeze(1).expand_as(batch.user_cols)
        return hidden[rows, batch.user_cols]

    def user_vectors(self, hidden: Tensor, batch: Batch, fused: Tensor | None = None,
                     gate: float | None = None) -> Tensor:
        """`(S, M, D)` user vectors of the set-out rows from their `[UM]` hidden states (+ recent history).

        The hidden-state part is scaled by the row task's `user_head.task_gate` (1 unless set after
        training), or by `gate` for every row when given (the validation sweep that chooses the gates)."""
        states = self.user_token_states(hidden, batch)  # (S, M, H)
        history = self.recent_history(batch, fused, batch.user_rows, batch.user_cols[:, 0]) \
            if batch.user_cols.numel() else None
        if gate is not None:
            scale = states.new_full((states.shape[0], 1, 1), float(gate))
        else:
            scale = self.user_head.gates_for([batch.tasks[int(batch.task_ids[int(r)])] for r in batch.user_rows])
        return self.user_head(states, None if history is None else history.unsqueeze(1).expand(-1, states.shape[1], -1),
                              scale)

    def verbaliser(self, task: str) -> Tensor:
        return getattr(self, f"verbaliser_{task}")

    def answer_logits(self, hidden: Tensor, batch: Batch, task: str, rows: Tensor, fused: Tensor | None = None) -> Tensor:
        """`(A, K)` verbaliser logits for the answer slots `rows` (indices into batch.answer_*), plus the
        collaborative prior when the model has one (rating with a `RatingEstimator`: read from r̂ − μ).
        `answer_parts` names the parts added up ("lm", "prior"; both unless an ablation switched one off)."""
        h = hidden[batch.answer_rows[rows], batch.answer_cols[rows]]
        head = self.lm_head()
        logits = verbaliser_logits(h, head.weight, self.verbaliser(task), getattr(head, "bias", None))
        if "lm" not in self.answer_parts:  # the `llm_off` ablation: the prior alone
            logits = torch.zeros_like(logits)
        if self.verbaliser_prior is None or "prior" not in self.answer_parts:
            return logits
        if task == "rating" and self.rating_estimator is not None:
            signal = self.rating_scores(batch, rows, fused) - self.rating_estimator.mean.detach()
        else:
            signal = self.answer_scores(batch, rows, fused)
        return logits.float() + self.verbaliser_prior(task, signal)

    @torch.no_grad()
    def rating_scores(self, batch: Batch, rows: Tensor, fused: Tensor | None = None) -> Tensor:
        """`(A,)` the rating estimate r̂ of each asked-about item (`RatingEstimator`): the rated history slots
        at or before the answer slot (`batch.item_ratings`), the item's bias and the history path's score.
        Item offsets use the deterministic ID mask (ID known, not dropped by the prompt)."""
        if self.rating_estimator is None:
            raise ValueError("rating_scores needs model.rating_prior_window > 0")
        if fused is None:
            fused = self.fusion(batch.item_ids, batch.item_drop_id) if batch.item_ids.numel() else \
                self.special_rows.new_zeros((0, self.fusion.hidden_size))
        known = self.fusion.id_known
        keep = batch.item_is_history
        ids = batch.item_ids[keep]
        asked = batch.answer_items[rows]
        affinity = self.answer_scores(batch, rows, fused)
        with torch.autocast(device_type=fused.device.type, enabled=False):  # a regression: float32 throughout
            asked_fused = self.fusion(asked, use_id=known[asked]).float()
            target_bias = self.rating_estimator.item_bias(asked_fused, asked, known[asked])
            return self.rating_estimator.from_slots(
                fused[keep].float(), ids, known[ids] & ~batch.item_drop_id[keep], batch.item_ratings[keep],
                batch.item_rows[keep], batch.item_cols[keep], int(batch.input_ids.shape[0]), batch.answer_rows[rows],
                batch.answer_cols[rows], target_bias, affinity)

    @torch.no_grad()
    def answer_scores(self, batch: Batch, rows: Tensor, fused: Tensor | None = None) -> Tensor:
        """`(A,)` next-item score of each asked-about item under the history path alone: the history
        reader over the row's history slots up to the answer slot → `user_head.history_vectors`, inner
        product with the item's output vector (cosine + item bias), as the collaborative warm-up trains it."""
        if self.user_head.history_reader is None:
            raise ValueError("answer_scores reads the history path: set model.history_skip_items > 0")
        history = self.recent_history(batch, fused, batch.answer_rows[rows], batch.answer_cols[rows])  # (A, E)
        users = self.user_head.history_vectors(history).float()  # (A, D [+ 1])
        items = self.output_vectors(batch.answer_items[rows]).float()  # (A, D [+ 1])
        return (users * items).sum(-1)

    # ------------------------------------------------------------------ training
    def losses(self, batch: Batch, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Per-task losses `{task: scalar}` of one batch, summed for the step loss (components/model/objective.py)."""
        return task_losses(self, batch, generator)

    def output_vectors(self, ids: Tensor) -> Tensor:
        """Output vectors `(C, D)` of `ids`. In training with `model.softmax: full` they are rows of ONE
        pass over the whole catalogue, so the item head's running statistics always see every item
        (scoring only a subset — a 20-item candidate list, the cold items — would shift them by task);
        in eval mode the statistics are fixed and only `ids` are computed (serving's ctr / rating path)."""
        if self.full_softmax and self.training:
            return self.item_vectors()[ids]
        return self.item_vectors(ids)

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def generate_ids(self, batch: Batch, max_new_tokens: int, eos_id: int) -> list[list[int]]:
        """Greedy text after `[LM]` for each row of a batch of prompts (encoded with `with_target=False`).

        Rows are decoded one at a time (no padding inside the prompt), with the KV cache of the LM.
        """
        embeds = self.input_embeddings(batch)  # (B, T, H)
        out: list[list[int]] = []
        for row in range(embeds.shape[0]):
            length = int(batch.attention_mask[row].sum())
            generated = self.llm.generate(inputs_embeds=embeds[row:row + 1, :length],
                                          attention_mask=batch.attention_mask[row:row + 1, :length],
                                          max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos_id,
                                          pad_token_id=eos_id)
            ids = generated[0].tolist()
            out.append(ids[: ids.index(eos_id)] if eos_id in ids else ids)
        return out

    @torch.no_grad()
    def score_candidates(self, batch: Batch) -> Tensor:
        """candidate_choice: `(S, C)` scores of each set-out row's saved candidate list."""
        hidden = self.hidden_states(batch)
        return score_candidate_lists(self.user_vectors(hidden, batch).float(), self.item_vectors().float(),
                                     batch.candidates)
