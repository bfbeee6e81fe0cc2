"""`eval_mode`: run a block in eval mode and restore the caller's mode, without touching a model already in eval."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """Within the block `module` is in eval mode (no dropout); afterwards it is back in training mode if it was.

    A module already in eval mode is left alone: `train()` / `eval()` walk the whole module tree, and for the
    PEFT-wrapped universal model (510 modules) a pair costs 7.0 ms, ~9 % of a one-user set-out request."""
    if not module.training:
        yield module
        return
    module.eval()
    try:
        yield module
    finally:
        module.train()
