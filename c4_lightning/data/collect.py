"""Make D4RL-style Minari datasets for any Gymnasium env (``c4-collect``).

Two stages, each resumable:

``train``
    Trains a behaviour policy with Stable-Baselines3 SAC. Every
    ``--checkpoint-every`` env steps the policy is saved and evaluated
    (deterministic actions); the model, replay buffer and the checkpoint table
    (``checkpoints.json``) are written so that a killed run resumes from its
    last checkpoint with ``c4-collect train`` and the same ``--out-dir``.

``record``
    Picks an *expert* checkpoint (best evaluated return) and a *medium* one (not
    later, evaluated return closest to a normalised score of 100 x
    ``--medium-fraction``, i.e. about a third of the expert reference return),
    then writes Minari datasets:
    ``random``, ``medium``, ``expert``, ``medium-replay`` (the SAC replay buffer
    up to the medium checkpoint), ``medium-expert`` and a small
    ``random-medium-expert-<N>`` mixture, with reference scores and provenance
    in the metadata.

    Every dataset is written with Minari's own writer (``create_dataset_from_buffers``; the
    rollouts are recorded step by step into Minari ``EpisodeBuffer``s with per-episode reset seeds,
    as ``minari.DataCollector`` does, without its ``jax`` dependency), then compacted (HDF5 rewritten
    without Minari's per-episode chunk indexes, ~15 KB -> ~1.8 KB per episode), reloaded with
    ``minari.MinariDataset`` and checked, and must stay under ``--max-mb`` (10 MB). Existing datasets
    made with the same settings are skipped, so an interrupted ``record`` resumes; ``--overwrite``
    remakes them. ``<datasets-dir>/<namespace>/PROVENANCE.md`` tabulates the behaviour policies.

Needs the optional extra ``collect`` (``pip install c4_lightning[collect]``).
Example (what made the embedded Hopper datasets; see datasets/README.md)::

    c4-collect train --env Hopper-v5 --out-dir runs/collect/hopper --total-steps 300000 --checkpoint-every 10000 --seed 0
    c4-collect record --env Hopper-v5 --out-dir runs/collect/hopper --datasets-dir datasets --seed 0
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import tempfile
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from c4_lightning.data.errors import DatasetError
from c4_lightning.data.scores import env_family, normalized_score, reference_scores

CHECKPOINT_TABLE = "checkpoints.json"


def _require_sb3():
    try:
        import stable_baselines3  # noqa: F401
    except ImportError as err:
        raise SystemExit(
            "c4-collect needs Stable-Baselines3, which is not installed: pip install 'c4_lightning[collect]' "
            "(or pip install stable-baselines3 rich)"
        ) from err


def _atomic_json(path: Path, obj) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


def load_checkpoint_table(out_dir: Path) -> list[dict]:
    p = Path(out_dir) / CHECKPOINT_TABLE
    return json.loads(p.read_text()) if p.exists() else []


def evaluate_policy_returns(policy_fn, env_id: str, episodes: int, seed: int) -> np.ndarray:
    """Undiscounted returns of ``policy_fn(obs) -> action`` over ``episodes`` episodes."""
    import gymnasium as gym

    env = gym.make(env_id)
    returns = []
    for ep in range(episodes):
        obs, _ = env.reset(seed=seed + ep)
        done, total = False, 0.0
        while not done:
            obs, reward, terminated, truncated, _ = env.step(policy_fn(obs))
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    env.close()
    return np.asarray(returns)


# --------------------------------------------------------------------------- train
def _grow_replay_buffer(buffer, size: int) -> None:
    """Enlarge an SB3 ``ReplayBuffer`` in place to ``size`` entries, keeping it append-only.

    The behaviour run keeps every transition (``buffer_size = total_steps``) so that entries
    ``[0, n)`` are the first ``n`` env steps (``record`` turns them into ``medium-replay``). Resuming
    with a larger ``--total-steps`` must therefore grow the buffer instead of letting it wrap around.
    """
    if buffer.full and buffer.pos != 0:
        raise SystemExit("the saved replay buffer has wrapped around (it was not written by c4-collect train); "
                         "its entries are no longer the first env steps")
    if buffer.buffer_size >= size:
        return
    filled = buffer.buffer_size if buffer.full else buffer.pos
    for name in ("observations", "next_observations", "actions", "rewards", "dones", "timeouts"):
        arr = getattr(buffer, name, None)
        if arr is None or arr.shape[0] != buffer.buffer_size:
            continue
        grown = np.zeros((size, *arr.shape[1:]), dtype=arr.dtype)
        grown[:filled] = arr[:filled]
        setattr(buffer, name, grown)
    buffer.buffer_size, buffer.pos, buffer.full = size, filled, False


def train_behaviour(
    env_id: str,
    out_dir: str | Path,
    total_steps: int = 300_000,
    checkpoint_every: int = 10_000,
    eval_episodes: int = 5,
    learning_starts: int = 10_000,
    seed: int = 0,
    threads: int = 1,
    progress: bool = True,
) -> list[dict]:
    """Train (or resume) SAC on ``env_id``; returns the checkpoint table."""
    _require_sb3()
    import gymnasium as gym
    import torch
    from stable_baselines3 import SAC
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.monitor import Monitor

    torch.set_num_threads(threads)
    out = Path(out_dir)
    (out / "models").mkdir(parents=True, exist_ok=True)
    table = load_checkpoint_table(out)
    env = Monitor(gym.make(env_id))
    latest, buffer_path = out / "latest.zip", out / "replay_buffer.pkl"
    if latest.exists() and buffer_path.exists():
        model = SAC.load(latest, env=env, device="cpu")
        model.load_replay_buffer(buffer_path)
        _grow_replay_buffer(model.replay_buffer, total_steps)
        print(f"resuming SAC from {latest} at {model.num_timesteps} steps", flush=True)
    else:
        model = SAC("MlpPolicy", env, buffer_size=total_steps, learning_starts=learning_starts, seed=seed,
                    device="cpu", verbose=0)
        table = []

    class _Checkpoint(BaseCallback):
        """Saves and evaluates every ``checkpoint_every`` env steps.

        SB3 calls ``on_step`` *before* it stores the step's transition in the replay buffer, so a buffer
        saved there would miss the newest transition; the checkpoint is written in ``on_rollout_end``
        (SAC collects one step per rollout), when the buffer holds exactly ``num_timesteps`` entries.
        """

        def __init__(self):
            super().__init__()
            self._due = False

        def _on_step(self) -> bool:
            if self.model.num_timesteps % checkpoint_every == 0:
                self._due = True
            return True

        def _on_rollout_end(self) -> None:
            if not self._due:
                return
            self._due = False
            n = self.model.num_timesteps
            path = out / "models" / f"sac_{n:08d}.zip"
            self.model.save(path)
            rets = evaluate_policy_returns(
                lambda o: self.model.predict(o, deterministic=True)[0], env_id, eval_episodes, seed=10_000 + n
            )
            table.append({"steps": n, "path": str(path.relative_to(out)), "return_mean": float(rets.mean()),
                          "return_std": float(rets.std()), "time": time.time()})
            # model + buffer first, then the table: a crash in between leaves a resumable state
            self.model.save(out / "latest.tmp.zip")
            os.replace(out / "latest.tmp.zip", latest)
            self.model.save_replay_buffer(out / "replay_buffer.tmp.pkl")
            os.replace(out / "replay_buffer.tmp.pkl", buffer_path)
            _atomic_json(out / CHECKPOINT_TABLE, table)
            print(f"[c4-collect] step {n}: return {rets.mean():.1f} +- {rets.std():.1f}", flush=True)

    remaining = total_steps - model.num_timesteps
    if remaining > 0:
        _atomic_json(out / "train_config.json", {"env_id": env_id, "total_steps": total_steps, "seed": seed,
                                                 "checkpoint_every": checkpoint_every,
                                                 "learning_starts": learning_starts, "algo": "SB3 SAC MlpPolicy"})
        model.learn(total_timesteps=remaining, callback=_Checkpoint(), reset_num_timesteps=False,
                    progress_bar=progress)
    return table


# --------------------------------------------------------------------------- record
# Defaults for the embedded datasets, chosen so that every file stays under MAX_DATASET_MB (see
# datasets/README.md for the measurements behind them).
DEFAULT_RANDOM_STEPS = 50_000
DEFAULT_MEDIUM_STEPS = 70_000
DEFAULT_EXPERT_STEPS = 70_000
DEFAULT_REPLAY_MAX_STEPS = 80_000
DEFAULT_MIX_SIZES = (10_000,)
MAX_DATASET_MB = 10.0
DATASET_VERSION = 0
# how the files are written (part of every dataset's plan: changing it invalidates old datasets)
STORAGE_LAYOUT = "hdf5-v110 contiguous, gzip4+shuffle from 1KiB, float32 observations/rewards"
_GZIP_MIN_BYTES = 1024
_BASE_NAMES = ("random", "medium", "expert", "medium-replay", "medium-expert")
_SEED_STREAMS = {"random": 0, "medium": 1, "expert": 2, "medium-replay": 3, "mixture": 4}


def _tqdm(iterable=None, **kwargs):
    from tqdm.auto import tqdm

    return tqdm(iterable, **kwargs)


def _package_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def _size_tag(n: int) -> str:
    """10_000 -> '10k', 1_000_000 -> '1m', 2500 -> '2500'."""
    if n % 1_000_000 == 0:
        return f"{n // 1_000_000}m"
    if n % 1000 == 0:
        return f"{n // 1000}k"
    return str(n)


def mixture_name(n: int) -> str:
    return f"random-medium-expert-{_size_tag(n)}"


def dataset_id(namespace: str, name: str) -> str:
    return f"{namespace}/{name}-v{DATASET_VERSION}"


def best_checkpoint(table: list[dict]) -> dict:
    """The checkpoint with the best evaluated return (the earliest one on ties)."""
    if not table:
        raise SystemExit("no checkpoints in the checkpoint table: run `c4-collect train` first")
    return max(table, key=lambda r: (r["return_mean"], -r["steps"]))


def select_checkpoints(table: list[dict], medium_fraction: float = 1 / 3, ref_min: float | None = None,
                       ref_max: float | None = None) -> dict:
    """Pick the *expert* (best evaluated return) and *medium* checkpoints from the checkpoint table.

    *medium* is the checkpoint, not later than the expert one, whose evaluated return is closest to
    ``ref_min + medium_fraction * (ref_max - ref_min)``, i.e. a normalised score of
    ``100 * medium_fraction`` (Hopper with D4RL's scores and 1/3: 1064.6, about a third of the expert
    reference return 3234.3). The reference scores default to D4RL's for known envs; for other envs
    ``ref_max`` is the best checkpoint's return and ``ref_min`` should be a random policy's return
    (0 when not given). Working in normalised terms keeps the choice sensible for envs whose returns
    are negative. Ties go to the earlier checkpoint.
    """
    expert = best_checkpoint(table)
    ref_max = expert["return_mean"] if ref_max is None else ref_max
    ref_min = 0.0 if ref_min is None else ref_min
    target = ref_min + medium_fraction * (ref_max - ref_min)
    candidates = [r for r in table if r["steps"] <= expert["steps"]]
    medium = min(candidates, key=lambda r: (abs(r["return_mean"] - target), r["steps"]))
    return {"expert": expert, "medium": medium, "medium_target_return": float(target)}


def _episode(observations, actions, rewards, terminations, truncations, *, seed=None, infos=None,
             action_dtype=np.float32):
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


def _truncate(ep, k: int):
    """The first ``k`` steps of an episode, its last step marked as a truncation."""
    n = len(ep.rewards)
    if k >= n:
        return ep
    term, trunc = np.array(ep.terminations[:k]), np.array(ep.truncations[:k])
    term[-1], trunc[-1] = False, True
    infos = None if ep.infos is None else {key: np.asarray(v)[: k + 1] for key, v in ep.infos.items()}
    return _episode(ep.observations[: k + 1], ep.actions[:k], ep.rewards[:k], term, trunc, seed=ep.seed,
                    infos=infos, action_dtype=np.asarray(ep.actions).dtype)


def _with_source(ep, source: int):
    t = len(ep.rewards)
    return _episode(ep.observations, ep.actions, ep.rewards, ep.terminations, ep.truncations, seed=ep.seed,
                    infos={"source": np.full(t + 1, source, dtype=np.int64)},
                    action_dtype=np.asarray(ep.actions).dtype)


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
        out.append((int(i), _truncate(ep, k), k < len(ep.rewards)))
        total += k
    return out


def rollout_episodes(env_id: str, n_steps: int, seed: int, policy=None, desc: str = "rollout",
                     progress: bool = True) -> tuple[list, list[bool]]:
    """Exactly ``n_steps`` env steps of ``policy(obs) -> action`` (uniform random actions when None).

    Each episode is reset with its own seed drawn from ``seed`` (stored as the episode's Minari seed);
    the episode running when the budget is reached is cut there and its last step marked as a
    truncation. Returns ``(episodes, was_cut)``.
    """
    import gymnasium as gym

    env = gym.make(env_id)
    rng = np.random.default_rng(seed)
    env.action_space.seed(int(rng.integers(2**31 - 1)))
    action_dtype = env.action_space.dtype or np.float32
    episodes, cut, steps = [], [], 0
    with _tqdm(total=n_steps, desc=desc, unit="step", disable=not progress, mininterval=1.0) as bar:
        while steps < n_steps:
            ep_seed = int(rng.integers(2**31 - 1))
            obs, _ = env.reset(seed=ep_seed)
            O, A, R, TE, TR = [obs], [], [], [], []
            while True:
                action = env.action_space.sample() if policy is None else policy(obs)
                obs, reward, terminated, truncated, _ = env.step(action)
                steps += 1
                O.append(obs), A.append(action), R.append(float(reward)), TE.append(bool(terminated))
                budget_cut = steps == n_steps and not (terminated or truncated)
                TR.append(bool(truncated) or budget_cut)
                if TE[-1] or TR[-1]:
                    break
            bar.update(len(R))
            episodes.append(_episode(O, A, R, TE, TR, seed=ep_seed, action_dtype=action_dtype))
            cut.append(budget_cut)
    env.close()
    return episodes, cut


def _sac_policy(path: Path, seed: int):
    """Stochastic (``deterministic=False``, as D4RL's behaviour data) actions of a saved SB3 SAC model."""
    import torch
    from stable_baselines3 import SAC

    model = SAC.load(path, device="cpu")
    torch.manual_seed(seed)
    return lambda obs: model.predict(obs, deterministic=False)[0]


def replay_buffer_episodes(buffer, n_steps: int, action_space=None, max_steps: int | None = None, seed: int = 0,
                           progress: bool = True) -> tuple[list, list[bool], dict]:
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
        raise SystemExit("the replay buffer was saved with optimize_memory_usage=True; c4-collect needs next_observations")
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
    for s, e in _tqdm(list(zip(starts, end_idx)), desc="replay buffer -> episodes", unit="ep",
                      disable=not progress, mininterval=1.0):
        o = np.concatenate([obs[s: e + 1], nxt[e: e + 1]]).reshape(-1, *obs_shape)
        episodes.append(_episode(o, actions[s: e + 1], rewards[s: e + 1], terminations[s: e + 1],
                                 truncations[s: e + 1]))
        cut.append(bool(truncations[e] and not (dones[e] and timeouts[e])))
    info = {"buffer_entries": int(available), "entries_read": int(n), "episodes_in_entries": len(episodes),
            "restarts_without_done": int((breaks[:-1] & ~dones[:-1]).sum()), "subsampled": False}
    if max_steps is not None and n > max_steps:
        drawn = take_whole_episodes(episodes, max_steps, np.random.default_rng(seed))
        drawn.sort(key=lambda item: item[0])
        episodes = [ep for _, ep, _ in drawn]
        cut = [was_cut or cut[i] for i, _, was_cut in drawn]
        info.update(subsampled=True, episodes_kept=[i for i, _, _ in drawn])
    return episodes, cut, info


def _episode_stats(episodes: list, cut: list[bool]) -> dict:
    returns = np.array([float(np.sum(e.rewards)) for e in episodes])
    full = returns[~np.asarray(cut, dtype=bool)] if len(cut) else returns
    stats = {"episodes": len(episodes), "steps": int(sum(len(e.rewards) for e in episodes)),
             "return_mean": float(returns.mean()), "return_std": float(returns.std()),
             "return_min": float(returns.min()), "return_max": float(returns.max()),
             "uncut_episodes": int(len(full))}
    if len(full):
        stats["uncut_return_mean"] = float(full.mean())
    return stats


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def compact_hdf5(path: str | Path, progress: bool = True) -> None:
    """Rewrite a Minari HDF5 file compactly, readable by plain ``minari.MinariDataset``.

    Minari writes every per-episode array chunked and resizable (one chunk index each, ~15 KB per
    episode). The copy keeps every group, array and attribute but writes HDF5 1.10-format objects
    without modification times, stores small arrays contiguously and compresses arrays of at least
    1 KiB (gzip level 4 with byte shuffling, one chunk per array).
    """
    import h5py

    path = Path(path)
    tmp = path.with_name(path.name + ".compact")

    def copy(src, dst):
        for key, value in src.attrs.items():
            dst.attrs[key] = value
        for key, item in src.items():
            if isinstance(item, h5py.Group):
                copy(item, dst.create_group(key))
                continue
            data = item[()]
            kwargs = {"track_times": False}
            if isinstance(data, np.ndarray) and data.ndim >= 1 and data.nbytes >= _GZIP_MIN_BYTES:
                kwargs.update(chunks=data.shape, compression="gzip", compression_opts=4, shuffle=True)
            dst.create_dataset(key, data=data, dtype=item.dtype, **kwargs)

    with h5py.File(path, "r") as src, h5py.File(tmp, "w", libver=("v110", "v110")) as dst:
        for key, value in src.attrs.items():
            dst.attrs[key] = value
        for name in _tqdm(list(src.keys()), desc=f"compact {path.parent.parent.name}", unit="ep",
                          disable=not progress, mininterval=1.0):
            copy(src[name], dst.create_group(name))
    os.replace(tmp, path)


class _MinariRoot:
    """Temporarily point ``MINARI_DATASETS_PATH`` at ``root``."""

    def __init__(self, root: Path):
        self.root, self.old = str(root), None

    def __enter__(self):
        self.old = os.environ.get("MINARI_DATASETS_PATH")
        os.environ["MINARI_DATASETS_PATH"] = self.root

    def __exit__(self, *exc):
        if self.old is None:
            os.environ.pop("MINARI_DATASETS_PATH", None)
        else:
            os.environ["MINARI_DATASETS_PATH"] = self.old


def check_dataset(data_dir: str | Path, expected_steps: int | None = None, expected_episodes: int | None = None,
                  max_mb: float | None = None, progress: bool = False) -> dict:
    """Reload a dataset with ``minari.MinariDataset`` and check it; raises ``DatasetError``.

    Checks: the metadata keys c4_lightning relies on (round-tripped through Minari's storage), episode
    and step counts, array shapes (observations T+1, actions/rewards T), finite values, episode ends
    (only the last step may terminate or truncate, and it does one of them), per-step source labels
    for multi-source datasets, and the size on disk.
    """
    import minari

    data_dir = Path(data_dir)
    try:
        ds = minari.MinariDataset(data_dir)
        meta = ds.storage.metadata
    except Exception as err:  # any reader failure means the dataset is unusable
        raise DatasetError(f"{data_dir} does not load with minari.MinariDataset: {err!r}") from err
    for key in ("ref_min_score", "ref_max_score", "source_names", "provenance", "eval_env_spec", "algorithm_name"):
        if key not in meta:
            raise DatasetError(f"{data_dir}: metadata lacks {key!r}")
    try:
        provenance, sources = json.loads(meta["provenance"]), json.loads(meta["source_names"])
    except (TypeError, json.JSONDecodeError) as err:
        raise DatasetError(f"{data_dir}: provenance/source_names are not JSON: {err}") from err
    steps, episodes, seen_sources = 0, 0, set()
    for ep in _tqdm(ds.iterate_episodes(), total=ds.total_episodes, desc=f"check {data_dir.parent.name}",
                    unit="ep", disable=not progress, mininterval=1.0):
        t = len(ep.rewards)
        obs, act = np.asarray(ep.observations), np.asarray(ep.actions)
        where = f"{data_dir} episode {ep.id}"
        if t == 0 or obs.shape[0] != t + 1 or act.shape[0] != t or len(ep.terminations) != t or len(ep.truncations) != t:
            raise DatasetError(f"{where}: shapes obs {obs.shape}, actions {act.shape}, rewards ({t},)")
        if not (np.isfinite(obs).all() and np.isfinite(act).all() and np.isfinite(ep.rewards).all()):
            raise DatasetError(f"{where}: non-finite values")
        ends = np.asarray(ep.terminations, bool) | np.asarray(ep.truncations, bool)
        if ends[:-1].any() or not ends[-1]:
            raise DatasetError(f"{where}: the episode must end (terminate or truncate) at its last step only")
        if len(sources) > 1:
            labels = np.asarray((ep.infos or {}).get("source", []))
            if labels.shape != (t + 1,) or labels.min() < 0 or labels.max() >= len(sources):
                raise DatasetError(f"{where}: infos['source'] must hold T+1 labels in [0, {len(sources)})")
            seen_sources.update(int(v) for v in np.unique(labels))
        steps += t
        episodes += 1
    if steps != ds.total_steps or episodes != ds.total_episodes:
        raise DatasetError(f"{data_dir}: metadata says {ds.total_steps} steps / {ds.total_episodes} episodes, "
                           f"read {steps} / {episodes}")
    if expected_steps is not None and steps != expected_steps:
        raise DatasetError(f"{data_dir}: {steps} steps, expected {expected_steps}")
    if expected_episodes is not None and episodes != expected_episodes:
        raise DatasetError(f"{data_dir}: {episodes} episodes, expected {expected_episodes}")
    if len(sources) > 1 and len(seen_sources) != len(sources):
        raise DatasetError(f"{data_dir}: sources {sorted(seen_sources)} present, expected all of {sources}")
    size = _dir_bytes(data_dir.parent)
    if max_mb is not None and size >= max_mb * 1e6:
        raise DatasetError(f"{data_dir.parent} is {size / 1e6:.2f} MB on disk, over the {max_mb:g} MB limit")
    return {"steps": steps, "episodes": episodes, "bytes": size, "provenance": provenance, "source_names": sources}


def write_dataset(datasets_dir: str | Path, ds_id: str, episodes: list, *, env_id: str, ref_min: float,
                  ref_max: float, algorithm_name: str, description: str, provenance: dict, source_names: list[str],
                  max_mb: float = MAX_DATASET_MB, size_flag: str = "", progress: bool = True) -> dict:
    """Write ``episodes`` as Minari dataset ``ds_id`` under ``datasets_dir`` (Minari's own layout).

    The dataset is made in a temporary Minari root inside ``datasets_dir``, compacted, given its
    metadata, reloaded and checked, and only then moved to ``<datasets_dir>/<namespace>/<name>-vN``
    (replacing an existing one). Fails loudly (``SystemExit``) when the files exceed ``max_mb``.
    """
    import gymnasium as gym
    from minari.dataset.minari_storage import MinariStorage
    from minari.utils import create_dataset_from_buffers

    datasets_dir = Path(datasets_dir).resolve()  # Minari's size accounting breaks on relative paths
    datasets_dir.mkdir(parents=True, exist_ok=True)
    final = datasets_dir / ds_id
    env = gym.make(env_id)
    space = env.observation_space
    if not isinstance(space, gym.spaces.Box):
        raise SystemExit(f"c4-collect writes Box observation spaces only, {env_id} has {space}")
    obs_space = gym.spaces.Box(space.low.astype(np.float32), space.high.astype(np.float32), space.shape, np.float32)
    tmp_root = Path(tempfile.mkdtemp(prefix=".c4-collect-", dir=datasets_dir))
    try:
        with _MinariRoot(tmp_root), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*author_email.*")
            create_dataset_from_buffers(
                ds_id, _tqdm(episodes, desc=f"write {ds_id}", unit="ep", disable=not progress, mininterval=1.0),
                env=env_id, eval_env=env_id, algorithm_name=algorithm_name, author="c4_lightning c4-collect",
                code_permalink=f"c4_lightning/data/collect.py (c4_lightning {_package_version('c4_lightning')})",
                observation_space=obs_space, action_space=env.action_space, ref_min_score=float(ref_min),
                ref_max_score=float(ref_max), description=description, data_format="hdf5",
            )
        env.close()
        data_dir = tmp_root / ds_id / "data"
        compact_hdf5(data_dir / "main_data.hdf5", progress=progress)
        storage = MinariStorage.read(data_dir)
        storage.update_metadata({"source_names": json.dumps(source_names), "provenance": json.dumps(provenance)})
        storage.update_metadata({"dataset_size": storage.get_size()})
        expected = sum(len(e.rewards) for e in episodes)
        summary = check_dataset(data_dir, expected_steps=expected, expected_episodes=len(episodes), progress=progress)
        if summary["bytes"] >= max_mb * 1e6:
            raise SystemExit(
                f"{ds_id} is {summary['bytes'] / 1e6:.2f} MB on disk ({expected} transitions, {len(episodes)} episodes), "
                f"over the {max_mb:g} MB limit for embedded datasets: lower {size_flag or 'its transition count'}"
            )
        final.parent.mkdir(parents=True, exist_ok=True)
        ns_meta = final.parent / "namespace_metadata.json"
        if not ns_meta.exists():
            ns_meta.write_text(json.dumps({"description": f"Datasets made by c4-collect for {env_id}"}))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp_root / ds_id, final)
        return summary
    except DatasetError as err:
        raise SystemExit(f"writing {ds_id} failed its reload check: {err}") from err
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)


def _read_episodes(data_dir: Path) -> list:
    import minari

    ds = minari.MinariDataset(data_dir)
    seeds = [m.get("seed") for m in ds.storage.get_episode_metadata(range(ds.total_episodes))]
    return [_episode(e.observations, e.actions, e.rewards, e.terminations, e.truncations,
                     seed=None if s is None else int(s), action_dtype=np.asarray(e.actions).dtype)
            for e, s in zip(ds.iterate_episodes(), seeds)]


def _jsonable(obj):
    return json.loads(json.dumps(obj))


def _existing(final: Path, plan: dict, overwrite: bool, max_mb: float) -> dict | None:
    """Summary of a valid existing dataset made with the same plan (skip it); None when it must be made."""
    if not final.exists() or overwrite:
        return None
    try:
        summary = check_dataset(final / "data", max_mb=max_mb)
    except DatasetError as err:
        raise SystemExit(f"{final} exists but is not a valid dataset ({err}); pass --overwrite to remake it")
    if summary["provenance"].get("plan") != _jsonable(plan):
        raise SystemExit(
            f"{final} exists but was made with other settings or checkpoints:\n  existing: "
            f"{json.dumps(summary['provenance'].get('plan'))}\n  now:      {json.dumps(_jsonable(plan))}\n"
            "pass --overwrite to remake it"
        )
    return summary


def _loud(msg: str) -> None:
    bar = "!" * 100
    print(f"\n{bar}\n{msg}\n{bar}\n", file=sys.stderr, flush=True)


def record_datasets(
    env_id: str,
    out_dir: str | Path,
    datasets_dir: str | Path,
    namespace: str | None = None,
    seed: int = 0,
    random_steps: int = DEFAULT_RANDOM_STEPS,
    medium_steps: int = DEFAULT_MEDIUM_STEPS,
    expert_steps: int = DEFAULT_EXPERT_STEPS,
    replay_max_steps: int = DEFAULT_REPLAY_MAX_STEPS,
    mix_sizes: tuple[int, ...] = DEFAULT_MIX_SIZES,
    medium_fraction: float = 1 / 3,
    expert_min_score: float = 80.0,
    max_mb: float = MAX_DATASET_MB,
    overwrite: bool = False,
    threads: int = 1,
    progress: bool = True,
    command: str | None = None,
) -> dict[str, dict]:
    """Write the D4RL-style datasets of ``env_id`` from the behaviour run in ``out_dir``.

    Datasets (ids ``<namespace>/<name>-v0``): ``random``, ``medium``, ``expert``, ``medium-replay``,
    ``medium-expert`` and one ``random-medium-expert-<N>`` mixture per entry of ``mix_sizes``. A
    dataset that already exists, reloads cleanly and was made with the same plan (settings and
    checkpoints) is skipped; one made differently is an error unless ``overwrite``. Also writes
    ``<datasets_dir>/<namespace>/PROVENANCE.md``. Returns a summary per dataset id.
    """
    _require_sb3()
    import gymnasium as gym
    import torch
    from stable_baselines3.common.save_util import load_from_pkl

    torch.set_num_threads(threads)
    out, datasets_dir = Path(out_dir).resolve(), Path(datasets_dir).resolve()
    namespace = namespace or env_family(env_id)
    command = command or "c4-collect record (called from Python)"
    table = load_checkpoint_table(out)
    expert_ckpt = best_checkpoint(table)
    ids = {name: dataset_id(namespace, name) for name in _BASE_NAMES}
    summaries: dict[str, dict] = {}
    train_config = json.loads((out / "train_config.json").read_text()) if (out / "train_config.json").exists() else None
    common = {
        "collector": "c4_lightning.data.collect", "collector_version": _package_version("c4_lightning"),
        "command": command, "seed": seed, "env_id": env_id, "behaviour_run_dir": str(out_dir),
        "versions": {k: _package_version(k) for k in ("minari", "gymnasium", "mujoco", "stable_baselines3", "torch")},
        "train_config": train_config, "storage": STORAGE_LAYOUT,
    }
    ref = reference_scores(env_id)

    def ckpt_info(row, ref_min, ref_max):
        return {"steps": row["steps"], "path": row["path"], "return_mean": row["return_mean"],
                "return_std": row["return_std"],
                "normalized_score": float(normalized_score(row["return_mean"], ref_min, ref_max))}

    def make(name, plan, build, *, algorithm, describe, sources=None, size_flag=""):
        ds_id = ids.get(name) or dataset_id(namespace, name)
        final = datasets_dir / ds_id
        existing = _existing(final, plan, overwrite, max_mb)
        if existing is not None:
            print(f"[c4-collect] {ds_id}: exists and matches, skipping ({existing['steps']} steps)", flush=True)
            summaries[ds_id] = existing
            return existing
        episodes, cut, extra = build()
        stats = _episode_stats(episodes, cut)
        ref_min, ref_max = ref_scores()
        provenance = {**common, "dataset_id": ds_id, "kind": name, "plan": _jsonable(plan),
                      "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                      "num_steps": stats["steps"], "num_episodes": stats["episodes"], "episode_returns": stats,
                      "normalized_episode_return_mean": float(normalized_score(stats["return_mean"], ref_min, ref_max)),
                      **extra}
        summary = write_dataset(datasets_dir, ds_id, episodes, env_id=env_id, ref_min=ref_min, ref_max=ref_max,
                                algorithm_name=algorithm, description=describe(stats), provenance=provenance,
                                source_names=sources or [ds_id], max_mb=max_mb, size_flag=size_flag,
                                progress=progress)
        print(f"[c4-collect] {ds_id}: {summary['steps']} steps, {summary['episodes']} episodes, "
              f"{summary['bytes'] / 1e6:.2f} MB, mean episode return {stats['return_mean']:.1f}", flush=True)
        summaries[ds_id] = summary
        return summary

    random_ref: dict = {}

    def ref_scores() -> tuple[float, float]:
        if ref is not None:
            return ref
        # unknown env: random policy's mean return (from the random dataset) and the best checkpoint's return
        return random_ref["ref_min"], expert_ckpt["return_mean"]

    def policy_plan(kind, row, steps):
        return {"kind": kind, "env_id": env_id, "seed": seed, "steps": steps, "checkpoint": row["path"],
                "checkpoint_steps": row["steps"], "deterministic": False, "storage": STORAGE_LAYOUT}

    # ---- random
    random_plan = {"kind": "random", "env_id": env_id, "seed": seed, "steps": random_steps, "storage": STORAGE_LAYOUT}
    if ref is None:  # its metadata carries the reference scores, which then depend on the best checkpoint
        random_plan["ref_max"] = expert_ckpt["return_mean"]

    def build_random():
        episodes, cut = rollout_episodes(env_id, random_steps, seed=[seed, _SEED_STREAMS["random"]],
                                         desc=f"{ids['random']} rollouts", progress=progress)
        if ref is None:
            stats = _episode_stats(episodes, cut)
            random_ref["ref_min"] = stats.get("uncut_return_mean", stats["return_mean"])
        return episodes, cut, {"behaviour": {"policy": "uniform random actions"}}

    if ref is None:
        final = datasets_dir / ids["random"]
        if final.exists() and not overwrite:
            random_ref["ref_min"] = json.loads((final / "data" / "metadata.json").read_text())["ref_min_score"]
    make("random", random_plan, build_random, algorithm="uniform random policy (action_space.sample())",
         describe=lambda st: f"{env_id} uniform random actions: {st['steps']} transitions, {st['episodes']} episodes "
                             f"(mean episode return {st['return_mean']:.1f}). Made by c4-collect.",
         size_flag="--random-steps")

    ref_min, ref_max = ref_scores()
    choice = select_checkpoints(table, medium_fraction, ref_min, ref_max)
    medium_ckpt = choice["medium"]
    print(f"[c4-collect] expert checkpoint: {expert_ckpt['steps']} env steps (return {expert_ckpt['return_mean']:.1f}); "
          f"medium: {medium_ckpt['steps']} env steps (return {medium_ckpt['return_mean']:.1f}, target "
          f"{choice['medium_target_return']:.1f})", flush=True)
    med_info, exp_info = ckpt_info(medium_ckpt, ref_min, ref_max), ckpt_info(expert_ckpt, ref_min, ref_max)
    curve = [[r["steps"], r["return_mean"], r["return_std"]] for r in table]
    below = ref is not None and exp_info["normalized_score"] < expert_min_score
    if below:
        _loud(f"NOTE: the best SAC checkpoint ({expert_ckpt['steps']} env steps) has evaluated return "
              f"{expert_ckpt['return_mean']:.1f}, normalised score {exp_info['normalized_score']:.1f} < "
              f"--expert-min-score {expert_min_score:g}.\n{ids['expert']} keeps its id for config stability, but it is "
              "NOT D4RL-expert level: its description and provenance (expert_below_min_score) say so.")
    if medium_ckpt["steps"] == expert_ckpt["steps"]:
        _loud(f"NOTE: the medium and expert checkpoints are the same ({expert_ckpt['steps']} env steps): "
              "train longer for distinct behaviour policies.")
    sac_extra = {"checkpoints": {"medium": med_info, "expert": exp_info}, "checkpoint_curve": curve,
                 "medium_target_return": choice["medium_target_return"], "medium_fraction": medium_fraction,
                 "expert_min_score": expert_min_score, "expert_below_min_score": bool(below)}

    def describe_policy(kind, info):
        def text(st):
            note = ""
            if kind == "expert" and below:
                note = (f" NOTE: below expert level (normalised {info['normalized_score']:.1f} < {expert_min_score:g}); "
                        "the id is kept for config stability.")
            return (f"{env_id} {kind}: {st['steps']} transitions ({st['episodes']} episodes) of the SB3-SAC checkpoint "
                    f"at {info['steps']} env steps with stochastic actions; that checkpoint's evaluated return "
                    f"{info['return_mean']:.1f} +- {info['return_std']:.1f} (deterministic, normalised "
                    f"{info['normalized_score']:.1f}); mean episode return in the data {st['return_mean']:.1f}.{note} "
                    "Made by c4-collect.")
        return text

    # ---- medium and expert
    for kind, row, steps, info in (("medium", medium_ckpt, medium_steps, med_info),
                                   ("expert", expert_ckpt, expert_steps, exp_info)):
        def build(kind=kind, row=row, steps=steps):
            rng = np.random.default_rng([seed, _SEED_STREAMS[kind]])
            policy = _sac_policy(out / row["path"], seed=int(rng.integers(2**31 - 1)))
            episodes, cut = rollout_episodes(env_id, steps, seed=int(rng.integers(2**31 - 1)), policy=policy,
                                             desc=f"{ids[kind]} rollouts", progress=progress)
            return episodes, cut, {"behaviour": {"policy": f"SB3-SAC checkpoint {row['path']}", "deterministic": False,
                                                 **ckpt_info(row, ref_min, ref_max)}, **sac_extra}

        make(kind, policy_plan(kind, row, steps), build,
             algorithm=f"SB3-SAC (checkpoint at {row['steps']} env steps, stochastic actions)",
             describe=describe_policy(kind, info), size_flag=f"--{kind}-steps")

    # ---- medium-replay
    buffer_path = out / "replay_buffer.pkl"
    if not buffer_path.exists():
        raise SystemExit(f"{buffer_path} not found: medium-replay needs the behaviour run's replay buffer")
    print(f"[c4-collect] loading {buffer_path}", flush=True)
    buffer = load_from_pkl(buffer_path)
    entries = min(medium_ckpt["steps"], buffer.buffer_size if buffer.full else buffer.pos)
    if entries < medium_ckpt["steps"]:
        _loud(f"NOTE: the replay buffer holds {entries} entries, fewer than the medium checkpoint's "
              f"{medium_ckpt['steps']} env steps (a buffer saved by an older c4-collect misses its newest step): "
              f"medium-replay uses entries [0, {entries}).")
    replay_plan = {"kind": "medium-replay", "env_id": env_id, "seed": seed, "upto_steps": medium_ckpt["steps"],
                   "entries": entries, "max_steps": replay_max_steps, "storage": STORAGE_LAYOUT}

    def build_replay():
        space = gym.make(env_id).action_space
        episodes, cut, info = replay_buffer_episodes(buffer, medium_ckpt["steps"], action_space=space,
                                                     max_steps=replay_max_steps,
                                                     seed=int(np.random.default_rng([seed, _SEED_STREAMS["medium-replay"]]).integers(2**31 - 1)),
                                                     progress=progress)
        info.pop("episodes_kept", None)
        return episodes, cut, {"behaviour": {"policy": "SB3-SAC replay buffer (training data up to the medium checkpoint)",
                                             "replay": info, **med_info}, **sac_extra}

    make("medium-replay", replay_plan, build_replay,
         algorithm=f"SB3-SAC replay buffer, env steps [0, {entries})",
         describe=lambda st: f"{env_id} medium-replay: {st['steps']} transitions ({st['episodes']} episodes) from the SAC "
                             f"replay buffer up to the medium checkpoint at {medium_ckpt['steps']} env steps"
                             + (f" (whole episodes drawn at random down to --replay-max-steps {replay_max_steps})"
                                if entries > replay_max_steps else "") + ". Made by c4-collect.",
         size_flag="--replay-max-steps")
    del buffer

    # ---- medium-expert (whole medium and expert datasets, D4RL style)
    me_sources = [ids["medium"], ids["expert"]]

    def build_medium_expert():
        episodes, cut = [], []
        for src, name in enumerate(me_sources):
            for ep in _read_episodes(datasets_dir / name / "data"):
                episodes.append(_with_source(ep, src))
                cut.append(False)
        return episodes, cut, {"behaviour": {"policy": "medium + expert datasets concatenated"}, **sac_extra}

    make("medium-expert",
         {"kind": "medium-expert", "sources": [policy_plan("medium", medium_ckpt, medium_steps),
                                               policy_plan("expert", expert_ckpt, expert_steps)]},
         build_medium_expert, algorithm="SB3-SAC (medium + expert checkpoints, stochastic actions)",
         describe=lambda st: f"{env_id} medium-expert: all of {me_sources[0]} followed by all of {me_sources[1]} "
                             f"({st['steps']} transitions); per-step infos['source'] labels index source_names. "
                             "Made by c4-collect.",
         sources=me_sources, size_flag="--medium-steps/--expert-steps")

    # ---- random-medium-expert-<N> mixtures
    mix_sources = [ids["random"], ids["medium"], ids["expert"]]
    mix_plans = [random_plan, policy_plan("medium", medium_ckpt, medium_steps),
                 policy_plan("expert", expert_ckpt, expert_steps)]
    for n in mix_sizes:
        shares = [n // 3 + (1 if i < n % 3 else 0) for i in range(3)]

        def build_mix(n=n, shares=shares):
            rng = np.random.default_rng([seed, _SEED_STREAMS["mixture"], n])
            episodes, cut, drawn_ids = [], [], {}
            for src, (name, share) in enumerate(zip(mix_sources, shares)):
                pool = _read_episodes(datasets_dir / name / "data")
                held = sum(len(e.rewards) for e in pool)
                if held < share:
                    raise SystemExit(f"{dataset_id(namespace, mixture_name(n))} needs {share} transitions of {name}, "
                                     f"which holds {held}: lower --sizes or raise --{name.split('/')[1][:-3]}-steps")
                drawn = take_whole_episodes(pool, share, rng)
                drawn_ids[name] = [i for i, _, _ in drawn]
                for _, ep, was_cut in drawn:
                    episodes.append(_with_source(ep, src))
                    cut.append(was_cut)
            return episodes, cut, {"behaviour": {"policy": "equal shares of whole episodes of random, medium, expert",
                                                 "shares": dict(zip(mix_sources, shares)), "episodes": drawn_ids},
                                   **sac_extra}

        make(mixture_name(n), {"kind": "mixture", "total": n, "seed": seed, "sources": mix_plans}, build_mix,
             algorithm="uniform random + SB3-SAC (medium and expert checkpoints, stochastic actions)",
             describe=lambda st, n=n, shares=shares: (
                 f"{env_id} random-medium-expert mixture of exactly {n} transitions: {shares[0]}/{shares[1]}/{shares[2]} "
                 f"transitions of whole episodes (the last of each share cut, marked truncated) from {', '.join(mix_sources)}; "
                 "per-step infos['source'] labels index source_names. Made by c4-collect."),
             sources=mix_sources, size_flag="--sizes")

    md = write_provenance_md(datasets_dir / namespace)
    print(f"[c4-collect] wrote {md}", flush=True)
    return summaries


_TABLE_ORDER = ("random", "medium", "medium-replay", "expert", "medium-expert")


def write_provenance_md(namespace_dir: str | Path) -> Path:
    """Write ``PROVENANCE.md`` in a namespace folder from the metadata of the datasets found there."""
    namespace_dir = Path(namespace_dir)
    rows = []
    for meta_path in namespace_dir.glob("*/data/metadata.json"):
        meta = json.loads(meta_path.read_text())
        if "provenance" not in meta:
            continue
        prov = json.loads(meta["provenance"])
        kind = prov.get("kind", "")
        order = _TABLE_ORDER.index(kind) if kind in _TABLE_ORDER else len(_TABLE_ORDER)
        rows.append((order, meta["dataset_id"], meta, prov, _dir_bytes(meta_path.parent.parent)))
    rows.sort(key=lambda r: (r[0], r[1]))
    lines = [f"# Provenance of the `{namespace_dir.name}` datasets", "",
             "Generated by `c4-collect record` from each dataset's metadata (`provenance`, JSON); do not edit by hand.",
             "Checkpoint returns are the behaviour run's evaluations (deterministic actions, `checkpoints.json`); "
             "the datasets are recorded with stochastic actions, so their episode returns differ.", "",
             "| dataset | behaviour policy | SAC checkpoint (env steps) | checkpoint return | normalised | "
             "transitions | episodes | mean episode return in data | normalised | size (MB) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    commands, curve, marks = [], None, {}
    for _, ds_id, meta, prov, size in rows:
        beh = prov.get("behaviour", {})
        if "steps" in beh:
            ckpt = f"{beh['steps']}"
            ret = f"{beh['return_mean']:.1f} ± {beh['return_std']:.1f}"
            norm = f"{beh['normalized_score']:.1f}"
        else:
            ckpt, ret, norm = "–", "–", "–"
        er = prov.get("episode_returns", {})
        lines.append(f"| `{ds_id}` | {beh.get('policy', '')} | {ckpt} | {ret} | {norm} | {prov.get('num_steps')} | "
                     f"{prov.get('num_episodes')} | {er.get('return_mean', float('nan')):.1f} | "
                     f"{prov.get('normalized_episode_return_mean', float('nan')):.1f} | {size / 1e6:.2f} |")
        if prov.get("command") and prov["command"] not in commands:
            commands.append(prov["command"])
        if prov.get("checkpoint_curve") and curve is None:
            curve = prov["checkpoint_curve"]
            for k, c in prov.get("checkpoints", {}).items():
                marks[c["steps"]] = ", ".join(filter(None, [marks.get(c["steps"]), k]))
        if prov.get("expert_below_min_score") and prov.get("kind") == "expert":
            lines.insert(4, f"**Note:** `{ds_id}` is below D4RL expert level (normalised "
                            f"{prov['checkpoints']['expert']['normalized_score']:.1f} < {prov['expert_min_score']:g}); "
                            "the id is kept for config stability.\n")
    if rows:
        first = rows[0][3]
        lines += ["", f"Reference scores: min {rows[0][2]['ref_min_score']}, max {rows[0][2]['ref_max_score']}. "
                      f"Seed {first.get('seed')}. Versions: "
                      + ", ".join(f"{k} {v}" for k, v in (first.get("versions") or {}).items()) + "."]
        cfg = first.get("train_config")
        if cfg:
            lines += ["", f"Behaviour run (`train_config.json`): SB3 SAC on {cfg.get('env_id')}, "
                          f"{cfg.get('total_steps')} env steps, checkpoint every {cfg.get('checkpoint_every')}, "
                          f"learning starts {cfg.get('learning_starts')}, seed {cfg.get('seed')}: "
                          f"`c4-collect train --env {cfg.get('env_id')} --out-dir {first.get('behaviour_run_dir')} --total-steps "
                          f"{cfg.get('total_steps')} --checkpoint-every {cfg.get('checkpoint_every')} "
                          f"--learning-starts {cfg.get('learning_starts')} --seed {cfg.get('seed')}`"]
    if commands:
        lines += ["", "## Commands", "", "```"] + commands + ["```"]
    if curve:
        lines += ["", "## Behaviour run checkpoints", "", "| env steps | return (mean ± std) | picked as |", "|---|---|---|"]
        lines += [f"| {s} | {m:.1f} ± {sd:.1f} | {marks.get(s, '')} |" for s, m, sd in curve]
    path = namespace_dir / "PROVENANCE.md"
    path.write_text("\n".join(lines) + "\n")
    return path


# --------------------------------------------------------------------------- cli
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="c4-collect", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="stage", required=True)
    t = sub.add_parser("train", help="train (or resume) the SAC behaviour policy")
    t.add_argument("--env", required=True, help="Gymnasium env id, e.g. Hopper-v5")
    t.add_argument("--out-dir", required=True, help="folder for models, replay buffer and checkpoint table")
    t.add_argument("--total-steps", type=int, default=300_000)
    t.add_argument("--checkpoint-every", type=int, default=10_000)
    t.add_argument("--eval-episodes", type=int, default=5)
    t.add_argument("--learning-starts", type=int, default=10_000)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=int, default=1)
    t.add_argument("--no-progress", action="store_true")

    r = sub.add_parser("record", help="write the Minari datasets from a finished (or running) behaviour run",
                       description="Write random, medium, expert, medium-replay, medium-expert and "
                                   "random-medium-expert-<N> datasets as <datasets-dir>/<namespace>/<name>-v0 "
                                   "(Minari's layout), plus <datasets-dir>/<namespace>/PROVENANCE.md.")
    r.add_argument("--env", required=True, help="Gymnasium env id, e.g. Hopper-v5")
    r.add_argument("--out-dir", required=True, help="the behaviour run's folder (c4-collect train --out-dir)")
    r.add_argument("--datasets-dir", required=True, help="root folder for the datasets, e.g. datasets")
    r.add_argument("--namespace", default=None, help="dataset namespace (default: env family, e.g. hopper)")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--random-steps", type=int, default=DEFAULT_RANDOM_STEPS)
    r.add_argument("--medium-steps", type=int, default=DEFAULT_MEDIUM_STEPS)
    r.add_argument("--expert-steps", type=int, default=DEFAULT_EXPERT_STEPS)
    r.add_argument("--replay-max-steps", type=int, default=DEFAULT_REPLAY_MAX_STEPS,
                   help="cap on medium-replay transitions (whole episodes drawn at random above it)")
    r.add_argument("--sizes", type=int, nargs="+", default=list(DEFAULT_MIX_SIZES),
                   help="transition counts of the random-medium-expert-<N> mixtures")
    r.add_argument("--medium-fraction", type=float, default=1 / 3,
                   help="medium = checkpoint whose return is closest to this fraction of the expert reference return")
    r.add_argument("--expert-min-score", type=float, default=80.0,
                   help="normalised score below which the expert dataset is flagged as below expert level")
    r.add_argument("--max-mb", type=float, default=MAX_DATASET_MB, help="size limit per dataset on disk (MB)")
    r.add_argument("--overwrite", action="store_true", help="remake datasets that already exist")
    r.add_argument("--threads", type=int, default=1)
    r.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    _require_sb3()
    if args.stage == "train":
        table = train_behaviour(args.env, args.out_dir, args.total_steps, args.checkpoint_every, args.eval_episodes,
                                args.learning_starts, args.seed, args.threads, progress=not args.no_progress)
        best = max(table, key=lambda r: r["return_mean"]) if table else None
        print(f"done: {len(table)} checkpoints" + (f", best return {best['return_mean']:.1f} at {best['steps']}" if best else ""))
    elif args.stage == "record":
        summaries = record_datasets(
            args.env, args.out_dir, args.datasets_dir, namespace=args.namespace, seed=args.seed,
            random_steps=args.random_steps, medium_steps=args.medium_steps, expert_steps=args.expert_steps,
            replay_max_steps=args.replay_max_steps, mix_sizes=tuple(args.sizes), medium_fraction=args.medium_fraction,
            expert_min_score=args.expert_min_score, max_mb=args.max_mb, overwrite=args.overwrite,
            threads=args.threads, progress=not args.no_progress, command="c4-collect " + shlex.join(argv),
        )
        for ds_id, summary in summaries.items():
            print(f"  {ds_id}: {summary['steps']} steps, {summary['episodes']} episodes, {summary['bytes'] / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
