"""Faults during training and no lost work (in-process, tiny sizes, CPU).

* a GMM refit that fails keeps the previous partition, warns and counts ``c4/refit_failures`` (TensorBoard);
* a cluster smaller than a batch is never sampled;
* a NaN/Inf loss stops the run naming the update and the loss, after checkpointing the last good state
  (in-process and through the CLI, exit code 3);
* an evaluation env that raises is reported and training continues;
* ``last.ckpt`` is written atomically: a save that fails half-way leaves the previous one loadable;
* an end-of-epoch checkpoint resumes exactly (the mid-epoch SIGTERM case is in test_signals.py);
* the helpers of ``c4_lightning.training`` (checkpoint I/O, shutdown, RNG state) and the CLI's error line.
"""

from __future__ import annotations

import io
import json
import os
import random
import subprocess
import sys
import warnings
from pathlib import Path

import gymnasium as gym
import lightning as L
import numpy as np
import pytest
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger

import c4_lightning.c4.callback as refit_module
from c4_lightning.algos import TD3BC
from c4_lightning.algos.base import NonFiniteLossError
from c4_lightning.c4.callback import ClusterRefitCallback
from c4_lightning.c4.clustering import ClusterFitError
from c4_lightning.c4.config import C4Config
from c4_lightning.data.datamodule import OfflineRLDataModule
from c4_lightning.evaluation import EvalCallback
from c4_lightning.cli import error_line
from c4_lightning.data.sampler import check_cluster_sampling
from c4_lightning.training.checkpoint_io import AtomicCheckpointIO
from c4_lightning.training.rng import rng_state, set_rng_state
from c4_lightning.training.shutdown import GracefulShutdown, TrainingInterrupted

REPO = Path(__file__).resolve().parents[1]
STEPS = 5


def make_dm(**kw) -> OfflineRLDataModule:
    args = dict(
        dataset_id="hopper/random-medium-expert-10k", max_transitions=1000, batch_size=32, steps_per_epoch=STEPS
    )
    args.update(kw)
    return OfflineRLDataModule(**args)


def make_model(c4: bool = True, **c4_kw) -> TD3BC:
    cfg = C4Config(
        **{"enabled": c4, "n_clusters": 2, "refit_every_n_epochs": 1, "pca_dim": 8, "fit_subsample": 500, **c4_kw}
    )
    return TD3BC(hidden_dims=(32, 32), probe_size=64, log_every_n_steps=1, c4=cfg)


def make_trainer(tmp_path: Path, max_epochs: int = 2, callbacks=(), logger=None, **kw) -> L.Trainer:
    args = dict(
        max_epochs=max_epochs,
        accelerator="cpu",
        devices=1,
        logger=logger if logger is not None else False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        use_distributed_sampler=False,
        default_root_dir=str(tmp_path),
        log_every_n_steps=1,
        callbacks=list(callbacks),
    )
    args.update(kw)
    return L.Trainer(**args)


class BatchSpy(Callback):
    def __init__(self):
        self.indices: list[torch.Tensor] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.indices.append(batch["indices"].cpu().clone())


def _scalars(log_dir: Path, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)] if tag in acc.Tags()["scalars"] else []


# ---------------------------------------------------------------------------------------------- C4 refits


def test_failed_refit_keeps_previous_partition_warns_and_counts(tmp_path, monkeypatch):
    real_fit = refit_module.fit_partition
    calls = {"n": 0}

    def flaky_fit(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # the first refit (end of epoch 0): the initial partition was call 1
            raise ClusterFitError("GaussianMixture fit failed: simulated ill-conditioned covariance")
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(refit_module, "fit_partition", flaky_fit)
    seen = []

    class Watch(Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            seen.append(trainer.datamodule.sampler.labels.clone())

    logger = TensorBoardLogger(str(tmp_path), name="tb")
    dm, model = make_dm(), make_model()
    trainer = make_trainer(tmp_path, max_epochs=3, callbacks=[Watch()], logger=logger)
    with pytest.warns(
        UserWarning,
        match=r"C4 refit at epoch 0 failed \(GaussianMixture fit failed: simulated.*"
        r"keeping the previous partition",
    ):
        trainer.fit(model, datamodule=dm)
    assert trainer.global_step == 3 * STEPS  # training went on
    refit = next(c for c in trainer.callbacks if isinstance(c, ClusterRefitCallback))
    assert calls["n"] == 4 and refit.failures == 1 and refit.refits == 3
    assert torch.equal(seen[1], seen[0])  # epoch 1 trained on the partition made before the failure
    logger.experiment.flush()
    failures = _scalars(Path(logger.log_dir), "c4/refit_failures")
    assert [v for _, v in failures] == [0.0, 1.0, 1.0, 1.0]


def test_cluster_smaller_than_a_batch_is_never_sampled(tmp_path, monkeypatch):
    real_fit = refit_module.fit_partition
    n, tiny = 1000, np.arange(10)  # cluster 2: 10 members < batch_size 32

    def lopsided(*args, **kwargs):
        _, model = real_fit(*args, **kwargs)
        labels = (np.arange(n) % 2).astype(np.int64)
        labels[tiny] = 2
        return labels, model

    monkeypatch.setattr(refit_module, "fit_partition", lopsided)
    spy = BatchSpy()
    dm = make_dm(steps_per_epoch=40)
    trainer = make_trainer(tmp_path, max_epochs=1, callbacks=[spy])
    trainer.fit(make_model(n_clusters=3), datamodule=dm)
    sampler = dm.sampler
    assert sampler.cluster_sizes.tolist() == [495, 495, 10] and sampler.active_clusters.tolist() == [0, 1]
    labels = torch.as_tensor((np.arange(n) % 2))
    labels[tiny] = 2
    assert len(spy.indices) == 40
    for idx in spy.indices:
        assert not np.isin(idx.numpy(), tiny).any()
        assert torch.all(labels[idx] == labels[idx[0]])  # one cluster per batch
    assert {int(labels[idx[0]]) for idx in spy.indices} == {0, 1}


# ---------------------------------------------------------------------------------------------- NaN / Inf


def test_nonfinite_loss_stops_naming_update_and_loss_after_checkpointing_the_last_good_state(tmp_path):
    class Poisoned(TD3BC):
        def update(self, batch):
            if int(self.updates_done) == 7:
                batch = dict(batch, rewards=batch["rewards"] * float("nan"))
            return super().update(batch)

    model = Poisoned(hidden_dims=(32, 32), probe_size=64, c4=C4Config(enabled=False))
    logger = TensorBoardLogger(str(tmp_path), name="tb")
    trainer = make_trainer(tmp_path, max_epochs=3, logger=logger)
    with pytest.raises(
        NonFiniteLossError,
        match=r"non-finite critic_loss at update 7 \(epoch 1\); "
        r"the state that produced it is saved to .*nonfinite-state\.ckpt",
    ):
        trainer.fit(model, datamodule=make_dm())
    path = Path(logger.log_dir) / "checkpoints" / "nonfinite-state.ckpt"
    ckpt = torch.load(path, map_location="cpu", weights_only=True)  # also: loadable without pickled objects
    assert ckpt["global_step"] == 7
    params = {k: v for k, v in ckpt["state_dict"].items() if v.is_floating_point()}
    assert params and all(torch.isfinite(v).all() for v in params.values())
    # the saved state is the live one: the bad update never reached the parameters
    for k, v in model.state_dict().items():
        assert torch.equal(v, ckpt["state_dict"][k]), k
    restored = TD3BC.load_from_checkpoint(path, map_location="cpu")
    assert torch.isfinite(restored.act(torch.zeros(1, 11))).all()


def test_nonfinite_loss_through_the_cli_exits_3_with_one_line_and_keeps_the_run(tmp_path):
    root = tmp_path / "runs"
    cmd = [
        sys.executable,
        "train.py",
        "fit",
        "--config",
        "configs/td3bc.yaml",
        "--trainer.default_root_dir",
        str(root),
        "--data.reward_scale",
        "1e36",
        "--data.steps_per_epoch",
        "3",
        "--data.batch_size",
        "32",
        "--trainer.max_epochs",
        "1",
        "--model.init_args.hidden_dims",
        "[32,32]",
        "--trainer.callbacks",
        "[]",
        "--trainer.enable_progress_bar",
        "false",
    ]
    proc = subprocess.run(
        cmd, cwd=REPO, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=180
    )
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "non-finite critic_loss at update 0 (epoch 0)" in errors[0], proc.stderr[-3000:]
    path = Path(errors[0].split("the state that produced it is saved to ")[1].split(" for inspection")[0])
    assert path.is_file() and root in path.parents
    params = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    assert all(torch.isfinite(v).all() for v in params.values() if v.is_floating_point())


# ---------------------------------------------------------------------------------------------- evaluation


class FlakyEnv(gym.Wrapper):
    """Hopper whose first ``failures`` episodes raise in ``step`` (a simulated simulator crash)."""

    failures = 0

    def reset(self, **kwargs):
        self._fail = FlakyEnv.failures > 0
        FlakyEnv.failures -= 1 if self._fail else 0
        return self.env.reset(**kwargs)

    def step(self, action):
        if self._fail:
            raise RuntimeError("simulated MuJoCo instability")
        return self.env.step(action)


def test_evaluation_env_that_raises_is_reported_and_training_continues(tmp_path):
    env_id = "c4test/FlakyHopper-v0"
    if env_id not in gym.registry:
        gym.register(env_id, entry_point=lambda **kw: FlakyEnv(gym.make("Hopper-v5", **kw)))
    FlakyEnv.failures = 1
    ev = EvalCallback(every_n_epochs=1, episodes=1, max_envs=1, env_id=env_id)
    logger = TensorBoardLogger(str(tmp_path), name="tb")
    trainer = make_trainer(tmp_path, max_epochs=3, callbacks=[ev], logger=logger)
    with pytest.warns(
        UserWarning,
        match=r"evaluation at epoch 0 failed \(RuntimeError: simulated MuJoCo "
        r"instability\); training continues",
    ):
        trainer.fit(make_model(c4=False), datamodule=make_dm())
    assert trainer.global_step == 3 * STEPS
    assert ev.failures == 1 and [h["epoch"] for h in ev.history] == [1, 2]
    assert ev.final_score() is not None
    logger.experiment.flush()
    assert [v for _, v in _scalars(Path(logger.log_dir), "eval/failures")] == [1.0, 1.0, 1.0]


# ---------------------------------------------------------------------------------------------- checkpoints


def test_last_ckpt_survives_a_save_that_fails_half_way(tmp_path, monkeypatch):
    ckpt_dir = tmp_path / "ckpts"
    real_save = torch.save
    state = {"armed": False, "failed": 0}

    def failing_save(obj, f, *args, **kwargs):
        if state["armed"]:  # write half of the bytes to the real target, then die
            buf = io.BytesIO()
            real_save(obj, buf)
            data = buf.getvalue()[: len(buf.getvalue()) // 2]
            if isinstance(f, (str, os.PathLike)):
                Path(f).write_bytes(data)
            else:
                f.write(data)
                f.flush()
            state["failed"] += 1
            raise OSError(28, "No space left on device (simulated)")
        return real_save(obj, f, *args, **kwargs)

    class Arm(Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            state["armed"] = trainer.current_epoch == 1  # every save from epoch 1 on fails

    monkeypatch.setattr(torch, "save", failing_save)
    mc = ModelCheckpoint(dirpath=ckpt_dir, save_last=True, every_n_epochs=1)
    trainer = make_trainer(tmp_path, max_epochs=2, callbacks=[mc, GracefulShutdown(), Arm()], enable_checkpointing=True)
    with pytest.raises(OSError, match="simulated"):
        trainer.fit(make_model(c4=False), datamodule=make_dm())
    assert state["failed"] == 1 and isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)
    monkeypatch.setattr(torch, "save", real_save)
    ckpt = torch.load(ckpt_dir / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == STEPS and ckpt["epoch"] == 0
    assert sorted(p.name for p in ckpt_dir.iterdir()) == ["epoch=0-step=5.ckpt", "last.ckpt"]  # no temp files


def test_atomic_io_is_installed_only_over_the_default_io(tmp_path):
    class MyIO(TorchCheckpointIO):
        pass

    for io_plugin, expected in ((None, AtomicCheckpointIO), (MyIO(), MyIO)):
        plugins = [io_plugin] if io_plugin is not None else None
        trainer = make_trainer(
            tmp_path, max_epochs=1, callbacks=[GracefulShutdown()], plugins=plugins, limit_train_batches=1
        )
        trainer.fit(make_model(c4=False), datamodule=make_dm())
        assert type(trainer.strategy.checkpoint_io) is expected


def test_end_of_epoch_checkpoint_resumes_exactly(tmp_path):
    def run(max_epochs, ckpt_path=None, sub="a"):
        L.seed_everything(5)
        dm, model = make_dm(), make_model(c4=True)
        mc = ModelCheckpoint(dirpath=tmp_path / sub, save_last=True, every_n_epochs=1)
        trainer = make_trainer(
            tmp_path, max_epochs=max_epochs, callbacks=[mc, GracefulShutdown()], enable_checkpointing=True
        )
        trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path)
        return model

    straight = run(3, sub="straight")
    run(2, sub="first")
    torch.rand(7)  # whatever the process did in between
    resumed = run(3, ckpt_path=tmp_path / "first" / "last.ckpt", sub="resumed")
    for (k, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), k


# ---------------------------------------------------------------------------------------------- helpers


def test_check_cluster_sampling():
    assert check_cluster_sampling(10_000, 256, 3, None) == 1000  # default max(B, N // 10)
    assert check_cluster_sampling(600, 200, 3, None) == 200  # exactly fits
    with pytest.raises(ValueError, match=r"n_clusters=4 x min_cluster_size=200 .* = 800 > N=600 .* at most 3"):
        check_cluster_sampling(600, 200, 4, None)
    with pytest.raises(ValueError, match=r"min_cluster_size=700 = 700 > N=600"):
        check_cluster_sampling(600, 32, 1, 700)


def test_c4_min_cluster_size_reaches_the_sampler_and_conflicts_are_refused(tmp_path):
    dm = make_dm()
    make_trainer(tmp_path, max_epochs=1, limit_train_batches=1).fit(make_model(min_cluster_size=50), datamodule=dm)
    assert dm.sampler.min_cluster_size == 50
    with pytest.raises(ValueError, match=r"model.c4.min_cluster_size=50 and data.min_cluster_size=60 disagree"):
        make_trainer(tmp_path, max_epochs=1).fit(
            make_model(min_cluster_size=50), datamodule=make_dm(min_cluster_size=60)
        )
    with pytest.raises(ValueError, match="C4 cannot sample its clusters"):
        make_trainer(tmp_path, max_epochs=1).fit(make_model(), datamodule=make_dm(min_cluster_size=600))


def test_error_line_unwraps_and_folds():
    inner = ValueError("model.c4.n_clusters=0 must be >= 1")
    try:
        try:
            raise inner
        except ValueError as e:
            raise ValueError(
                "Does not validate against any of the Union subtypes\nSubtypes: [...]\nErrors:\n"
                "  - model.c4.n_clusters=0 must be >= 1\n  - Expected a <class 'NoneType'>"
            ) from e
    except ValueError as outer:
        assert error_line(outer) == "model.c4.n_clusters=0 must be >= 1"
    listed = ValueError(
        "dataset 'x' was not found.\nDatasets available locally (a):\n  hopper/a-v0\n  hopper/b-v0\n"
        "Use one of these ids, or make the dataset with:\n  c4-collect record --env E"
    )
    assert error_line(listed) == (
        "dataset 'x' was not found. Datasets available locally (a): hopper/a-v0, "
        "hopper/b-v0; Use one of these ids, or make the dataset with: c4-collect record "
        "--env E"
    )
    assert "\n" not in error_line(TrainingInterrupted(15, "/x/last.ckpt"))


def test_rng_state_round_trip_and_weights_only_safe():
    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    buf = io.BytesIO()
    torch.save(rng_state(), buf)
    expected = (torch.rand(3), np.random.rand(3), random.random())
    buf.seek(0)
    set_rng_state(torch.load(buf, weights_only=True))
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], got[0]) and np.array_equal(expected[1], got[1]) and expected[2] == got[2]


def test_rng_is_restored_when_resuming_a_fit_not_by_load_from_checkpoint(tmp_path, monkeypatch):
    import c4_lightning.algos.base as base

    mc = ModelCheckpoint(dirpath=tmp_path / "c", save_last=True)
    make_trainer(tmp_path, max_epochs=1, callbacks=[mc], enable_checkpointing=True, limit_train_batches=2).fit(
        make_model(c4=False), datamodule=make_dm()
    )
    saved = torch.load(tmp_path / "c" / "last.ckpt", weights_only=True)["c4_lightning"]["rng"]
    calls = []
    monkeypatch.setattr(base, "set_rng_state", lambda state: calls.append(state))
    TD3BC.load_from_checkpoint(tmp_path / "c" / "last.ckpt")  # e.g. load_policy in a notebook
    assert calls == []
    make_trainer(tmp_path, max_epochs=2, limit_train_batches=2).fit(
        make_model(c4=False), datamodule=make_dm(), ckpt_path=tmp_path / "c" / "last.ckpt"
    )
    assert len(calls) == 1 and torch.equal(calls[0]["torch"], saved["torch"])


def test_training_interrupted_message_and_exit_code():
    err = TrainingInterrupted(15, "/runs/v0/checkpoints/last.ckpt")
    assert err.exit_code == 143
    assert str(err) == (
        "training stopped by SIGTERM: checkpoint saved to /runs/v0/checkpoints/last.ckpt; "
        "resume with --ckpt_path /runs/v0/checkpoints/last.ckpt"
    )
    assert TrainingInterrupted(2, None).exit_code == 130
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert "no checkpoint was saved" in str(TrainingInterrupted(2, None))


def test_checkpoints_get_the_umask_mode_and_stale_temporaries_are_removed(tmp_path):
    import stat

    from c4_lightning.training.checkpoint_io import AtomicCheckpointIO, remove_stale_temporaries

    import c4_lightning.training.checkpoint_io as reliability

    old = reliability._UMASK
    reliability._UMASK = 0o022  # the process umask is read once at import; pin it for this check
    try:
        path = tmp_path / "ckpts" / "last.ckpt"
        AtomicCheckpointIO().save_checkpoint({"x": torch.zeros(2)}, path)
        assert stat.S_IMODE(path.stat().st_mode) == 0o644  # readable by teammates, as any new file (was 0600)
    finally:
        reliability._UMASK = old
    stale = path.parent / ".last.ckpt.abc123.tmp"
    stale.write_bytes(b"partial")
    other = path.parent / "notes.tmp"
    other.write_text("not ours")
    assert remove_stale_temporaries(path.parent) == [stale]
    assert not stale.exists() and other.exists() and path.exists()


def _tiny_cli_run(
    root: Path, epochs: int, callbacks: list[dict], *extra: str, config: str = "configs/td3bc.yaml"
) -> subprocess.CompletedProcess:
    """``train.py fit`` with 32-unit networks, 3 updates of 32 transitions per epoch, the given callbacks (test ones
    from ``tests/sweep_helpers.py``) and ``extra`` arguments last."""
    env = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]),
    )
    args = ["--trainer.default_root_dir", str(root), "--data.steps_per_epoch", "3", "--data.batch_size", "32"]
    args += ["--trainer.max_epochs", str(epochs), "--model.init_args.hidden_dims", "[32,32]"]
    args += ["--trainer.enable_progress_bar", "false", "--trainer.callbacks", json.dumps(callbacks), *extra]
    cmd = [sys.executable, "train.py", "fit", "--config", config, *args]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_nonfinite_advice_works_end_to_end(tmp_path):
    """The NaN stop names the checkpoint to resume from; resuming from it with a lower learning rate trains to the
    end with that learning rate (the optimiser state no longer brings the old one back)."""
    root = tmp_path / "runs"
    poison = {"class_path": "sweep_helpers.PoisonBatch", "init_args": {"at_step": 7}}
    proc = _tiny_cli_run(root, 4, [poison])
    assert proc.returncode == 3, proc.stderr[-3000:]
    error = next(ln for ln in proc.stderr.splitlines() if ln.startswith("error:"))
    assert "non-finite critic_loss at update 7" in error
    resume_from = Path(error.split("resume from ")[1].split(" (the last checkpoint")[0])
    assert resume_from.name == "last.ckpt" and torch.load(resume_from, weights_only=True)["global_step"] == 6
    proc = _tiny_cli_run(root, 4, [], "--ckpt_path", str(resume_from), "--model.init_args.critic_lr", "1e-4")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resuming with changed settings: critic_lr 0.0003 -> 0.0001" in proc.stderr
    finals = sorted(root.rglob("last.ckpt"), key=lambda p: p.stat().st_mtime)
    final = torch.load(finals[-1], weights_only=True)
    assert final["global_step"] == 12
    assert final["optimizer_states"][0]["param_groups"][0]["lr"] == pytest.approx(1e-4)  # the critic's optimiser
    assert final["optimizer_states"][1]["param_groups"][0]["lr"] == pytest.approx(3e-4)


@pytest.mark.parametrize(
    "change, message",
    [
        (["--config", "configs/cql.yaml"], "was written by TD3BC, but the config trains CQL"),
        (["--model.init_args.hidden_dims", "[64,64]"], "hidden_dims [32, 32] -> [64, 64]"),
        (
            [
                "--config",
                "configs/td3bc_c4.yaml",
                "--model.init_args.hidden_dims",
                "[32,32]",
                "--model.c4.pca_dim",
                "4",
                "--model.init_args.q_normalizer",
                "batch",
            ],
            "c4.enabled False -> True",
        ),
    ],
)
def test_resume_refuses_what_the_checkpoint_cannot_honour(tmp_path, change, message):
    root = tmp_path / "runs"
    assert _tiny_cli_run(root, 1, []).returncode == 0
    (ckpt,) = root.rglob("last.ckpt")
    proc = _tiny_cli_run(root, 1, [], *change, "--trainer.max_epochs", "2", "--ckpt_path", str(ckpt))
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], proc.stderr[-2000:]


def test_resume_applies_a_changed_c4_setting(tmp_path):
    root = tmp_path / "runs"
    c4 = ["--model.c4.pca_dim", "4"]
    assert _tiny_cli_run(root, 1, [], *c4, config="configs/td3bc_c4.yaml").returncode == 0
    (ckpt,) = root.rglob("last.ckpt")
    resume = [*c4, "--trainer.max_epochs", "2", "--model.c4.penalty_weight", "0.5", "--ckpt_path", str(ckpt)]
    proc = _tiny_cli_run(root, 1, [], *resume, config="configs/td3bc_c4.yaml")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "resuming with changed settings: c4.penalty_weight 0.1 -> 0.5" in proc.stderr
    final = max(root.rglob("last.ckpt"), key=lambda p: p.stat().st_mtime)
    saved = torch.load(final, weights_only=True)
    assert saved["global_step"] == 6 and saved["hyper_parameters"]["c4"]["penalty_weight"] == 0.5


def test_nan_check_off_still_fails_a_run_whose_weights_went_non_finite(tmp_path):
    poison = {"class_path": "sweep_helpers.PoisonBatch", "init_args": {"at_step": 2}}
    proc = _tiny_cli_run(tmp_path / "runs", 1, [poison], "--model.init_args.nan_check", "false")
    assert proc.returncode == 3, proc.stderr[-3000:]
    error = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(error) == 1 and "training ended with non-finite weights" in error[0] and "nan_check true" in error[0]


def test_a_full_disk_names_the_intact_checkpoint_in_one_line(tmp_path):
    root = tmp_path / "runs"
    full = {"class_path": "sweep_helpers.DiskFullFrom", "init_args": {"epoch": 1}}
    proc = _tiny_cli_run(root, 3, [full])
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "No space left on device" in errors[0], proc.stderr[-3000:]
    last = next(root.rglob("last.ckpt"))
    assert f"{last} is intact" in errors[0] and f"resume with --ckpt_path {last}" in errors[0]
    assert torch.load(last, weights_only=True)["global_step"] == 3  # the end of epoch 0


def test_periodic_checkpoint_writes_the_full_state_without_a_console_line(tmp_path, caplog):
    """The mid-epoch checkpoint asks for the full state explicitly, so Lightning prints no "weights_only was not set"
    line into the console every 500 updates."""
    from c4_lightning.training import PeriodicCheckpoint, load_checkpoint

    periodic = PeriodicCheckpoint(every_n_updates=2)
    trainer = make_trainer(
        tmp_path,
        max_epochs=1,
        callbacks=[ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True), periodic],
        enable_checkpointing=True,
    )
    saved = []
    periodic_write = trainer.save_checkpoint

    def spy(path, *args, **kwargs):
        periodic_write(path, *args, **kwargs)
        saved.append(load_checkpoint(path))

    trainer.save_checkpoint = spy
    with caplog.at_level("INFO"):
        trainer.fit(make_model(c4=False), datamodule=make_dm())
    assert [c["global_step"] for c in saved] == [2, 4, 5, 5]  # periodic at 2 and 4, then ModelCheckpoint (epoch, last)
    assert all("callbacks" in c and "optimizer_states" in c for c in saved)
    assert "weights_only" not in caplog.text
