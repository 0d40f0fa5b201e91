"""Callbacks tests inject into a train.py process: kill it once (SIGKILL, no checkpoint, no clean-up), or poison one
batch so the loss becomes non-finite."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from lightning.pytorch import Callback


class KillOnce(Callback):
    """SIGKILLs its own process after ``at_step`` updates of the trial whose folder ends with ``seed_suffix``,
    the first time only (a marker file in the trial folder records that it happened)."""

    def __init__(self, at_step: int, seed_suffix: str):
        self.at_step, self.seed_suffix = at_step, seed_suffix

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        root = Path(trainer.default_root_dir)
        marker = root / "killed-once"
        if root.name.endswith(self.seed_suffix) and trainer.global_step >= self.at_step and not marker.exists():
            marker.write_text(str(trainer.global_step))
            os.kill(os.getpid(), signal.SIGKILL)


class PoisonBatch(Callback):
    """Sets the rewards of the batch at update ``at_step`` to NaN (the critic loss becomes non-finite there)."""

    def __init__(self, at_step: int):
        self.at_step = at_step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.at_step:
            batch["rewards"].fill_(float("nan"))


class DiskFullFrom(Callback):
    """From epoch ``epoch`` on, every ``torch.save`` fails as on a full disk (ENOSPC)."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch:
            import torch

            def full(*args, **kwargs):
                raise OSError(28, "No space left on device")

            torch.save = full
