"""``OfflineRLDataModule``: a Minari dataset as one packed tensor, sampled by ``ClusterBatchSampler``.

All per-step fields live in one float32 matrix ``[N, F]`` (on the training device when
``data_on_device``), so a batch is a single ``index_select``; the batch dict holds column
views of the gathered rows:

``observations, actions, rewards, next_observations, next_actions, terminals, indices`` (``indices``: the dataset rows
of the batch, for diagnostics).

Observations (and next observations) are normalised with ``obs_mean``/``obs_std`` when
``normalize_observations``; rewards become ``rewards * reward_scale + reward_bias``.
"""

from __future__ import annotations

import os

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_warn
import torch
from torch.utils.data import DataLoader

from c4_lightning.data.errors import DatasetError
from c4_lightning.data.minari import (
    _as_id_list,
    combine_loaded,
    load_dataset_transitions,
    locate_dataset,
    resolve_dataset,
)
from c4_lightning.data.sampler import ClusterBatchSampler
from c4_lightning.data.transitions import Transitions, check_finite, mix, observation_stats

OBS_STD_EPS = 1e-3
SCALAR_FIELDS = ("rewards", "terminals")


class PackedTransitions:
    """Map-style dataset whose ``__getitem__`` takes a whole LongTensor of indices (one gather)."""

    def __init__(self, packed: torch.Tensor, layout: dict[str, slice]) -> None:
        self.packed = packed
        self.layout = layout

    def __len__(self) -> int:
        return int(self.packed.shape[0])

    def __getitem__(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        idx = idx.to(self.packed.device, non_blocking=True)
        rows = self.packed.index_select(0, idx)
        batch = {name: rows[:, sl.start] if name in SCALAR_FIELDS else rows[:, sl] for name, sl in self.layout.items()}
        batch["indices"] = idx
        return batch


def _identity_collate(batch):
    return batch


class OfflineRLDataModule(pl.LightningDataModule):
    """Offline-RL data: load (embedded/cached/downloaded Minari), subsample/mix, normalise, sample.

    Args:
        dataset_id: a Minari dataset id (``-vN`` optional: latest local version), or a list of ids to mix.
        shares: mixture shares, one per id (default equal).
        max_transitions: keep exactly this many transitions (whole episodes + one truncated).
        subsample_seed: seed of the episode draw (separate from the training seed).
        batch_size: transitions per batch (per device under DDP).
        steps_per_epoch: batches per epoch.
        normalize_observations: normalise observations with the dataset's mean/std (+1e-3).
        obs_stats_from_full: compute the stats on the dataset before subsampling.
        reward_scale, reward_bias: rewards become ``rewards * reward_scale + reward_bias``.
        min_cluster_size: clusters smaller than this are never sampled (default
            ``max(batch_size, N // max(K, 10))``).
        sampler_seed: seed of the batch sampler; ``None`` (default) follows the run's global seed
            (``seed_everything``) when the sampler is built, so runs with different seeds draw different batches.
        data_on_device: keep the packed data on the training device.
        clip_actions: clip actions and next actions into ``[-clip_actions, clip_actions]`` (a warning names the
            share clipped); ``None`` (default) keeps them, and the algorithm refuses actions outside its
            ``max_action``.
    """

    def __init__(
        self,
        dataset_id: str | list[str] = "hopper/random-medium-expert-10k",
        shares: list[float] | None = None,
        max_transitions: int | None = None,
        subsample_seed: int = 0,
        batch_size: int = 256,
        steps_per_epoch: int = 1000,
        normalize_observations: bool = True,
        obs_stats_from_full: bool = False,
        reward_scale: float = 1.0,
        reward_bias: float = 0.0,
        min_cluster_size: int | None = None,
        sampler_seed: int | None = None,
        data_on_device: bool = True,
        clip_actions: float | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        _as_id_list(dataset_id)
        if int(batch_size) < 1:
            raise DatasetError(f"data.batch_size must be >= 1, got {batch_size}")
        if int(steps_per_epoch) < 1:
            raise DatasetError(f"data.steps_per_epoch must be >= 1, got {steps_per_epoch}")
        if max_transitions is not None and int(max_transitions) < 1:
            raise DatasetError(f"data.max_transitions must be >= 1 or null, got {max_transitions}")
        if clip_actions is not None and not float(clip_actions) > 0:
            raise DatasetError(f"data.clip_actions must be > 0 or null, got {clip_actions}")
        if min_cluster_size is not None and int(min_cluster_size) < 1:
            raise DatasetError(f"data.min_cluster_size must be >= 1 or null, got {min_cluster_size}")
        if not torch.isfinite(torch.tensor([float(reward_scale), float(reward_bias)])).all():
            raise DatasetError(
                f"data.reward_scale and data.reward_bias must be finite, got {reward_scale}, {reward_bias}"
            )
        self.dataset_id = dataset_id
        self.shares = shares
        self.max_transitions = max_transitions
        self.subsample_seed = int(subsample_seed)
        self.clip_actions = None if clip_actions is None else float(clip_actions)
        self.batch_size = int(batch_size)
        self.steps_per_epoch = int(steps_per_epoch)
        self.normalize_observations = bool(normalize_observations)
        self.obs_stats_from_full = bool(obs_stats_from_full)
        self.reward_scale = float(reward_scale)
        self.reward_bias = float(reward_bias)
        self.min_cluster_size = min_cluster_size
        self.sampler_seed = None if sampler_seed is None else int(sampler_seed)
        self.data_on_device = bool(data_on_device)

        self.transitions: Transitions | None = None
        self._obs_mean: torch.Tensor | None = None
        self._obs_std: torch.Tensor | None = None
        self.sampler: ClusterBatchSampler | None = None
        self._packed: torch.Tensor | None = None
        self._layout: dict[str, slice] = {}
        self._pending_sampler_state: dict[str, Any] | None = None

    # ------------------------------------------------------------------ loading

    def prepare_data(self) -> None:
        """Download (once, on one process) any listed dataset that has no local copy; cheap otherwise."""
        for dataset_id in _as_id_list(self.dataset_id):
            if locate_dataset(dataset_id) is None:
                resolve_dataset(dataset_id)

    def _load(self) -> None:
        if self.transitions is not None:
            return
        ids = _as_id_list(self.dataset_id)
        parts = [load_dataset_transitions(i) for i in ids]
        t = combine_loaded(parts, self.shares, self.max_transitions, self.subsample_seed)
        t = check_finite(t, "+".join(ids))
        n = len(t)
        if n < 2:
            raise DatasetError(
                f"dataset {'+'.join(ids)} has N={n} transition{'s' if n != 1 else ''} (after max_transitions): "
                "training needs at least 2 (observation statistics and the critic's cross-covariance diagnostics are "
                "estimated from the data); use a larger dataset or data.max_transitions"
            )
        if self.batch_size > n:
            raise DatasetError(
                f"data.batch_size={self.batch_size} is larger than the dataset, which has N={n} transitions; "
                f"lower data.batch_size or raise data.max_transitions"
            )
        if self.normalize_observations:
            if self.obs_stats_from_full:
                full = parts[0] if len(parts) == 1 else mix(parts, self.shares, None, self.subsample_seed)
                mean, std = observation_stats(full, OBS_STD_EPS)
            else:
                mean, std = observation_stats(t, OBS_STD_EPS)
        else:
            mean = torch.zeros(t.obs_dim, dtype=torch.float32)
            std = torch.ones(t.obs_dim, dtype=torch.float32)
        self._obs_mean, self._obs_std = mean, std

        actions, next_actions = t.actions, t.next_actions
        if self.clip_actions is not None:
            bound = float(self.clip_actions)
            share = float((actions.abs() > bound).float().mean())
            if share > 0:
                rank_zero_warn(
                    f"data.clip_actions={bound}: clipped {share:.2%} of the dataset's action entries into "
                    f"[-{bound}, {bound}]"
                )
            actions, next_actions = actions.clamp(-bound, bound), next_actions.clamp(-bound, bound)
        columns = [
            ("observations", (t.observations - mean) / std),
            ("actions", actions),
            ("rewards", t.rewards * self.reward_scale + self.reward_bias),
            ("next_observations", (t.next_observations - mean) / std),
            ("next_actions", next_actions),
            ("terminals", t.terminals),
        ]
        layout, start, mats = {}, 0, []
        for name, value in columns:
            mat = value.reshape(n, -1).to(torch.float32)
            layout[name] = slice(start, start + mat.shape[1])
            start += mat.shape[1]
            mats.append(mat)
        self._packed = torch.cat(mats, dim=1).contiguous()
        bad = [name for name, sl in layout.items() if not torch.isfinite(self._packed[:, sl]).all()]
        if bad:  # the raw data were finite (check_finite above): the transformation overflowed float32
            raise DatasetError(
                f"data.reward_scale={self.reward_scale}, data.reward_bias={self.reward_bias} or the observation "
                f"normalisation turn {', '.join(bad)} into NaN/Inf in float32; use a smaller reward_scale/bias"
            )
        self._layout = layout
        self.transitions = t
        self._build_sampler()

    def _rank_world(self) -> tuple[int, int]:
        trainer = self.trainer
        if trainer is None:
            return 0, 1
        return int(trainer.global_rank), int(trainer.world_size)

    def transfer_batch_to_device(self, batch, device: torch.device, dataloader_idx: int):
        """A batch dict of tensors moves with one ``.to`` each (a no-op for on-device data); anything else takes
        Lightning's generic path. (A datamodule hook, not the module's: Lightning warns on every run when a module
        overrides it while a datamodule is attached.)"""
        if isinstance(batch, dict) and all(isinstance(v, torch.Tensor) for v in batch.values()):
            return {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def resolved_sampler_seed(self) -> int:
        """``sampler_seed``, or (when None) the global seed set by ``seed_everything`` (``PL_GLOBAL_SEED``), else 0."""
        if self.sampler_seed is not None:
            return self.sampler_seed
        if getattr(self, "sampler", None) is not None:  # fixed once the sampler exists
            return int(self.sampler.seed)
        return int(os.environ.get("PL_GLOBAL_SEED", 0))

    def _build_sampler(self) -> None:
        rank, world = self._rank_world()
        self.sampler = ClusterBatchSampler(
            num_samples=len(self.transitions),
            batch_size=self.batch_size,
            steps_per_epoch=self.steps_per_epoch,
            labels=None,
            min_cluster_size=self.min_cluster_size,
            seed=self.resolved_sampler_seed(),
            rank=rank,
            world_size=world,
        )
        if self._pending_sampler_state is not None:
            self.sampler.load_state_dict(self._pending_sampler_state)
            self._pending_sampler_state = None

    def setup(self, stage: str | None = None) -> None:
        self._load()
        trainer = self.trainer
        if trainer is not None:
            rank, world = self._rank_world()
            self.sampler.rank, self.sampler.world_size = rank, world
            if self.data_on_device:
                device = trainer.strategy.root_device
                if self._packed.device != device:
                    self._packed = self._packed.to(device)

    # ------------------------------------------------------------------ loaders

    @property
    def dataset(self) -> PackedTransitions:
        self._load()
        return PackedTransitions(self._packed, self._layout)

    def train_dataloader(self) -> DataLoader:
        self._load()
        rank, world = self._rank_world()
        self.sampler.rank, self.sampler.world_size = rank, world
        return DataLoader(
            self.dataset,
            batch_size=None,
            sampler=self.sampler,
            num_workers=0,
            collate_fn=_identity_collate,
            # private generator: the iterator's base-seed draw must not consume the global torch RNG, which the
            # algorithms use (C4 off must draw exactly the plain loop's random numbers)
            generator=torch.Generator(),
        )

    def features_input(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Normalised (observations, actions, next_observations, next_actions), all N rows, as column
        views of the packed matrix (on the data device; call ``.contiguous()`` if needed)."""
        self._load()
        p, lay = self._packed, self._layout
        return (
            p[:, lay["observations"]],
            p[:, lay["actions"]],
            p[:, lay["next_observations"]],
            p[:, lay["next_actions"]],
        )

    def set_cluster_labels(self, labels) -> None:
        """Hand a new partition (one int label per transition, or None for uniform) to the sampler."""
        self._load()
        self.sampler.set_labels(labels)

    def set_cluster_members(self, members) -> None:
        """Hand explicit (possibly overlapping) member index lists, one per cluster, to the sampler
        (the authors' trajectory-tail variant); None for uniform."""
        self._load()
        self.sampler.set_members(members)

    # ------------------------------------------------------------------ facts

    @property
    def obs_mean(self) -> torch.Tensor:
        """Observation mean [obs_dim] (zeros when ``normalize_observations=False``), CPU float32."""
        self._load()
        return self._obs_mean

    @property
    def obs_std(self) -> torch.Tensor:
        """Observation std + 1e-3 [obs_dim] (ones when ``normalize_observations=False``), CPU float32."""
        self._load()
        return self._obs_std

    @property
    def packed(self) -> torch.Tensor:
        self._load()
        return self._packed

    @property
    def layout(self) -> dict[str, slice]:
        self._load()
        return dict(self._layout)

    @property
    def num_transitions(self) -> int:
        self._load()
        return len(self.transitions)

    @property
    def obs_dim(self) -> int:
        self._load()
        return self.transitions.obs_dim

    @property
    def act_dim(self) -> int:
        self._load()
        return self.transitions.act_dim

    @property
    def env_id(self) -> str | None:
        self._load()
        return self.transitions.env_id

    @property
    def ref_scores(self) -> tuple[float, float] | None:
        self._load()
        return self.transitions.ref_scores

    @property
    def source_names(self) -> list[str]:
        self._load()
        return list(self.transitions.source_names)

    @property
    def sources(self) -> torch.Tensor:
        self._load()
        return self.transitions.sources

    # ------------------------------------------------------------------ checkpoint state

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """Called by the training loop for each batch it is about to train on (after the loader's prefetch): the
        sampler counts it, so its resume position is the batches consumed."""
        trainer = self.trainer
        if self.sampler is not None and trainer is not None and trainer.training:
            self.sampler.mark_consumed()
        return batch

    def state_dict(self) -> dict[str, Any]:
        if self.sampler is None:
            return {"sampler": self._pending_sampler_state} if self._pending_sampler_state else {}
        return {"sampler": self.sampler.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state = state_dict.get("sampler")
        if state is None:
            return
        if self.sampler is None:
            self._pending_sampler_state = state
        else:
            self.sampler.load_state_dict(state)
