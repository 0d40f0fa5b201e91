"""Reading checkpoints without running code from them.

A ``.ckpt`` is a pickle: loaded with the unrestricted unpickler it can execute any code its author put
in it. Every checkpoint read in c4_lightning (``load_policy``, ``c4-evaluate``, ``--ckpt_path`` resumes through
the trainer's checkpoint IO) goes through :func:`load_checkpoint`, which uses PyTorch's restricted unpickler
(``weights_only=True``): tensors, containers and plain Python values only. Our own checkpoints hold nothing
else (callback and sampler states are stored as tensors and plain values), so no allow-list is needed.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch


class UnsafeCheckpointError(ValueError):
    """The file asks to build objects that the restricted unpickler refuses: it was not written by
    c4_lightning (or was tampered with), and loading it could run code."""


def _unpickler_detail(err: BaseException) -> str:
    """The restricted unpickler's own reason (e.g. ``Unsupported global: GLOBAL os.system ...``), one short line."""
    text = " ".join(str(err).split())
    marker = "WeightsUnpickler error:"
    if marker in text:
        text = text.split(marker, 1)[1].strip()
        text = text.split(" Please use ")[0].split(" Check the documentation")[0]
    return text[:160].rstrip(" .") or type(err).__name__


def load_checkpoint(path: str | Path, map_location: Any = None) -> dict:
    """Load a checkpoint file with ``weights_only=True`` and return its dict.

    Raises:
        FileNotFoundError: ``path`` is not a file (a folder, or missing).
        UnsafeCheckpointError: the file needs arbitrary objects to unpickle (a crafted or foreign file).
        ValueError: the file is empty, truncated, or not a torch checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "does not exist"
        raise FileNotFoundError(f"checkpoint {path} {what}: pass the path of a .ckpt file written by train.py")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        detail = _unpickler_detail(err)
        if "global" in detail.lower():  # the file names a class or function to call: refuse it
            raise UnsafeCheckpointError(
                f"refusing to load checkpoint {path}: it asks to build objects other than tensors and plain values "
                f"({detail}), which c4_lightning checkpoints never hold; loading it could run code"
            ) from err
        raise ValueError(
            f"checkpoint {path} cannot be read ({detail}): it is corrupt or not a torch checkpoint"
        ) from err
    except Exception as err:  # EOFError, RuntimeError (zip archive), ...: a damaged or foreign file
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(
            f"checkpoint {path} cannot be read ({first[:160]}): it is corrupt, truncated or not a torch checkpoint"
        ) from err
    if not isinstance(checkpoint, dict):
        raise ValueError(f"checkpoint {path} holds a {type(checkpoint).__name__}, not a checkpoint dict")
    return checkpoint
