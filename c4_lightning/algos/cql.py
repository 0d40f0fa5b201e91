"""CQL(H) (Kumar et al., 2020), SAC-based, with the optional C4 plug-in.

Hyperparameter defaults follow CORL's gym-mujoco configuration. The conservative term is a logsumexp over all
``3 * cql_n_actions`` sampled actions per state (uniform, pi(.|s) and pi(.|s') evaluated at s) with
importance-sampling log-densities subtracted.

Known differences from CORL's implementation (same losses, different details): the tanh-Gaussian actor has no
learnable ``log_std_multiplier``/``log_std_offset`` (CORL starts at sigma ~ e^-1, ours at ~1); with
``orthogonal_init`` the actor is orthogonally initialised too and the critic head uses xavier(1e-2) rather than
orthogonal(1e-2); alpha is read after its own update (as the CQL authors' code, CORL reads it before);
``log_alpha_prime`` starts at 0 (CORL 1; matters only with ``cql_lagrange``); the max-backup reuses the pi(.|s')
samples of the conservative term.
"""

from __future__ import annotations

import math

import torch

from c4_lightning.algos.base import OfflineRLModule, check_hyperparameters
from c4_lightning.algos.networks import CriticEnsemble, TanhGaussianActor, orthogonal_init_, soft_update_


def cql_conservative_gap(
    q_pred,
    q_rand,
    q_curr,
    q_next,
    logp_curr,
    logp_next,
    act_dim: int,
    max_action: float,
    temperature: float,
    importance_sample: bool,
    clip_min: float = -math.inf,
    clip_max: float = math.inf,
) -> torch.Tensor:
    """Per-critic ``E_B[ clamp(temp * logsumexp(Q_ood / temp) - Q(s, a_data), clip_min, clip_max) ]``
    (clamped per sample before the batch mean, as CORL).

    ``q_pred`` is ``[E, B]``; ``q_rand``/``q_curr``/``q_next`` are ``[E, B, n]``; log-densities ``[B, n]``.
    """
    if importance_sample:
        log_uniform = act_dim * math.log(0.5 / max_action)
        cat = torch.cat([q_rand - log_uniform, q_next - logp_next, q_curr - logp_curr], dim=-1)
    else:
        cat = torch.cat([q_rand, q_pred.unsqueeze(-1), q_next, q_curr], dim=-1)
    ood = torch.logsumexp(cat / temperature, dim=-1) * temperature
    return (ood - q_pred).clamp(clip_min, clip_max).mean(dim=1)


class CQL(OfflineRLModule):
    """CQL(H) on a SAC backbone with automatic entropy tuning and optional Lagrange on the CQL weight.

    One training step updates alpha, the actor, the critics (and alpha' with ``cql_lagrange``) and the
    targets, and advances ``global_step`` by one. ``bc_steps`` first updates train the actor by behaviour
    cloning; ``bc_weight`` adds ``-bc_weight * log pi(a_data|s)`` to the actor loss throughout
    (the paper authors' CQL variant). ``critic_layer_norm`` puts LayerNorm in every hidden layer of the critics
    (the C4 authors' critics). ``configs/cql_c4_authors.yaml`` is the C4 authors' CQL.
    """

    def __init__(
        self,
        policy_lr: float = 3e-5,  # actor learning rate
        qf_lr: float = 3e-4,  # critic learning rate
        hidden_dims: tuple[int, ...] = (256, 256, 256),  # hidden layers of every network
        gamma: float = 0.99,  # discount
        tau: float = 5e-3,  # target networks' Polyak rate
        target_entropy: float | None = None,  # None: -act_dim
        alpha_multiplier: float = 1.0,  # scales the entropy temperature
        automatic_entropy_tuning: bool = True,  # learn the entropy temperature
        backup_entropy: bool = False,  # entropy term in the TD target
        cql_n_actions: int = 10,  # sampled actions per state and source
        cql_importance_sample: bool = True,  # subtract the samples' log-densities
        cql_lagrange: bool = False,  # tune the CQL weight to a target gap
        cql_target_action_gap: float = -1.0,  # the Lagrange target gap
        cql_temp: float = 1.0,  # logsumexp temperature
        cql_alpha: float = 10.0,  # CQL regulariser weight
        cql_max_target_backup: bool = False,  # max over sampled next actions in the backup
        cql_clip_diff_min: float = -math.inf,  # clip of the per-sample gap (low)
        cql_clip_diff_max: float = math.inf,  # clip of the per-sample gap (high)
        orthogonal_init: bool = True,  # orthogonal hidden layers, small last layer
        bc_steps: int = 0,  # behaviour-cloning updates of the actor first
        bc_weight: float = 0.0,  # weight of -log pi(a_data|s) in the actor loss
        critic_layer_norm: bool = False,  # LayerNorm in the critics' hidden layers (C4 authors)
        **kwargs,  # the options every algorithm shares (OfflineRLModule)
    ):
        super().__init__(**kwargs)
        check_hyperparameters(gamma, tau, hidden_dims, policy_lr=policy_lr, qf_lr=qf_lr, cql_temp=cql_temp)
        if cql_n_actions < 1:
            raise ValueError(f"model.cql_n_actions={cql_n_actions} must be >= 1")
        if cql_alpha < 0 or bc_weight < 0 or bc_steps < 0:
            raise ValueError("model.cql_alpha, model.bc_weight and model.bc_steps must be >= 0")
        self.finish_init()

    def build_networks(self, obs_dim: int, act_dim: int) -> None:
        hp = self.hparams
        self.actor = TanhGaussianActor(obs_dim, act_dim, tuple(hp.hidden_dims), hp.max_action)
        self.critic = CriticEnsemble(
            obs_dim, act_dim, tuple(hp.hidden_dims), ensemble_size=2, layer_norm=hp.critic_layer_norm
        )
        if hp.orthogonal_init:
            orthogonal_init_(self.actor)
            orthogonal_init_(self.critic)
        self.critic_target = self.make_target(self.critic)
        self.log_alpha = torch.nn.Parameter(torch.zeros(()))
        self.log_alpha_prime = torch.nn.Parameter(torch.zeros(()))
        self.target_entropy = float(hp.target_entropy) if hp.target_entropy is not None else -float(act_dim)

    def configure_optimizers(self):
        hp = self.hparams
        return [
            self.adam(self.critic.parameters(), hp.qf_lr),
            self.adam(self.actor.parameters(), hp.policy_lr),
            self.adam([self.log_alpha], hp.policy_lr),
            self.adam([self.log_alpha_prime], hp.qf_lr),
        ]

    def _repeat(self, x: torch.Tensor) -> torch.Tensor:
        return x.repeat_interleave(self.hparams.cql_n_actions, dim=0)

    def _q_many(self, obs_rep: torch.Tensor, actions: torch.Tensor, batch: int) -> torch.Tensor:
        return self.critic(obs_rep, actions).view(self.critic.ensemble_size, batch, self.hparams.cql_n_actions)

    def update(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        hp = self.hparams
        critic_opt, actor_opt, alpha_opt, alpha_prime_opt = self.optimizers()
        obs, act, next_obs = batch["observations"], batch["actions"], batch["next_observations"]
        rew, term = batch["rewards"], batch["terminals"]
        B, A, n = obs.shape[0], act.shape[-1], hp.cql_n_actions
        logs: dict[str, torch.Tensor] = {}

        # samples for the conservative term and the backup, drawn from the pre-update policy (as CORL); the actor
        # runs once per state and draws n actions from each distribution (CORL runs it on n copies of each state)
        with torch.no_grad():
            obs_rep = self._repeat(obs)
            a_curr, logp_curr = self.actor.sample_n(obs, n)
            a_next, logp_next = self.actor.sample_n(next_obs, n)
            a_rand = torch.empty(B * n, A, device=obs.device, dtype=obs.dtype).uniform_(-hp.max_action, hp.max_action)
            if not hp.cql_max_target_backup:  # the backup's a' ~ pi(.|s') also comes from the pre-update policy
                a_backup, backup_logp = self.actor(next_obs)

        # --- alpha and actor
        new_act, log_pi = self.actor(obs)
        if hp.automatic_entropy_tuning:
            alpha_loss = -(self.log_alpha * (log_pi.detach() + self.target_entropy)).mean()
            self.step_optimizer(alpha_opt, alpha_loss)
            alpha = self.log_alpha.detach().exp() * hp.alpha_multiplier
            logs["alpha_loss"] = alpha_loss.detach()
        else:
            alpha = obs.new_tensor(hp.alpha_multiplier)
        if self.n_updates < hp.bc_steps:
            actor_loss = (alpha * log_pi - self.actor.log_prob(obs, act)).mean()
        else:
            # no gradient for the critic's weights: the actor loss trains the actor alone
            q_new = self.critic(obs, new_act, detach_weights=True).min(dim=0).values
            actor_loss = (alpha * log_pi - q_new).mean()
            if hp.bc_weight > 0:
                actor_loss = actor_loss - hp.bc_weight * self.actor.log_prob(obs, act).mean()
        self.check_finite(actor_loss=actor_loss)
        self.step_optimizer(actor_opt, actor_loss)

        # --- critics
        next_feats = None  # the target critic's features at (s', a'_data) or (s', a~'), for the C4 penalty
        with torch.no_grad():
            if hp.cql_max_target_backup:
                if self.c4.uses_backup_features():  # c4.penalty_next_action=policy: features at the max's action
                    q_next_all, feats_all = self.critic_target(self._repeat(next_obs), a_next, return_features=True)
                else:
                    q_next_all = self.critic_target(self._repeat(next_obs), a_next)
                q_next_all = q_next_all.view(2, B, n).min(dim=0).values
                target_q, arg = q_next_all.max(dim=-1)
                next_logp = logp_next.view(B, n).gather(1, arg.unsqueeze(-1)).squeeze(-1)
                if self.c4.uses_backup_features():
                    next_feats = feats_all.view(2, B, n, -1)[:, torch.arange(B, device=arg.device), arg]
            else:
                next_logp = backup_logp
                target_qs, next_feats = self.c4.target_q(self.critic_target, next_obs, a_backup, batch["next_actions"])
                target_q = target_qs.min(dim=0).values
            if hp.backup_entropy:
                target_q = target_q - alpha * next_logp
            y = rew + hp.gamma * (1.0 - term) * target_q

        q_pred, feats = self.critic(obs, act, return_features=True)
        td_loss = ((q_pred - y) ** 2).mean(dim=1).sum()
        q_rand = self._q_many(obs_rep, a_rand, B)
        q_curr = self._q_many(obs_rep, a_curr, B)
        q_next = self._q_many(obs_rep, a_next, B)
        gap = cql_conservative_gap(
            q_pred,
            q_rand,
            q_curr,
            q_next,
            logp_curr.view(B, n),
            logp_next.view(B, n),
            A,
            hp.max_action,
            hp.cql_temp,
            hp.cql_importance_sample,
            hp.cql_clip_diff_min,
            hp.cql_clip_diff_max,
        )
        if hp.cql_lagrange:
            alpha_prime = self.log_alpha_prime.exp().clamp(0.0, 1e6)
            alpha_prime_loss = -(alpha_prime * hp.cql_alpha * (gap.detach() - hp.cql_target_action_gap)).sum() * 0.5
            self.step_optimizer(alpha_prime_opt, alpha_prime_loss)
            cql_loss = (alpha_prime.detach() * hp.cql_alpha * (gap - hp.cql_target_action_gap)).sum()
            logs["alpha_prime"] = alpha_prime.detach()
        else:
            cql_loss = (hp.cql_alpha * gap).sum()
        critic_loss = td_loss + cql_loss + self.c4.penalty(self, batch, feats, next_feats, td_loss, logs)
        self.check_finite(critic_loss=critic_loss)
        self.step_optimizer(critic_opt, critic_loss, counted=True)
        soft_update_(self.critic_target, self.critic, hp.tau)

        logs.update(
            critic_loss=td_loss.detach(),
            cql_gap=gap.detach().mean(),
            actor_loss=actor_loss.detach(),
            alpha=alpha.detach(),
            q_mean=q_pred.detach().mean(),
            log_pi=log_pi.detach().mean(),
        )
        return logs
