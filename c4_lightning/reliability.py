"""No lost work and clear failures.

* :class:`GracefulShutdown`: stop on SIGTERM/SIGINT at a batch boundary with a checkpoint that resumes
  exactly (exit code 128 + signal number through :class:`TrainingInterrupted`).
* :class:`AtomicCheckpointIO`: checkpoints are written to a temporary file in the target folder, flushed to
  disk and renamed over the old one, so a crash while writing never corrupts the previous checkpoint.
* :func:`rng_state` / :func:`set_rng_state`: the global RNG states (torch CPU/CUDA, numpy, random) that
  go into a checkpoint so a resumed run draws the same random numbers as an uninterrupted one.
* :func:`check_cluster_sampling`: refuses C4 settings whose clusters could never be sampled.
* :func:`error_line`: the one-line message the CLI prints for an error raised while running.
"""
from __future__ import annotations

import os
import random
import signal
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import ModelCheckpoint

from c4_lightning.training.agreement import agree_max


class TrainingInterrupted(RuntimeError):
    """Raised after a signal-triggered checkpoint; ``exit_code`` is 128 + the signal number."""

    def __init__(self, signum: int, path: str | None):
        self.signum, self.path = signum, path
        self.exit_code = 128 + signum
        name = signal.Signals(signum).name
        where = f"checkpoint saved to {path}; resume with --ckpt_path {path}" if path else "no checkpoint was saved"
        super().__init__(f"training stopped by {name}: {where}")


def checkpoint_dir(trainer) -> Path:
    for cb in trainer.callbacks:
        if isinstance(cb, ModelCheckpoint) and cb.dirpath:
            return Path(cb.dirpath)
    return Path(trainer.log_dir or trainer.default_root_dir) / "checkpoints"


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
        path.parent.mkdir(parents=True, exist_ok=True)
        trainer.save_checkpoint(path)
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


# ---------------------------------------------------------------------------------------------- checkpoints
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
        self.message = (f"cannot write checkpoint {path} ({reason}); "
                        + (f"{intact} is intact: free space or make {path.parent} writable, then resume with "
                           f"--ckpt_path {intact}" if intact else
                           f"no earlier checkpoint exists in {path.parent}: free space or make it writable and "
                           "start again"))

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


# ---------------------------------------------------------------------------------------------- RNG state
def rng_state() -> dict[str, Any]:
    """The global RNG states a training step may draw from (torch CPU and CUDA, numpy, random)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(),  # tensors and plain Python values only (weights_only loading)
             "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
             "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any] | None) -> None:
    """Restore what :func:`rng_state` returned (missing entries are left as they are)."""
    if not state:
        return
    if state.get("torch") is not None:
        torch.set_rng_state(torch.as_tensor(state["torch"], dtype=torch.uint8).cpu())
    if state.get("numpy") is not None:
        kind, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((kind, np.asarray(keys, dtype=np.int64).astype(np.uint32), int(pos), int(has_gauss),
                             float(cached)))
    if state.get("python") is not None:
        random.setstate(state["python"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        cuda = list(state["cuda"])
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)


# ---------------------------------------------------------------------------------------------- validation
def check_cluster_sampling(num_transitions: int, batch_size: int, n_clusters: int,
                           min_cluster_size: int | None) -> int:
    """Refuse C4 settings under which the clustered sampler would silently sample uniformly.

    A partition of N transitions into K clusters can give *every* cluster at least ``m`` members only if
    K * m <= N (``m`` = the sampler's minimum cluster size, default ``max(batch_size, N // max(K, 10))``).
    Otherwise at least one cluster is never sampled and, with balanced clusters, none is: C4 would run as
    plain uniform sampling, a silent wrong result. Returns the effective minimum size."""
    n, b, k = int(num_transitions), int(batch_size), int(n_clusters)
    m = int(min_cluster_size) if min_cluster_size is not None else max(b, n // max(k, 10))
    if k * m > n:
        what = (f"min_cluster_size={m}" if min_cluster_size is not None
                else f"min_cluster_size={m} (default max(data.batch_size, N // max(K, 10)))")
        raise ValueError(
            f"C4 cannot sample its clusters: n_clusters={k} x {what} = {k * m} > N={n} transitions, so "
            f"clusters would be skipped and batches fall back to uniform sampling; lower model.c4.n_clusters "
            f"to at most {max(n // m, 1)}, lower data.batch_size or data.min_cluster_size, or raise "
            f"data.max_transitions")
    return m


# ---------------------------------------------------------------------------------------------- messages
_WRAPPER_MESSAGES = ("Does not validate against any of the Union subtypes", "Problem with given class_path")


def error_line(err: BaseException) -> str:
    """One line for the CLI: the innermost meaningful message of ``err`` (jsonargparse wraps the error of
    a class's ``__init__`` in several layers) with its lines folded (indented list items joined by ', ')."""
    seen = set()
    while id(err) not in seen and any(w in str(err) for w in _WRAPPER_MESSAGES) and err.__cause__ is not None:
        seen.add(id(err))
        err = err.__cause__
    parts: list[str] = []
    for raw in str(err).splitlines():
        line = raw.strip()
        if not line:
            continue
        if raw[:1].isspace() and parts:  # an indented item continues the line above
            sep = " " if parts[-1].endswith(":") else ", "
            parts[-1] = f"{parts[-1]}{sep}{line}"
        else:
            parts.append(line)
    if not parts:
        return type(err).__name__
    return " ".join([p if p[-1] in ".:;,!?)" else f"{p};" for p in parts[:-1]] + parts[-1:])
