"""Vectorised Gymnasium evaluation of a deterministic policy."""

from __future__ import annotations

from typing import Callable

import gymnasium as gym
import numpy as np


def evaluate_policy(
    policy: Callable[[np.ndarray], np.ndarray],
    env_id: str,
    episodes: int = 10,
    seed: int = 0,
    max_envs: int = 10,
    env_kwargs: dict | None = None,
) -> np.ndarray:
    """Returns the undiscounted return of each of ``episodes`` episodes (see :func:`evaluate_episodes`)."""
    return evaluate_episodes(policy, env_id, episodes, seed, max_envs, env_kwargs)[0]


def evaluate_episodes(
    policy: Callable[[np.ndarray], np.ndarray],
    env_id: str,
    episodes: int = 10,
    seed: int = 0,
    max_envs: int = 10,
    env_kwargs: dict | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Returns ``(returns, lengths)``: the undiscounted return and the number of steps of each of ``episodes``
    episodes.

    ``policy`` maps a batch of raw observations ``[n_envs, obs_dim]`` to actions ``[n_envs, act_dim]``.
    Episodes run in a synchronous vector env (one process: evaluation is cheap next to training and the
    machine's cores belong to the trainer); env ``i`` of round ``r`` is seeded with ``seed + r * n + i``.
    """
    if episodes < 1:
        raise ValueError(f"episodes={episodes} must be >= 1")
    returns: list[float] = []
    lengths: list[int] = []
    while len(returns) < episodes:
        n = min(max_envs, episodes - len(returns))
        envs = gym.vector.SyncVectorEnv([lambda: gym.make(env_id, **(env_kwargs or {})) for _ in range(n)])
        try:
            obs, _ = envs.reset(seed=[seed + len(returns) + i for i in range(n)])
            total = np.zeros(n)
            steps = np.zeros(n, dtype=np.int64)
            done = np.zeros(n, dtype=bool)
            while not done.all():
                action = np.asarray(policy(obs), dtype=envs.single_action_space.dtype)
                obs, reward, terminated, truncated, _ = envs.step(action)
                total += np.where(done, 0.0, reward)
                steps += ~done
                done |= terminated | truncated
        finally:
            envs.close()
        returns.extend(total.tolist())
        lengths.extend(steps.tolist())
    return np.asarray(returns), np.asarray(lengths)
