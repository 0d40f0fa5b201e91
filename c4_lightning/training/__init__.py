"""Training infrastructure shared by every algorithm: checkpoint I/O, exact resume."""
from c4_lightning.training.checkpoint import UnsafeCheckpointError, load_checkpoint
from c4_lightning.training.loop_state import PeriodicCheckpoint, resume_epoch_end_as_finished

__all__ = ["PeriodicCheckpoint", "UnsafeCheckpointError", "load_checkpoint", "resume_epoch_end_as_finished"]
