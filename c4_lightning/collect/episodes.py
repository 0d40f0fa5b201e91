"""Episodes as Minari ``EpisodeBuffer``s: recorded from an env, converted from an SB3 replay buffer,
read back from a dataset, cut to a step count, tagged with their source, drawn whole at random."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from c4_lightning.collect._progress import progress_bar


def make_episode(
    observations, actions, rewards, terminations, truncations, *, seed=None, infos=None, action_dtype=np.float32
):
    """A Minari ``EpisodeBuffer`` with float32 observations and rewards (``T + 1`` observations, ``T`` steps)."""
    from minari.data_collector import EpisodeBuffer

    return EpisodeBuffer(
        seed=seed,
        observations=np.asarray(observations, dtype=np.float32),
        actions=np.asarray(actions, dtype=action_dtype),
        rewards=np.asarray(rewards, dtype=np.float32).reshape(-1),
        terminations=np.asarray(terminations, dtype=bool).reshape(-1),
        truncations=np.asarray(truncations, dtype=bool).reshape(-1),
        infos=infos,
    )


def truncate_episode(ep, k: int):
    """The first ``k`` steps of an episode, its last step marked as a truncation."""
    n = len(ep.rewards)
    if k >= n:
        return ep
    term, trunc = np.array(ep.terminations[:k]), np.array(ep.truncations[:k])
    term[-1], trunc[-1] = False, True
    infos = None if ep.infos is None else {key: np.asarray(v)[: k + 1] for key, v in ep.infos.items()}
    return make_episode(
        ep.observations[: k + 1],
        ep.actions[:k],
        ep.rewards[:k],
        term,
        trunc,
        seed=ep.seed,
        infos=infos,
        action_dtype=np.asarray(ep.actions).dtype,
    )


def with_source(ep, source: int):
    """The episode with every step labelled ``infos['source'] = source`` (int64, ``T + 1`` labels)."""
    t = len(ep.rewards)
    return make_episode(
        ep.observations,
        ep.actions,
        ep.rewards,
        ep.terminations,
        ep.truncations,
        seed=ep.seed,
        infos={"source": np.full(t + 1, source, dtype=np.int64)},
        action_dtype=np.asarray(ep.actions).dtype,
    )


def take_whole_episodes(episodes: list, n_steps: int, rng: np.random.Generator) -> list[tuple[int, object, bool]]:
    """Whole episodes in random order until ``n_steps`` transitions; the last one is cut to hit the count.

    Returns ``(index, episode, was_cut)`` in the drawn order.
    """
    available = sum(len(e.rewards) for e in episodes)
    if available < n_steps:
        raise SystemExit(f"asked for {n_steps} transitions from episodes holding only {available}")
    out, total = [], 0
    for i in rng.permutation(len(episodes)):
        if total >= n_steps:
            break
        ep = episodes[int(i)]
        k = min(len(ep.rewards), n_steps - total)
        out.append((int(i), truncate_episode(ep, k), k < len(ep.rewards)))
        total += k
    return out


def rollout_episodes(
    env_id: str, n_steps: int, seed, policy=None, desc: str = "rollout", progress: bool = True
) -> tuple[list, list[bool]]:
    """Exactly ``n_steps`` env steps of ``policy(obs) -> action`` (uniform random actions when None).

    Each episode is reset with its own seed drawn from ``seed`` (an int or a sequence of ints, as
    ``np.random.default_rng`` takes; stored as the episode's Minari seed); the episode running when the
    budget is reached is cut there and its last step marked as a truncation. Returns ``(episodes, was_cut)``.
    """
    import gymnasium as gym

    env = gym.make(env_id)
    rng = np.random.default_rng(seed)
    env.action_space.seed(int(rng.integers(2**31 - 1)))
    action_dtype = env.action_space.dtype or np.float32
    episodes, cut, steps = [], [], 0
    with progress_bar(total=n_steps, desc=desc, unit="step", disable=not progress, mininterval=1.0) as bar:
        while steps < n_steps:
            ep_seed = int(rng.integers(2**31 - 1))
            obs, _ = env.reset(seed=ep_seed)
            OBS, A, R, TE, TR = [obs], [], [], [], []
            while True:
                action = env.action_space.sample() if policy is None else policy(obs)
                obs, reward, terminated, truncated, _ = env.step(action)
                steps += 1
                OBS.append(obs), A.append(action), R.append(float(reward)), TE.append(bool(terminated))
                budget_cut = steps == n_steps and not (terminated or truncated)
                TR.append(bool(truncated) or budget_cut)
                if TE[-1] or TR[-1]:
                    break
            bar.update(len(R))
            episodes.append(make_episode(OBS, A, R, TE, TR, seed=ep_seed, action_dtype=action_dtype))
            cut.append(budget_cut)
    env.close()
    return episodes, cut


def replay_buffer_episodes(
    buffer, n_steps: int, action_space=None, max_steps: int | None = None, seed: int = 0, progress: bool = True
) -> tuple[list, list[bool], dict]:
    """SB3 ``ReplayBuffer`` entries ``[0, n_steps)`` as Minari episodes.

    Episode ends: ``dones=1, timeouts=0`` is a termination, ``dones=1, timeouts=1`` a truncation (time
    limit). An entry whose ``next_observation`` is not the next entry's ``observation`` also ends an
    episode as a truncation (a resumed run restarts the env mid-episode), and so does the final,
    partial episode. Observations hold ``T + 1`` rows: the episode's observations plus the last step's
    ``next_observation``. SB3 stores actions scaled to [-1, 1]; they are mapped back to the env's Box
    bounds (``action_space``). With ``max_steps`` below the number of entries, whole episodes are drawn
    at random (seeded) up to exactly ``max_steps`` transitions and kept in chronological order.
    Returns ``(episodes, was_cut, info)``.
    """
    if getattr(buffer, "optimize_memory_usage", False) or getattr(buffer, "next_observations", None) is None:
        raise SystemExit(
            "the replay buffer was saved with optimize_memory_usage=True; c4-collect needs next_observations"
        )
    if buffer.n_envs != 1:
        raise SystemExit(f"the replay buffer holds {buffer.n_envs} parallel envs; c4-collect writes single-env buffers")
    if buffer.full and buffer.pos != 0:
        raise SystemExit("the replay buffer has wrapped around: its entries are no longer the first env steps")
    available = buffer.buffer_size if buffer.full else buffer.pos
    n = min(n_steps, available)
    if n == 0:
        raise SystemExit("the replay buffer is empty")
    obs = buffer.observations[:n, 0].reshape(n, -1)
    nxt = buffer.next_observations[:n, 0].reshape(n, -1)
    actions = buffer.actions[:n, 0]
    rewards = buffer.rewards[:n, 0]
    dones = buffer.dones[:n, 0] > 0.5
    timeouts = buffer.timeouts[:n, 0] > 0.5
    if action_space is not None and hasattr(action_space, "low"):
        low, high = np.asarray(action_space.low), np.asarray(action_space.high)
        if np.all(np.isfinite(low)) and np.all(np.isfinite(high)):
            actions = low + 0.5 * (actions + 1.0) * (high - low)
    breaks = np.ones(n, dtype=bool)  # entry t does not continue into entry t+1 (the last one never does)
    breaks[:-1] = ~np.all(nxt[:-1] == obs[1:], axis=1)
    terminations = dones & ~timeouts
    ends = dones | breaks
    truncations = ends & ~terminations
    end_idx = np.flatnonzero(ends)
    starts = np.concatenate([[0], end_idx[:-1] + 1])
    obs_shape = buffer.observations.shape[2:]
    episodes, cut = [], []
    for s, e in progress_bar(
        list(zip(starts, end_idx)), desc="replay buffer -> episodes", unit="ep", disable=not progress, mininterval=1.0
    ):
        o = np.concatenate([obs[s : e + 1], nxt[e : e + 1]]).reshape(-1, *obs_shape)
        episodes.append(
            make_episode(o, actions[s : e + 1], rewards[s : e + 1], terminations[s : e + 1], truncations[s : e + 1])
        )
        cut.append(bool(truncations[e] and not (dones[e] and timeouts[e])))
    info = {
        "buffer_entries": int(available),
        "entries_read": int(n),
        "episodes_in_entries": len(episodes),
        "restarts_without_done": int((breaks[:-1] & ~dones[:-1]).sum()),
        "subsampled": False,
    }
    if max_steps is not None and n > max_steps:
        drawn = take_whole_episodes(episodes, max_steps, np.random.default_rng(seed))
        drawn.sort(key=lambda item: item[0])
        episodes = [ep for _, ep, _ in drawn]
        cut = [was_cut or cut[i] for i, _, was_cut in drawn]
        info.update(subsampled=True, episodes_kept=[i for i, _, _ in drawn])
    return episodes, cut, info


def read_episodes(data_dir: Path) -> list:
    """Every episode of the Minari dataset in ``data_dir``, with its reset seed, as ``EpisodeBuffer``s."""
    import minari

    ds = minari.MinariDataset(data_dir)
    seeds = [m.get("seed") for m in ds.storage.get_episode_metadata(range(ds.total_episodes))]
    return [
        make_episode(
            e.observations,
            e.actions,
            e.rewards,
            e.terminations,
            e.truncations,
            seed=None if s is None else int(s),
            action_dtype=np.asarray(e.actions).dtype,
        )
        for e, s in zip(ds.iterate_episodes(), seeds)
    ]


def episode_stats(episodes: list, cut: list[bool]) -> dict:
    """Counts and return statistics of ``episodes``; ``uncut_*`` over those not cut by a step budget."""
    returns = np.array([float(np.sum(e.rewards)) for e in episodes])
    full = returns[~np.asarray(cut, dtype=bool)] if len(cut) else returns
    stats = {
        "episodes": len(episodes),
        "steps": int(sum(len(e.rewards) for e in episodes)),
        "return_mean": float(returns.mean()),
        "return_std": float(returns.std()),
        "return_min": float(returns.min()),
        "return_max": float(returns.max()),
        "uncut_episodes": len(full),
    }
    if len(full):
        stats["uncut_return_mean"] = float(full.mean())
    return stats
