"""Build small Minari datasets with known values, for tests.

Every value encodes where it came from, so alignment can be checked after loading:

* ``observations[e][t, d] = obs_code(e, t, d) = (ep_base + e) * 10_000 + t * 10 + d``
* ``actions[e][t, d]      = act_code(e, t, d) = -obs_code(e, t, d) - 0.5``
* ``rewards[e][t]         = rew_code(e, t)    = (ep_base + e) * 10_000 + t``

(``t < 1000`` and ``d < 10`` keep the codes exact in float32.) ``episodes`` is a list of
``(length, end)`` with ``end`` in ``{"term", "trunc", "none"}``.
"""

from __future__ import annotations

import json
import os
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Sequence

import gymnasium as gym
import numpy as np
import torch

from c4_lightning.data.transitions import Transitions

# A default set: varied lengths (incl. a one-step episode), both kinds of endings.
DEFAULT_EPISODES: list[tuple[int, str]] = [
    (5, "term"),
    (3, "trunc"),
    (7, "term"),
    (1, "trunc"),
    (4, "trunc"),
    (6, "term"),
]


def obs_code(e, t, d, ep_base: int = 0):
    return (ep_base + np.asarray(e)) * 10_000 + np.asarray(t) * 10 + np.asarray(d)


def act_code(e, t, d, ep_base: int = 0):
    return -obs_code(e, t, d, ep_base) - 0.5


def rew_code(e, t, ep_base: int = 0):
    return (ep_base + np.asarray(e)) * 10_000 + np.asarray(t)


@contextmanager
def _minari_root(root: Path):
    old = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(root)
    try:
        yield
    finally:
        if old is None:
            del os.environ["MINARI_DATASETS_PATH"]
        else:
            os.environ["MINARI_DATASETS_PATH"] = old


def episode_buffers(
    episodes: Sequence[tuple[int, str]],
    obs_dim: int = 3,
    act_dim: int = 2,
    ep_base: int = 0,
    sources: Sequence[int] | None = None,
):
    """Minari ``EpisodeBuffer``s with the known codes (``sources``: one label per episode)."""
    from minari.data_collector import EpisodeBuffer

    buffers = []
    for e, (length, end) in enumerate(episodes):
        t_obs = np.arange(length + 1)[:, None]
        t_act = np.arange(length)[:, None]
        obs = obs_code(e, t_obs, np.arange(obs_dim)[None, :], ep_base).astype(np.float32)
        act = act_code(e, t_act, np.arange(act_dim)[None, :], ep_base).astype(np.float32)
        rew = rew_code(e, np.arange(length), ep_base).astype(np.float64)
        term = np.zeros(length, dtype=bool)
        trunc = np.zeros(length, dtype=bool)
        if end == "term":
            term[-1] = True
        elif end == "trunc":
            trunc[-1] = True
        elif end != "none":
            raise ValueError(f"episode end must be 'term', 'trunc' or 'none', got {end!r}")
        infos = None
        if sources is not None:
            infos = {"source": np.full(length + 1, int(sources[e]), dtype=np.int64)}
        buffers.append(
            EpisodeBuffer(
                id=e,
                observations=obs,
                actions=act,
                rewards=rew,
                terminations=term,
                truncations=trunc,
                infos=infos,
            )
        )
    return buffers


def build_minari_dataset(
    root: Path | str,
    dataset_id: str,
    episodes: Sequence[tuple[int, str]] = DEFAULT_EPISODES,
    obs_dim: int = 3,
    act_dim: int = 2,
    ep_base: int = 0,
    env_id: str | None = None,
    sources: Sequence[int] | None = None,
    source_names: Sequence[str] | None = None,
    ref_scores: tuple[float, float] | None = None,
    buffers: list | None = None,
) -> Path:
    """Write a Minari HDF5 dataset under ``root`` (Minari layout) and return its version folder.

    ``buffers`` replaces the coded episodes (e.g. edited copies of :func:`episode_buffers`)."""
    import minari

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    obs_space = gym.spaces.Box(-np.inf, np.inf, shape=(obs_dim,), dtype=np.float32)
    act_space = gym.spaces.Box(-np.inf, np.inf, shape=(act_dim,), dtype=np.float32)
    with _minari_root(root), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = minari.create_dataset_from_buffers(
            dataset_id=dataset_id,
            buffer=buffers if buffers is not None else episode_buffers(episodes, obs_dim, act_dim, ep_base, sources),
            env=env_id,
            observation_space=obs_space,
            action_space=act_space,
            algorithm_name="scripted",
            author="tests",
            author_email="tests@example.com",
            code_permalink="tests/minari_fixtures.py",
            description="synthetic test dataset with coded values",
        )
        extra = {}
        if source_names is not None:
            extra["source_names"] = json.dumps(list(source_names))
        if ref_scores is not None:
            extra["ref_min_score"], extra["ref_max_score"] = float(ref_scores[0]), float(ref_scores[1])
        if extra:
            ds.storage.update_metadata(extra)
    return root / dataset_id


def synthetic_transitions(
    lengths: Sequence[int],
    terminal_ends: Sequence[bool] | None = None,
    obs_dim: int = 2,
    act_dim: int = 1,
    ep_base: int = 0,
    source_name: str = "synthetic",
    dataset_id: str = "synthetic-v0",
) -> Transitions:
    """In-memory Transitions with the same codes (for fast property tests; no Minari involved)."""
    rows = {k: [] for k in ("obs", "next_obs", "act", "next_act", "rew", "term", "tout", "last", "ep", "step")}
    for e, T in enumerate(lengths):
        t = np.arange(T)
        d_o, d_a = np.arange(obs_dim)[None, :], np.arange(act_dim)[None, :]
        act = act_code(e, t[:, None], d_a, ep_base)
        rows["obs"].append(obs_code(e, t[:, None], d_o, ep_base))
        rows["next_obs"].append(obs_code(e, t[:, None] + 1, d_o, ep_base))
        rows["act"].append(act)
        rows["next_act"].append(np.concatenate([act[1:], act[-1:]]))
        rows["rew"].append(rew_code(e, t, ep_base))
        term = np.zeros(T)
        tout = np.zeros(T)
        is_term = bool(terminal_ends[e]) if terminal_ends is not None else (e % 2 == 0)
        (term if is_term else tout)[-1] = 1
        rows["term"].append(term)
        rows["tout"].append(tout)
        last = np.zeros(T)
        last[-1] = 1
        rows["last"].append(last)
        rows["ep"].append(np.full(T, e))
        rows["step"].append(t)

    def f(k):
        return torch.from_numpy(np.concatenate(rows[k]).astype(np.float32))

    def i(k):
        return torch.from_numpy(np.concatenate(rows[k]).astype(np.int64))

    n = int(sum(lengths))
    return Transitions(
        observations=f("obs"),
        actions=f("act"),
        rewards=f("rew"),
        next_observations=f("next_obs"),
        next_actions=f("next_act"),
        terminals=f("term"),
        timeouts=f("tout"),
        last_steps=f("last"),
        episode_ids=i("ep"),
        steps=i("step"),
        sources=torch.zeros(n, dtype=torch.int64),
        source_names=[source_name],
        dataset_ids=[dataset_id],
    )
