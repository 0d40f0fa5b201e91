"""Learning check on a problem whose answer is known.

One-step bandit (``helpers_lightning.write_bandit_dataset``): s ~ N(0, I_3), a ~ U[-1, 1]^2,
r = -||a - a*(s)||^2 with a*(s) = 0.6 tanh(W s), every step terminal, so Q*(s, a) = r(s, a) and the best
in-data action at s is a*(s). Behaviour cloning alone gives ~0 (the mean of uniform actions), i.e. an error
of about E||a*|| ~ 0.55; the RL signal must bring the deterministic policy close to a*(s).

Small networks and raised learning rates keep this to a few hundred updates (a test, not a benchmark).
CQL runs with cql_alpha=1: with uniform behaviour actions CQL(H)'s regulariser pulls Q towards the log
behaviour density, i.e. flattens it (Q = r - alpha / (2 mu) (softmax Q - mu)), so the default alpha=10
still ranks a* first but needs far more updates.
"""

from __future__ import annotations

import warnings

import lightning as L
import numpy as np
import pytest
import torch

from helpers_lightning import bandit_a_star, make_datamodule, make_trainer, toy_env  # noqa: F401

from c4_lightning.algos import CQL, TD3BC
from c4_lightning.c4.config import C4Config

BANDIT = "toy/bandit-v0"


def policy_error(module, obs: torch.Tensor) -> float:
    """Mean ||pi(s) - a*(s)|| over raw test states."""
    return float((module.act(obs) - torch.from_numpy(bandit_a_star(obs))).norm(dim=-1).mean())


def train(module, tmp_path, steps: int, batch_size: int = 128):
    dm = make_datamodule(BANDIT, batch_size=batch_size, steps_per_epoch=100)
    trainer = make_trainer(tmp_path, max_steps=steps)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, datamodule=dm)
    assert trainer.global_step == steps


@pytest.fixture
def test_states():
    return torch.from_numpy(np.random.default_rng(123).normal(size=(512, 3)).astype(np.float32))


@pytest.mark.parametrize("c4", [False, True], ids=["c4-off", "c4-on"])
def test_td3bc_finds_the_best_in_data_action(toy_env, tmp_path, test_states, c4):
    L.seed_everything(0, verbose=False)
    cfg = C4Config(enabled=True, n_clusters=3, penalty_weight=0.1, pca_dim=8, refit_every_n_epochs=2) if c4 else None
    module = TD3BC(obs_dim=3, act_dim=2, hidden_dims=(64, 64), actor_lr=1e-3, critic_lr=1e-3, c4=cfg)
    before = policy_error(module, test_states)
    bc_error = float(torch.from_numpy(bandit_a_star(test_states)).norm(dim=-1).mean())  # policy = 0
    train(module, tmp_path, steps=400)
    after = policy_error(module, test_states)
    assert before > 0.45 and bc_error > 0.45
    assert after < 0.25, f"TD3BC policy error {after:.3f} (initial {before:.3f})"
    assert after < 0.5 * before


def test_cql_finds_the_best_in_data_action(toy_env, tmp_path, test_states):
    L.seed_everything(0, verbose=False)
    module = CQL(obs_dim=3, act_dim=2, hidden_dims=(64, 64), policy_lr=3e-3, qf_lr=1e-3, cql_alpha=1.0, cql_n_actions=5)
    before = policy_error(module, test_states)
    train(module, tmp_path, steps=400)
    after = policy_error(module, test_states)
    assert before > 0.45
    assert after < 0.2, f"CQL policy error {after:.3f} (initial {before:.3f})"
    assert after < 0.4 * before
    # the critic ranks actions correctly: Q(s, a*) above Q(s, a* + offset) for almost every state
    obs_n = module.normalize(test_states)
    a_star = torch.from_numpy(bandit_a_star(test_states))
    with torch.no_grad():
        q_best = module.critic(obs_n, a_star).min(0).values
        q_off = module.critic(obs_n, (a_star + 0.4 * torch.sign(-a_star)).clamp(-1, 1)).min(0).values
    assert float((q_best > q_off).float().mean()) > 0.9
