"""SIGTERM / SIGINT during a real CLI training run: a checkpoint, a clean exit, and an exact resume.

Each test starts ``python train.py fit ...`` as a subprocess (small nets, CPU). :class:`SignalAtStep` (a callback
named in the run's config; this file is importable by the subprocess through ``PYTHONPATH``) writes a marker
file once the run has made ``at_step`` updates, in the middle of an epoch, and holds that batch until a signal
has been received, so the stop point is the same on a busy machine. The test sends the signal to that PID only.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml
from lightning.pytorch import Callback

REPO = Path(__file__).resolve().parents[1]
STEPS_PER_EPOCH = 12
MAX_EPOCHS = 3
STOP_AT = 17  # epoch 1, batch 5 of 12: mid-epoch


class SignalAtStep(Callback):
    """Test helper: at ``global_step == at_step`` write ``marker`` and wait (at most ``wait_s``) for a signal."""

    def __init__(self, marker: str, at_step: int, wait_s: float = 60.0):
        self.marker, self.at_step, self.wait_s = marker, at_step, wait_s

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step != self.at_step:
            return
        from c4_lightning.training.shutdown import GracefulShutdown

        shutdown = next(c for c in trainer.callbacks if isinstance(c, GracefulShutdown))
        Path(self.marker).write_text(f"{os.getpid()} {trainer.global_step} {batch_idx}")
        deadline = time.monotonic() + self.wait_s
        while shutdown.received is None and time.monotonic() < deadline:
            time.sleep(0.01)


def _config(tmp_path: Path, name: str, marker_step: int | None) -> Path:
    callbacks = [
        {
            "class_path": "c4_lightning.evaluation.EvalCallback",
            "init_args": {"every_n_epochs": 1, "episodes": 1, "max_envs": 1},
        },
        {
            "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
            "init_args": {"save_last": True, "every_n_epochs": 1},
        },
    ]
    if marker_step is not None:
        callbacks.append(
            {
                "class_path": "test_signals.SignalAtStep",
                "init_args": {"marker": str(tmp_path / f"{name}.marker"), "at_step": marker_step},
            }
        )
    cfg = {
        "seed_everything": 3,
        "model": {
            "class_path": "c4_lightning.algos.TD3BC",
            "init_args": {
                "hidden_dims": [32, 32],
                "probe_size": 64,
                "log_every_n_steps": 4,
                "c4": {
                    "enabled": True,
                    "n_clusters": 2,
                    "refit_every_n_epochs": 1,
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
            "max_epochs": MAX_EPOCHS,
            "accelerator": "cpu",
            "devices": 1,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "log_every_n_steps": 4,
            "default_root_dir": str(tmp_path / name),
            "callbacks": callbacks,
        },
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _env() -> dict:
    env = dict(os.environ)
    env.update(
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        PYTHONUNBUFFERED="1",
        PYTHONPATH=os.pathsep.join([str(REPO / "tests"), env.get("PYTHONPATH", "")]),
    )
    return env


def _run(config: Path, *extra: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "train.py", "fit", "--config", str(config), *extra],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _interrupt(tmp_path: Path, name: str, sig: int) -> tuple[int, str, str]:
    """Start a run, wait for its marker, send ``sig`` to its PID; returns (exit code, stdout, stderr)."""
    config = _config(tmp_path, name, STOP_AT)
    marker = tmp_path / f"{name}.marker"
    out, err = open(tmp_path / f"{name}.out", "w+"), open(tmp_path / f"{name}.err", "w+")
    proc = subprocess.Popen(
        [sys.executable, "train.py", "fit", "--config", str(config)],
        cwd=REPO,
        env=_env(),
        stdout=out,
        stderr=err,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert proc.poll() is None, f"the run ended before step {STOP_AT}: {Path(err.name).read_text()[-3000:]}"
            assert time.monotonic() < deadline, "no marker after 120 s"
            time.sleep(0.02)
        os.kill(proc.pid, sig)
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:  # only the process this test started
            proc.kill()
            proc.wait()
        out.close()
        err.close()
    return code, Path(out.name).read_text(), Path(err.name).read_text()


def _ckpt_line(stderr: str) -> tuple[str, Path]:
    lines = [ln for ln in stderr.splitlines() if "checkpoint" in ln]
    assert len(lines) == 1, stderr[-3000:]
    line = lines[0]
    path = Path(line.split("checkpoint saved to ")[1].split(";")[0])
    return line, path


def _params(ckpt: Path) -> dict[str, torch.Tensor]:
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    return state, {k: v for k, v in state["state_dict"].items() if v.is_floating_point()}


def test_sigterm_saves_exits_143_and_resume_equals_an_uninterrupted_run(tmp_path):
    # 1. the reference: the same config, no interruption
    ref = _run(_config(tmp_path, "ref", None))
    assert ref.returncode == 0, ref.stderr[-3000:]
    ref_ckpt = next((tmp_path / "ref").rglob("last.ckpt"))

    # 2. SIGTERM mid-epoch
    code, out, err = _interrupt(tmp_path, "stop", signal.SIGTERM)
    assert code == 128 + signal.SIGTERM, err[-3000:]
    assert "Traceback" not in err and "Traceback" not in out
    line, ckpt = _ckpt_line(err)
    assert line == f"training stopped by SIGTERM: checkpoint saved to {ckpt}; resume with --ckpt_path {ckpt}"
    assert ckpt.name == "last.ckpt" and ckpt.is_file()
    state, _ = _params(ckpt)
    assert state["global_step"] == STOP_AT  # stopped at the batch boundary where the signal arrived
    assert state["OfflineRLDataModule"]["sampler"]["resume_position"] == STOP_AT % STEPS_PER_EPOCH  # the sampler's own
    assert state["epoch"] == STOP_AT // STEPS_PER_EPOCH

    # 3. resume from it: same budget, same seed, no marker
    res = _run(_config(tmp_path, "resume", None), "--ckpt_path", str(ckpt))
    assert res.returncode == 0, res.stderr[-3000:]
    res_ckpt = next((tmp_path / "resume").rglob("last.ckpt"))
    ref_state, ref_params = _params(ref_ckpt)
    res_state, res_params = _params(res_ckpt)
    assert res_state["global_step"] == ref_state["global_step"] == STEPS_PER_EPOCH * MAX_EPOCHS
    assert ref_params.keys() == res_params.keys()
    differ = [k for k in ref_params if not torch.equal(ref_params[k], res_params[k])]
    assert not differ, f"resumed run differs from the uninterrupted one in {differ}"
    # the C4 partition and the evaluation history continue too
    cb = lambda s, name: next(v for k, v in s["callbacks"].items() if name in k)  # noqa: E731
    assert (cb(ref_state, "ClusterRefit")["labels"] == cb(res_state, "ClusterRefit")["labels"]).all()
    returns = lambda s: [(h["step"], h["return"]) for h in cb(s, "EvalCallback")["history"]]  # noqa: E731
    assert returns(ref_state) == returns(res_state) and len(returns(ref_state)) == MAX_EPOCHS


def test_sigint_saves_a_loadable_checkpoint_and_exits_130(tmp_path):
    code, out, err = _interrupt(tmp_path, "ctrl_c", signal.SIGINT)
    assert code == 128 + signal.SIGINT, err[-3000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    line, ckpt = _ckpt_line(err)
    assert line.startswith("training stopped by SIGINT: checkpoint saved to ")
    state, params = _params(ckpt)
    assert state["global_step"] == STOP_AT
    assert all(torch.isfinite(v).all() for v in params.values())
