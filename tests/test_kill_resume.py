"""kill -9 in the middle of a run, resume from ``last.ckpt``: the same weights and evaluation history as a run that
was never killed, under an update budget (``max_steps``) as under an epoch budget (``max_epochs``).

:class:`KillAtStep` (named in the run's config; importable by the subprocess through ``PYTHONPATH``) SIGKILLs its own
process once the run has made ``at_step`` updates, so nothing of the run's own shutdown code runs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch import Callback

REPO = Path(__file__).resolve().parents[1]
STEPS_PER_EPOCH = 10
EPOCHS = 3
KILL_AT = 15  # mid-epoch 1


class KillAtStep(Callback):
    """Test helper: ``kill -9`` this process after update ``at_step``."""

    def __init__(self, at_step: int):
        self.at_step = at_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.at_step:
            os.kill(os.getpid(), signal.SIGKILL)


def _config(tmp_path: Path, name: str, budget: str, kill_at: int | None, every: int) -> Path:
    callbacks = [
        {
            "class_path": "c4_lightning.evaluation.EvalCallback",
            "init_args": {"every_n_epochs": 1, "episodes": 1, "max_envs": 1},
        },
        {"class_path": "c4_lightning.training.PeriodicCheckpoint", "init_args": {"every_n_updates": every}},
    ]
    if kill_at is not None:
        callbacks.append({"class_path": "test_kill_resume.KillAtStep", "init_args": {"at_step": kill_at}})
    limit = {"max_steps": STEPS_PER_EPOCH * EPOCHS} if budget == "max_steps" else {"max_epochs": EPOCHS}
    cfg = {
        "seed_everything": 5,
        "model": {
            "class_path": "c4_lightning.algos.TD3BC",
            "init_args": {
                "hidden_dims": [32, 32],
                "probe_size": 64,
                "log_every_n_steps": 5,
                "c4": {
                    "enabled": True,
                    "n_clusters": 2,
                    "refit_every_n_updates": 7,
                    "pca_dim": 8,
                    "fit_subsample": 1000,
                    "penalty_weight": 0.1,
                },
            },
        },
        "data": {
            "dataset_id": "hopper/random-medium-expert-10k",
            "max_transitions": 1500,
            "batch_size": 32,
            "steps_per_epoch": STEPS_PER_EPOCH,
        },
        "trainer": {
            **limit,
            "accelerator": "cpu",
            "devices": 1,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "log_every_n_steps": 5,
            "default_root_dir": str(tmp_path / name),
            "callbacks": callbacks,
        },
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _run(config: Path, *extra: str) -> subprocess.CompletedProcess:
    env = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        PYTHONUNBUFFERED="1",
        PYTHONPATH=os.pathsep.join([str(REPO / "tests"), os.environ.get("PYTHONPATH", "")]),
    )
    return subprocess.run(
        [sys.executable, "train.py", "fit", "--config", str(config), *extra],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _state(root: Path) -> tuple[dict, dict]:
    newest = max(root.rglob("last.ckpt"), key=lambda p: p.stat().st_mtime_ns)  # the resumed run's own folder
    ckpt = torch.load(newest, map_location="cpu", weights_only=True)
    evals = [cb for key, cb in ckpt["callbacks"].items() if key.startswith("EvalCallback")][0]["history"]
    return ckpt, evals


@pytest.mark.parametrize("budget", ["max_steps", "max_epochs"])
@pytest.mark.parametrize("every,saved_at", [(0, 10), (4, 12)], ids=["epoch-end-ckpt", "mid-epoch-ckpt"])
def test_kill_9_then_resume_equals_an_uninterrupted_run(tmp_path, budget, every, saved_at):
    ref = _run(_config(tmp_path, "ref", budget, None, every))
    assert ref.returncode == 0, ref.stderr[-3000:]
    killed = _run(_config(tmp_path, "run", budget, KILL_AT, every))
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    last = next((tmp_path / "run").rglob("last.ckpt"))
    # the kill lost only the updates after the newest checkpoint: the epoch's end, or the last periodic one
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == saved_at
    resumed = _run(_config(tmp_path, "run", budget, None, every), "--ckpt_path", str(last))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert not list(tmp_path.rglob("last-v*.ckpt"))  # one last checkpoint per run folder, overwritten in place

    (ref_ckpt, ref_evals), (res_ckpt, res_evals) = _state(tmp_path / "ref"), _state(tmp_path / "run")
    assert res_ckpt["global_step"] == ref_ckpt["global_step"] == STEPS_PER_EPOCH * EPOCHS
    assert [(e["epoch"], e["step"]) for e in res_evals] == [(e["epoch"], e["step"]) for e in ref_evals]
    assert [e["return"] for e in res_evals] == [e["return"] for e in ref_evals]
    for key, value in ref_ckpt["state_dict"].items():
        assert torch.equal(value, res_ckpt["state_dict"][key]), key
