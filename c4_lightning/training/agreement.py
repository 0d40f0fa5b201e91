"""Ranks stop together.

Under DDP every stop decision taken inside the training loop (a non-finite loss, a SIGTERM/SIGINT) may be seen on one
rank only: a rank that stopped alone would leave the others waiting forever in the next gradient all-reduce. Each
such check point therefore agrees across ranks with one small collective (:func:`agree_max`): every rank takes the
same branch, writes the same (collective) checkpoint and exits with the same code. On one process it costs nothing.
"""

from __future__ import annotations

import torch


def agree_max(value: int, trainer) -> int:
    """The largest ``value`` over all ranks (every rank must call it at the same point); ``value`` itself without a
    trainer or with one process."""
    if trainer is None or getattr(trainer, "world_size", 1) <= 1:
        return int(value)
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return int(value)
    flag = torch.tensor([int(value)], dtype=torch.int64, device=trainer.strategy.root_device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return int(flag.item())
