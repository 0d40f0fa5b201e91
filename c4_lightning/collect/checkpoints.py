"""The behaviour run's folder: its checkpoint table, its settings, and the choice of checkpoints.

``c4-collect train --out-dir <run>`` writes ``<run>/checkpoints.json`` (one row per checkpoint:
``steps``, ``path``, ``return_mean``, ``return_std``, ``time``) and ``<run>/train_config.json``;
``c4-collect record`` reads them and picks its *expert* and *medium* checkpoints from the table.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

CHECKPOINT_TABLE = "checkpoints.json"
TRAIN_CONFIG = "train_config.json"


def atomic_json(path: Path, obj) -> None:
    """Write ``obj`` as JSON to ``path`` through a temporary file, so a crash never leaves half a file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


def load_checkpoint_table(out_dir: str | Path) -> list[dict]:
    """The checkpoint table of the behaviour run in ``out_dir`` (empty when it has none yet)."""
    p = Path(out_dir) / CHECKPOINT_TABLE
    return json.loads(p.read_text()) if p.exists() else []


def save_checkpoint_table(out_dir: str | Path, table: list[dict]) -> None:
    atomic_json(Path(out_dir) / CHECKPOINT_TABLE, table)


def load_train_config(out_dir: str | Path) -> dict | None:
    """The behaviour run's settings (``train_config.json``), None when the run has not written them."""
    p = Path(out_dir) / TRAIN_CONFIG
    return json.loads(p.read_text()) if p.exists() else None


def best_checkpoint(table: list[dict]) -> dict:
    """The checkpoint with the best evaluated return (the earliest one on ties)."""
    if not table:
        raise SystemExit("no checkpoints in the checkpoint table: run `c4-collect train` first")
    return max(table, key=lambda r: (r["return_mean"], -r["steps"]))


def select_checkpoints(
    table: list[dict], medium_fraction: float = 1 / 3, ref_min: float | None = None, ref_max: float | None = None
) -> dict:
    """Pick the *expert* (best evaluated return) and *medium* checkpoints from the checkpoint table.

    *medium* is the checkpoint, not later than the expert one, whose evaluated return is closest to
    ``ref_min + medium_fraction * (ref_max - ref_min)``, i.e. a normalised score of
    ``100 * medium_fraction`` (Hopper with D4RL's scores and 1/3: 1064.6, about a third of the expert
    reference return 3234.3). The reference scores default to D4RL's for known envs; for other envs
    ``ref_max`` is the best checkpoint's return and ``ref_min`` should be a random policy's return
    (0 when not given). Working in normalised terms keeps the choice sensible for envs whose returns
    are negative. Ties go to the earlier checkpoint.
    """
    expert = best_checkpoint(table)
    ref_max = expert["return_mean"] if ref_max is None else ref_max
    ref_min = 0.0 if ref_min is None else ref_min
    target = ref_min + medium_fraction * (ref_max - ref_min)
    candidates = [r for r in table if r["steps"] <= expert["steps"]]
    medium = min(candidates, key=lambda r: (abs(r["return_mean"] - target), r["steps"]))
    return {"expert": expert, "medium": medium, "medium_target_return": float(target)}
