"""Biased matrix factorisation for rating prediction: r̂(u, i) = μ + b_u + b_i + p_u · q_i.

Trained with Adam on the MSE of `rating_train.parquet` plus an L2 penalty on the biases and factors
of each batch's users and items; early-stopped on the RMSE of `rating_valid.parquet`; predictions
are clipped to the valid rating range (`validate.rating_min`..`rating_max`). `tune_mf` trains every
configuration of `baselines.mf.grid` (dim × l2 × lr) that way and keeps the lowest validation RMSE.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from components.baselines.common import (TrainHistory, best_config, config_key, fit_early_stopping, grid_points,
                                        minibatch_epoch, seed_everything)
from components.baselines.rating import errors_of
from components.config import MfParams


class BiasedMF(nn.Module):
    """Biased MF over `n_users` × `n_items`; `global_mean` is the train mean rating (a buffer)."""

    def __init__(self, n_users: int, n_items: int, cfg: MfParams, global_mean: float,
                 rating_range: tuple[float, float]) -> None:
        super().__init__()
        self.user_factors = nn.Embedding(n_users, cfg.dim)
        self.item_factors = nn.Embedding(n_items, cfg.dim)
        self.user_bias = nn.Embedding(n_users, 1)
        self.item_bias = nn.Embedding(n_items, 1)
        for emb in (self.user_factors, self.item_factors):
            nn.init.normal_(emb.weight, 0.0, cfg.init_std)
        for emb in (self.user_bias, self.item_bias):
            nn.init.zeros_(emb.weight)
        self.register_buffer("global_mean", torch.tensor(float(global_mean)))
        self.register_buffer("rating_range", torch.tensor(rating_range, dtype=torch.float32))

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """users (B,), items (B,) long → unclipped predicted ratings (B,)."""
        dot = (self.user_factors(users) * self.item_factors(items)).sum(-1)
        return self.global_mean + self.user_bias(users)[:, 0] + self.item_bias(items)[:, 0] + dot

    def penalty(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Mean over the batch of ‖p_u‖² + ‖q_i‖² + b_u² + b_i² → scalar."""
        parts = (self.user_factors(users), self.item_factors(items), self.user_bias(users), self.item_bias(items))
        return sum(p.pow(2).sum(-1) for p in parts).mean()

    def predict(self, user_idx: np.ndarray, item_idx: np.ndarray) -> np.ndarray:
        """user_idx (E,), item_idx (E,) → float32 ratings (E,), clipped to the rating range."""
        was_training = self.training
        self.eval()
        with torch.no_grad():
            out = self(torch.tensor(np.asarray(user_idx, dtype=np.int64)),
                       torch.tensor(np.asarray(item_idx, dtype=np.int64)))
            out = out.clamp(float(self.rating_range[0]), float(self.rating_range[1]))
        self.train(was_training)
        return out.numpy()


def rating_errors(model: BiasedMF, frame: pd.DataFrame) -> dict[str, float]:
    """RMSE and MAE of `model` on a frame with user_idx, item_idx, rating."""
    return errors_of(model.predict(frame["user_idx"].to_numpy(), frame["item_idx"].to_numpy()), frame)


def fit_mf(train: pd.DataFrame, valid: pd.DataFrame, n_users: int, n_items: int, cfg: MfParams,
           rating_range: tuple[float, float], seed: int) -> tuple[BiasedMF, TrainHistory]:
    """Train on `train` (user_idx, item_idx, rating), early-stop on `valid` RMSE; best epoch restored."""
    gen = seed_everything(seed)
    ratings = torch.tensor(train["rating"].to_numpy(dtype=np.float32))
    users = torch.tensor(train["user_idx"].to_numpy(dtype=np.int64))
    items = torch.tensor(train["item_idx"].to_numpy(dtype=np.int64))
    model = BiasedMF(n_users, n_items, cfg, float(ratings.mean()), rating_range)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)

    def batch_loss(batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        u, i = users[batch], items[batch]
        mse = (model(u, i) - ratings[batch]).pow(2).mean()
        return mse + cfg.l2 * model.penalty(u, i), mse

    def train_epoch(epoch: int) -> float:
        return minibatch_epoch(len(ratings), cfg.batch_size, gen, opt, batch_loss)

    def validate() -> float:
        return rating_errors(model, valid)["rmse"]

    history = fit_early_stopping(model, train_epoch, validate, monitor="valid_rmse", higher_is_better=False,
                                 max_epochs=cfg.max_epochs, patience=cfg.patience)
    return model, history


def tune_mf(train: pd.DataFrame, valid: pd.DataFrame, n_users: int, n_items: int, cfg: MfParams,
            rating_range: tuple[float, float], seed: int) -> tuple[BiasedMF, MfParams, dict[str, Any]]:
    """`fit_mf` for every grid point (`cfg.grid`; None = cfg alone) → the lowest validation RMSE, its configuration
    and the report."""
    fits: dict[str, tuple[BiasedMF, MfParams, TrainHistory]] = {}
    for point in grid_points(cfg.grid) if cfg.grid is not None else [{}]:
        point_cfg = cfg.model_copy(update={**point, "grid": None})
        model, history = fit_mf(train, valid, n_users, n_items, point_cfg, rating_range, seed)
        fits[config_key(point) or "default"] = (model, point_cfg, history)
    chosen = best_config({k: h.best_value for k, (_, _, h) in fits.items()}, higher_is_better=False)
    model, chosen_cfg, history = fits[chosen]
    report = {"grid": {k: {"best_value": h.best_value, "best_epoch": h.best_epoch, "epochs": h.epochs,
                           "wall_s": h.wall_s} for k, (_, _, h) in fits.items()},
              "chosen": chosen, "chosen_config": chosen_cfg.model_dump(), **asdict(history)}
    return model, chosen_cfg, report
