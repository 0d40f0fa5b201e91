"""TD3+BC (Fujimoto & Gu, 2021) with the optional C4 plug-in."""
from __future__ import annotations

import torch
from torch.nn import functional as F

from c4_lightning.algos.base import OfflineRLModule, check_hyperparameters
from c4_lightning.algos.networks import CriticEnsemble, DeterministicActor, soft_update_
from c4_lightning.c4.config import C4Config


class TD3BC(OfflineRLModule):
    """TD3+BC. Defaults are the paper's (alpha 2.5, policy noise 0.2, noise clip 0.5, delay 2, tau 0.005,
    gamma 0.99, lr 3e-4, 2x256 MLPs). One training step = one critic update (+ an actor update and target
    updates every ``policy_delay`` steps), and advances ``global_step`` by one.

    Args:
        alpha: the BC trade-off; actor loss = -alpha / mean|Q| * Q(s, pi(s)) + (pi(s) - a)^2.
        c4: the C4 option group (see ``C4Config``); ``c4.enabled=False`` is exactly TD3+BC.
    """

    def __init__(
        self,
        obs_dim: int | None = None,
        act_dim: int | None = None,
        max_action: float = 1.0,
        actor_lr: float = 3e-4,
        critic_lr: float = 3e-4,
        hidden_dims: tuple[int, ...] = (256, 256),
        gamma: float = 0.99,
        tau: float = 0.005,
        alpha: float = 2.5,
        policy_noise: float = 0.2,
        noise_clip: float = 0.5,
        policy_delay: int = 2,
        c4: C4Config | None = None,
        probe_size: int = 2048,
        log_every_n_steps: int = 50,
        nan_check: bool = True,
        compile: bool = False,
        fused_adam: bool = True,
    ):
        super().__init__(obs_dim, act_dim, max_action, c4, probe_size, log_every_n_steps, nan_check, compile,
                         fused_adam)
        check_hyperparameters(gamma, tau, actor_lr=actor_lr, critic_lr=critic_lr, alpha=alpha)
        if policy_delay < 1:
            raise ValueError(f"model.policy_delay={policy_delay} must be >= 1")
        self.save_hyperparameters(ignore=["c4"])
        self.finish_init()

    def build_networks(self, obs_dim: int, act_dim: int) -> None:
        hp = self.hparams
        self.actor = DeterministicActor(obs_dim, act_dim, tuple(hp.hidden_dims), hp.max_action)
        self.critic = CriticEnsemble(obs_dim, act_dim, tuple(hp.hidden_dims), ensemble_size=2)
        self.actor_target = self.make_target(self.actor)
        self.critic_target = self.make_target(self.critic)

    def configure_optimizers(self):
        return [self.adam(self.critic.parameters(), self.hparams.critic_lr),
                self.adam(self.actor.parameters(), self.hparams.actor_lr)]

    def update(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        hp = self.hparams
        critic_opt, actor_opt = self.optimizers()
        obs, act, next_obs = batch["observations"], batch["actions"], batch["next_observations"]
        rew, term = batch["rewards"], batch["terminals"]

        with torch.no_grad():
            noise = (torch.randn_like(act) * hp.policy_noise).clamp(-hp.noise_clip, hp.noise_clip)
            next_act = (self.actor_target(next_obs) + noise).clamp(-hp.max_action, hp.max_action)
            target_qs, next_feats = self.target_critic(next_obs, next_act, batch["next_actions"])
            y = rew + hp.gamma * (1.0 - term) * target_qs.min(dim=0).values

        q, feats = self.critic(obs, act, return_features=True)
        td_loss = ((q - y) ** 2).mean(dim=1).sum()
        critic_loss = td_loss
        logs = {"critic_loss": td_loss.detach(), "q_mean": q.detach().mean()}
        if self.c4_active():
            penalty = self.c4_penalty(obs, act, next_obs, batch["next_actions"], feats, next_feats)
            critic_loss = critic_loss + self.c4.penalty_weight * penalty
            logs["c4/penalty"] = penalty.detach()
        self.check_finite(critic_loss=critic_loss)
        self.step_optimizer(critic_opt, critic_loss, counted=True)

        if (self.n_updates + 1) % hp.policy_delay == 0:  # CORL: total_it counts from 1
            pi = self.actor(obs)
            # Q1 only (TD3), and no gradient for the critic's weights: the actor loss trains the actor alone
            q_pi = self.critic(obs, pi, members=slice(0, 1), detach_weights=True)[0]
            lmbda = hp.alpha / q_pi.abs().mean().detach()
            actor_loss = -lmbda * q_pi.mean() + F.mse_loss(pi, act)
            self.check_finite(actor_loss=actor_loss)
            self.step_optimizer(actor_opt, actor_loss)
            soft_update_(self.critic_target, self.critic, hp.tau)
            soft_update_(self.actor_target, self.actor, hp.tau)
            logs["actor_loss"] = actor_loss.detach()
        return logs
