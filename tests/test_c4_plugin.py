"""C4 as a plug-in: the penalty registry, penalties that cannot be lowered by reparametrising the critic
(``pytest -k invariance``), the paper's gradient form against NumPy, LayerNorm critics, the authors' presets and
the TD3+BC actor-weight normaliser under single-cluster batches."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import warnings

import lightning as L
import numpy as np
import pytest
import torch

from helpers_lightning import (
    HOPPERLIKE,
    REPO,
    C4ModuleStub,
    MemoryLogger,
    make_datamodule,
    make_trainer,
)
from helpers_lightning import toy_env  # noqa: F401  (a pytest fixture the tests name as an argument)

from c4_lightning.algos import CQL, TD3BC
from c4_lightning.algos.networks import CriticEnsemble
from c4_lightning.c4.config import C4Config
from c4_lightning.c4.penalty import PENALTIES, grad_cross_cov_penalty, grad_cross_cov_raw, weighted_cross_cov_penalty
from c4_lightning.c4.plugin import C4

OBS, ACT, B = 5, 2, 64


def _batch(seed: int = 0, dtype=torch.float64) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "observations": torch.randn(B, OBS, generator=g, dtype=dtype),
        "actions": torch.rand(B, ACT, generator=g, dtype=dtype) * 2 - 1,
        "next_observations": torch.randn(B, OBS, generator=g, dtype=dtype),
        "next_actions": torch.rand(B, ACT, generator=g, dtype=dtype) * 2 - 1,
    }


def _critics(seed: int = 0):
    torch.manual_seed(seed)
    critic = CriticEnsemble(OBS, ACT, (32, 32), ensemble_size=2).double()
    target = CriticEnsemble(OBS, ACT, (32, 32), ensemble_size=2).double()
    return critic, target


def _rescale_(critic: CriticEnsemble, c: float) -> None:
    """Scale the last hidden layer (weights and bias) by c and the head weights by 1/c: Q is unchanged (ReLU is
    positively homogeneous), the penultimate features are multiplied by c."""
    with torch.no_grad():
        critic.hidden[-1].weight.mul_(c)
        critic.hidden[-1].bias.mul_(c)
        critic.head.weight.div_(c)


def _penalty_value(name: str, critic, target, batch) -> tuple[torch.Tensor, torch.Tensor]:
    c4 = C4(C4Config(enabled=True, penalty=name, penalty_weight=1.0))
    module = C4ModuleStub(critic, target)
    q, feats = critic(batch["observations"], batch["actions"], return_features=True)
    value = c4.penalty(module, batch, feats, None, torch.ones((), dtype=torch.float64), {})
    return q.detach(), value.detach()


# ---------------------------------------------------------------------------------------------- invariance
def _before_and_after_rescaling(name: str, c: float) -> tuple[float, float]:
    """The penalty before and after both critics rescale their last hidden layer by c (asserting Q is unchanged)."""
    batch = _batch()
    critic, target = _critics()
    q0, p0 = _penalty_value(name, critic, target, batch)
    _rescale_(critic, c)
    _rescale_(target, c)
    q1, p1 = _penalty_value(name, critic, target, batch)
    torch.testing.assert_close(q1, q0, rtol=1e-5, atol=0)
    return float(p0), float(p1)


@pytest.mark.parametrize("c", [0.1, 10.0])
@pytest.mark.parametrize("name", ["weighted_cross_cov", "grad_cross_cov"])
def test_invariance_of_invariant_penalties(name, c):
    p0, p1 = _before_and_after_rescaling(name, c)
    assert p0 > 0
    assert abs(p1 - p0) <= 1e-5 * abs(p0), (name, c, p0, p1)
    assert PENALTIES[name].invariant


@pytest.mark.parametrize("c", [0.1, 10.0])
@pytest.mark.parametrize("name, power", [("cross_cov", 4), ("feature_dot", 2)])
def test_invariance_fails_for_feature_penalties(name, power, c):
    """The rescaling of both critics leaves Q unchanged but moves these penalties (cross_cov by c^2 from each side,
    feature_dot by c from each): the way out their docstrings describe."""
    p0, p1 = _before_and_after_rescaling(name, c)
    assert p1 == pytest.approx(c**power * p0, rel=1e-6)
    assert not PENALTIES[name].invariant
    assert "Not invariant" in PENALTIES[name].fn.__doc__


def test_invariance_is_documented_for_every_penalty():
    for name, spec in PENALTIES.items():
        doc = spec.fn.__doc__ or ""
        if name.startswith("test_"):
            continue
        assert ("**Invariant**" in doc) == spec.invariant or ("**Not invariant**" in doc) != spec.invariant, name
        assert "Scale" in doc or "scale" in doc, f"{name}: the docstring must state the penalty's scale"


# ---------------------------------------------------------------------------------------------- formulas
def _numpy_cross_cov(online: np.ndarray, target: np.ndarray) -> np.ndarray:
    """C[i, j] = Cov_B(target_i, online_j) with ddof 1."""
    full = np.cov(np.concatenate([target, online], axis=1).T)
    d = target.shape[1]
    return full[:d, d:]


def test_grad_penalty_matches_numpy_formula():
    rng = np.random.default_rng(0)
    g, g_next = rng.normal(size=(2, B, 7)), rng.normal(size=(2, B, 7))
    beta, cap = 0.7, 50.0
    out = grad_cross_cov_penalty(torch.tensor(g), torch.tensor(g_next), beta=beta, cap=cap).numpy()
    for e in range(2):
        c = _numpy_cross_cov(g[e], g_next[e])
        raw = (c**2).sum() + beta * np.trace(c) ** 2
        assert out[e] == pytest.approx(cap * math.tanh(raw / cap), rel=1e-10)
        raw_torch = float(grad_cross_cov_raw(torch.tensor(g), torch.tensor(g_next), beta)[e])
        assert raw_torch == pytest.approx(raw, rel=1e-10)


def test_weighted_penalty_matches_numpy_formula():
    rng = np.random.default_rng(1)
    psi, psi_next = rng.normal(size=(B, 9)), rng.normal(size=(B, 9)) + 0.5 * psi_next_base(rng)
    out = float(weighted_cross_cov_penalty(torch.tensor(psi), torch.tensor(psi_next), eps=0.0))
    c = _numpy_cross_cov(psi, psi_next)
    expected = (c**2).sum() / (np.trace(np.cov(psi_next.T)) * np.trace(np.cov(psi.T)))
    assert out == pytest.approx(expected, rel=1e-10)
    assert 0 <= out <= 1


def psi_next_base(rng) -> np.ndarray:
    return rng.normal(size=(B, 9))


def test_grad_penalty_gradient_is_alive_at_training_magnitudes():
    """Raw values of 0.001-0.3 were logged over a 1k-update TD3+BC+C4 run on the embedded mixture (BENCHMARKS.md):
    at the default cap (100) the capped penalty's gradient is the raw one's to within 1%."""
    cap = C4Config().grad_cap
    base = torch.randn(2, B, 14, dtype=torch.float64)
    base_next = torch.randn(2, B, 14, dtype=torch.float64) + 0.5 * base
    unit = float(grad_cross_cov_raw(base, base_next, 1.0).max())
    for target in (1e-3, 0.1, 0.3):
        k = (target / unit) ** 0.25  # raw is quartic in the gradients' scale
        g = (base * k).requires_grad_(True)
        raw = grad_cross_cov_raw(g, base_next * k, 1.0)
        assert float(raw.detach().max()) == pytest.approx(target, rel=1e-9)
        (d_capped,) = torch.autograd.grad(grad_cross_cov_penalty(g, base_next * k, 1.0, cap).sum(), g)
        (d_raw,) = torch.autograd.grad(raw.sum(), g)
        assert float(d_capped.abs().sum()) > 0
        assert float(d_capped.norm() / d_raw.norm()) > 0.99


def test_grad_penalty_above_cap_warns_once_and_logs_raw():
    batch = _batch()
    critic, target = _critics()
    with torch.no_grad():  # big input gradients: a raw value far above a small cap
        critic.head.weight.mul_(100.0)
        target.head.weight.mul_(100.0)
    c4 = C4(C4Config(enabled=True, penalty="grad_cross_cov", penalty_weight=1.0, grad_cap=1e-3))
    module = C4ModuleStub(critic, target)
    logs = {}
    feats = critic(batch["observations"], batch["actions"], return_features=True)[1]
    with pytest.warns(UserWarning, match="above its cap"):
        c4.penalty(module, batch, feats, None, torch.ones((), dtype=torch.float64), logs)
    assert float(logs["c4/penalty_raw"]) > 1e-3 and float(logs["c4/penalty"]) <= 2 * 1e-3
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second call does not warn again
        c4.penalty(module, batch, feats, None, torch.ones((), dtype=torch.float64), {})


def test_off_plugin_computes_nothing():
    c4 = C4(C4Config(enabled=False))
    rng_before = torch.get_rng_state()
    assert c4.penalty(None, {}, None, None, None, {}) == 0.0
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert C4(C4Config(enabled=True, penalty_weight=0.0)).penalty(None, {}, None, None, None, {}) == 0.0


# ---------------------------------------------------------------------------------------------- registry
def test_unknown_penalty_is_refused_at_config_time_listing_names():
    with pytest.raises(ValueError, match="registered penalties: cross_cov, feature_dot, grad_cross_cov"):
        C4Config(enabled=True, penalty="crosscov")


def test_unknown_penalty_fails_before_training_from_the_cli(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "train.py"),
            "fit",
            "--config",
            str(REPO / "configs/td3bc_c4.yaml"),
            "--model.c4.penalty",
            "nope",
            "--trainer.default_root_dir",
            str(tmp_path),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2
    assert "registered penalties:" in proc.stderr and "weighted_cross_cov" in proc.stderr
    assert not list(tmp_path.rglob("*.ckpt"))


@pytest.mark.parametrize("algo", [TD3BC, CQL])
def test_registered_penalty_is_used_by_every_algorithm(toy_env, tmp_path, algo):
    import penalty_plugin_example as example  # registers "test_mean_product"

    example.CALLS["n"] = 0
    hidden = (32, 32) if algo is TD3BC else (32, 32, 32)
    module = algo(
        hidden_dims=hidden,
        c4=C4Config(
            enabled=True,
            penalty="test_mean_product",
            penalty_weight=1.0,
            pca_dim=4,
            n_clusters=2,
            refit_every_n_updates=0,
        ),
    )
    logger = MemoryLogger()
    trainer = make_trainer(tmp_path, max_steps=6, logger=logger, log_every_n_steps=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, datamodule=make_datamodule(HOPPERLIKE, batch_size=32, steps_per_epoch=6))
    assert example.CALLS["n"] == 6
    assert len(logger.values("c4/penalty")) == 3 and len(logger.values("c4/penalty_to_td")) == 3


# ---------------------------------------------------------------------------------------------- LayerNorm critics
def test_layer_norm_critic_structure_and_rescaling():
    critic = CriticEnsemble(OBS, ACT, (16, 16), ensemble_size=2, layer_norm=True)
    assert critic.norms is not None and len(critic.norms) == 2
    x = torch.randn(B, OBS + ACT)
    _, phi = critic.from_input(x, return_features=True)
    assert phi.shape == (2, B, 16) and (phi >= 0).all()
    # scaling a hidden Linear changes nothing after its LayerNorm: the features are bounded by the LN gain
    with torch.no_grad():
        before = critic.from_input(x)
        critic.hidden[-1].weight.mul_(7.0)
        critic.hidden[-1].bias.mul_(7.0)
    torch.testing.assert_close(critic.from_input(x), before, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("algo", [TD3BC, CQL])
def test_layer_norm_critics_train(toy_env, tmp_path, algo):
    L.seed_everything(0, verbose=False)
    hidden = (32, 32) if algo is TD3BC else (32, 32, 32)
    module = algo(
        hidden_dims=hidden,
        critic_layer_norm=True,
        c4=C4Config(
            enabled=True, penalty="weighted_cross_cov", penalty_weight=1.0, pca_dim=4, refit_every_n_updates=100
        ),
    )
    logger = MemoryLogger()
    trainer = make_trainer(tmp_path, max_steps=300, logger=logger, log_every_n_steps=50)
    dm = make_datamodule(HOPPERLIKE, batch_size=32, steps_per_epoch=100)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, datamodule=dm)
    losses = logger.values("train/critic_loss")
    assert len(losses) == 6 and all(math.isfinite(v) for v in losses)
    assert all(torch.isfinite(p).all() for p in module.parameters())
    assert module.critic.norms[0].weight.grad is not None or any(  # the LayerNorm gains were trained
        not torch.equal(n.weight, torch.ones_like(n.weight)) for n in module.critic.norms
    )
    assert logger.values("c4/refits")[-1] == 3  # first partition + refits at updates 100 and 200


# ---------------------------------------------------------------------------------------------- refit cadence
def test_refit_cadence_default_and_choices():
    assert C4Config().refit_cadence() == ("updates", 10_000)
    assert C4Config(refit_every_n_epochs=3).refit_cadence() == ("epochs", 3)
    assert C4Config(refit_every_n_updates=200).refit_cadence() == ("updates", 200)
    with pytest.raises(ValueError, match="both set"):
        C4Config(refit_every_n_updates=200, refit_every_n_epochs=3)


# ---------------------------------------------------------------------------------------------- TD3+BC normaliser
def _actor_weights(tmp_path, normalizer: str) -> list[float]:
    L.seed_everything(0, verbose=False)
    module = TD3BC(
        hidden_dims=(32, 32),
        q_normalizer=normalizer,
        policy_delay=1,
        c4=C4Config(
            enabled=True, penalty_weight=0.0, n_clusters=3, pca_dim=4, refit_every_n_updates=0, min_cluster_size=32
        ),
    )
    logger = MemoryLogger()
    trainer = make_trainer(tmp_path / normalizer, max_steps=400, logger=logger, log_every_n_steps=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, datamodule=make_datamodule(HOPPERLIKE, batch_size=32, steps_per_epoch=400))
    return logger.values("train/actor_weight")


def test_running_normalizer_steadies_the_actor_weight_under_clustered_batches(toy_env, tmp_path):
    per_batch, running = _actor_weights(tmp_path, "batch"), _actor_weights(tmp_path, "running")
    assert len(per_batch) == len(running) == 400
    jump = lambda s: float(np.mean(np.abs(np.diff(np.log(s[100:])))))  # noqa: E731  (after a warm-up)
    assert jump(running) < 0.5 * jump(per_batch), (jump(running), jump(per_batch))


# ---------------------------------------------------------------------------------------------- presets
@pytest.mark.slow
@pytest.mark.parametrize("preset", ["td3bc_c4_authors", "cql_c4_authors"])
def test_authors_presets_run_from_the_cli_with_diagnostics(tmp_path, preset):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    callbacks = json.dumps(
        [{"class_path": "c4_lightning.evaluation.EvalCallback", "init_args": {"episodes": 1, "every_n_epochs": 3}}]
    )
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "train.py"),
            "fit",
            "--config",
            str(REPO / "configs" / f"{preset}.yaml"),
            "--trainer.max_steps",
            "300",
            "--data.steps_per_epoch",
            "100",
            "--trainer.callbacks",
            callbacks,
            "--trainer.log_every_n_steps",
            "50",
            "--trainer.enable_progress_bar",
            "false",
            "--trainer.default_root_dir",
            str(tmp_path),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env={**__import__("os").environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (events,) = tmp_path.rglob("events.out.tfevents.*")
    acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    for tag in (
        "c4/penalty",
        "c4/penalty_to_td",
        "c4/cross_cov_fro",
        "c4/cross_corr_rms",
        "c4/cross_cov_fro_within",
        "c4/cross_corr_rms_within",
        "c4/sampleable_share",
        "c4/cluster_size_0",
    ):
        assert any(t == tag or t.endswith("/" + tag) for t in tags), f"{preset}: no {tag} in {sorted(tags)}"
    assert [e.value for e in acc.Scalars("c4/refits")] == [1.0, 2.0]  # first partition, refit at update 200


@pytest.mark.parametrize("name", ["cross_cov", "weighted_cross_cov", "grad_cross_cov"])
def test_penalty_rows_is_the_penalty_of_the_first_rows(name):
    batch = _batch()
    critic, target = _critics()
    module = C4ModuleStub(critic, target)
    q, feats = critic(batch["observations"], batch["actions"], return_features=True)
    sub = C4(C4Config(enabled=True, penalty=name, penalty_weight=1.0, penalty_rows=16))
    _, next_feats = sub.target_q(target, batch["next_observations"], batch["next_actions"], batch["next_actions"])
    value = sub.penalty(module, batch, feats, next_feats, torch.ones((), dtype=torch.float64), {})
    first = {k: v[:16] for k, v in batch.items()}
    exact = C4(C4Config(enabled=True, penalty=name, penalty_weight=1.0))
    expected = exact.penalty(
        module,
        first,
        critic(first["observations"], first["actions"], return_features=True)[1],
        None,
        torch.ones((), dtype=torch.float64),
        {},
    )
    torch.testing.assert_close(value, expected)
    with pytest.raises(ValueError, match="penalty_rows"):
        C4Config(penalty_rows=1)


def test_weighted_penalty_gradient_cannot_shrink_the_features():
    """Homogeneous of degree 0 in psi: the gradient is orthogonal to psi (Euler), so following it never scales the
    head-weighted features (the spread of Q) down; it only decorrelates them."""
    rng = torch.Generator().manual_seed(2)
    psi = torch.randn(2, B, 9, generator=rng, dtype=torch.float64, requires_grad=True)
    psi_next = torch.randn(2, B, 9, generator=rng, dtype=torch.float64) + 0.7 * psi.detach()
    value = weighted_cross_cov_penalty(psi, psi_next, eps=0.0).sum()
    (grad,) = torch.autograd.grad(value, psi)
    radial = (grad * psi.detach()).sum() / (grad.norm() * psi.detach().norm())
    assert abs(float(radial)) < 1e-9
    scaled = weighted_cross_cov_penalty(3.0 * psi.detach(), psi_next, eps=0.0).sum()
    assert float(scaled) == pytest.approx(float(value), rel=1e-12)


def test_default_refit_interval_grows_with_the_dataset_explicit_ones_do_not():
    """The default is 10,000 updates, or 5 passes over the data when that is longer (a refit is linear in N);
    an interval set explicitly is used as given at any size."""
    cfg = C4Config()
    assert cfg.refit_cadence(10_000, 256) == ("updates", 10_000)  # 5 passes = 196 updates
    assert cfg.refit_cadence(512_000, 256) == ("updates", 10_000)
    assert cfg.refit_cadence(512_100, 256) == ("updates", 10_002)
    assert cfg.refit_interval_updates(1000, 1_000_000, 256) == 19_532
    assert cfg.refit_interval_updates(1000, 2_000_000, 512) == 19_532  # the global batch (e.g. 2 ranks x 256)
    assert C4Config(refit_every_n_updates=1000).refit_cadence(1_000_000, 256) == ("updates", 1000)
    assert C4Config(refit_every_n_updates=0).refit_cadence(1_000_000, 256) == ("updates", 0)
    assert C4Config(refit_every_n_epochs=10).refit_interval_updates(1000, 1_000_000, 256) == 10_000
