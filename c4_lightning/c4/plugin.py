"""The C4 object an algorithm owns: ``self.c4 = C4(config)``.

An algorithm's critic update uses it in two places and knows nothing else about C4::

    target_q, next_feats = self.c4.target_q(self.critic_target, next_obs, next_act, batch["next_actions"])
    ...
    critic_loss = td_loss + self.c4.penalty(self, batch, feats, next_feats, td_loss, logs)

``target_q`` is the backup's target-critic pass; when the active penalty needs the target's features at the
dataset's ``(s', a')`` it computes them in the same batched forward pass (with ``penalty_next_action="policy"`` it
returns the features of the backup's own rows at ``(s', a~')`` instead, and computes no extra rows). ``penalty``
returns ``0.0`` when C4 is off (or its weight is 0) without computing anything or drawing random numbers, so the
baseline stays bit-identical.
Otherwise it looks the penalty up in the one registry (:data:`c4_lightning.c4.penalty.PENALTIES`), builds the inputs
that penalty declares (features, head-weighted features or input gradients), and logs ``c4/penalty``,
``c4/penalty_to_td`` and, for capped penalties, ``c4/penalty_raw``.

It also supplies the refit callback (:meth:`callbacks`) and hands partitions to the sampler (:meth:`hand_off`).
What it needs from the module and the datamodule is written down in :class:`C4Module` and :class:`C4DataModule`.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_warn

from c4_lightning.c4.config import C4Config
from c4_lightning.c4.features import input_gradients
from c4_lightning.c4.penalty import PENALTIES, PenaltySpec


@runtime_checkable
class C4Module(Protocol):
    """What C4 needs from an algorithm: twin critics as ``CriticEnsemble``s (``critic(obs, act,
    return_features=True) -> (q [E, B], phi [E, B, H])``, a ``head`` whose ``weight`` is ``[E, H, 1]``), the
    ``backup_network()`` whose features at the next step C4 pairs with the critic's (the target critic, or IQL's
    value network) with its inputs ``backup_input(next_obs, next_actions)``, a ``will_log()`` telling whether the
    current update's metrics reach the loggers, and for the diagnostics ``probe_features()`` (online and backup
    features on a fixed probe set) with ``probe_index`` (its dataset rows)."""

    critic: torch.nn.Module
    critic_target: torch.nn.Module
    probe_index: torch.Tensor | None

    def will_log(self) -> bool: ...

    def backup_network(self) -> torch.nn.Module: ...

    def backup_input(self, next_obs: torch.Tensor, next_actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...

    def probe_features(self) -> tuple[torch.Tensor, torch.Tensor]: ...


@runtime_checkable
class C4DataModule(Protocol):
    """What C4 needs from a datamodule: the clustering inputs, the transitions (episode ids for trajectory tails,
    sources for the cluster image), the sampler that takes the partition, and the batch size."""

    batch_size: int
    num_transitions: int

    def features_input(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]: ...

    def set_cluster_labels(self, labels: torch.Tensor) -> None: ...

    def set_cluster_members(self, members: list) -> None: ...


def head_weights(critic: torch.nn.Module) -> torch.Tensor:
    """The head weights ``w`` of a ``CriticEnsemble`` as ``[E, 1, H]`` (broadcasts over ``phi [E, B, H]``)."""
    return critic.head.weight.transpose(-1, -2)


def trajectory_tail_members(labels: np.ndarray, episode_ids: np.ndarray, n_clusters: int) -> list[np.ndarray]:
    """The C4 authors' overlapping clusters: cluster k holds its members plus every step of a trajectory after
    that trajectory's *last* member step in k (``buffer/buffer.py`` of their code).

    Assumes the transitions of an episode are stored contiguously in step order (as the loaders write them)."""
    n = len(labels)
    starts = np.flatnonzero(np.r_[True, episode_ids[1:] != episode_ids[:-1]])
    ends = np.r_[starts[1:], n]
    members = []
    for k in range(n_clusters):
        mask = labels == k
        for s, e in zip(starts, ends):
            hit = np.flatnonzero(mask[s:e])
            if hit.size:
                mask[s + hit[-1] : e] = True
        members.append(np.flatnonzero(mask))
    return members


class C4:
    """C4 as a plug-in; see the module docstring. ``C4(None)`` or ``C4({"enabled": False})`` is off."""

    def __init__(self, config: C4Config | dict | None = None):
        self.config = config if isinstance(config, C4Config) else C4Config(**(config or {}))
        self.spec: PenaltySpec = PENALTIES[self.config.penalty]
        self._warned_cap = False

    # ------------------------------------------------------------------ switches
    @property
    def enabled(self) -> bool:
        return self.config.enabled

    @property
    def active(self) -> bool:
        """The penalty runs (C4 on and a positive weight)."""
        return self.config.enabled and self.config.penalty_weight > 0

    def needs_target_features(self) -> bool:
        return self.active and self.spec.inputs in ("features", "head_weighted")

    def uses_backup_features(self) -> bool:
        """The penalty's target side is the backup's own pass at ``(s', a~')`` (``penalty_next_action="policy"``): an
        algorithm whose backup does not go through :meth:`target_q` (CQL's max-backup) passes those features itself."""
        return self.needs_target_features() and self.config.penalty_next_action == "policy"

    # ------------------------------------------------------------------ the two calls an algorithm makes
    @torch.no_grad()
    def target_q(
        self,
        critic_target: torch.nn.Module,
        next_obs: torch.Tensor,
        next_act: torch.Tensor,
        data_next_act: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The target critic's Q at ``(s', next_act)`` ``[E, B]`` for the backup and, when the penalty needs them,
        its features ``[E, m, H]`` on the penalty's ``m`` rows; else ``None``.

        ``penalty_next_action="data"`` (default): the features at the dataset's ``(s', data_next_act)``, from the
        same forward pass as the backup (one batched product per layer for ``B + m`` rows).
        ``penalty_next_action="policy"``: the features of the backup's own rows at ``(s', next_act)``, the action the
        TD target uses; the pass has ``B`` rows, exactly the baseline's."""
        if not self.needs_target_features():
            return critic_target(next_obs, next_act), None
        b, m = next_obs.shape[0], self._rows(next_obs.shape[0])
        if self.config.penalty_next_action == "policy":
            q, feats = critic_target(next_obs, next_act, return_features=True)
            return q, feats[:, :m]
        q, feats = critic_target(
            torch.cat([next_obs, next_obs[:m]]), torch.cat([next_act, data_next_act[:m]]), return_features=True
        )
        return q[:, :b], feats[:, b:]

    def _rows(self, batch_size: int) -> int:
        """Rows the penalty is computed on: ``penalty_rows`` (at most the batch), else the whole batch."""
        m = self.config.penalty_rows
        return batch_size if m is None else min(int(m), batch_size)

    def penalty(
        self,
        module: C4Module,
        batch: dict[str, torch.Tensor],
        feats: torch.Tensor,
        next_feats: torch.Tensor | None,
        td_loss: torch.Tensor,
        logs: dict[str, Any],
    ) -> torch.Tensor | float:
        """``penalty_weight * sum over critics of the penalty`` (``0.0`` when inactive). ``feats`` are the online
        critic's features at ``(s, a)`` from the TD forward pass; ``next_feats`` what :meth:`target_q` returned."""
        if not self.active:
            return 0.0
        m = self._rows(feats.shape[-2])
        if m < feats.shape[-2]:  # a sub-batch: the first m rows (the batch's rows are i.i.d. draws)
            batch = {k: v[:m] for k, v in batch.items()}
            feats = feats[..., :m, :]
            if next_feats is not None:
                next_feats = next_feats[..., :m, :]
        online, target = self.inputs(module, batch, feats, next_feats)
        options = {k: getattr(self.config, field) for k, field in self.spec.options.items()}
        value = self.spec.fn(online, target, **options).sum()
        weighted = self.config.penalty_weight * value
        logs["c4/penalty"] = value.detach()
        logs["c4/penalty_to_td"] = weighted.detach() / td_loss.detach().clamp_min(1e-12)
        if self.spec.raw is not None and module.will_log():
            raw = self.spec.raw(online.detach(), target, **options).detach()
            logs["c4/penalty_raw"] = raw.sum()
            cap = options.get("cap")
            if cap is not None and not self._warned_cap and bool((raw > cap).any()):
                self._warned_cap = True
                rank_zero_warn(
                    f"C4 penalty {self.config.penalty}: raw value {float(raw.max()):.3g} is above its cap "
                    f"{cap:g}, where the capped penalty's gradient fades; raise model.c4.grad_cap "
                    "(c4/penalty_raw shows the raw value)"
                )
        return weighted

    def inputs(
        self, module: C4Module, batch: dict[str, torch.Tensor], feats: torch.Tensor, next_feats: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The (online, target) pair the active penalty is computed on; the target side carries no gradient."""
        kind = self.spec.inputs
        backup = module.backup_network()
        next_inputs = module.backup_input(batch["next_observations"], batch["next_actions"])
        if kind == "input_gradients":
            grad = input_gradients(module.critic, batch["observations"], batch["actions"], create_graph=True)
            return grad, input_gradients(backup, *next_inputs)
        if next_feats is None:
            if self.config.penalty_next_action == "policy":
                raise ValueError(
                    "model.c4.penalty_next_action=policy pairs the critic with the backup's own features at "
                    "(s', a~'), but the algorithm passed none: get next_feats from C4.target_q (or the backup's "
                    "own forward pass with return_features=True), or use penalty_next_action=data"
                )
            with torch.no_grad():
                _, next_feats = backup(*next_inputs, return_features=True)
        if kind == "head_weighted":
            w, w_next = head_weights(module.critic), head_weights(backup).detach()
            feats, next_feats = feats * w.to(feats.dtype), next_feats * w_next.to(next_feats.dtype)
        if next_feats.shape[0] == 1 and feats.shape[0] > 1:  # a one-member backup (IQL's V) pairs with every critic
            next_feats = next_feats.expand(feats.shape[0], *next_feats.shape[1:])
        return feats, next_feats

    # ------------------------------------------------------------------ partition
    def callbacks(self) -> list:
        """The refit callback when C4 is on (Lightning adds it through the module's ``configure_callbacks``)."""
        if not self.enabled:
            return []
        from c4_lightning.c4.callback import ClusterRefitCallback

        return [ClusterRefitCallback()]

    def hand_off(self, datamodule: C4DataModule, labels: np.ndarray) -> None:
        """Give a partition to the sampler: the labels, or with ``extend_with_trajectory_tail`` the authors'
        overlapping members."""
        if self.config.extend_with_trajectory_tail:
            episode_ids = datamodule.transitions.episode_ids.cpu().numpy()
            datamodule.set_cluster_members(
                trajectory_tail_members(np.asarray(labels), episode_ids, self.config.n_clusters)
            )
        else:
            datamodule.set_cluster_labels(torch.as_tensor(labels))

    def to_dict(self) -> dict:
        return self.config.to_dict()
