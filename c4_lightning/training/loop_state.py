"""Exact resume under any budget, and a bound on the work a kill can lose.

* :func:`resume_epoch_end_as_finished` -- Lightning restores an end-of-epoch checkpoint differently under an update
  budget (``max_steps``) than under an epoch budget: with ``max_steps`` set it always "restarts" the saved epoch, which
  then runs one batch more and repeats the epoch-end hooks (a second evaluation at the same epoch, one extra update,
  different weights). Before the loops are restored, the saved loop state of a *finished* epoch is rewritten into the
  state of an epoch that has fully completed, which both budgets then restore the same way: the next epoch starts at
  its first batch. Mid-epoch checkpoints are left alone (Lightning restores them exactly under both budgets).
* :class:`PeriodicCheckpoint` -- writes ``last.ckpt`` every ``every_n_updates`` updates inside an epoch (the
  end-of-epoch ``last.ckpt`` comes from ``ModelCheckpoint``), so ``kill -9`` loses at most that many updates.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch import Callback
from lightning.pytorch.callbacks import ModelCheckpoint

from c4_lightning.training.checkpoint_io import save_training_state


def _epoch_finished(fit_loop: dict[str, Any]) -> bool:
    """The saved fit loop stopped in ``on_train_epoch_end``: the epoch was processed but not yet marked completed,
    and its last batch was trained on."""
    total = fit_loop["epoch_progress"]["total"]
    batches = fit_loop["epoch_loop.batch_progress"]
    return total["ready"] == total["started"] == total["processed"] == total["completed"] + 1 and bool(
        batches.get("is_last_batch")
    )


def resume_epoch_end_as_finished(checkpoint: dict[str, Any], max_steps: int) -> bool:
    """Rewrite, in place, the loop state of a checkpoint saved at the end of an epoch so that Lightning resumes it at
    the start of the next epoch when the run has an update budget (``max_steps != -1``). Returns whether it changed
    anything. A no-op for epoch budgets, mid-epoch checkpoints and checkpoints without loop state."""
    fit_loop = (checkpoint.get("loops") or {}).get("fit_loop")
    if max_steps == -1 or not fit_loop or not _epoch_finished(fit_loop):
        return False
    for progress in (fit_loop["epoch_progress"]["total"], fit_loop["epoch_progress"]["current"]):
        progress["completed"] = progress["processed"]
    batches = fit_loop["epoch_loop.batch_progress"]
    batches["current"] = {key: 0 for key in batches["current"]}  # the next epoch starts at its first batch
    batches["is_last_batch"] = False
    return True


class PeriodicCheckpoint(Callback):
    """Save ``last.ckpt`` (atomically, through the trainer's checkpoint IO) after every ``every_n_updates``-th update
    inside an epoch; a resume from it is exact (the same as a SIGTERM stop's checkpoint). The last batch of an epoch
    is skipped: the end-of-epoch ``last.ckpt`` follows it at once. ``every_n_updates=0`` turns it off."""

    def __init__(self, every_n_updates: int = 500, filename: str = "last.ckpt"):
        if isinstance(every_n_updates, bool) or not isinstance(every_n_updates, int) or every_n_updates < 0:
            raise ValueError(
                f"PeriodicCheckpoint every_n_updates={every_n_updates!r} must be an integer >= 0 "
                "(0 turns mid-epoch checkpoints off)"
            )
        self.every_n_updates, self.filename = every_n_updates, filename

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not self.every_n_updates or trainer.global_step % self.every_n_updates:
            return
        if batch_idx + 1 >= trainer.num_training_batches:  # the epoch's end writes last.ckpt right after
            return
        save_training_state(trainer, self._last_path(trainer))

    def _last_path(self, trainer) -> str:
        """The file ``ModelCheckpoint(save_last=True)`` writes as its last checkpoint, recorded as its own
        ``last_model_path`` so it overwrites the file at the epoch's end instead of writing ``last-v1.ckpt`` beside
        it; ``<checkpoint folder>/last.ckpt`` without such a callback."""
        for cb in trainer.checkpoint_callbacks:
            if isinstance(cb, ModelCheckpoint) and cb.save_last:
                cb.last_model_path = cb.last_model_path or cb.format_checkpoint_name({}, cb.CHECKPOINT_NAME_LAST)
                return cb.last_model_path
        from c4_lightning.training.checkpoint_io import checkpoint_dir

        return str(checkpoint_dir(trainer) / self.filename)
