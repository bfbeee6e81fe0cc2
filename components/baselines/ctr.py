"""CTR expert: logistic regression on one-hot features and crosses (`baselines.ctr.model: logistic_crosses`).

logit(u, i) = w₀ + w_user[u] + w_item[i] + w_pop[bucket(i)] + Σ_g genre(i, g) · w_cross[u, g]

* user and item one-hots (index = user_idx / item_idx);
* user × item-genre crosses: genres are the `categories` of data/canonical/items.parquet (row `idx`);
* item popularity bucket: quantiles of log(1 + train count) over the items seen in train.parquet,
  bucket 0 = never trained on (e.g. cold items).
Chosen over DeepFM because the saved CTR negatives are uniform non-interacted items, so popularity
and per-user genre taste carry most of the signal, and a linear model trains in seconds on CPU.
Trained with Adam on the log loss of ctr_train.parquet plus L2 on the weights each batch uses;
early-stopped on the AUC of ctr_valid.parquet.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from sklearn.metrics import log_loss, roc_auc_score
from torch import nn

from components.baselines.common import TrainHistory, fit_early_stopping, minibatch_epoch, seed_everything
from components.config import CtrParams


def genre_matrix(items: pd.DataFrame, n_items: int) -> tuple[np.ndarray, list[str]]:
    """Canonical items (idx, categories) → multi-hot (N, G) float32 and the sorted genre names."""
    names = sorted({str(c) for cats in items["categories"] if cats is not None for c in cats})
    col = {g: j for j, g in enumerate(names)}
    out = np.zeros((n_items, len(names)), dtype=np.float32)
    for idx, cats in zip(items["idx"].to_numpy(), items["categories"]):
        for c in ([] if cats is None else cats):
            out[int(idx), col[str(c)]] = 1.0
    return out, names


def popularity_buckets(counts: np.ndarray, n_buckets: int) -> np.ndarray:
    """Train counts (N,) → bucket (N,) int64: 0 for count 0, else 1..n_buckets by log-count quantile."""
    counts = np.asarray(counts, dtype=np.int64)
    seen = np.log1p(counts[counts > 0].astype(np.float64))
    if len(seen) == 0:
        return np.zeros(len(counts), dtype=np.int64)
    edges = np.quantile(seen, np.linspace(0.0, 1.0, n_buckets + 1)[1:-1])
    bucket = np.searchsorted(edges, np.log1p(counts.astype(np.float64)), side="right") + 1
    return np.where(counts > 0, bucket, 0).astype(np.int64)


class LogisticCrosses(nn.Module):
    """Logistic regression on user, item, popularity-bucket one-hots and user × genre crosses."""

    def __init__(self, n_users: int, genres: np.ndarray, buckets: np.ndarray, n_buckets: int) -> None:
        super().__init__()
        n_items, n_genres = genres.shape
        self.bias = nn.Parameter(torch.zeros(1))
        self.user_w = nn.Embedding(n_users, 1)
        self.item_w = nn.Embedding(n_items, 1)
        self.pop_w = nn.Embedding(n_buckets + 1, 1)
        self.cross_w = nn.Embedding(n_users, max(n_genres, 1))
        for emb in (self.user_w, self.item_w, self.pop_w, self.cross_w):
            nn.init.zeros_(emb.weight)
        self.register_buffer("genres", torch.tensor(genres if n_genres else np.zeros((n_items, 1), np.float32)))
        self.register_buffer("buckets", torch.tensor(buckets, dtype=torch.long))

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """users (B,), items (B,) long → logits (B,)."""
        cross = (self.cross_w(users) * self.genres[items]).sum(-1)
        return (self.bias + self.user_w(users)[:, 0] + self.item_w(items)[:, 0]
                + self.pop_w(self.buckets[items])[:, 0] + cross)

    def penalty(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Mean over the batch of the squared weights the examples use → scalar."""
        used = (self.user_w(users)[:, 0] ** 2 + self.item_w(items)[:, 0] ** 2
                + self.pop_w(self.buckets[items])[:, 0] ** 2 + (self.cross_w(users) ** 2 * self.genres[items]).sum(-1))
        return used.mean()

    def predict_proba(self, user_idx: np.ndarray, item_idx: np.ndarray) -> np.ndarray:
        """user_idx (E,), item_idx (E,) → float64 click probabilities (E,)."""
        was_training = self.training
        self.eval()
        with torch.no_grad():
            logits = self(torch.tensor(np.asarray(user_idx, dtype=np.int64)),
                          torch.tensor(np.asarray(item_idx, dtype=np.int64)))
        self.train(was_training)
        return torch.sigmoid(logits.double()).numpy()


def ctr_metrics(model: LogisticCrosses, frame: pd.DataFrame) -> dict[str, float]:
    """AUC and log loss of `model` on a frame with user_idx, item_idx, label."""
    p = model.predict_proba(frame["user_idx"].to_numpy(), frame["item_idx"].to_numpy())
    y = frame["label"].to_numpy()
    auc = float(roc_auc_score(y, p)) if len(np.unique(y)) == 2 else float("nan")
    return {"auc": auc, "logloss": float(log_loss(y, p, labels=[0, 1])), "n": int(len(y))}


def fit_ctr(train: pd.DataFrame, valid: pd.DataFrame, n_users: int, genres: np.ndarray, item_counts: np.ndarray,
            cfg: CtrParams, seed: int) -> tuple[LogisticCrosses, TrainHistory]:
    """Train on `train` (user_idx, item_idx, label), early-stop on `valid` AUC; best epoch restored."""
    gen = seed_everything(seed)
    model = LogisticCrosses(n_users, genres, popularity_buckets(item_counts, cfg.popularity_buckets),
                            cfg.popularity_buckets)
    users = torch.tensor(train["user_idx"].to_numpy(dtype=np.int64))
    items = torch.tensor(train["item_idx"].to_numpy(dtype=np.int64))
    labels = torch.tensor(train["label"].to_numpy(dtype=np.float32))
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)

    def batch_loss(batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        u, i = users[batch], items[batch]
        bce = F.binary_cross_entropy_with_logits(model(u, i), labels[batch])
        return bce + cfg.l2 * model.penalty(u, i), bce

    def train_epoch(epoch: int) -> float:
        return minibatch_epoch(len(labels), cfg.batch_size, gen, opt, batch_loss)

    def validate() -> float:
        return ctr_metrics(model, valid)["auc"]

    history = fit_early_stopping(model, train_epoch, validate, monitor="valid_auc", higher_is_better=True,
                                 max_epochs=cfg.max_epochs, patience=cfg.patience)
    return model, history
