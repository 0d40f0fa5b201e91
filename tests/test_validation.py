"""Input validation at the door, through the real command line.

Every case runs ``python train.py fit --config configs/td3bc_c4.yaml ...`` in a subprocess and checks: a
non-zero exit code, exactly one ``error:`` line on stderr naming the problem and the fix, no traceback, no
training step, and no run directory left under ``--trainer.default_root_dir`` that looks like a real run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from minari_fixtures import build_minari_dataset, episode_buffers

REPO = Path(__file__).resolve().parents[1]
HOPPER = REPO / "datasets" / "hopper" / "random-medium-expert-10k-v0"
SMALL = [
    "--data.steps_per_epoch",
    "3",
    "--data.batch_size",
    "32",
    "--trainer.max_epochs",
    "1",
    "--model.init_args.hidden_dims",
    "[32,32]",
    "--model.init_args.probe_size",
    "64",
    "--trainer.enable_progress_bar",
    "false",
]


def _eval_config(tmp_path: Path, **eval_args) -> Path:
    cb = {
        "class_path": "c4_lightning.evaluation.EvalCallback",
        "init_args": {"every_n_epochs": 1, "episodes": 1, "max_envs": 1, **eval_args},
    }
    path = tmp_path / "eval.yaml"
    path.write_text(yaml.safe_dump({"trainer": {"callbacks": [cb]}}))
    return path


def fit(tmp_path: Path, *args: str, datasets: Path | None = None, eval_args: dict | None = None):
    """Run the CLI; returns (CompletedProcess, default_root_dir)."""
    root = tmp_path / "runs"
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    if datasets is not None:  # only the given datasets folder (and an empty Minari cache) are visible
        env["C4_DATASETS_PATH"] = str(datasets)
        env["MINARI_DATASETS_PATH"] = str(tmp_path / "empty-cache")
    cmd = [
        sys.executable,
        "train.py",
        "fit",
        "--config",
        "configs/td3bc_c4.yaml",
        "--config",
        str(_eval_config(tmp_path, **(eval_args or {}))),
        "--trainer.default_root_dir",
        str(root),
        *SMALL,
        *args,
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    return proc, root


def assert_refused(proc, root: Path, *needles: str) -> str:
    """Non-zero exit, one clear error line (holding every needle), no traceback, no run left behind."""
    assert proc.returncode == 2, f"exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout, proc.stderr[-3000:]
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, proc.stderr[-3000:]
    line = errors[0]
    for needle in needles:
        assert needle in line, f"{needle!r} not in {line!r}"
    # nothing that looks like a run: no version folder, no checkpoint, no event file, no config dump
    leftovers = [p for p in root.rglob("*")] if root.exists() else []
    assert not [p for p in leftovers if p.is_file() or p.name.startswith("version_")], leftovers
    return line


def _dataset_copy(tmp_path: Path) -> Path:
    """A copy of the embedded 10k Hopper mixture in a fresh datasets folder; returns its data file."""
    target = tmp_path / "datasets" / "hopper" / HOPPER.name
    shutil.copytree(HOPPER, target)
    return target / "data" / "main_data.hdf5"


@pytest.fixture(scope="module")
def toy_datasets(tmp_path_factory) -> Path:
    """Small Minari datasets with known problems, in one datasets folder."""
    root = tmp_path_factory.mktemp("datasets")
    eps = [(40, "trunc")] * 8
    build_minari_dataset(root, "toy/pendulum-v0", eps, obs_dim=3, act_dim=1, env_id="Pendulum-v1")
    # metadata says Pendulum-v1, but the data have Hopper's shapes (11, 3)
    build_minari_dataset(root, "toy/mislabelled-v0", eps, obs_dim=11, act_dim=3, env_id="Pendulum-v1")
    # Hopper's shapes, actions far outside [-1, 1] (the fixture's codes)
    build_minari_dataset(root, "toy/wide-actions-v0", eps, obs_dim=11, act_dim=3, env_id="Hopper-v5")
    build_minari_dataset(root, "toy/one-step-v0", [(1, "term")], obs_dim=11, act_dim=3, env_id="Hopper-v5")
    build_minari_dataset(root, "toy/no-metadata-v0", eps, obs_dim=11, act_dim=3, env_id="Hopper-v5")
    next(root.rglob("no-metadata-v0/data/metadata.json")).write_text("{}")
    bufs = episode_buffers(eps, 3, 1)
    bufs[2].observations[5, 1] = np.nan
    bufs[4].rewards[7] = np.inf
    build_minari_dataset(root, "toy/nan-v0", buffers=bufs, obs_dim=3, act_dim=1, env_id="Pendulum-v1")
    return root


# ---------------------------------------------------------------------------------------------- datasets


def test_unknown_dataset_id(tmp_path):
    proc, root = fit(tmp_path, "--data.dataset_id", "hopper/no-such-set")
    line = assert_refused(
        proc, root, "hopper/no-such-set", "was not found", "hopper/random-medium-expert-10k-v0", "c4-collect"
    )
    assert "Use one of these ids" in line


def test_corrupt_dataset_file(tmp_path):
    data_file = _dataset_copy(tmp_path)
    size = data_file.stat().st_size
    with open(data_file, "r+b") as f:
        f.truncate(size // 2)
    proc, root = fit(tmp_path, datasets=tmp_path / "datasets")
    assert_refused(proc, root, "hopper/random-medium-expert-10k", "main_data.hdf5")


def test_dataset_for_another_env_than_the_evaluation_env(tmp_path, toy_datasets):
    proc, root = fit(
        tmp_path, "--data.dataset_id", "toy/pendulum", datasets=toy_datasets, eval_args={"env_id": "Hopper-v5"}
    )
    assert_refused(proc, root, "obs 3, action 1", "Hopper-v5", "(obs (11,), action (3,))", "dataset_id")


def test_metadata_env_that_does_not_fit_the_data(tmp_path, toy_datasets):
    proc, root = fit(tmp_path, "--data.dataset_id", "toy/mislabelled", datasets=toy_datasets)
    assert_refused(proc, root, "obs 11, action 3", "Pendulum-v1", "(obs (3,), action (1,))")


def test_nan_and_inf_in_the_data(tmp_path, toy_datasets):
    proc, root = fit(tmp_path, "--data.dataset_id", "toy/nan", datasets=toy_datasets)
    assert_refused(proc, root, "toy/nan", "'observations'", "'rewards'", "NaN/Inf", "re-create the dataset")


def test_reward_scale_that_overflows_float32(tmp_path):
    proc, root = fit(tmp_path, "--data.reward_scale", "3e38")
    assert_refused(proc, root, "data.reward_scale", "float32")


# ---------------------------------------------------------------------------------------------- sizes


def test_batch_larger_than_the_dataset(tmp_path):
    proc, root = fit(tmp_path, "--data.max_transitions", "300", "--data.batch_size", "512")
    assert_refused(proc, root, "data.batch_size=512", "N=300", "lower data.batch_size or raise data.max_transitions")


def test_clusters_that_can_never_be_sampled_default_min_size(tmp_path):
    # default min size max(batch 128, N // 10) = 128; 3 clusters x 128 > 300 transitions
    proc, root = fit(tmp_path, "--data.max_transitions", "300", "--data.batch_size", "128")
    assert_refused(
        proc, root, "n_clusters=3", "min_cluster_size=128", "N=300", "uniform", "lower model.c4.n_clusters to at most 2"
    )


# ---------------------------------------------------------------------------------------------- options


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("--model.init_args.c4.penalty_weight", "-1", "model.c4.penalty_weight=-1.0 must be >= 0"),
        ("--model.init_args.max_action", "0", "model.max_action=0.0 must be > 0"),
        ("--trainer.max_steps", "0", "trainer.max_steps=0 trains nothing"),
        ("--trainer.max_epochs", "0", "trainer.max_epochs=0 trains nothing"),
        ("--model.init_args.c4.n_clusters", "0", "model.c4.n_clusters=0 must be >= 1"),
    ],
)
def test_invalid_option_values(tmp_path, option, value, message):
    proc, root = fit(tmp_path, option, value)
    assert_refused(proc, root, message)


def test_dataset_actions_outside_the_policy_range_are_refused_or_clipped(tmp_path, toy_datasets):
    proc, root = fit(tmp_path, "--data.dataset_id", "toy/wide-actions", datasets=toy_datasets)
    line = assert_refused(
        proc,
        root,
        "of the dataset's action entries lie outside the policy's range [-1.0, 1.0]",
        "set data.clip_actions 1.0",
        "model.max_action",
    )
    assert line.startswith("error: 9") and "%" in line  # the share is named
    proc, root = fit(
        tmp_path, "--data.dataset_id", "toy/wide-actions", "--data.clip_actions", "1", datasets=toy_datasets
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "data.clip_actions=1.0: clipped" in proc.stderr
    assert next(root.rglob("last.ckpt")).is_file()


def test_a_one_transition_dataset(tmp_path, toy_datasets):
    proc, root = fit(
        tmp_path,
        "--data.dataset_id",
        "toy/one-step",
        "--data.batch_size",
        "1",
        "--data.clip_actions",
        "1",
        datasets=toy_datasets,
    )
    assert_refused(proc, root, "dataset toy/one-step has N=1 transition", "at least 2")


def test_metadata_without_spaces(tmp_path, toy_datasets):
    proc, root = fit(tmp_path, "--data.dataset_id", "toy/no-metadata", datasets=toy_datasets)
    assert_refused(
        proc,
        root,
        "no-metadata-v0/data/metadata.json",
        "names neither observation_space",
        "holds nothing",
        "re-create it",
    )


def test_a_yaml_syntax_error_names_the_file_and_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  init_args: {hidden_dims: [8, 8]\ndata:\n  batch_size: 4\n")
    proc, root = fit(tmp_path, "--config", str(bad))
    assert_refused(proc, root, f"config {bad} line 3", "flow mapping that starts at line 2", "fix the YAML")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine where PyTorch sees no GPU")
def test_gpu_accelerator_without_a_gpu(tmp_path):
    proc, root = fit(tmp_path, "--trainer.accelerator", "gpu")
    assert_refused(proc, root, "trainer.accelerator=gpu", "--trainer.accelerator cpu")


@pytest.mark.parametrize("how", ["flag", "env"])
def test_debug_shows_the_cause_above_the_one_line_error(tmp_path, how):
    extra = ["--debug"] if how == "flag" else []
    env = {"C4_DEBUG": "1"} if how == "env" else {}
    root = tmp_path / "runs"
    proc = subprocess.run(
        [
            sys.executable,
            "train.py",
            "fit",
            "--config",
            "configs/td3bc.yaml",
            *extra,
            "--model.init_args.max_action",
            "0",
            "--trainer.default_root_dir",
            str(root),
        ],
        cwd=REPO,
        env=dict(os.environ, **env),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 2
    assert "Traceback" in proc.stderr and "algos/base.py" in proc.stderr  # the frame that raised
    assert proc.stderr.strip().splitlines()[-1] == "error: model.max_action=0.0 must be > 0"
