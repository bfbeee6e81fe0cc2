"""What this machine's hardware makes fast: bf16 arithmetic on the CPU (and on a GPU).

`params.yaml` says `auto` for `train.precision` and the `autocast_bf16` switches of embed-items, evaluate and
serving; `config.load_params` resolves them here once, so every step reads a concrete value. Without native
bf16 instructions torch runs bf16 matmuls through conversions: measured on a 2-core AMD EPYC with AVX2 only,
(800 × 576) @ (576 × 1536) took 1239 ms in bf16 against 23 ms in float32 (54× slower), while a CPU with
AVX512_BF16 runs the same model ~2× FASTER under bf16 autocast than in float32 (ENV-NOTES).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})
"""/proc/cpuinfo flags of native bf16 arithmetic: x86 AVX512_BF16 / AMX-BF16, aarch64 `bf16`."""


def cpu_flags(cpuinfo: str) -> frozenset[str]:
    """Every flag of the `flags` (x86) / `Features` (aarch64) lines of a /proc/cpuinfo text."""
    out: set[str] = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            out |= set(value.split())
    return frozenset(out)


@lru_cache(maxsize=1)
def cpu_has_fast_bf16() -> bool:
    """True when the CPU has native bf16 arithmetic (False where /proc/cpuinfo is unreadable)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    return bool(cpu_flags(text) & BF16_CPU_FLAGS)


def _cuda_bf16() -> bool:
    import torch

    return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())


def resolve_precision(value: str, accelerator: str) -> str:
    """`train.precision`: `auto` → `bf16-mixed` where bf16 is native (a bf16 GPU, or a CPU with bf16
    instructions when training on the CPU), else `32-true`; any other value unchanged."""
    if value != "auto":
        return value
    on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and _cuda_bf16())
    return "bf16-mixed" if (_cuda_bf16() if on_gpu else cpu_has_fast_bf16()) else "32-true"


def resolve_autocast(value: bool | str) -> bool:
    """An `autocast_bf16` switch of a CPU step: `auto` → whether the CPU has native bf16."""
    return cpu_has_fast_bf16() if value == "auto" else bool(value)
