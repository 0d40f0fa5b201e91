"""Training infrastructure shared by every algorithm: checkpoint reading (never runs code) and writing (atomic),
graceful stops, exact resume, RNG state, stop agreement across DDP ranks, images through any logger."""

from c4_lightning.training.checkpoint import UnsafeCheckpointError, load_checkpoint
from c4_lightning.training.checkpoint_io import AtomicCheckpointIO, CheckpointWriteError, checkpoint_dir
from c4_lightning.training.loop_state import PeriodicCheckpoint, resume_epoch_end_as_finished
from c4_lightning.training.shutdown import GracefulShutdown, TrainingInterrupted

__all__ = [
    "AtomicCheckpointIO",
    "CheckpointWriteError",
    "GracefulShutdown",
    "PeriodicCheckpoint",
    "TrainingInterrupted",
    "UnsafeCheckpointError",
    "checkpoint_dir",
    "load_checkpoint",
    "resume_epoch_end_as_finished",
]
