"""Collaborative warm-up (`train.collab_warmup`): the item side and the user head's history path learn
next-item prediction from the training sequences, without the LLM, before LoRA training starts.

Why: the LLM path is the bottleneck of this CPU budget. With the same fusion, heads and loss, a user
vector read from the recent-history path alone reaches validation HR@10 0.15 / NDCG@10 0.082 after
600 steps of 128 windows (≈ 3 M next-item targets, ≈ 7 min here; measured: docs/experiments.md, "Collaborative warm-up"), while
LoRA training sees ~8 prompts a step at ~0.75 s a step. So the item representation (ID table, modality MLPs, output rows, item bias)
is first fitted the cheap way, as LLaRA / E4SRec / CoLLM start from collaborative item embeddings,
and the LLM then learns on top of meaningful item vectors. After the warm-up the hidden-state MLP of
the user head is silenced (`SetQueryHead.silence_hidden_path`), so LoRA training starts exactly at the
warm-up's user vectors and the LLM adds to them.

Trained here: `ItemFusion` (ID table, modality MLPs, output MLP), `SetQueryHead`'s history path (its
reader: the mean pool or the causal encoder, and its MLP), all of `ItemProjection`, and with
`rating_weight > 0` the `RatingEstimator` and the rating verbaliser prior. Untouched: the backbone/LoRA,
the special-token rows, the hidden-state path and the prompt-dependent bias factor (zero-initialised, so the
factor is 1 as in `history_vectors`).

One step: B windows (window ends drawn uniformly over all training interactions, seeded by step), each
the ≤ `max_len` items before its end; at every position t the user vector is `history_vectors(history
reader over the window's items ≤ t)`, the target the item at t + 1 (exactly the dense next-item read-out of
LoRA training); exact softmax over the whole catalogue. One fusion pass over the catalogue per step gives
both the output vectors and the windows' input vectors (one modality-dropout draw per item and step).
`rating_weight` adds the rating estimate's error on every rated target (components/model/rating.py).

Early stopping (`eval_every > 0`): every `eval_every` steps the history path ranks every item for each
validation user (history = the user's training sequence, train items excluded, the evaluator the SASRec
expert early-stops with: `evaluation.ranking.evaluate_scorer`); the state of the best validation NDCG@10
is kept and restored at the end, and the warm-up stops after `patience` evaluations without a better one.
`steps` is then an upper bound (and the length of the learning-rate schedule).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from components.evaluation.ranking import NextItemTask, evaluate_scorer
from components.config import CollabWarmupParams
from components.model.losses import sampled_softmax_loss
from components.model.history_scoring import HistoryPathScorer, choose_neighbour_weight
from components.model.rating import rating_loss
from components.model.universal import UniversalRecModel

log = logging.getLogger(__name__)


@dataclass
class WarmupReport:
    steps: int
    batch_size: int
    seconds: float
    targets: int
    """Next-item targets scored over the whole warm-up."""
    first_loss: float
    last_loss: float
    curve: list[list[float]] = field(default_factory=list)
    """[step, mean loss since the previous point] every `log_every` steps."""
    valid_curve: list[list[float]] = field(default_factory=list)
    """[step, validation NDCG@10] every `eval_every` steps (early stopping; empty when off)."""
    best_step: int | None = None
    """Step whose state was kept (early stopping), None when off."""
    neighbour_curve: list[list[float]] = field(default_factory=list)
    """[β, validation NDCG@10] of every `model.item_neighbours.weight_grid` value (empty when not chosen)."""
    neighbour_weight: float | None = None
    """β of the item-neighbourhood term after the warm-up (None without the term)."""

    def summary(self) -> str:
        text = (f"collab warm-up: {self.steps} steps × {self.batch_size} windows ({self.targets:,} targets) in "
                f"{self.seconds:.0f} s, loss {self.first_loss:.3f} -> {self.last_loss:.3f}")
        if self.best_step is not None:
            best = max(v for _, v in self.valid_curve)
            text += f", kept step {self.best_step} (validation NDCG@10 {best:.4f})"
        if self.neighbour_curve:
            text += (f"; item-neighbourhood β {self.neighbour_weight:g} (validation NDCG@10 "
                     f"{max(v for _, v in self.neighbour_curve):.4f})")
        return text


def _window_spans(lengths: np.ndarray, batch_size: int, max_len: int,
                  rng: np.random.Generator) -> tuple[np.ndarray, list[int]]:
    """(users `(B,)`, exclusive window ends): ends uniform over every interaction with a predecessor."""
    if max_len < 1 or not (lengths >= 2).any():
        raise ValueError("collab warm-up needs max_len >= 1 and at least one user with >= 2 training items")
    weights = np.clip(lengths - 1, 0, None).astype(np.float64)
    users = rng.choice(len(lengths), size=batch_size, p=weights / weights.sum())
    return users, [int(rng.integers(2, lengths[u] + 1)) for u in users]  # target = seq[end - 1]


def _cut(sequences: list[np.ndarray], users: np.ndarray, ends: list[int], max_len: int,
         fill: float) -> tuple[np.ndarray, np.ndarray]:
    """(inputs `(B, max_len)`, targets `(B, max_len)`) of each (user, end) window, `fill` on the right."""
    dtype = sequences[0].dtype if sequences else np.int64
    inputs = np.full((len(users), max_len), fill, dtype=dtype)
    targets = np.full((len(users), max_len), fill, dtype=dtype)
    for row, (u, end) in enumerate(zip(users, ends)):
        window = sequences[u][max(0, end - max_len - 1): end]
        inputs[row, : len(window) - 1] = window[:-1]
        targets[row, : len(window) - 1] = window[1:]
    return inputs, targets


def sample_windows(sequences: list[np.ndarray], batch_size: int, max_len: int,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(inputs `(B, L)`, targets `(B, L)`) int64, padded with -1 on the right; target[t] = item after input[t].

    Window ends are uniform over all interactions that have a predecessor in their sequence, so every
    training interaction is equally likely to be a target; L ≤ `max_len`.
    """
    users, ends = _window_spans(np.array([len(s) for s in sequences]), batch_size, max_len, rng)
    return _cut(sequences, users, ends, max_len, -1)


def sample_rated_windows(sequences: list[np.ndarray], ratings: list[np.ndarray], batch_size: int, max_len: int,
                         rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """`sample_windows` (the same windows for the same rng state) plus the ratings of the inputs and of the
    targets `(B, L)` float64, nan where padded or unrated."""
    users, ends = _window_spans(np.array([len(s) for s in sequences]), batch_size, max_len, rng)
    return (*_cut(sequences, users, ends, max_len, -1), *_cut(ratings, users, ends, max_len, np.nan))


def warmup_loss(model: UniversalRecModel, inputs: torch.Tensor, targets: torch.Tensor,
                ratings: tuple[torch.Tensor, torch.Tensor] | None = None,
                rating_weight: float = 0.0) -> tuple[torch.Tensor, int]:
    """(full-softmax next-item loss of the history path over one batch of windows `(B, L)`, #targets).

    With `ratings` (the inputs' and the targets' ratings `(B, L)`, nan = none) and `rating_weight` > 0 it adds
    `rating_weight` × the rating estimate's loss at every position (`rating_loss`)."""
    valid = inputs >= 0
    rows, cols = valid.nonzero(as_tuple=True)  # (P,) each, row-major = the (row, col) order of `collate`
    # one fusion pass over the catalogue (one modality-dropout draw per item and step) serves the inputs too:
    # ~N instead of N + B·L fused vectors a step
    fused_all, item_vecs, use_id = model.catalogue()  # (N, H), (N, D [+1]), (N,)
    fused = fused_all[inputs[valid]]  # (P, H)
    history = model.history_summary(fused.float(), inputs[valid], rows, cols, int(inputs.shape[0]), rows, cols)
    users = model.user_head.history_vectors(history).unsqueeze(1)  # (P, 1, D [+1])
    ids = torch.arange(model.n_items, device=inputs.device)
    log_q = torch.zeros(model.n_items, device=inputs.device)
    loss = sampled_softmax_loss(users, targets[valid], ids, item_vecs, log_q, model.temperature)
    if ratings is not None and rating_weight > 0:
        affinity = (users.squeeze(1) * item_vecs[targets[valid]]).sum(-1).detach()  # (P,) the history path's s
        loss = loss + rating_weight * rating_loss(model, inputs, targets, fused_all, use_id, ratings, affinity)
    return loss, int(rows.numel())


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Learning-rate multiplier at `step`: linear warm-up over `warmup` steps, then cosine decay to 10 % at `total`."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def warmup_parameters(model: UniversalRecModel, with_prior: bool = False) -> list[torch.nn.Parameter]:
    """What the warm-up fits: fusion, the history path, the item head, the rating estimate, and with
    `with_prior` the rating verbaliser prior's scale and offset (LoRA training keeps those in their own group)."""
    head = model.user_head
    if head.history_mlp is None:
        raise ValueError("train.collab_warmup.steps > 0 needs the user head's history path "
                         "(model.history_skip_items > 0)")
    modules = [model.fusion, head.history_reader, head.history_mlp, model.item_head]
    if model.rating_estimator is not None:
        modules.append(model.rating_estimator)
    params = [p for m in modules for p in m.parameters() if p.requires_grad]
    prior = model.verbaliser_prior
    if with_prior and model.rating_estimator is not None and prior is not None and "rating" in prior.scale:
        params += [prior.scale["rating"], prior.offset["rating"]]
    return params


def _warmup_state(model: UniversalRecModel) -> dict[str, torch.Tensor]:
    """Copies of everything the warm-up changes: fusion, the history path (+ its statistics), the item head."""
    prefixes = ("fusion.", "user_head.history_", "item_head.", "rating_estimator.", "verbaliser_prior.")
    return {k: v.detach().clone() for k, v in model.state_dict().items() if k.startswith(prefixes)}


def collab_warmup(model: UniversalRecModel, sequences: list[np.ndarray], cfg: CollabWarmupParams, seed: int,
                  log_every: int = 10, valid: NextItemTask | None = None,
                  ratings: list[np.ndarray] | None = None, neighbour_grid: list[float] | None = None) -> WarmupReport:
    """Run the warm-up in place on `model` (training mode) and silence the head's hidden-state path.

    With `cfg.eval_every > 0`, `valid` (the validation next-item rows) drives early stopping (module docstring).
    `ratings` (aligned with `sequences`, nan = unrated) feed the rating estimate when `cfg.rating_weight > 0`.
    With the item-neighbourhood term (`model.neighbours`) the neural path is fitted without it
    (`UniversalRecModel.without_neighbours`) and β is then chosen on `valid` from `neighbour_grid`
    (`model.item_neighbours.weight_grid`; empty or None: β is kept).
    """
    if model.neighbours is not None:
        if neighbour_grid and valid is None:
            raise ValueError("model.item_neighbours.weight_grid needs the validation rows (valid)")
        with model.without_neighbours():  # the targets are in the factors: the neural path is fitted without them
            report = collab_warmup(model, sequences, cfg, seed, log_every, valid, ratings)
        if neighbour_grid:
            report.neighbour_curve = choose_neighbour_weight(model, neighbour_grid, valid)  # type: ignore[arg-type]
        report.neighbour_weight = float(model.neighbours.weight)
        return report
    if cfg.eval_every and valid is None:
        raise ValueError("train.collab_warmup.eval_every > 0 needs the validation rows (valid)")
    if cfg.rating_weight and ratings is None:
        raise ValueError("train.collab_warmup.rating_weight > 0 needs the training ratings")
    start = time.perf_counter()
    params = warmup_parameters(model, with_prior=bool(cfg.rating_weight))
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, cfg.warmup_steps, cfg.steps))
    model.train()
    points: list[list[float]] = []
    pending: list[float] = []
    total_targets = 0
    valid_curve: list[list[float]] = []
    best: tuple[float, int, dict[str, torch.Tensor]] | None = None
    since_best = 0  # evaluations since the best one
    scorer = HistoryPathScorer(model)
    bar = tqdm(range(cfg.steps), desc="collab warm-up", unit="step", mininterval=2.0)
    for step in bar:
        rng = np.random.default_rng([seed, 7, step])
        torch.manual_seed(seed * 1_000_003 + 7_919 * step + 1)  # modality dropout of step k: a function of k
        rated = None
        if cfg.rating_weight:
            inputs, targets, in_r, out_r = sample_rated_windows(sequences, ratings, cfg.batch_size, cfg.max_len, rng)
            rated = (torch.from_numpy(in_r), torch.from_numpy(out_r))
        else:
            inputs, targets = sample_windows(sequences, cfg.batch_size, cfg.max_len, rng)
        loss, n_targets = warmup_loss(model, torch.from_numpy(inputs), torch.from_numpy(targets), rated,
                                      cfg.rating_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        total_targets += n_targets
        pending.append(float(loss.detach()))
        if (step + 1) % log_every == 0 or step + 1 == cfg.steps:
            points.append([step + 1, sum(pending) / len(pending)])
            bar.set_postfix(loss=f"{points[-1][1]:.3f}")
            pending = []
        if cfg.eval_every and ((step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps):
            ndcg = evaluate_scorer(scorer, valid, ks=(10,), batch_size=512)["ndcg@10"]  # type: ignore[arg-type]
            valid_curve.append([step + 1, ndcg])
            log.info("collab warm-up step %d: validation NDCG@10 %.4f", step + 1, ndcg)
            if best is None or ndcg > best[0]:
                best, since_best = (ndcg, step + 1, _warmup_state(model)), 0
            elif (since_best := since_best + 1) >= cfg.patience:
                log.info("collab warm-up: no better validation NDCG@10 for %d evaluations, stopping", cfg.patience)
                break
    if best is not None:
        model.load_state_dict(best[2], strict=False)
    model.user_head.silence_hidden_path()
    seconds = time.perf_counter() - start
    first = points[0][1] if points else float("nan")
    report = WarmupReport(steps=step + 1 if cfg.steps else 0, batch_size=cfg.batch_size, seconds=seconds,
                          targets=total_targets, first_loss=first, last_loss=points[-1][1] if points else float("nan"),
                          curve=points, valid_curve=valid_curve, best_step=best[1] if best else None)
    log.info(report.summary())
    return report
