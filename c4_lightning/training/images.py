"""Images through whatever Lightning logger a run uses.

TensorBoard (``add_image``), Weights & Biases (``log_image``) and MLflow (``log_image`` on the run) get the image
through their own API; any other logger (CSV, ...) gets a PNG file in its log folder,
``<log_dir>/images/<tag>_step<step>.png``, so no logger silently drops the pictures.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np


def _png_path(logger, tag: str, step: int) -> Path | None:
    folder = getattr(logger, "log_dir", None) or getattr(logger, "save_dir", None)
    if not folder or "://" in str(folder):
        return None
    return Path(folder) / "images" / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', tag)}_step{int(step)}.png"


def log_image(loggers, tag: str, image: np.ndarray, step: int) -> list[str]:
    """Send an RGB ``uint8`` image ``[H, W, 3]`` to every logger; returns how each got it (for tests and messages)."""
    from lightning.pytorch.loggers import MLFlowLogger, TensorBoardLogger, WandbLogger

    done = []
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_image(tag, image, step, dataformats="HWC")
            done.append("tensorboard")
        elif isinstance(logger, WandbLogger):
            logger.log_image(key=tag, images=[image], step=step)
            done.append("wandb")
        elif isinstance(logger, MLFlowLogger):
            logger.experiment.log_image(logger.run_id, image, key=tag.replace("/", "_"), step=step)
            done.append("mlflow")
        else:
            path = _png_path(logger, tag, step)
            if path is None:
                continue
            import matplotlib.image

            path.parent.mkdir(parents=True, exist_ok=True)
            matplotlib.image.imsave(path, image)
            done.append(str(path))
    return done
