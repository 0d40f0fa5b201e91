"""IQL (Kostrikov, Nair & Levine, 2021): implicit Q-learning, with the optional C4 plug-in.

Defaults are CORL's gym-mujoco configuration: expectile 0.7, temperature (beta) 3.0, gamma 0.99, tau 0.005, learning
rates 3e-4, 2x256 MLPs, a Gaussian policy with a tanh mean and a state-independent log-std, advantage weights
clipped at 100, the actor's learning rate cosine-annealed over 1M updates, and rewards scaled by
``1000 / (max episode return - min episode return)`` of the dataset (CORL's ``normalize_reward`` for locomotion).

One training step = the value update, the Q update (then the target Q's Polyak step) and the policy update, in
CORL's order, and advances ``global_step`` by one:

* ``V``: expectile regression of ``min_i Q_target_i(s, a) - V(s)`` (``L = |tau - 1(u < 0)| u^2``);
* ``Q``: ``(Q_i(s, a) - r - gamma (1 - d) V(s'))^2`` with ``V(s')`` taken before the value update;
* policy: ``-exp(beta * A) * log pi(a | s)`` with ``A = min_i Q_target_i(s, a) - V(s)`` from the value step.

**C4 on IQL.** IQL's backup uses ``V(s')``, not a target critic at a next action, so the TD error that couples
``(s, a)`` with the next step is ``Q(s, a) - r - gamma V(s')``: C4 pairs the Q-critic's features at ``(s, a)`` with the
value network's features at ``s'`` (:meth:`backup_network`), for the penalty, the clustering features and the probe
diagnostics alike. The value network is one member, so its features pair with each of the twin critics. The
input-gradient penalty (``grad_cross_cov``) needs ``dQ/d(s', a')`` of the same shape as ``dQ/d(s, a)`` and is refused.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.distributions import Normal

from c4_lightning.algos.base import OfflineRLModule, check_hyperparameters
from c4_lightning.algos.networks import CriticEnsemble, _mlp, soft_update_
from c4_lightning.c4.penalty import PENALTIES

EXP_ADV_MAX = 100.0
LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0


class GaussianPolicy(nn.Module):
    """``N(tanh(MLP(s)), exp(log_std))`` with a state-independent ``log_std`` (CORL's IQL policy); acts with
    ``clamp(max_action * mean)``."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: tuple[int, ...] = (256, 256), max_action: float = 1.0):
        super().__init__()
        self.net = _mlp(obs_dim, tuple(hidden), act_dim)
        self.log_std = nn.Parameter(torch.zeros(act_dim))
        self.max_action = max_action

    def forward(self, obs: torch.Tensor) -> Normal:
        mean = torch.tanh(self.net(obs))
        return Normal(mean, torch.exp(self.log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)))

    def act(self, obs: torch.Tensor) -> torch.Tensor:
        return (self.max_action * torch.tanh(self.net(obs))).clamp(-self.max_action, self.max_action)


def expectile_loss(diff: torch.Tensor, expectile: float) -> torch.Tensor:
    """``mean(|expectile - 1(diff < 0)| * diff^2)``: IQL's asymmetric L2."""
    weight = torch.abs(expectile - (diff < 0).to(diff.dtype))
    return (weight * diff.square()).mean()


def episode_return_range(rewards: torch.Tensor, episode_ids: torch.Tensor) -> float:
    """``max - min`` of the undiscounted episode returns (CORL's ``return_reward_range``)."""
    _, inverse = torch.unique(episode_ids, return_inverse=True)
    returns = torch.zeros(int(inverse.max()) + 1, dtype=torch.float64).index_add_(0, inverse, rewards.double())
    return float(returns.max() - returns.min())


class IQL(OfflineRLModule):
    """Implicit Q-learning; see the module docstring.

    Args:
        expectile: the value function's expectile tau (0.5 = mean regression; CORL's ``iql_tau``).
        temperature: beta, the inverse temperature of the advantage weights exp(beta * A).
        actor_lr_cosine_steps: anneal the actor's learning rate to 0 over this many updates (cosine); None: constant.
        normalize_rewards: scale rewards by ``1000 / (max - min episode return)`` of the training data (CORL's rule
            for locomotion data); off when the rewards are already scaled (``data.reward_scale``).
        critic_layer_norm: LayerNorm in the Q-critics' and value network's hidden layers.
        c4: the C4 option group; ``c4.enabled=False`` is exactly IQL.
    """

    def __init__(
        self,
        actor_lr: float = 3e-4,  # policy learning rate
        qf_lr: float = 3e-4,  # twin Q learning rate
        vf_lr: float = 3e-4,  # value network learning rate
        hidden_dims: tuple[int, ...] = (256, 256),  # every network's hidden layers
        gamma: float = 0.99,  # discount
        tau: float = 0.005,  # target Q Polyak rate
        expectile: float = 0.7,  # value expectile (CORL iql_tau)
        temperature: float = 3.0,  # beta of exp(beta * advantage)
        actor_lr_cosine_steps: int | None = 1_000_000,  # CORL anneals over max_timesteps
        normalize_rewards: bool = True,  # rewards * 1000 / return range (CORL, locomotion)
        critic_layer_norm: bool = False,  # LayerNorm in the Q and V hidden layers
        **kwargs,  # the options every algorithm shares (OfflineRLModule)
    ):
        super().__init__(**kwargs)
        check_hyperparameters(
            gamma, tau, hidden_dims, actor_lr=actor_lr, qf_lr=qf_lr, vf_lr=vf_lr, temperature=temperature
        )
        if not 0 < expectile < 1:
            raise ValueError(f"model.expectile={expectile} must be in (0, 1)")
        if actor_lr_cosine_steps is not None and actor_lr_cosine_steps < 1:
            raise ValueError(f"model.actor_lr_cosine_steps={actor_lr_cosine_steps} must be >= 1 or null")
        if self.c4.enabled and PENALTIES[self.c4.config.penalty].inputs == "input_gradients":
            raise ValueError(
                f"model.c4.penalty={self.c4.config.penalty} pairs dQ/d(s,a) with dQ/d(s',a'), but IQL's "
                "backup is V(s'), which has no action input; use a feature penalty (cross_cov, "
                "weighted_cross_cov, feature_dot)"
            )
        self.register_buffer("reward_scale", torch.ones(()))
        self.finish_init()

    def build_networks(self, obs_dim: int, act_dim: int) -> None:
        hp = self.hparams
        self.actor = GaussianPolicy(obs_dim, act_dim, tuple(hp.hidden_dims), hp.max_action)
        self.critic = CriticEnsemble(
            obs_dim, act_dim, tuple(hp.hidden_dims), ensemble_size=2, layer_norm=hp.critic_layer_norm
        )
        self.critic_target = self.make_target(self.critic)
        self.value = CriticEnsemble(obs_dim, 0, tuple(hp.hidden_dims), ensemble_size=1, layer_norm=hp.critic_layer_norm)

    def compiled_networks(self) -> list[nn.Module]:
        return [self.actor, self.critic, self.value]

    def configure_optimizers(self):
        hp = self.hparams
        return [
            self.adam(self.value.parameters(), hp.vf_lr),
            self.adam(self.critic.parameters(), hp.qf_lr),
            self.adam(self.actor.parameters(), hp.actor_lr),
        ]

    def setup(self, stage: str) -> None:
        super().setup(stage)
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if self.hparams.normalize_rewards and getattr(dm, "transitions", None) is not None:
            t = dm.transitions
            spread = episode_return_range(t.rewards, t.episode_ids)
            self.reward_scale.fill_(1000.0 / spread if spread > 0 else 1.0)

    # ------------------------------------------------------------------ C4's pairing: Q(s, a) with V(s')
    def backup_network(self) -> nn.Module:
        return self.value

    def backup_input(self, next_obs: torch.Tensor, next_actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return next_obs, next_actions[..., :0]

    def v(self, obs: torch.Tensor, return_features: bool = False):
        out = self.value(obs, obs[..., :0], return_features=return_features)
        return (out[0][0], out[1]) if return_features else out[0]

    # ------------------------------------------------------------------ the update
    def update(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        hp = self.hparams
        v_opt, q_opt, actor_opt = self.optimizers()
        obs, act, next_obs = batch["observations"], batch["actions"], batch["next_observations"]
        rew = batch["rewards"] * self.reward_scale
        term = batch["terminals"]

        with torch.no_grad():
            next_v, next_feats = self.v(next_obs, return_features=True)  # before the value update (CORL)
            target_q = self.critic_target(obs, act).min(dim=0).values
        # value: expectile regression towards the target critics
        adv = target_q - self.v(obs)
        v_loss = expectile_loss(adv, hp.expectile)
        self.check_finite(value_loss=v_loss)
        self.step_optimizer(v_opt, v_loss)

        # twin Q: towards r + gamma V(s'); C4 pairs phi(s, a) with the value network's features at s'
        y = rew + hp.gamma * (1.0 - term) * next_v
        q, feats = self.critic(obs, act, return_features=True)
        td_loss = ((q - y) ** 2).mean(dim=1).mean()
        logs = {"critic_loss": td_loss.detach(), "value_loss": v_loss.detach(), "q_mean": q.detach().mean()}
        critic_loss = td_loss + self.c4.penalty(self, batch, feats, next_feats.detach(), td_loss, logs)
        self.check_finite(critic_loss=critic_loss)
        self.step_optimizer(q_opt, critic_loss, counted=True)
        soft_update_(self.critic_target, self.critic, hp.tau)

        # policy: advantage-weighted regression on the dataset actions
        weights = torch.exp(hp.temperature * adv.detach()).clamp(max=EXP_ADV_MAX)
        log_prob = self.actor(obs).log_prob(act).sum(dim=-1)
        actor_loss = (weights * -log_prob).mean()
        self.check_finite(actor_loss=actor_loss)
        self._anneal_actor_lr(actor_opt)
        self.step_optimizer(actor_opt, actor_loss)
        logs.update(actor_loss=actor_loss.detach(), advantage_mean=adv.detach().mean())
        return logs

    def _anneal_actor_lr(self, actor_opt) -> None:
        """Cosine annealing as a function of the update count (so a resume continues the schedule exactly and a
        changed ``actor_lr`` on resume is honoured)."""
        steps = self.hparams.actor_lr_cosine_steps
        if steps is None:
            return
        t = min(self.n_updates, steps)
        lr = self.hparams.actor_lr * 0.5 * (1.0 + math.cos(math.pi * t / steps))
        for group in getattr(actor_opt, "optimizer", actor_opt).param_groups:
            group["lr"] = lr
