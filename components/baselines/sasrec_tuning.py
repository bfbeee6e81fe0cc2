"""Expert `sasrec`: SASRec trained on every prefix with full cross-entropy, tuned on validation only.

Each configuration of `baselines.sasrec.grid` (dropout × max length × hidden width; the rest as
`baselines.sasrec`) is one `SasrecRun`: the model, its Adam state, its own batch-order generator and its own
copy of torch's global RNG state (dropout), so a configuration trains exactly as it would alone, whatever
else is interleaved with it. Every epoch is followed by the validation NDCG@eval_k (full ranking, train items
excluded); a run stops after `patience` epochs without a better one and keeps its best epoch's weights.

Budget (successive halving, validation only): all configurations train to the first epoch of
`halving_epochs`; the best ceil(n / halving_eta) by their best validation NDCG so far continue to the next
one, and so on; the survivors train to early stopping (or `max_epochs`). The chosen configuration is the
survivor with the best validation NDCG (ties: the earlier grid point). `halving_epochs: []` trains every
configuration to early stopping.

Batches hold `batch_targets` targets (`cfg.batch_size` of a grid point): each epoch the windows are sorted by
(real length, a fresh seeded random key) and packed until a batch holds that many counted positions; batch order
is shuffled, and each batch is trimmed to its longest window (exact: right padding and causal attention, so no
real position sees padding). Every configuration so makes the same number of updates per epoch, whatever its
max length, and successive halving compares them at equal numbers of updates.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from components.baselines.common import TrainHistory, config_key, grid_points, log
from components.baselines.sasrec import SASRec, prefix_windows
from components.config import SasrecParams, SasrecTunedParams
from components.evaluation.ranking import NextItemTask, evaluate_scorer


class SasrecRun:
    """One grid configuration trained epoch by epoch with early stopping on validation NDCG@eval_k."""

    def __init__(self, config: dict[str, Any], cfg: SasrecParams, windows: tuple[torch.Tensor, ...], n_items: int,
                 valid: NextItemTask, eval_k: int, seed: int) -> None:
        self.cfg, self.windows, self.valid, self.eval_k = cfg, windows, valid, eval_k
        torch.manual_seed(seed)
        self.model = SASRec(n_items, cfg)
        self.rng_state = torch.get_rng_state()
        self.gen = torch.Generator().manual_seed(seed)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=cfg.lr)
        self.config, self.pruned_at = config, None
        self.record = TrainHistory(monitor=f"valid_ndcg@{eval_k}", higher_is_better=True, best_value=float("-inf"))
        self.best_state = copy.deepcopy(self.model.state_dict())
        self.targets_per_window = windows[2].sum(1).numpy()

    @property
    def finished(self) -> bool:
        return self.record.stopped_early or self.record.epochs >= self.cfg.max_epochs

    def batches(self) -> list[torch.Tensor]:
        """This epoch's batches of window indices (length-sorted, packed by targets), in shuffled order."""
        lengths = self.windows[3].numpy()
        keys = torch.rand(len(lengths), generator=self.gen).numpy()
        order = np.lexsort((keys, lengths))  # by length, random among equal lengths
        counts = self.targets_per_window[order]
        batch_of = (np.cumsum(counts) - counts) // self.cfg.batch_size
        cuts = np.flatnonzero(np.diff(batch_of)) + 1
        return [torch.as_tensor(b) for b in np.split(order, cuts)]

    def _epoch(self) -> float:
        inputs, targets, mask, lengths = self.windows
        batches = self.batches()
        total, count = 0.0, 0
        for b in torch.randperm(len(batches), generator=self.gen).tolist():
            rows = batches[b]
            width = int(lengths[rows].max())
            m = mask[rows, :width]
            hidden = self.model.encode(inputs[rows, :width])[m]
            loss = F.cross_entropy(self.model.logits(hidden), targets[rows, :width][m])
            self.opt.zero_grad()
            loss.backward()
            self.opt.step()
            total, count = total + loss.item() * int(m.sum()), count + int(m.sum())
        return total / max(count, 1)

    def train_until(self, epoch: int) -> None:
        """Train (restoring this run's RNG state) until `epoch`, early stopping or max_epochs."""
        torch.set_rng_state(self.rng_state)
        start, rec = time.perf_counter(), self.record
        while not self.finished and rec.epochs < epoch:
            self.model.train()
            rec.train_loss.append(self._epoch())
            value = evaluate_scorer(self.model, self.valid, (self.eval_k,), self.cfg.eval_batch_size)[
                f"ndcg@{self.eval_k}"]
            rec.curve.append(value)
            rec.epochs += 1
            if value > rec.best_value:
                rec.best_epoch, rec.best_value = rec.epochs, value
                self.best_state = copy.deepcopy(self.model.state_dict())
            elif rec.epochs - rec.best_epoch >= self.cfg.patience:
                rec.stopped_early = True
            log.info("sasrec %s epoch %d: loss %.4f, valid ndcg@%d %.4f", config_key(self.config), rec.epochs,
                     rec.train_loss[-1], self.eval_k, value)
        self.rng_state = torch.get_rng_state()
        rec.wall_s += time.perf_counter() - start

    def best_model(self) -> SASRec:
        self.model.load_state_dict(self.best_state)
        return self.model.eval()


def _rank(runs: Sequence[SasrecRun]) -> list[SasrecRun]:
    """Best validation NDCG first; ties to the earlier grid point."""
    return sorted(runs, key=lambda r: -r.record.best_value)


def tune_sasrec(sequences: Sequence[np.ndarray], n_items: int, valid: NextItemTask, cfg: SasrecTunedParams,
                eval_k: int, seed: int) -> tuple[SASRec, SasrecParams, dict[str, Any]]:
    """Successive halving over `cfg.grid` on validation; → the chosen model, its configuration and the report."""
    start = time.perf_counter()
    points = grid_points(cfg.grid)
    windows: dict[int, tuple[torch.Tensor, ...]] = {}
    runs = []
    for point in points:
        arch = cfg.config(**point)
        if arch.max_len not in windows:
            windows[arch.max_len] = prefix_windows(sequences, arch.max_len, arch.train_stride)
        runs.append(SasrecRun(point, arch, windows[arch.max_len], n_items, valid, eval_k, seed))
    active = list(runs)
    for rung in cfg.halving_epochs:
        for run in active:
            run.train_until(rung)
        keep = _rank(active)[:math.ceil(len(active) / cfg.halving_eta)]
        for run in active:
            if run not in keep:
                run.pruned_at = rung
        active = [r for r in runs if r in keep]
    for run in active:
        run.train_until(cfg.max_epochs)
    chosen = _rank(active)[0]
    report = {
        "monitor": f"valid_ndcg@{eval_k}", "selection": "successive halving" if cfg.halving_epochs else "full grid",
        "halving_epochs": list(cfg.halving_epochs), "halving_eta": cfg.halving_eta,
        "windows": {str(k): {"windows": int(len(w[0])), "positions": int(w[3].sum())} for k, w in windows.items()},
        "grid": {config_key(r.config): {"config": r.config, "pruned_at": r.pruned_at, **asdict(r.record)}
                 for r in runs},
        "chosen": config_key(chosen.config), "chosen_config": chosen.cfg.model_dump(),
        **{k: getattr(chosen.record, k) for k in ("curve", "train_loss", "epochs", "best_epoch", "best_value",
                                                 "stopped_early")},
        "grid_wall_s": time.perf_counter() - start,
    }
    return chosen.best_model(), chosen.cfg, report
