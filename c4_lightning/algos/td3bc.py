"""TD3+BC (Fujimoto & Gu, 2021) with the optional C4 plug-in."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from c4_lightning.algos.base import OfflineRLModule, check_hyperparameters
from c4_lightning.algos.networks import CriticEnsemble, DeterministicActor, soft_update_


class TD3BC(OfflineRLModule):
    """TD3+BC. Defaults are the paper's (alpha 2.5, policy noise 0.2, noise clip 0.5, delay 2, tau 0.005,
    gamma 0.99, lr 3e-4, 2x256 MLPs). One training step = one critic update (+ an actor update and target
    updates every ``policy_delay`` steps), and advances ``global_step`` by one.

    Args:
        alpha: the BC trade-off; actor loss = -alpha / mean|Q| * Q(s, pi(s)) + (pi(s) - a)^2.
        q_normalizer: how mean|Q| is estimated: ``batch`` (on each batch, TD3+BC's rule) or ``running`` (a
            bias-corrected exponential average of the per-batch values across actor updates). Under C4's
            single-cluster batches the per-batch value swings with the cluster drawn (random-data clusters have
            small |Q|), and with it the actor's weight; ``running`` averages over clusters. Logged as
            ``train/actor_weight`` (= alpha / mean|Q|).
        q_normalizer_momentum: the running average's momentum (0.99: a time constant of ~100 actor updates).
        critic_layer_norm: LayerNorm in every hidden layer of the critics (the C4 authors' critics).
        c4: the C4 option group (see ``C4Config``); ``c4.enabled=False`` is exactly TD3+BC.
    """

    def __init__(
        self,
        actor_lr: float = 3e-4,  # actor learning rate
        critic_lr: float = 3e-4,  # critic learning rate
        hidden_dims: tuple[int, ...] = (256, 256),  # hidden layers of every network
        gamma: float = 0.99,  # discount
        tau: float = 0.005,  # target networks' Polyak rate
        alpha: float = 2.5,  # BC trade-off: -alpha/mean|Q| Q(s,pi) + (pi-a)^2
        policy_noise: float = 0.2,  # target policy smoothing noise
        noise_clip: float = 0.5,  # its clip
        policy_delay: int = 2,  # critic updates per actor update
        q_normalizer: str = "batch",  # mean|Q| per batch (TD3+BC) or running average
        q_normalizer_momentum: float = 0.99,  # the running average's momentum
        critic_layer_norm: bool = False,  # LayerNorm in the critics' hidden layers (C4 authors)
        **kwargs,  # the options every algorithm shares (OfflineRLModule)
    ):
        super().__init__(**kwargs)
        check_hyperparameters(gamma, tau, hidden_dims, actor_lr=actor_lr, critic_lr=critic_lr, alpha=alpha)
        if policy_delay < 1:
            raise ValueError(f"model.policy_delay={policy_delay} must be >= 1")
        if q_normalizer not in ("batch", "running"):
            raise ValueError(f"model.q_normalizer={q_normalizer!r} is unknown; use batch or running")
        if not 0 <= q_normalizer_momentum < 1:
            raise ValueError(f"model.q_normalizer_momentum={q_normalizer_momentum} must be in [0, 1)")
        if q_normalizer == "running":  # only then: baseline checkpoints keep exactly TD3+BC's state
            self.register_buffer("q_abs_average", torch.zeros(()))
            self.register_buffer("q_abs_updates", torch.zeros(()))
        self.finish_init()

    def build_networks(self, obs_dim: int, act_dim: int) -> None:
        hp = self.hparams
        self.actor = DeterministicActor(obs_dim, act_dim, tuple(hp.hidden_dims), hp.max_action)
        self.critic = CriticEnsemble(
            obs_dim, act_dim, tuple(hp.hidden_dims), ensemble_size=2, layer_norm=hp.critic_layer_norm
        )
        self.actor_target = self.make_target(self.actor)
        self.critic_target = self.make_target(self.critic)

    def configure_optimizers(self):
        return [
            self.adam(self.critic.parameters(), self.hparams.critic_lr),
            self.adam(self.actor.parameters(), self.hparams.actor_lr),
        ]

    def update(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        hp = self.hparams
        critic_opt, actor_opt = self.optimizers()
        obs, act, next_obs = batch["observations"], batch["actions"], batch["next_observations"]
        rew, term = batch["rewards"], batch["terminals"]

        with torch.no_grad():
            noise = (torch.randn_like(act) * hp.policy_noise).clamp(-hp.noise_clip, hp.noise_clip)
            next_act = (self.actor_target(next_obs) + noise).clamp(-hp.max_action, hp.max_action)
            target_qs, next_feats = self.c4.target_q(self.critic_target, next_obs, next_act, batch["next_actions"])
            y = rew + hp.gamma * (1.0 - term) * target_qs.min(dim=0).values

        q, feats = self.critic(obs, act, return_features=True)
        td_loss = ((q - y) ** 2).mean(dim=1).sum()
        logs = {"critic_loss": td_loss.detach(), "q_mean": q.detach().mean()}
        critic_loss = td_loss + self.c4.penalty(self, batch, feats, next_feats, td_loss, logs)
        self.check_finite(critic_loss=critic_loss)
        self.step_optimizer(critic_opt, critic_loss, counted=True)

        if (self.n_updates + 1) % hp.policy_delay == 0:  # CORL: total_it counts from 1
            pi = self.actor(obs)
            # Q1 only (TD3), and no gradient for the critic's weights: the actor loss trains the actor alone
            q_pi = self.critic(obs, pi, members=slice(0, 1), detach_weights=True)[0]
            lmbda = hp.alpha / self.q_scale(q_pi.abs().mean().detach())
            actor_loss = -lmbda * q_pi.mean() + F.mse_loss(pi, act)
            self.check_finite(actor_loss=actor_loss)
            self.step_optimizer(actor_opt, actor_loss)
            soft_update_(self.critic_target, self.critic, hp.tau)
            soft_update_(self.actor_target, self.actor, hp.tau)
            logs["actor_loss"] = actor_loss.detach()
            logs["actor_weight"] = lmbda
        return logs

    def q_scale(self, batch_q_abs: torch.Tensor) -> torch.Tensor:
        """mean|Q| for the actor's weight: this batch's (``q_normalizer="batch"``) or the running average."""
        if self.hparams.q_normalizer == "batch":
            return batch_q_abs
        m = self.hparams.q_normalizer_momentum
        if self._trainer is not None and self.trainer.world_size > 1:  # ranks keep one average (and equal states)
            batch_q_abs = self.trainer.strategy.reduce(batch_q_abs, reduce_op="mean")
        self.q_abs_average.mul_(m).add_(batch_q_abs.to(self.q_abs_average.dtype), alpha=1 - m)
        self.q_abs_updates.add_(1)
        return self.q_abs_average / (1 - m**self.q_abs_updates)
