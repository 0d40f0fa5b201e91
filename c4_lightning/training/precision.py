"""The default ``trainer.precision``: ``bf16-mixed`` on a CPU that computes bf16 natively, ``32-true`` elsewhere.

Every experiment here is arithmetic-bound; on CPUs with AVX-512 BF16 or AMX a whole update runs faster in
``bf16-mixed`` (BENCHMARKS.md "Speed, one quiet sitting": TD3+BC 1.33x and CQL 1.9x its fp32 rate through Lightning),
and TD3+BC learns the same (BENCHMARKS.md "bf16 learning parity": embedded 10k mixture, 5 seeds x 30k updates, paired
score difference with a 95% CI that includes 0). Without those instructions bf16 is emulated and slower
than float32, so the default stays ``32-true``; on a GPU it stays ``32-true`` too (parity was measured on a CPU only).
A config or ``--trainer.precision`` always wins over this default.
"""

from __future__ import annotations

import torch

__all__ = ["bf16_native_cpu", "default_precision"]


def bf16_native_cpu() -> bool:
    """Whether this CPU has native bf16 arithmetic (AVX-512 BF16 or AMX tiles), as PyTorch's CPU dispatch sees it."""
    cpu = getattr(torch, "cpu", None)
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(cpu, name, lambda: False)()) for name in checks)


def default_precision() -> str:
    """``bf16-mixed`` when training will run on a CPU with native bf16 (no CUDA device visible), else ``32-true``."""
    if torch.cuda.is_available():
        return "32-true"
    return "bf16-mixed" if bf16_native_cpu() else "32-true"
