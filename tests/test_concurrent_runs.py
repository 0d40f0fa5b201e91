"""Two runs started at the same moment in one ``default_root_dir`` get a folder each (exclusive ``mkdir``), and a
failing run's clean-up never removes a folder it did not create."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def _cmd(root: Path, alpha: float, fail: bool) -> list[str]:
    cmd = [
        sys.executable,
        str(REPO / "train.py"),
        "fit",
        "--config",
        str(REPO / "configs" / "td3bc_c4.yaml"),
        "--model.init_args.hidden_dims",
        "[16,16]",
        "--model.init_args.alpha",
        str(alpha),
        "--data.batch_size",
        "32",
        "--data.steps_per_epoch",
        "5",
        "--trainer.max_steps",
        "5",
        "--model.c4.pca_dim",
        "4",
        "--trainer.callbacks",
        "[]",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.default_root_dir",
        str(root),
    ]
    if fail:  # refused in setup, after the run folder exists: 400 clusters of >= 256 rows cannot come from 10k
        cmd += ["--model.c4.n_clusters", "400"]
    return cmd


def _start_together(root: Path, fail_second: bool) -> list[subprocess.CompletedProcess]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    procs = [
        subprocess.Popen(
            _cmd(root, alpha, fail), cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for alpha, fail in ((2.5, False), (3.5, fail_second))
    ]
    return [(p, *p.communicate(timeout=600)) for p in procs]


@pytest.mark.slow
@pytest.mark.parametrize("repeat", range(3))
def test_two_healthy_runs_started_together_keep_their_own_folders(tmp_path, repeat):
    results = _start_together(tmp_path, fail_second=False)
    assert [p.returncode for p, *_ in results] == [0, 0], [err[-1500:] for _, _, err in results]
    versions = sorted((tmp_path / "lightning_logs").iterdir())
    assert [v.name for v in versions] == ["version_0", "version_1"]
    alphas = sorted(yaml.safe_load((v / "config.yaml").read_text())["model"]["init_args"]["alpha"] for v in versions)
    assert alphas == [2.5, 3.5], "each folder holds its own run's config"
    for v in versions:
        assert (v / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("repeat", range(3))
def test_failing_run_never_removes_a_healthy_runs_folder(tmp_path, repeat):
    results = _start_together(tmp_path, fail_second=True)
    (healthy, _, herr), (failing, _, ferr) = results
    assert healthy.returncode == 0, herr[-1500:]
    assert failing.returncode == 2 and "n_clusters" in ferr
    versions = list((tmp_path / "lightning_logs").iterdir())
    assert len(versions) == 1, [v.name for v in versions]  # the failing run removed its own folder only
    kept = versions[0]
    assert yaml.safe_load((kept / "config.yaml").read_text())["model"]["init_args"]["alpha"] == 2.5
    assert (kept / "checkpoints" / "last.ckpt").is_file()
