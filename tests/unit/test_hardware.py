"""`auto` precision: bf16 only where the hardware runs it natively, resolved once by load_params."""

from __future__ import annotations

import pytest

from components import hardware
from components.config import load_params
from tests.conftest import REPO

AVX2 = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n"
SAPPHIRE = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"
GRAVITON = "processor\t: 0\nFeatures\t: fp asimd bf16 i8mm\n"


def test_cpu_flags_of_x86_and_arm_cpuinfo() -> None:
    assert "avx2" in hardware.cpu_flags(AVX2) and not hardware.cpu_flags(AVX2) & hardware.BF16_CPU_FLAGS
    assert hardware.cpu_flags(SAPPHIRE) & hardware.BF16_CPU_FLAGS == {"avx512_bf16", "amx_bf16"}
    assert hardware.cpu_flags(GRAVITON) & hardware.BF16_CPU_FLAGS == {"bf16"}


@pytest.mark.parametrize("fast, precision, autocast", [(True, "bf16-mixed", True), (False, "32-true", False)])
def test_auto_resolves_once_from_the_cpu(monkeypatch, fast: bool, precision: str, autocast: bool) -> None:
    monkeypatch.setattr(hardware, "cpu_has_fast_bf16", lambda: fast)
    params = load_params(REPO / "params.yaml", {"train.precision": "auto", "train.accelerator": "cpu",
                                                "evaluate.autocast_bf16": "auto", "embed_items.autocast_bf16": "auto"})
    assert params.train.precision == precision
    assert params.evaluate.autocast_bf16 is autocast and params.embed_items.autocast_bf16 is autocast
    explicit = load_params(REPO / "params.yaml", {"train.precision": "bf16-mixed", "evaluate.autocast_bf16": True})
    assert explicit.train.precision == "bf16-mixed" and explicit.evaluate.autocast_bf16 is True
