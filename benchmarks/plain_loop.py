"""Reference implementations: TD3+BC and CQL updates as plain PyTorch loops, no Lightning.

They serve twice: as the speed baseline of ``benchmarks/throughput.py`` and as the correctness reference of
``tests/test_plug_and_play.py`` (a Lightning run with C4 off must give bit-identical parameters). The
arithmetic is written out here on purpose, independent of the LightningModules, with the same networks
and the same order of random draws.
"""

from __future__ import annotations

import copy
import math

import torch
from torch.nn import functional as F

from c4_lightning.algos.networks import (
    CriticEnsemble,
    DeterministicActor,
    TanhGaussianActor,
    orthogonal_init_,
    soft_update_,
)


def _target(net):
    t = copy.deepcopy(net)
    t.requires_grad_(False)
    return t


class PlainTD3BC:
    def __init__(
        self,
        obs_dim,
        act_dim,
        hidden=(256, 256),
        lr=3e-4,
        gamma=0.99,
        tau=0.005,
        alpha=2.5,
        policy_noise=0.2,
        noise_clip=0.5,
        policy_delay=2,
        max_action=1.0,
        adam_kwargs=None,
    ):
        self.actor = DeterministicActor(obs_dim, act_dim, hidden, max_action)
        self.critic = CriticEnsemble(obs_dim, act_dim, hidden, 2)
        self.actor_target, self.critic_target = _target(self.actor), _target(self.critic)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=lr, **(adam_kwargs or {}))
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=lr, **(adam_kwargs or {}))
        self.gamma, self.tau, self.alpha = gamma, tau, alpha
        self.policy_noise, self.noise_clip, self.policy_delay, self.max_action = (
            policy_noise,
            noise_clip,
            policy_delay,
            max_action,
        )
        self.it = 0

    def update(self, obs, act, rew, next_obs, term):
        self.it += 1
        with torch.no_grad():
            noise = (torch.randn_like(act) * self.policy_noise).clamp(-self.noise_clip, self.noise_clip)
            next_act = (self.actor_target(next_obs) + noise).clamp(-self.max_action, self.max_action)
            y = rew + self.gamma * (1.0 - term) * self.critic_target(next_obs, next_act).min(dim=0).values
        q = self.critic(obs, act)
        critic_loss = ((q - y) ** 2).mean(dim=1).sum()
        self.critic_opt.zero_grad(set_to_none=True)
        critic_loss.backward()
        self.critic_opt.step()
        if self.it % self.policy_delay == 0:
            pi = self.actor(obs)
            q_pi = self.critic(obs, pi, members=slice(0, 1))[0]  # Q1 only, as CORL's critic_1(state, pi)
            actor_loss = -self.alpha / q_pi.abs().mean().detach() * q_pi.mean() + F.mse_loss(pi, act)
            self.actor_opt.zero_grad(set_to_none=True)
            actor_loss.backward()
            self.actor_opt.step()
            soft_update_(self.critic_target, self.critic, self.tau)
            soft_update_(self.actor_target, self.actor, self.tau)

    def parameters(self):
        return [*self.actor.parameters(), *self.critic.parameters()]


class PlainCQL:
    """CQL(H) with automatic entropy tuning, importance sampling, no Lagrange, no max-backup (CORL defaults)."""

    def __init__(
        self,
        obs_dim,
        act_dim,
        hidden=(256, 256, 256),
        policy_lr=3e-5,
        qf_lr=3e-4,
        gamma=0.99,
        tau=5e-3,
        cql_alpha=10.0,
        n_actions=10,
        temp=1.0,
        max_action=1.0,
        adam_kwargs=None,
    ):
        self.actor = TanhGaussianActor(obs_dim, act_dim, hidden, max_action)
        self.critic = CriticEnsemble(obs_dim, act_dim, hidden, 2)
        orthogonal_init_(self.actor)
        orthogonal_init_(self.critic)
        self.critic_target = _target(self.critic)
        self.log_alpha = torch.nn.Parameter(torch.zeros(()))
        self.log_alpha_prime = torch.nn.Parameter(torch.zeros(()))
        adam_kwargs = adam_kwargs or {}
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=qf_lr, **adam_kwargs)
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=policy_lr, **adam_kwargs)
        self.alpha_opt = torch.optim.Adam([self.log_alpha], lr=policy_lr, **adam_kwargs)
        self.target_entropy = -float(act_dim)
        self.gamma, self.tau, self.cql_alpha, self.n, self.temp, self.max_action = (
            gamma,
            tau,
            cql_alpha,
            n_actions,
            temp,
            max_action,
        )

    def update(self, obs, act, rew, next_obs, term):
        B, A, n = obs.shape[0], act.shape[-1], self.n
        with torch.no_grad():
            obs_rep, next_obs_rep = obs.repeat_interleave(n, 0), next_obs.repeat_interleave(n, 0)
            a_curr, logp_curr = self.actor(obs_rep)
            a_next, logp_next = self.actor(next_obs_rep)
            a_rand = torch.empty(B * n, A, device=obs.device, dtype=obs.dtype).uniform_(
                -self.max_action, self.max_action
            )
            a_backup, _ = self.actor(next_obs)  # every sample from the pre-update policy (CORL, Kumar et al.)
        new_act, log_pi = self.actor(obs)
        alpha_loss = -(self.log_alpha * (log_pi.detach() + self.target_entropy)).mean()
        self.alpha_opt.zero_grad(set_to_none=True)
        alpha_loss.backward()
        self.alpha_opt.step()
        alpha = self.log_alpha.detach().exp()
        actor_loss = (alpha * log_pi - self.critic(obs, new_act).min(dim=0).values).mean()
        self.actor_opt.zero_grad(set_to_none=True)
        actor_loss.backward()
        self.actor_opt.step()

        with torch.no_grad():
            y = rew + self.gamma * (1.0 - term) * self.critic_target(next_obs, a_backup).min(dim=0).values
        q_pred = self.critic(obs, act)
        td_loss = ((q_pred - y) ** 2).mean(dim=1).sum()
        q_rand = self.critic(obs_rep, a_rand).view(2, B, n)
        q_curr = self.critic(obs_rep, a_curr).view(2, B, n)
        q_next = self.critic(obs_rep, a_next).view(2, B, n)
        log_uniform = A * math.log(0.5 / self.max_action)
        cat = torch.cat([q_rand - log_uniform, q_next - logp_next.view(B, n), q_curr - logp_curr.view(B, n)], -1)
        gap = (torch.logsumexp(cat / self.temp, dim=-1) * self.temp - q_pred).mean(dim=1)
        critic_loss = td_loss + (self.cql_alpha * gap).sum()
        self.critic_opt.zero_grad(set_to_none=True)
        critic_loss.backward()
        self.critic_opt.step()
        soft_update_(self.critic_target, self.critic, self.tau)

    def parameters(self):
        return [*self.actor.parameters(), *self.critic.parameters(), self.log_alpha]
