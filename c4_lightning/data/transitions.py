"""Offline-RL transitions as tensors, and pure functions on them.

Convention (D4RL "q-learning" layout): one row per environment step ``t`` of an
episode, with ``next_observations`` = s_{t+1} of the same episode and
``next_actions`` = a_{t+1} of the same episode. At the last stored step of an
episode ``next_actions`` repeats a_t and ``last_steps`` is 1. ``terminals``
marks a true termination (no bootstrap); ``timeouts`` marks an episode cut by a
time limit or by truncation (bootstrap through it).

Functions here never mutate their inputs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from c4_lightning.data.errors import DatasetError

FLOAT_FIELDS = (
    "observations",
    "actions",
    "rewards",
    "next_observations",
    "next_actions",
    "terminals",
    "timeouts",
    "last_steps",
)
INT_FIELDS = ("episode_ids", "steps", "sources")
TENSOR_FIELDS = FLOAT_FIELDS + INT_FIELDS
_MATRIX_FIELDS = ("observations", "actions", "next_observations", "next_actions")


@dataclass
class Transitions:
    """Per-step tensors with a common first dimension N, plus dataset-level metadata.

    Shapes: observations/next_observations [N, obs_dim]; actions/next_actions [N, act_dim];
    rewards, terminals, timeouts, last_steps [N] float32; episode_ids, steps, sources [N] int64.
    ``sources[i]`` indexes ``source_names``.
    """

    observations: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    next_observations: torch.Tensor
    next_actions: torch.Tensor
    terminals: torch.Tensor
    timeouts: torch.Tensor
    last_steps: torch.Tensor
    episode_ids: torch.Tensor
    steps: torch.Tensor
    sources: torch.Tensor
    source_names: list[str] = field(default_factory=list)
    env_id: str | None = None
    ref_min_score: float | None = None
    ref_max_score: float | None = None
    dataset_ids: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        for name in TENSOR_FIELDS:
            value = getattr(self, name)
            if not isinstance(value, torch.Tensor):
                value = torch.as_tensor(np.asarray(value))
            if name in FLOAT_FIELDS:
                value = value.to(torch.float32)
            else:
                if value.is_floating_point() or value.is_complex():
                    raise DatasetError(
                        f"Transitions.{name} must hold integers, got dtype {value.dtype}; pass an int64 tensor"
                    )
                value = value.to(torch.int64)
            setattr(self, name, value)
        n = self.observations.shape[0]
        for name in TENSOR_FIELDS:
            value = getattr(self, name)
            want_dim = 2 if name in _MATRIX_FIELDS else 1
            if value.dim() != want_dim or value.shape[0] != n:
                raise DatasetError(
                    f"Transitions.{name} has shape {tuple(value.shape)}, expected "
                    f"{'[N, dim]' if want_dim == 2 else '[N]'} with N={n} (the number of observations)"
                )
        if self.next_observations.shape[1] != self.observations.shape[1]:
            raise DatasetError(
                f"Transitions.next_observations has {self.next_observations.shape[1]} columns but "
                f"observations has {self.observations.shape[1]}; they must match"
            )
        if self.next_actions.shape[1] != self.actions.shape[1]:
            raise DatasetError(
                f"Transitions.next_actions has {self.next_actions.shape[1]} columns but "
                f"actions has {self.actions.shape[1]}; they must match"
            )
        self.source_names = list(self.source_names)
        self.dataset_ids = list(self.dataset_ids)
        if n and (int(self.sources.min()) < 0 or int(self.sources.max()) >= len(self.source_names)):
            raise DatasetError(
                f"Transitions.sources holds values in [{int(self.sources.min())}, {int(self.sources.max())}] "
                f"but source_names has {len(self.source_names)} entries; every source must index source_names"
            )

    def __len__(self) -> int:
        return int(self.observations.shape[0])

    @property
    def obs_dim(self) -> int:
        return int(self.observations.shape[1])

    @property
    def act_dim(self) -> int:
        return int(self.actions.shape[1])

    @property
    def num_episodes(self) -> int:
        """Number of distinct episodes (distinct ``episode_ids``)."""
        return int(torch.unique(self.episode_ids).numel())

    @property
    def device(self) -> torch.device:
        return self.observations.device

    def tensors(self) -> dict[str, torch.Tensor]:
        """The per-step fields as a dict (no copies)."""
        return {name: getattr(self, name) for name in TENSOR_FIELDS}

    def _replace(self, **tensors: torch.Tensor) -> "Transitions":
        return dataclasses.replace(
            self,
            **tensors,
            source_names=list(self.source_names),
            dataset_ids=list(self.dataset_ids),
        )

    def select(self, idx) -> "Transitions":
        """Rows ``idx`` (index tensor/array/list, boolean mask or slice) as a new Transitions."""
        if isinstance(idx, slice):
            return self._replace(**{k: v[idx] for k, v in self.tensors().items()})
        idx_t = torch.as_tensor(np.asarray(idx) if not isinstance(idx, torch.Tensor) else idx)
        if idx_t.dtype == torch.bool:
            if idx_t.shape != (len(self),):
                raise DatasetError(
                    f"boolean mask for Transitions.select has shape {tuple(idx_t.shape)}, expected ({len(self)},)"
                )
            idx_t = idx_t.nonzero().flatten()
        idx_t = idx_t.to(device=self.device, dtype=torch.int64).flatten()
        if idx_t.numel() and (int(idx_t.min()) < -len(self) or int(idx_t.max()) >= len(self)):
            raise DatasetError(
                f"Transitions.select got indices in [{int(idx_t.min())}, {int(idx_t.max())}] "
                f"but there are only {len(self)} transitions"
            )
        return self._replace(**{k: v.index_select(0, idx_t % max(len(self), 1)) for k, v in self.tensors().items()})

    def to(self, device) -> "Transitions":
        return self._replace(**{k: v.to(device) for k, v in self.tensors().items()})

    @property
    def ref_scores(self) -> tuple[float, float] | None:
        if self.ref_min_score is None or self.ref_max_score is None:
            return None
        return (float(self.ref_min_score), float(self.ref_max_score))


# --------------------------------------------------------------------------- episodes


def _episode_layout(t: Transitions) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(order, starts, lengths): rows of episode j (in order of first appearance) are
    ``order[starts[j]:starts[j] + lengths[j]]``, sorted by step."""
    ep = t.episode_ids.cpu().numpy()
    steps = t.steps.cpu().numpy()
    _, first_pos, inv = np.unique(ep, return_index=True, return_inverse=True)
    # renumber episodes by their first row so "episode order" follows the data order
    rank_of = np.empty_like(first_pos)
    rank_of[np.argsort(first_pos, kind="stable")] = np.arange(first_pos.size)
    ep_rank = rank_of[inv]
    order = np.lexsort((steps, ep_rank))
    lengths = np.bincount(ep_rank, minlength=first_pos.size)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    return order, starts, lengths


def subsample_episodes(t: Transitions, max_transitions: int, seed: int) -> Transitions:
    """Exactly ``max_transitions`` rows made of whole episodes plus one truncated episode.

    Episodes are drawn in a random order from ``numpy.random.Generator(seed)`` until the
    count is reached; the last drawn episode is cut to hit the exact count. Its last kept
    step gets ``last_steps=1``, ``timeouts=1`` (unless it is a true terminal) and
    ``next_actions`` equal to its own action. Kept episodes appear in their original order.
    """
    max_transitions = int(max_transitions)
    if max_transitions < 1:
        raise DatasetError(f"max_transitions must be >= 1, got {max_transitions}")
    if max_transitions > len(t):
        raise DatasetError(
            f"max_transitions={max_transitions} is larger than the dataset, which has {len(t)} transitions "
            f"({', '.join(t.dataset_ids) or 'unnamed'}); lower max_transitions or use a larger dataset"
        )
    order, starts, lengths = _episode_layout(t)
    rng = np.random.Generator(np.random.PCG64(int(seed)))
    perm = rng.permutation(lengths.size)
    cum = np.cumsum(lengths[perm])
    k = int(np.searchsorted(cum, max_transitions, side="left"))  # first draw reaching the count
    chosen = perm[: k + 1]
    kept = lengths[chosen].copy()
    kept[-1] = max_transitions - (int(cum[k - 1]) if k > 0 else 0)
    cut_episode = int(chosen[-1])
    is_cut = kept[-1] < lengths[cut_episode]
    keep_for = dict(zip(chosen.tolist(), kept.tolist()))
    rows = []
    cut_last_row_pos = -1
    pos = 0
    for j in sorted(keep_for):
        n = keep_for[j]
        rows.append(order[starts[j] : starts[j] + n])
        pos += n
        if j == cut_episode:
            cut_last_row_pos = pos - 1
    idx = torch.from_numpy(np.concatenate(rows).astype(np.int64))
    out = t.select(idx)
    if is_cut:
        p = cut_last_row_pos
        out.last_steps = out.last_steps.clone()
        out.timeouts = out.timeouts.clone()
        out.next_actions = out.next_actions.clone()
        out.last_steps[p] = 1.0
        if out.terminals[p] == 0:
            out.timeouts[p] = 1.0
        out.next_actions[p] = out.actions[p]
    return out


def _largest_remainder(shares: np.ndarray, total: int) -> np.ndarray:
    raw = shares * total
    counts = np.floor(raw).astype(np.int64)
    rest = total - int(counts.sum())
    if rest > 0:
        frac = raw - counts
        winners = np.argsort(-frac, kind="stable")[:rest]
        counts[winners] += 1
    return counts


def concatenate(parts: Sequence[Transitions]) -> Transitions:
    """Stack transitions (episode ids re-numbered unique, sources re-mapped to the merged names)."""
    if not parts:
        raise DatasetError("concatenate() needs at least one Transitions")
    obs_dims = {p.obs_dim for p in parts}
    act_dims = {p.act_dim for p in parts}
    if len(obs_dims) > 1 or len(act_dims) > 1:
        desc = ", ".join(f"{p.dataset_ids or '?'}: obs_dim={p.obs_dim}, act_dim={p.act_dim}" for p in parts)
        raise DatasetError(f"cannot combine datasets with different observation/action sizes ({desc})")
    env_ids = [p.env_id for p in parts if p.env_id is not None]
    if len(set(env_ids)) > 1:
        raise DatasetError(
            f"cannot combine datasets recorded in different environments {sorted(set(env_ids))}; "
            f"mix datasets of one environment only"
        )
    names: list[str] = []
    for p in parts:
        for name in p.source_names:
            if name not in names:
                names.append(name)
    dataset_ids: list[str] = []
    for p in parts:
        for d in p.dataset_ids:
            if d not in dataset_ids:
                dataset_ids.append(d)
    fields: dict[str, list[torch.Tensor]] = {k: [] for k in TENSOR_FIELDS}
    next_episode = 0
    for p in parts:
        tensors = p.tensors()
        _, inv = torch.unique(p.episode_ids, return_inverse=True)
        tensors["episode_ids"] = inv + next_episode
        next_episode += p.num_episodes
        remap = torch.tensor([names.index(n) for n in p.source_names], dtype=torch.int64, device=p.device)
        tensors["sources"] = remap[p.sources] if len(p) else p.sources
        for k, v in tensors.items():
            fields[k].append(v)
    ref_min = next((p.ref_min_score for p in parts if p.ref_min_score is not None), None)
    ref_max = next((p.ref_max_score for p in parts if p.ref_max_score is not None), None)
    return Transitions(
        **{k: torch.cat(v) for k, v in fields.items()},
        source_names=names,
        env_id=env_ids[0] if env_ids else None,
        ref_min_score=ref_min,
        ref_max_score=ref_max,
        dataset_ids=dataset_ids,
    )


def mix(
    parts: Sequence[Transitions],
    shares: Sequence[float] | None = None,
    total: int | None = None,
    seed: int = 0,
) -> Transitions:
    """A mixture of whole episodes from each part in the given shares (equal by default).

    ``total=None`` takes the largest total every part can supply at its share. Each part is
    cut with :func:`subsample_episodes` to its exact count (counts rounded by largest
    remainder so they add to ``total``), with a per-part seed derived from ``seed``.
    Episode ids are re-numbered unique; ``source_names`` is the concatenation of the parts'
    names (identical names merged) and ``sources`` is re-mapped to it.
    """
    parts = list(parts)
    if not parts:
        raise DatasetError("mix() needs at least one dataset in `parts`")
    if shares is None:
        w = np.full(len(parts), 1.0 / len(parts))
    else:
        w = np.asarray(list(shares), dtype=np.float64)
        if w.shape != (len(parts),):
            raise DatasetError(
                f"shares has {w.size} entries but there are {len(parts)} datasets; give one share per dataset"
            )
        if not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
            raise DatasetError(f"shares must be finite, >= 0 and not all zero, got {list(map(float, w))}")
        w = w / w.sum()
    sizes = np.array([len(p) for p in parts], dtype=np.int64)
    positive = w > 0
    if total is None:
        total = int(np.floor(np.min(sizes[positive] / w[positive]) + 1e-9))
        counts = _largest_remainder(w, total)
        while np.any(counts > sizes):  # floating-point safety; at most a step or two
            total -= 1
            counts = _largest_remainder(w, total)
    else:
        total = int(total)
        if total < 1:
            raise DatasetError(f"total must be >= 1, got {total}")
        counts = _largest_remainder(w, total)
    too_big = [i for i in range(len(parts)) if counts[i] > sizes[i]]
    if too_big:
        i = too_big[0]
        name = ", ".join(parts[i].dataset_ids) or f"part {i}"
        largest = int(np.floor(np.min(sizes[positive] / w[positive]) + 1e-9))
        raise DatasetError(
            f"mixture of {total} transitions needs {int(counts[i])} from {name}, which has only "
            f"{int(sizes[i])}; lower max_transitions to at most {largest} or change the shares"
        )
    if total < 1 or counts.sum() == 0:
        raise DatasetError(f"the mixture would be empty (dataset sizes {sizes.tolist()}, shares {w.tolist()})")
    child_seeds = [int(s.generate_state(1)[0]) for s in np.random.SeedSequence(int(seed)).spawn(len(parts))]
    picked = [subsample_episodes(p, int(c), child_seeds[i]) for i, (p, c) in enumerate(zip(parts, counts)) if c > 0]
    out = concatenate(picked)
    # keep every listed dataset in dataset_ids even when its share rounds to zero rows
    for p in parts:
        for d in p.dataset_ids:
            if d not in out.dataset_ids:
                out.dataset_ids.append(d)
    return out


# --------------------------------------------------------------------------- checks and stats


def check_finite(t: Transitions, name: str) -> Transitions:
    """Raise :class:`DatasetError` naming each float field with NaN/Inf and how many rows hold them."""
    problems = []
    for field_name in FLOAT_FIELDS:
        value = getattr(t, field_name)
        bad = ~torch.isfinite(value)
        if value.dim() == 2:
            bad = bad.any(dim=1)
        n_bad = int(bad.sum())
        if n_bad:
            first = int(bad.nonzero()[0, 0])
            problems.append(f"'{field_name}' has {n_bad} row(s) with NaN/Inf (first at row {first})")
    if problems:
        raise DatasetError(
            f"dataset {name}: " + "; ".join(problems) + f" out of {len(t)} rows; "
            f"clean or re-create the dataset (c4-collect record) before training"
        )
    return t


def observation_stats(t: Transitions, eps: float = 1e-3) -> tuple[torch.Tensor, torch.Tensor]:
    """D4RL/TD3+BC state normalisation: (mean [obs_dim], std + eps [obs_dim]), population std."""
    if len(t) == 0:
        raise DatasetError("observation_stats() needs at least one transition")
    obs = t.observations.to(torch.float64)
    mean = obs.mean(dim=0)
    std = obs.std(dim=0, unbiased=False) + eps
    return mean.to(torch.float32), std.to(torch.float32)
