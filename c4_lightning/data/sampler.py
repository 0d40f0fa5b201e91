"""``ClusterBatchSampler``: one cluster per batch, distribution-aware, resumable.

Every batch is a pure function of ``(seed, g, rank, labels)`` where ``g`` is the global
batch number (epoch ``e`` covers ``g`` in ``[e*S, (e+1)*S)`` with ``S = steps_per_epoch``):

* cluster choice: a generator seeded from ``(seed, g)`` -- identical on every rank, so under
  DDP all ranks train on the same cluster at the same step;
* indices: a generator seeded from ``(seed, rank, g)`` -- different per rank.

With ``labels=None`` (C4 off) only the index generator is used, so the stream equals plain
uniform sampling: ``torch.randint(N, (B,), generator=Generator().manual_seed(index_seed(seed, rank, g)))``.

The partition is given as one label per transition (:meth:`ClusterBatchSampler.set_labels`) or as
explicit, possibly overlapping member lists (:meth:`ClusterBatchSampler.set_members`).
Clusters smaller than ``min_cluster_size`` (default ``max(batch_size, N // max(K, 10))``) are
never picked; when none qualifies the sampler falls back to uniform sampling over all data
and warns once per partition.

The class derives from ``DistributedSampler`` only so that Lightning (and other code that
checks for one) leaves it in place under DDP instead of wrapping it; it handles ranks itself.
"""

from __future__ import annotations

import warnings
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data.distributed import DistributedSampler

from c4_lightning.data.errors import SamplerError

_MASK64 = (1 << 64) - 1
_CLUSTER_STREAM = 0xC1A57E12
_INDEX_STREAM = 0x1D3E5


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def _hash_seed(*values: int) -> int:
    """A 63-bit seed mixing the given non-negative integers (order matters)."""
    h = 0x6A09E667F3BCC908
    for v in values:
        h = _splitmix64(h ^ (int(v) & _MASK64))
    return h & ((1 << 63) - 1)


def cluster_seed(seed: int, g: int) -> int:
    """Seed of the cluster-choice generator for global batch ``g`` (shared by all ranks)."""
    return _hash_seed(_CLUSTER_STREAM, seed, g)


def index_seed(seed: int, rank: int, g: int) -> int:
    """Seed of the index generator for global batch ``g`` on ``rank``."""
    return _hash_seed(_INDEX_STREAM, seed, rank, g)


def _validate_labels(labels: Any, num_samples: int) -> torch.Tensor:
    if isinstance(labels, np.ndarray):
        if not np.issubdtype(labels.dtype, np.integer):
            raise SamplerError(
                f"cluster labels must be integers, got numpy dtype {labels.dtype}; pass e.g. labels.astype(np.int64)"
            )
        labels = torch.from_numpy(np.ascontiguousarray(labels))
    elif not isinstance(labels, torch.Tensor):
        arr = np.asarray(labels)
        if arr.size and not np.issubdtype(arr.dtype, np.integer):
            raise SamplerError(f"cluster labels must be integers, got {arr.dtype}; pass an int64 tensor")
        labels = torch.from_numpy(arr.astype(np.int64))
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise SamplerError(f"cluster labels must be an integer tensor, got dtype {labels.dtype}; pass labels.long()")
    labels = labels.detach().to("cpu", torch.int64).reshape(-1)
    if labels.numel() != num_samples:
        raise SamplerError(
            f"cluster labels have length {labels.numel()} but the dataset has {num_samples} transitions; "
            f"give exactly one label per transition"
        )
    if num_samples and int(labels.min()) < 0:
        raise SamplerError(f"cluster labels must be >= 0, got minimum {int(labels.min())}")
    return labels


class ClusterBatchSampler(DistributedSampler):
    """Yields ``steps_per_epoch`` LongTensor batches of ``batch_size`` indices per epoch (CPU)."""

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        steps_per_epoch: int,
        labels: Any = None,
        min_cluster_size: int | None = None,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        # DistributedSampler.__init__ needs a dataset and may query torch.distributed: not called.
        for name, value, low in (
            ("num_samples", num_samples, 1),
            ("batch_size", batch_size, 1),
            ("steps_per_epoch", steps_per_epoch, 1),
            ("world_size", world_size, 1),
        ):
            if int(value) != value or int(value) < low:
                raise SamplerError(f"{name} must be an integer >= {low}, got {value!r}")
        if not 0 <= int(rank) < int(world_size):
            raise SamplerError(f"rank must be in [0, world_size={world_size}), got {rank}")
        if min_cluster_size is not None and int(min_cluster_size) < 1:
            raise SamplerError(f"min_cluster_size must be >= 1 or None, got {min_cluster_size}")
        self.num_samples = int(num_samples)
        self.batch_size = int(batch_size)
        self.steps_per_epoch = int(steps_per_epoch)
        self.seed = int(seed)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.epoch = 0
        self._min_cluster_size_arg = None if min_cluster_size is None else int(min_cluster_size)
        self._resume_position: int | None = None
        self._yielded_in_epoch = 0
        self._consumed_in_epoch: int | None = None  # counted only when a training loop reports consumption
        self._epoch_finished = False
        self.last_cluster = -1
        self._index_gen = torch.Generator()
        self._cluster_gen = torch.Generator()
        self._labels: torch.Tensor | None = None
        self._members: list[torch.Tensor] | None = None
        self.set_labels(labels)

    # DistributedSampler attribute names, kept in sync for code that reads them
    @property
    def num_replicas(self) -> int:
        return self.world_size

    @property
    def shuffle(self) -> bool:
        return True

    @property
    def drop_last(self) -> bool:
        return False

    @property
    def total_size(self) -> int:
        return self.batch_size * self.steps_per_epoch * self.world_size

    # ------------------------------------------------------------------ partition

    def set_labels(self, labels: Any) -> None:
        """Replace the partition with one integer label per transition (None = uniform sampling).

        Takes effect from the next batch; call it between epochs."""
        if labels is None:
            self._set_partition(None, None, torch.empty(0, dtype=torch.int64), torch.empty(0, dtype=torch.int64))
            return
        labels = _validate_labels(labels, self.num_samples)
        self._set_partition(labels, None, torch.argsort(labels, stable=True), torch.bincount(labels))

    def set_members(self, members: Sequence[Any] | None) -> None:
        """Replace the partition with explicit, possibly overlapping member lists: ``members[k]`` holds
        the transition indices of cluster k (the authors' "trajectory tail" variant). None = uniform."""
        if members is None:
            self.set_labels(None)
            return
        members = list(members)
        if not members:
            raise SamplerError("set_members() got an empty list; give one index array per cluster or None")
        tensors = []
        for k, m in enumerate(members):
            t = m if isinstance(m, torch.Tensor) else torch.from_numpy(np.asarray(m, dtype=np.int64).reshape(-1))
            if t.is_floating_point() or t.dtype == torch.bool:
                raise SamplerError(f"members[{k}] must hold integer indices, got dtype {t.dtype}")
            t = t.detach().to("cpu", torch.int64).reshape(-1)
            if t.numel() and (int(t.min()) < 0 or int(t.max()) >= self.num_samples):
                raise SamplerError(
                    f"members[{k}] holds indices in [{int(t.min())}, {int(t.max())}] but the dataset has "
                    f"{self.num_samples} transitions; indices must be in [0, {self.num_samples})"
                )
            tensors.append(t)
        sizes = torch.tensor([t.numel() for t in tensors], dtype=torch.int64)
        self._set_partition(None, tensors, torch.cat(tensors), sizes)

    def _set_partition(self, labels, members, order: torch.Tensor, sizes: torch.Tensor) -> None:
        self._labels = labels
        self._members = members
        self._order = order
        self._sizes = sizes
        self._offsets = torch.cumsum(sizes, 0) - sizes
        self._active = torch.empty(0, dtype=torch.int64)
        self._active_cum = torch.empty(0, dtype=torch.int64)
        self._active_total = 0
        self._refresh_active()

    def _refresh_active(self) -> None:
        if not self.partitioned:
            return
        min_size = self.min_cluster_size
        active = torch.nonzero(self._sizes >= min_size).flatten()
        self._active = active
        self._active_cum = torch.cumsum(self._sizes[active], 0)
        self._active_total = int(self._active_cum[-1]) if active.numel() else 0
        if active.numel() == 0:
            warnings.warn(
                f"ClusterBatchSampler: no cluster has at least min_cluster_size={min_size} members "
                f"(sizes {self._sizes.tolist()}); sampling uniformly over all {self.num_samples} transitions "
                f"until the next partition",
                UserWarning,
                stacklevel=3,
            )

    @property
    def partitioned(self) -> bool:
        """True when labels or member lists are set."""
        return self._labels is not None or self._members is not None

    @property
    def members(self) -> list[torch.Tensor] | None:
        """Member lists given to :meth:`set_members` (None when the partition came from labels)."""
        return self._members

    @property
    def labels(self) -> torch.Tensor | None:
        return self._labels

    @property
    def num_clusters(self) -> int:
        """K: max label + 1, or the number of member lists (0 when sampling uniformly)."""
        return int(self._sizes.numel())

    @property
    def min_cluster_size(self) -> int:
        """Effective minimum: the given value, else ``max(batch_size, N // max(K, 10))``."""
        if self._min_cluster_size_arg is not None:
            return self._min_cluster_size_arg
        return default_min_cluster_size(self.num_samples, self.batch_size, self.num_clusters)

    @min_cluster_size.setter
    def min_cluster_size(self, value: int | None) -> None:
        if value is not None and int(value) < 1:
            raise SamplerError(f"min_cluster_size must be >= 1 or None, got {value}")
        self._min_cluster_size_arg = None if value is None else int(value)
        self._refresh_active()

    @property
    def cluster_sizes(self) -> torch.Tensor:
        """Members per cluster id, LongTensor [K] (empty when uniform)."""
        return self._sizes.clone()

    @property
    def active_clusters(self) -> torch.Tensor:
        """Ids of the clusters that can be picked, LongTensor (empty when uniform or none qualifies)."""
        return self._active.clone()

    @property
    def uniform(self) -> bool:
        """True when batches are drawn uniformly over all data (no labels, or no cluster qualifies)."""
        return not self.partitioned or self._active.numel() == 0

    # ------------------------------------------------------------------ sampling

    def batch(self, g: int) -> tuple[torch.Tensor, int]:
        """(indices LongTensor [batch_size], cluster id or -1) of global batch ``g`` on this rank."""
        self._index_gen.manual_seed(index_seed(self.seed, self.rank, g))
        if self.uniform:
            return torch.randint(self.num_samples, (self.batch_size,), generator=self._index_gen), -1
        self._cluster_gen.manual_seed(cluster_seed(self.seed, g))
        r = torch.randint(self._active_total, (1,), generator=self._cluster_gen)
        pick = int(torch.searchsorted(self._active_cum, r, right=True))
        cluster = int(self._active[pick])
        size = int(self._sizes[cluster])
        offset = int(self._offsets[cluster])
        pos = torch.randint(size, (self.batch_size,), generator=self._index_gen)
        return self._order[pos + offset], cluster

    def set_epoch(self, epoch: int) -> None:
        """Select epoch ``epoch`` (global batches ``[epoch*S, (epoch+1)*S)``). A resume position
        loaded by :meth:`load_state_dict` is kept: the next ``__iter__`` starts there, whichever
        epoch the trainer sets, so batch ``i`` of epoch ``e`` is always ``batch(e*S + i)``."""
        self.epoch = int(epoch)
        self._epoch_finished = False
        self._yielded_in_epoch = 0 if self._resume_position is None else self._resume_position
        if self._consumed_in_epoch is not None:
            self._consumed_in_epoch = self._yielded_in_epoch

    def __iter__(self) -> Iterator[torch.Tensor]:
        """Batches ``epoch*S + i`` for i from the resume position (else 0) to S-1. Iterating again
        without :meth:`set_epoch` after a finished epoch moves on to the next epoch."""
        if self._epoch_finished:
            self.epoch += 1
            self._epoch_finished = False
            self._yielded_in_epoch = 0
        start = self._resume_position or 0
        self._resume_position = None
        base = self.epoch * self.steps_per_epoch
        self._yielded_in_epoch = start
        if self._consumed_in_epoch is not None:
            self._consumed_in_epoch = start
        for i in range(start, self.steps_per_epoch):
            idx, self.last_cluster = self.batch(base + i)
            self._yielded_in_epoch = i + 1
            yield idx
        self._epoch_finished = True

    def __len__(self) -> int:
        return self.steps_per_epoch

    # ------------------------------------------------------------------ state

    def mark_consumed(self) -> None:
        """One more batch of the current epoch was trained on. The training loop reports this (through the
        datamodule's ``on_after_batch_transfer``, called for the batch about to be trained), because the loader
        fetches a batch ahead: the resume position is the batches *consumed*, not the batches yielded."""
        self._consumed_in_epoch = (self._consumed_in_epoch or 0) + 1

    @property
    def position(self) -> int:
        """Batches of the current epoch consumed (reported by :meth:`mark_consumed`) or, when nothing reports
        consumption (plain iteration), yielded."""
        return self._yielded_in_epoch if self._consumed_in_epoch is None else self._consumed_in_epoch

    def state_dict(self, consumed_in_epoch: int | None = None) -> dict[str, Any]:
        """State to resume the stream after ``consumed_in_epoch`` batches of the current epoch (default: its own
        :attr:`position`)."""
        consumed = self.position if consumed_in_epoch is None else int(consumed_in_epoch)
        if consumed < 0:
            raise SamplerError(f"consumed_in_epoch must be >= 0, got {consumed}")
        epoch = self.epoch + consumed // self.steps_per_epoch
        return {
            "seed": self.seed,
            "epoch": epoch,
            "resume_position": consumed % self.steps_per_epoch,
            "labels": None if self._labels is None else self._labels.clone(),
            "members": None if self._members is None else [m.clone() for m in self._members],
            "min_cluster_size": self._min_cluster_size_arg,
            "num_samples": self.num_samples,
            "batch_size": self.batch_size,
            "steps_per_epoch": self.steps_per_epoch,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        missing = {"seed", "epoch", "resume_position", "labels", "min_cluster_size"} - set(state)
        if missing:
            raise SamplerError(
                f"sampler state is missing {sorted(missing)}; it was not made by ClusterBatchSampler.state_dict()"
            )
        if "num_samples" in state and int(state["num_samples"]) != self.num_samples:
            raise SamplerError(
                f"sampler state was saved for {state['num_samples']} transitions but this dataset has "
                f"{self.num_samples}; resume with the same dataset, max_transitions and subsample_seed"
            )
        self.seed = int(state["seed"])
        self._min_cluster_size_arg = None if state["min_cluster_size"] is None else int(state["min_cluster_size"])
        if state.get("members") is not None:
            self.set_members(state["members"])
        else:
            self.set_labels(state["labels"])
        self.epoch = int(state["epoch"])
        self._epoch_finished = False
        pos = int(state["resume_position"])
        if not 0 <= pos < self.steps_per_epoch:
            raise SamplerError(
                f"resume_position {pos} is outside [0, steps_per_epoch={self.steps_per_epoch}); "
                f"resume with the same steps_per_epoch"
            )
        self._resume_position = pos if pos > 0 else None
        self._yielded_in_epoch = pos


# ---------------------------------------------------------------------------------------------- the cluster-size rule
def default_min_cluster_size(num_samples: int, batch_size: int, n_clusters: int) -> int:
    """Clusters smaller than this are never sampled unless ``min_cluster_size`` is given: ``max(batch_size,
    N // max(K, 10))`` (a cluster must fill a batch, and tiny clusters would be drawn far above their share)."""
    return max(int(batch_size), int(num_samples) // max(int(n_clusters), 10))


def check_cluster_sampling(num_transitions: int, batch_size: int, n_clusters: int, min_cluster_size: int | None) -> int:
    """Refuse C4 settings under which the clustered sampler would silently sample uniformly.

    A partition of N transitions into K clusters can give *every* cluster at least ``m`` members only if
    K * m <= N (``m`` = the sampler's minimum cluster size, default ``max(batch_size, N // max(K, 10))``).
    Otherwise at least one cluster is never sampled and, with balanced clusters, none is: C4 would run as
    plain uniform sampling, a silent wrong result. Returns the effective minimum size."""
    n, b, k = int(num_transitions), int(batch_size), int(n_clusters)
    m = int(min_cluster_size) if min_cluster_size is not None else default_min_cluster_size(n, b, k)
    if k * m > n:
        what = (
            f"min_cluster_size={m}"
            if min_cluster_size is not None
            else f"min_cluster_size={m} (default max(data.batch_size, N // max(K, 10)))"
        )
        raise ValueError(
            f"C4 cannot sample its clusters: n_clusters={k} x {what} = {k * m} > N={n} transitions, so "
            f"clusters would be skipped and batches fall back to uniform sampling; lower model.c4.n_clusters "
            f"to at most {max(n // m, 1)}, lower data.batch_size or data.min_cluster_size, or raise "
            f"data.max_transitions"
        )
    return m
