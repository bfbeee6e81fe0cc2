"""SASRec next-item experts (RecBole's post-LN BERT-style blocks, tied output, cross-entropy over all items).

Architecture (RecBole `SASRec` + `TransformerEncoder`): item embedding (row 0 = padding, item idx i
→ row i+1) + learned position embedding (position 0 = oldest item of the window, sequences are
left-aligned and right-padded as in RecBole) → LayerNorm → dropout → L × [causal multi-head
self-attention → dense → dropout → LayerNorm(+residual); FFN (GELU) → dropout → LayerNorm(+residual)].
The hidden state at a position is scored against every item embedding (tied output weights).

Two ways to cut the training sequences into windows, both with the loss at the counted positions:
* `training_windows` (expert `sasrec_recbole`, `baselines.sasrec_recbole.train_stride` = max_len): windows of
  `max_len` inputs ending every `train_stride` targets from the END of each sequence; each target counted once,
  with ≥ max_len − train_stride + 1 context items — non-overlapping windows, ~25 items of context on average;
* `prefix_windows` (expert `sasrec`, components/baselines/sasrec_tuning.py): RecBole's every-prefix augmentation
  (and SASRec+'s causal training) — the first window holds the first max_len targets, each with its whole
  prefix as context; later targets come from windows of `max_len` items ending every `train_stride` targets,
  so each sees ≥ max_len − train_stride + 1 items (stride 1: exactly every prefix, truncated to max_len).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from components.baselines.common import TrainHistory, fit_early_stopping, seed_everything
from components.evaluation.ranking import NextItemTask, evaluate_scorer
from components.config import SasrecParams


class SelfAttentionBlock(nn.Module):
    """One RecBole transformer layer: post-LN multi-head attention + post-LN GELU feed-forward."""

    def __init__(self, cfg: SasrecParams) -> None:
        super().__init__()
        self.heads, self.head_dim = cfg.num_heads, cfg.hidden_size // cfg.num_heads
        self.qkv = nn.Linear(cfg.hidden_size, 3 * cfg.hidden_size)
        self.attn_out = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.attn_dropout, self.out_drop = cfg.attn_dropout, nn.Dropout(cfg.hidden_dropout)
        self.attn_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.ffn = nn.Sequential(nn.Linear(cfg.hidden_size, cfg.inner_size), nn.GELU(),
                                 nn.Linear(cfg.inner_size, cfg.hidden_size), nn.Dropout(cfg.hidden_dropout))
        self.ffn_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, L, H) → (B, L, H); causal attention (a position sees itself and earlier ones)."""
        b, n, h = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        ctx = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                             dropout_p=self.attn_dropout if self.training else 0.0)
        x = self.attn_norm(x + self.out_drop(self.attn_out(ctx.transpose(1, 2).reshape(b, n, h))))
        return self.ffn_norm(x + self.ffn(x))


class SASRec(nn.Module):
    """SASRec over `n_items` items; inputs are item_idx + 1 with 0 = padding."""

    def __init__(self, n_items: int, cfg: SasrecParams) -> None:
        super().__init__()
        self.n_items, self.max_len = n_items, cfg.max_len
        self.item_embedding = nn.Embedding(n_items + 1, cfg.hidden_size, padding_idx=0)
        self.position_embedding = nn.Embedding(cfg.max_len, cfg.hidden_size)
        self.input_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.input_drop = nn.Dropout(cfg.hidden_dropout)
        self.blocks = nn.ModuleList(SelfAttentionBlock(cfg) for _ in range(cfg.num_layers))
        self.apply(lambda m: _init_weights(m, cfg.initializer_range))

    def encode(self, seq: torch.Tensor) -> torch.Tensor:
        """seq (B, L) long, 0 = padding (right-padded) → hidden states (B, L, H)."""
        n = seq.shape[1]
        x = self.item_embedding(seq) + self.position_embedding(torch.arange(n, device=seq.device))[None]
        x = self.input_drop(self.input_norm(x))
        for block in self.blocks:  # right padding + causal mask: real positions never see padding
            x = block(x)
        return x

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden (..., H) → scores over the real items (..., N) (tied output embedding)."""
        return hidden @ self.item_embedding.weight[1:].T

    def forward(self, seq: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """seq (B, L), lengths (B,) → scores (B, N) of the item after the last real position."""
        hidden = self.encode(seq)
        last = (lengths - 1).clamp(min=0)
        return self.logits(hidden[torch.arange(len(seq)), last])

    def scores(self, histories: Sequence[np.ndarray]) -> np.ndarray:
        """U chronological item_idx histories (any length, may be empty) → float32 (U, N)."""
        seq, lengths = pad_histories(histories, self.max_len)
        was_training = self.training
        self.eval()
        with torch.no_grad():
            out = self(seq, lengths).numpy()
        self.train(was_training)
        return out

    def score_users(self, user_idx: np.ndarray, histories: Sequence[np.ndarray]) -> np.ndarray:
        """NextItemScorer interface; user ids are not used by SASRec. → (U, N)."""
        return self.scores(histories)


def _init_weights(module: nn.Module, std: float) -> None:
    if isinstance(module, (nn.Linear, nn.Embedding)):
        module.weight.data.normal_(0.0, std)
    if isinstance(module, nn.Linear) and module.bias is not None:
        module.bias.data.zero_()
    if isinstance(module, nn.LayerNorm):
        module.weight.data.fill_(1.0)
        module.bias.data.zero_()


def pad_histories(histories: Sequence[np.ndarray], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep the last `max_len` items of each history, left-aligned: → seq (U, max_len) of idx+1, lengths (U,)."""
    seq = torch.zeros(len(histories), max_len, dtype=torch.long)
    lengths = torch.zeros(len(histories), dtype=torch.long)
    for r, hist in enumerate(histories):
        tail = np.asarray(hist, dtype=np.int64)[-max_len:]
        seq[r, : len(tail)] = torch.as_tensor(tail + 1)
        lengths[r] = len(tail)
    return seq, lengths


def training_windows(sequences: Sequence[np.ndarray], max_len: int, stride: int
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cut each sequence into windows → inputs (W, max_len) idx+1, targets (W, max_len) idx, mask (W, max_len).

    Windows end every `stride` targets from the end of the sequence; a window predicts targets
    t ∈ (e − stride, e] (all t ≤ e for the first window) from the up to `max_len` items before t."""
    inputs, targets, masks = [], [], []
    for seq in sequences:
        seq = np.asarray(seq, dtype=np.int64)
        end = len(seq) - 1  # index of the last target
        while end >= 1:
            start = max(0, end - max_len)  # first input index; inputs seq[start:end], targets seq[start+1:end+1]
            n = end - start
            inp, tgt, msk = np.zeros(max_len, np.int64), np.zeros(max_len, np.int64), np.zeros(max_len, bool)
            inp[:n], tgt[:n] = seq[start:end] + 1, seq[start + 1:end + 1]
            first_target = max(1, end - stride + 1)
            msk[first_target - start - 1:n] = True
            inputs.append(inp), targets.append(tgt), masks.append(msk)
            end -= stride
    if not inputs:
        empty = torch.zeros(0, max_len, dtype=torch.long)
        return empty, empty.clone(), empty.bool()
    return (torch.as_tensor(np.stack(inputs)), torch.as_tensor(np.stack(targets)),
            torch.as_tensor(np.stack(masks)))


def prefix_windows(sequences: Sequence[np.ndarray], max_len: int, stride: int
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every-prefix windows → inputs (W, max_len) idx+1, targets (W, max_len) idx, mask (W, max_len), lengths (W,).

    Target t (index into a sequence, t ≥ 1) is counted once: for t ≤ max_len in the window seq[0:max_len] (its
    whole prefix as context), else in the window of max_len inputs ending at the first end e ≥ t of
    max_len + stride, max_len + 2·stride, … (the last end is the sequence's last target)."""
    inputs, targets, masks, lengths = [], [], [], []
    for seq in sequences:
        seq = np.asarray(seq, dtype=np.int64)
        last = len(seq) - 1  # index of the last target
        ends = [min(last, max_len)] + [min(e, last) for e in range(max_len + stride, last + stride, stride)]
        done = 0  # targets 1..done are counted
        for end in ends if last >= 1 else []:
            start = max(0, end - max_len)  # inputs seq[start:end], targets seq[start+1:end+1]
            n = end - start
            inp, tgt, msk = np.zeros(max_len, np.int64), np.zeros(max_len, np.int64), np.zeros(max_len, bool)
            inp[:n], tgt[:n] = seq[start:end] + 1, seq[start + 1:end + 1]
            msk[done - start:n] = True
            inputs.append(inp), targets.append(tgt), masks.append(msk), lengths.append(n)
            done = end
    if not inputs:
        empty = torch.zeros(0, max_len, dtype=torch.long)
        return empty, empty.clone(), empty.bool(), torch.zeros(0, dtype=torch.long)
    return (torch.as_tensor(np.stack(inputs)), torch.as_tensor(np.stack(targets)), torch.as_tensor(np.stack(masks)),
            torch.as_tensor(lengths, dtype=torch.long))


def fit_sasrec(sequences: Sequence[np.ndarray], n_items: int, valid: NextItemTask, cfg: SasrecParams,
               eval_k: int, seed: int) -> tuple[SASRec, TrainHistory]:
    """Train on the users' train `sequences` (index = user_idx); early-stop on valid NDCG@eval_k
    (full ranking, train items excluded); return the best epoch's model and its history."""
    gen = seed_everything(seed)
    model = SASRec(n_items, cfg)
    inputs, targets, mask = training_windows(sequences, cfg.max_len, cfg.train_stride)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)

    def train_epoch(epoch: int) -> float:
        total, count = 0.0, 0
        for batch in torch.randperm(len(inputs), generator=gen).split(cfg.batch_size):
            m = mask[batch]
            hidden = model.encode(inputs[batch])[m]  # (T, H) at the counted positions
            loss = F.cross_entropy(model.logits(hidden), targets[batch][m])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total, count = total + loss.item() * int(m.sum()), count + int(m.sum())
        return total / max(count, 1)

    def validate() -> float:
        return evaluate_scorer(model, valid, (eval_k,), cfg.eval_batch_size)[f"ndcg@{eval_k}"]

    history = fit_early_stopping(model, train_epoch, validate, monitor=f"valid_ndcg@{eval_k}", higher_is_better=True,
                                 max_epochs=cfg.max_epochs, patience=cfg.patience)
    return model, history
