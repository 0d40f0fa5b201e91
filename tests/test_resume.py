"""Exact resume: TD3BC+C4 stopped after epoch 2 and resumed from ``last.ckpt`` to epoch 4 ends bit-identical
to an uninterrupted 4-epoch run (CPU, same seed), with a GMM refit after every epoch in between, so the
partition, the GMM state, the sampler stream, the optimiser states and the global RNG all have to survive
the checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from c4_lightning.cli import C4LightningCLI

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "td3bc_c4.yaml"
STEPS = 5
CALLBACKS = json.dumps([{"class_path": "c4_lightning.evaluation.EvalCallback", "init_args": {"episodes": 1}}])


def run(
    root: Path,
    epochs: int,
    ckpt: Path | None = None,
    cadence: tuple[str, ...] = ("--model.c4.refit_every_n_epochs", "1"),  # with any further options
) -> C4LightningCLI:
    args = [
        "fit",
        "--config",
        str(CONFIG),
        "--model.init_args.hidden_dims",
        "[16,16]",
        "--data.batch_size",
        "32",
        "--data.steps_per_epoch",
        str(STEPS),
        "--trainer.max_epochs",
        str(epochs),
        *cadence,
        "--model.c4.pca_dim",
        "4",
        "--model.c4.fit_subsample",
        "3000",
        "--model.probe_size",
        "256",
        "--trainer.log_every_n_steps",
        "1",
        "--trainer.callbacks",
        CALLBACKS,
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.enable_model_summary",
        "false",
        "--trainer.default_root_dir",
        str(root),
    ]
    if ckpt is not None:
        args += ["--ckpt_path", str(ckpt)]
    return C4LightningCLI(args=args)


def last_ckpt(cli: C4LightningCLI) -> Path:
    path = Path(cli.trainer.checkpoint_callback.last_model_path)
    assert path.is_file()
    return path


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def callback_state(ckpt: dict, name: str) -> dict:
    states = [v for k, v in ckpt["callbacks"].items() if k.startswith(name)]
    assert len(states) == 1, list(ckpt["callbacks"])
    return states[0]


def assert_same(a, b, where: str = "") -> None:
    """Exact, recursive equality of checkpoint contents (tensors and arrays bit for bit)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), where
    elif isinstance(a, np.ndarray):
        assert np.array_equal(a, np.asarray(b)), where
    elif isinstance(a, dict):
        assert set(a) == set(b), (where, set(a) ^ set(b))
        for k in a:
            assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, (where, a, b)


def without_timing(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in h.items() if k != "seconds"} for h in history]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("resume")
    full = run(base / "full", 4)
    half = run(base / "half", 2)
    half_ckpt = last_ckpt(half)
    resumed = run(base / "resumed", 4, half_ckpt)
    return {
        "base": base,
        "full": load(last_ckpt(full)),
        "half": load(half_ckpt),
        "half_path": half_ckpt,
        "resumed": load(last_ckpt(resumed)),
        "resumed_cli": resumed,
    }


def test_checkpoint_holds_the_whole_training_state(runs):
    ckpt = runs["half"]
    keys = ckpt["state_dict"].keys()
    for prefix in ("actor.", "critic.", "actor_target.", "critic_target."):
        assert any(k.startswith(prefix) for k in keys), prefix
    assert ckpt["state_dict"]["obs_mean"].shape == (11,) and ckpt["state_dict"]["obs_std"].shape == (11,)
    assert float(ckpt["state_dict"]["obs_std"].min()) > 0
    assert int(ckpt["state_dict"]["updates_done"]) == 2 * STEPS
    assert len(ckpt["optimizer_states"]) == 2 and all(s["state"] for s in ckpt["optimizer_states"])
    sampler = ckpt["OfflineRLDataModule"]["sampler"]
    assert sampler["labels"] is not None and sampler["epoch"] == 2 and sampler["resume_position"] == 0
    refit = callback_state(ckpt, "ClusterRefitCallback")
    assert refit["refits"] == 3  # initial partition + a refit after each of the 2 epochs
    assert refit["model"] is not None and refit["labels"] is not None
    assert_same(torch.as_tensor(np.asarray(refit["labels"])).long(), sampler["labels"].long(), "labels")
    assert len(callback_state(ckpt, "EvalCallback")["history"]) == 2
    rng = ckpt["c4_lightning"]["rng"]
    assert {"torch", "numpy", "python"} <= set(rng)


def test_resumed_run_equals_uninterrupted_run(runs):
    full, resumed = runs["full"], runs["resumed"]
    assert full["global_step"] == resumed["global_step"] == 4 * STEPS
    assert full["epoch"] == resumed["epoch"]
    assert_same(full["state_dict"], resumed["state_dict"], "state_dict")
    assert_same(full["optimizer_states"], resumed["optimizer_states"], "optimizer_states")
    assert_same(full["OfflineRLDataModule"], resumed["OfflineRLDataModule"], "sampler")
    refit_full = callback_state(full, "ClusterRefitCallback")
    refit_resumed = callback_state(resumed, "ClusterRefitCallback")
    assert refit_full["refits"] == refit_resumed["refits"] == 5
    assert_same(refit_full, refit_resumed, "ClusterRefitCallback")
    eval_full, eval_resumed = callback_state(full, "EvalCallback"), callback_state(resumed, "EvalCallback")
    assert len(eval_full["history"]) == 4
    assert without_timing(eval_full["history"]) == without_timing(eval_resumed["history"])
    assert_same(full["c4_lightning"]["rng"], resumed["c4_lightning"]["rng"], "rng")
    # the refits in between mattered: the partition changed after the checkpoint
    labels_at_2 = torch.as_tensor(np.asarray(callback_state(runs["half"], "ClusterRefitCallback")["labels"]))
    labels_at_4 = torch.as_tensor(np.asarray(refit_full["labels"]))
    assert not torch.equal(labels_at_2, labels_at_4)


def test_resume_is_sensitive_to_the_saved_rng_state(runs, tmp_path):
    """Control: the same resume without the saved global RNG state (TD3BC's target-policy noise) diverges,
    so the equality above is not vacuous."""
    ckpt = load(runs["half_path"])
    del ckpt["c4_lightning"]["rng"]
    path = tmp_path / "no_rng.ckpt"
    torch.save(ckpt, path)
    other = load(last_ckpt(run(tmp_path / "no_rng", 4, path)))
    assert other["global_step"] == runs["full"]["global_step"]
    differs = [k for k, v in runs["full"]["state_dict"].items() if not torch.equal(v, other["state_dict"][k])]
    assert any(k.startswith("critic.") for k in differs)


def test_resume_is_exact_with_refits_on_the_update_cadence(tmp_path):
    """Refits every 3 updates (mid-epoch, at updates 3, 6, 9, ...): the checkpoint after epoch 2 (10 updates) holds
    the next due refit, so the resumed run refits at the same updates as the uninterrupted one."""
    cadence = ("--model.c4.refit_every_n_updates", "3")
    full = load(last_ckpt(run(tmp_path / "full", 4, cadence=cadence)))
    half_path = last_ckpt(run(tmp_path / "half", 2, cadence=cadence))
    assert callback_state(load(half_path), "ClusterRefitCallback")["next_refit_at"] == 12
    resumed = load(last_ckpt(run(tmp_path / "resumed", 4, half_path, cadence=cadence)))
    refit_full = callback_state(full, "ClusterRefitCallback")
    refit_resumed = callback_state(resumed, "ClusterRefitCallback")
    assert refit_full["refits"] == refit_resumed["refits"] == 7  # initial + updates 3, 6, 9, 12, 15, 18
    assert_same(refit_full, refit_resumed, "ClusterRefitCallback")
    assert_same(full["state_dict"], resumed["state_dict"], "state_dict")
    assert_same(full["OfflineRLDataModule"], resumed["OfflineRLDataModule"], "sampler")


def test_resume_is_exact_with_the_sketched_penalty(tmp_path):
    """The sketch draws its Rademacher directions from torch's global generator at every update: the checkpoint's RNG
    state must carry them, so a run resumed after epoch 2 draws the same directions as the uninterrupted one."""
    options = (
        "--model.c4.refit_every_n_epochs", "1", "--model.c4.penalty_sketch", "4",
        "--model.c4.penalty_next_action", "policy",
    )  # fmt: skip
    full_cli = run(tmp_path / "full", 4, cadence=options)
    assert full_cli.model.c4.config.penalty_sketch == 4 and full_cli.model.c4.config.penalty_next_action == "policy"
    full = load(last_ckpt(full_cli))
    half_path = last_ckpt(run(tmp_path / "half", 2, cadence=options))
    resumed = load(last_ckpt(run(tmp_path / "resumed", 4, half_path, cadence=options)))
    assert_same(full["state_dict"], resumed["state_dict"], "state_dict")
    assert_same(full["optimizer_states"], resumed["optimizer_states"], "optimizer_states")
    assert_same(callback_state(full, "ClusterRefitCallback"), callback_state(resumed, "ClusterRefitCallback"), "refit")
    exact = load(last_ckpt(run(tmp_path / "exact", 4)))
    assert not torch.equal(exact["state_dict"]["critic.head.weight"], full["state_dict"]["critic.head.weight"])
