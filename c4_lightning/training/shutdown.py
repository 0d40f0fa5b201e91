"""Stop on SIGTERM/SIGINT at a batch boundary with a checkpoint that resumes exactly.

:class:`GracefulShutdown` turns the signal into a clean stop: the current update finishes, ``last.ckpt`` is written
(atomically) and :class:`TrainingInterrupted` ends the run with exit code 128 + the signal number. Under DDP every
rank agrees on the stop (:func:`c4_lightning.training.agreement.agree_max`).
"""

from __future__ import annotations

import signal

from lightning.pytorch import Callback

from c4_lightning.training.agreement import agree_max
from c4_lightning.training.checkpoint_io import (
    checkpoint_dir,
    install_atomic_checkpoint_io,
    remove_stale_temporaries,
    save_training_state,
)


class TrainingInterrupted(RuntimeError):
    """Raised after a signal-triggered checkpoint; ``exit_code`` is 128 + the signal number."""

    def __init__(self, signum: int, path: str | None):
        self.signum, self.path = signum, path
        self.exit_code = 128 + signum
        name = signal.Signals(signum).name
        where = f"checkpoint saved to {path}; resume with --ckpt_path {path}" if path else "no checkpoint was saved"
        super().__init__(f"training stopped by {name}: {where}")


class GracefulShutdown(Callback):
    """Turns SIGTERM/SIGINT into a clean stop: the current update finishes, ``last.ckpt`` is written
    (atomically) and :class:`TrainingInterrupted` ends the run; ``--ckpt_path .../last.ckpt`` resumes it
    exactly where it stopped."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, filename: str = "last.ckpt"):
        self.filename = filename
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def _handler(self, signum, frame) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl+C stops at once
        self.received = signum

    def on_train_start(self, trainer, pl_module) -> None:
        self.received = None
        try:
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handler)
        except ValueError:  # not in the main thread (e.g. a notebook worker): leave signals alone
            self._previous.clear()

    def _restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _stop(self, trainer) -> None:
        signum = self.received
        path = checkpoint_dir(trainer) / self.filename
        save_training_state(trainer, path)
        self._restore()
        raise TrainingInterrupted(signum, str(path))

    def setup(self, trainer, pl_module, stage: str) -> None:
        install_atomic_checkpoint_io(trainer)
        folder = checkpoint_dir(trainer)  # every rank: trainer.log_dir is a collective under DDP
        if trainer.is_global_zero:
            remove_stale_temporaries(folder)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # under DDP a signal may reach one rank only: all ranks agree (the largest signal number) and stop together
        signum = agree_max(self.received or 0, trainer)
        if signum:
            self.received = signum
            self._stop(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        self._restore()

    def on_exception(self, trainer, pl_module, exception) -> None:
        self._restore()
