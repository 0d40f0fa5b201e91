"""IQL: one update equals an independent re-implementation of CORL's ``ImplicitQLearning.train`` on a fixed batch
(plain ``nn.Linear`` networks holding the same weights, plain Adam), it learns the known answer of the one-step
bandit, and C4 pairs the Q-critic's features at (s, a) with the value network's at s'."""

from __future__ import annotations

import math
import warnings

import lightning as L
import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from helpers_lightning import MemoryLogger, bandit_a_star, make_datamodule, make_trainer, toy_env  # noqa: F401

from c4_lightning.algos import IQL
from c4_lightning.algos.iql import episode_return_range, expectile_loss
from c4_lightning.c4.config import C4Config


# ------------------------------------------------------------------ a reference written from the paper/CORL
def _linear_from(vec_layer, member: int) -> nn.Linear:
    lin = nn.Linear(vec_layer.in_features, vec_layer.out_features)
    with torch.no_grad():
        lin.weight.copy_(vec_layer.weight[member].T)
        lin.bias.copy_(vec_layer.bias[member, 0])
    return lin


def _mlp_from(ensemble, member: int) -> nn.Sequential:
    layers = []
    for layer in ensemble.hidden:
        layers += [_linear_from(layer, member), nn.ReLU()]
    return nn.Sequential(*layers, _linear_from(ensemble.head, member))


class Reference:
    """CORL's IQL update: V step (expectile of min target Q - V), Q step towards r + gamma V(s') (V before its step),
    target Polyak step, policy step (exp(beta A) clipped at 100 times -log N(a; tanh-mean, std))."""

    def __init__(self, module: IQL):
        hp = module.hparams
        self.q1, self.q2 = _mlp_from(module.critic, 0), _mlp_from(module.critic, 1)
        self.t1, self.t2 = _mlp_from(module.critic_target, 0), _mlp_from(module.critic_target, 1)
        self.v = _mlp_from(module.value, 0)
        self.pi = nn.Sequential(*[_copy(m) for m in module.actor.net])
        self.log_std = nn.Parameter(module.actor.log_std.detach().clone())
        self.hp = hp
        self.v_opt = torch.optim.Adam(self.v.parameters(), lr=hp.vf_lr)
        self.q_opt = torch.optim.Adam([*self.q1.parameters(), *self.q2.parameters()], lr=hp.qf_lr)
        self.pi_opt = torch.optim.Adam([*self.pi.parameters(), self.log_std], lr=hp.actor_lr)

    def update(self, obs, act, rew, next_obs, done):
        hp = self.hp
        with torch.no_grad():
            next_v = self.v(next_obs).squeeze(-1)
            sa = torch.cat([obs, act], -1)
            target_q = torch.min(self.t1(sa), self.t2(sa)).squeeze(-1)
        adv = target_q - self.v(obs).squeeze(-1)
        v_loss = torch.mean(torch.abs(hp.expectile - (adv < 0).float()) * adv**2)
        self.v_opt.zero_grad()
        v_loss.backward()
        self.v_opt.step()
        targets = rew + (1.0 - done) * hp.gamma * next_v
        qs = [self.q1(sa).squeeze(-1), self.q2(sa).squeeze(-1)]
        q_loss = sum(F.mse_loss(q, targets) for q in qs) / len(qs)
        self.q_opt.zero_grad()
        q_loss.backward()
        self.q_opt.step()
        with torch.no_grad():
            for t, s in ((self.t1, self.q1), (self.t2, self.q2)):
                for tp, sp in zip(t.parameters(), s.parameters()):
                    tp.mul_(1 - hp.tau).add_(sp, alpha=hp.tau)
        exp_adv = torch.exp(hp.temperature * adv.detach()).clamp(max=100.0)
        dist = torch.distributions.Normal(torch.tanh(self.pi(obs)), torch.exp(self.log_std.clamp(-20.0, 2.0)))
        pi_loss = torch.mean(exp_adv * -dist.log_prob(act).sum(-1))
        self.pi_opt.zero_grad()
        pi_loss.backward()
        self.pi_opt.step()
        return float(v_loss.detach()), float(q_loss.detach()), float(pi_loss.detach())


def _copy(m: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(m)


def test_three_updates_equal_corls_iql_updates_on_fixed_batches(tmp_path):
    """Three updates (after the first, Adam's steps depend on gradient magnitudes, not only their signs): the same
    losses at every update and the same weights at the end as the reference on the same batches."""
    L.seed_everything(0, verbose=False)
    dm = make_datamodule(batch_size=64, steps_per_epoch=3, max_transitions=2000)
    module = IQL(hidden_dims=(32, 32), fused_adam=False)
    dm.setup("fit")
    module._build(dm.obs_dim, dm.act_dim)
    ref = Reference(module)
    batches = []

    class Capture(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, b, batch_idx):
            batches.append({k: v.clone() for k, v in b.items()})

    logger = MemoryLogger()
    make_trainer(tmp_path, max_steps=3, callbacks=[Capture()], logger=logger).fit(module, datamodule=dm)
    scale = float(module.reward_scale)
    t = dm.transitions
    assert scale == pytest.approx(1000.0 / episode_return_range(t.rewards, t.episode_ids))
    losses = [
        ref.update(b["observations"], b["actions"], b["rewards"] * scale, b["next_observations"], b["terminals"])
        for b in batches
    ]
    ours = list(
        zip(logger.values("train/value_loss"), logger.values("train/critic_loss"), logger.values("train/actor_loss"))
    )
    assert len(ours) == len(losses) == 3
    np.testing.assert_allclose(np.array(ours), np.array(losses), rtol=1e-4)
    pairs = [(module.value, [ref.v]), (module.critic, [ref.q1, ref.q2]), (module.critic_target, [ref.t1, ref.t2])]
    for mine, theirs in pairs:
        for member, net in enumerate(theirs):
            for a, e in zip(net.parameters(), _mlp_from(mine, member).parameters()):
                torch.testing.assert_close(e, a, rtol=1e-4, atol=1e-6)
    for a, e in zip(ref.pi.parameters(), module.actor.net.parameters()):
        torch.testing.assert_close(e, a, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(module.actor.log_std, ref.log_std, rtol=1e-4, atol=1e-6)


def test_expectile_loss_and_return_range():
    diff = torch.tensor([-2.0, 1.0, 3.0])
    assert float(expectile_loss(diff, 0.7)) == pytest.approx((0.3 * 4 + 0.7 * 1 + 0.7 * 9) / 3)
    rewards = torch.tensor([1.0, 2.0, 10.0, -1.0, 0.5])
    assert episode_return_range(rewards, torch.tensor([0, 0, 1, 2, 2])) == pytest.approx(10.0 - (-0.5))


def test_actor_learning_rate_follows_the_cosine_of_the_update_count():
    module = IQL(obs_dim=3, act_dim=2, actor_lr=1e-3, actor_lr_cosine_steps=100)
    opt = torch.optim.Adam(module.actor.parameters(), lr=1e-3)
    for n, expected in ((0, 1e-3), (50, 5e-4), (100, 0.0), (250, 0.0)):
        module.n_updates = n
        module._anneal_actor_lr(opt)
        assert opt.param_groups[0]["lr"] == pytest.approx(expected, abs=1e-12)


def test_iql_refuses_the_input_gradient_penalty():
    with pytest.raises(ValueError, match="IQL's backup is V\\(s'\\)"):
        IQL(obs_dim=3, act_dim=2, c4=C4Config(enabled=True, penalty="grad_cross_cov"))


@pytest.mark.parametrize("penalty", ["cross_cov", "weighted_cross_cov", "feature_dot"])
def test_c4_pairs_q_features_at_s_a_with_value_features_at_s_next(penalty):
    L.seed_everything(1, verbose=False)
    module = IQL(obs_dim=3, act_dim=2, hidden_dims=(16, 16), c4=C4Config(enabled=True, penalty=penalty))
    obs, act, nxt = torch.randn(32, 3), torch.rand(32, 2) * 2 - 1, torch.randn(32, 3)
    batch = {"observations": obs, "actions": act, "next_observations": nxt, "next_actions": torch.zeros(32, 2)}
    _, feats = module.critic(obs, act, return_features=True)
    online, target = module.c4.inputs(module, batch, feats, None)
    _, v_feats = module.value(nxt, nxt[:, :0], return_features=True)
    assert target.shape == online.shape == (2, 32, 16)
    expected = v_feats.expand(2, -1, -1)
    if penalty == "weighted_cross_cov":
        expected = expected * module.value.head.weight.transpose(-1, -2)
    torch.testing.assert_close(target, expected)


def test_iql_finds_the_best_in_data_action(toy_env, tmp_path):
    """The bandit of tests/test_learning.py: every step terminal, so Q* = r and the best in-data action is a*(s);
    advantage-weighted regression must move the policy from the behaviour mean (0) towards a*(s)."""
    L.seed_everything(0, verbose=False)
    module = IQL(
        obs_dim=3,
        act_dim=2,
        hidden_dims=(64, 64),
        actor_lr=3e-3,
        qf_lr=1e-3,
        vf_lr=1e-3,
        temperature=10.0,
        expectile=0.9,
        normalize_rewards=False,
        actor_lr_cosine_steps=None,
    )
    states = torch.from_numpy(np.random.default_rng(123).normal(size=(512, 3)).astype(np.float32))
    error = lambda: float((module.act(states) - torch.from_numpy(bandit_a_star(states))).norm(dim=-1).mean())  # noqa: E731
    before = error()
    dm = make_datamodule("toy/bandit-v0", batch_size=128, steps_per_epoch=100)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        make_trainer(tmp_path, max_steps=600).fit(module, datamodule=dm)
    after = error()
    assert before > 0.45
    assert after < 0.3, f"IQL policy error {after:.3f} (initial {before:.3f})"
    assert after < 0.6 * before
    assert math.isfinite(float(module.reward_scale))
