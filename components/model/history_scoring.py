"""Scoring with the user head's history path alone (no LLM): the warm-up's validation scorer, and the choice of
the item-neighbourhood weight β on validation (`model.item_neighbours.weight_grid`)."""

from __future__ import annotations

import logging

import numpy as np
import torch

from components.evaluation.ranking import NextItemTask, evaluate_scorer
from components.model.modes import eval_mode
from components.model.universal import UniversalRecModel

log = logging.getLogger(__name__)


class HistoryPathScorer:
    """`NextItemScorer` of the history path alone: the history reader over a history's last
    `history_reader.context` items (read after the last one) → `user_head.history_vectors` · output item
    vectors (eval mode)."""

    def __init__(self, model: UniversalRecModel) -> None:
        self.model = model

    @torch.no_grad()
    def score_users(self, user_idx: np.ndarray, histories: list[np.ndarray]) -> np.ndarray:
        model = self.model
        window = model.user_head.history_reader.context
        with eval_mode(model):
            recent = [np.asarray(h[-window:], dtype=np.int64) for h in histories]
            ids = torch.from_numpy(np.concatenate(recent)) if recent else torch.empty(0, dtype=torch.long)
            fused = model.fusion(ids).float()  # (P, H)
            rows = torch.from_numpy(np.repeat(np.arange(len(recent)), [len(r) for r in recent]))
            cols = torch.from_numpy(np.concatenate([np.arange(len(r)) for r in recent])) if recent else rows
            last = torch.full((len(recent),), window, dtype=torch.long)  # read after every item of the row
            history = model.history_summary(fused, ids, rows, cols, len(recent), torch.arange(len(recent)), last)
            users = model.user_head.history_vectors(history).float()  # (U, D [+ 1])
            scores = users @ model.item_vectors().float().T  # (U, N)
        return scores.numpy()


def choose_neighbour_weight(model: UniversalRecModel, grid: list[float], valid: NextItemTask) -> list[list[float]]:
    """Set the item-neighbourhood β (`model.item_neighbours.weight_grid`) to the grid value with the best validation
    NDCG@10 of the history path (ties to the smaller β); returns [β, NDCG@10] per value."""
    scorer, curve = HistoryPathScorer(model), []
    for weight in sorted(grid):
        model.neighbours.weight.fill_(weight)
        curve.append([weight, evaluate_scorer(scorer, valid, ks=(10,), batch_size=512)["ndcg@10"]])  # type: ignore[arg-type]
        log.info("item-neighbourhood β %g: validation NDCG@10 %.4f", *curve[-1])
    model.neighbours.weight.fill_(max(curve, key=lambda c: (c[1], -c[0]))[0])
    return curve
