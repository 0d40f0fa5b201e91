"""``load_policy(ckpt)``: a callable on raw observations (normalisation inside) that acts exactly as the trained
module in memory; ``python -m c4_lightning.evaluate --ckpt PATH --episodes 2`` prints return and normalised score."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from c4_lightning import Policy, load_policy
from c4_lightning.algos import CQL
from c4_lightning.c4.config import C4Config
from c4_lightning.cli import C4LightningCLI
from c4_lightning.data.datamodule import OfflineRLDataModule
from c4_lightning.data.scores import normalized_score
from c4_lightning.evaluation.rollout import evaluate_policy

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def td3bc_cli(tmp_path_factory):
    """A TD3BC+C4 run written by the command-line interface (in-process)."""
    root = tmp_path_factory.mktemp("policy")
    callbacks = json.dumps([{"class_path": "c4_lightning.evaluation.EvalCallback", "init_args": {"episodes": 1}}])
    return C4LightningCLI(
        args=[
            "fit",
            "--config",
            str(REPO / "configs" / "td3bc_c4.yaml"),
            "--model.init_args.hidden_dims",
            "[32,32]",
            "--data.batch_size",
            "32",
            "--data.steps_per_epoch",
            "6",
            "--trainer.max_epochs",
            "1",
            "--model.c4.pca_dim",
            "4",
            "--model.probe_size",
            "256",
            "--trainer.callbacks",
            callbacks,
            "--trainer.enable_progress_bar",
            "false",
            "--trainer.enable_model_summary",
            "false",
            "--trainer.default_root_dir",
            str(root),
        ]
    )


def raw_observations(dm: OfflineRLDataModule, n: int = 64) -> np.ndarray:
    """Raw (unnormalised) dataset observations plus some far outside the data."""
    obs = dm.transitions.observations[:n].numpy()
    rng = np.random.default_rng(0)
    return np.concatenate([obs, rng.normal(scale=5.0, size=(8, obs.shape[1])).astype(np.float32)])


def check_same_actions(policy: Policy, module, obs: np.ndarray) -> None:
    module.eval()
    with torch.no_grad():
        expected = module.act(torch.as_tensor(obs)).cpu()
    batch = policy(obs)
    assert isinstance(batch, np.ndarray) and batch.shape == tuple(expected.shape) and batch.dtype == np.float32
    assert np.array_equal(batch, expected.numpy())
    single = policy(obs[0])
    with torch.no_grad():
        expected_single = module.act(torch.as_tensor(obs[0])).cpu()
    assert single.shape == (expected.shape[1],) and np.array_equal(single, expected_single.numpy())
    np.testing.assert_allclose(single, batch[0], rtol=0, atol=1e-6)
    as_tensor = policy(torch.as_tensor(obs))
    assert isinstance(as_tensor, torch.Tensor) and torch.equal(as_tensor, expected)
    # normalisation is inside: the raw observations are not what the actor sees
    assert not np.allclose(obs, (obs - module.obs_mean.numpy()) / module.obs_std.numpy())


def test_load_policy_from_cli_checkpoint_acts_like_the_module(td3bc_cli):
    ckpt = td3bc_cli.trainer.checkpoint_callback.last_model_path
    policy = load_policy(ckpt)
    assert policy.env_id == "Hopper-v5" and policy.ref_scores is not None
    assert policy.obs_dim == 11 and policy.act_dim == 3
    check_same_actions(policy, td3bc_cli.model, raw_observations(td3bc_cli.datamodule))
    assert torch.equal(policy.module.obs_mean, td3bc_cli.model.obs_mean)


def test_load_policy_cql_python_api(tmp_path):
    model = CQL(hidden_dims=(32, 32), probe_size=256, c4=C4Config(enabled=False))
    dm = OfflineRLDataModule(batch_size=32, steps_per_epoch=4)
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, datamodule=dm)
    path = tmp_path / "cql.ckpt"
    trainer.save_checkpoint(path)
    policy = load_policy(path)
    assert type(policy.module).__name__ == "CQL"
    check_same_actions(policy, model, raw_observations(dm))


def test_load_policy_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_policy(tmp_path / "missing.ckpt")
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot be read"):
        load_policy(junk)
    other = tmp_path / "other.ckpt"
    torch.save({"state_dict": {}}, other)
    with pytest.raises(ValueError, match="not written by a c4_lightning"):
        load_policy(other)


def test_policy_rejects_wrong_observation_size(td3bc_cli):
    policy = load_policy(td3bc_cli.trainer.checkpoint_callback.last_model_path)
    with pytest.raises(ValueError, match="11"):
        policy(np.zeros(5, dtype=np.float32))


def _evaluate(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, "-m", "c4_lightning.evaluate", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_evaluate_command_prints_return_and_normalised_score(td3bc_cli, tmp_path):
    ckpt = td3bc_cli.trainer.checkpoint_callback.last_model_path
    proc = _evaluate(["--ckpt", ckpt, "--episodes", "2"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    m = re.search(r"return (-?\d+\.\d) \+- (\d+\.\d) over 2 episodes, normalized score (-?\d+\.\d)", proc.stdout)
    assert m, proc.stdout
    # the same numbers as evaluating the checkpoint's policy here (deterministic policy, seeded envs)
    policy = load_policy(ckpt)
    returns = evaluate_policy(policy, policy.env_id, episodes=2, seed=0)
    assert m.group(1) == f"{returns.mean():.1f}"
    assert m.group(3) == f"{normalized_score(returns.mean(), *policy.ref_scores):.1f}"


def test_evaluate_command_errors_are_one_line(tmp_path, capsys):
    from c4_lightning.evaluate import main as evaluate_main

    assert evaluate_main(["--ckpt", str(tmp_path / "missing.ckpt"), "--episodes", "2"]) == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "missing.ckpt" in lines[0] and lines[0].startswith("error:")
