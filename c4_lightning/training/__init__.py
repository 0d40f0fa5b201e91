"""Training infrastructure shared by every algorithm: checkpoint I/O."""
from c4_lightning.training.checkpoint import UnsafeCheckpointError, load_checkpoint

__all__ = ["UnsafeCheckpointError", "load_checkpoint"]
