"""Writing checkpoints so that no failure loses the previous one.

* :class:`AtomicCheckpointIO`: a checkpoint goes to a temporary file in the target folder, is flushed and fsynced,
  then renamed over the old one; a crash, a kill or a full disk while writing leaves the previous file intact, and a
  failed write raises :class:`CheckpointWriteError`, whose message names the intact checkpoint and the resume command.
* Files get the mode the process umask gives any new file; temporaries left by a killed write are removed at the
  next start (:func:`remove_stale_temporaries`).
* :func:`checkpoint_dir`: where a run's checkpoints go; :func:`save_training_state`: how our own callbacks write one.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint


def checkpoint_dir(trainer) -> Path:
    """The folder of the run's ``ModelCheckpoint``, else ``<log_dir>/checkpoints``."""
    for cb in trainer.callbacks:
        if isinstance(cb, ModelCheckpoint) and cb.dirpath:
            return Path(cb.dirpath)
    return Path(trainer.log_dir or trainer.default_root_dir) / "checkpoints"


SAVE_WEIGHTS_ONLY = False  # what our callbacks write: the whole state (ModelCheckpoint's save_weights_only default)


def save_training_state(trainer, path: str | Path) -> None:
    """Write the whole training state (weights, optimisers, loops, callbacks) to ``path``, creating its folder: the
    mid-epoch checkpoint, the graceful stop's and the NaN stop's. The second argument of Lightning's
    ``save_checkpoint`` chooses what is *written*, as ``ModelCheckpoint`` passes its ``save_weights_only``; left unset
    it logs a line on every save. Reading never unpickles code: :func:`c4_lightning.training.load_checkpoint` loads
    with ``weights_only=True``."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    trainer.save_checkpoint(path, SAVE_WEIGHTS_ONLY)


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose local writes are atomic: the checkpoint goes to a temporary file in the
    same folder, is flushed and fsynced, then ``os.replace``-d over the target. A failure at any point
    (an exception in ``torch.save``, a full disk, a kill) leaves the previous file untouched. Local reads
    (``--ckpt_path``) never run code from the file: :func:`c4_lightning.training.load_checkpoint`, whatever
    ``weights_only`` the caller asked for."""

    def load_checkpoint(self, path, map_location: Any | None = None, weights_only: bool | None = None) -> dict:
        if "://" in str(path):  # remote paths: Lightning's loader, restricted as well
            return super().load_checkpoint(path, map_location=map_location, weights_only=True)
        from c4_lightning.training.checkpoint import load_checkpoint

        return load_checkpoint(path, map_location=map_location or (lambda storage, loc: storage))

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None or "://" in str(path):  # remote paths: Lightning's own transaction
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._write(checkpoint, path)
        except OSError as err:  # a full or read-only disk: say what is still intact and how to go on
            if isinstance(err, CheckpointWriteError):
                raise
            raise CheckpointWriteError(path, err) from err

    @staticmethod
    def _write(checkpoint: dict[str, Any], path: Path) -> None:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
        try:
            os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; a checkpoint gets the mode any new file would
            with os.fdopen(fd, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        try:  # make the rename itself durable
            dir_fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError:
            pass


TMP_SUFFIX = ".tmp"


class CheckpointWriteError(OSError):
    """Writing a checkpoint failed (full disk, read-only folder, ...); the message names the checkpoint that is still
    intact (the write is atomic) and the resume command."""

    def __init__(self, path: Path, err: OSError):
        super().__init__(err.errno, err.strerror or str(err))
        last = path.parent / "last.ckpt"
        intact = last if last.is_file() else (path if path.is_file() else None)
        self.intact = intact
        reason = err.strerror or str(err) or type(err).__name__
        self.message = f"cannot write checkpoint {path} ({reason}); " + (
            f"{intact} is intact: free space or make {path.parent} writable, then resume with --ckpt_path {intact}"
            if intact
            else f"no earlier checkpoint exists in {path.parent}: free space or make it writable and start again"
        )

    def __str__(self) -> str:
        return self.message


def _read_umask() -> int:
    """The process umask, read once at import (os.umask can only be read by setting it, which would race with
    threads creating files if done at every save)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete the temporary files (``.<name>.ckpt.*.tmp``) that a write interrupted by a kill left in ``folder``;
    returns what was removed. Runs at the start of a run (each run writes into its own folder)."""
    removed = []
    if folder.is_dir():
        for tmp in folder.glob(f".*.ckpt.*{TMP_SUFFIX}"):
            try:
                tmp.unlink()
                removed.append(tmp)
            except OSError:
                pass
    return removed


def install_atomic_checkpoint_io(trainer) -> None:
    """Swap the strategy's plain ``TorchCheckpointIO`` for :class:`AtomicCheckpointIO` (a custom
    checkpoint IO chosen by the user is left alone)."""
    strategy = trainer.strategy
    if type(strategy.checkpoint_io) is TorchCheckpointIO:
        strategy.checkpoint_io = AtomicCheckpointIO()
