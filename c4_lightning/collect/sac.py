"""The behaviour policy: Stable-Baselines3 SAC, trained (and resumed) with a checkpoint table.

Every ``checkpoint_every`` env steps the model is saved and evaluated (deterministic actions, with
:func:`c4_lightning.evaluation.rollout.evaluate_policy`); the model, the replay buffer and the
checkpoint table are written so that a killed run resumes from its last checkpoint.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from c4_lightning.collect.checkpoints import (
    TRAIN_CONFIG,
    atomic_json,
    load_checkpoint_table,
    save_checkpoint_table,
)


def require_sb3() -> None:
    """Exit with an install hint when Stable-Baselines3 (the extra ``collect``) is missing."""
    try:
        import stable_baselines3  # noqa: F401
    except ImportError as err:
        raise SystemExit(
            "c4-collect needs Stable-Baselines3, which is not installed: pip install 'c4_lightning[collect]' "
            "(or pip install stable-baselines3 rich)"
        ) from err


def _grow_replay_buffer(buffer, size: int) -> None:
    """Enlarge an SB3 ``ReplayBuffer`` in place to ``size`` entries, keeping it append-only.

    The behaviour run keeps every transition (``buffer_size = total_steps``) so that entries
    ``[0, n)`` are the first ``n`` env steps (``record`` turns them into ``medium-replay``). Resuming
    with a larger ``--total-steps`` must therefore grow the buffer instead of letting it wrap around.
    """
    if buffer.full and buffer.pos != 0:
        raise SystemExit(
            "the saved replay buffer has wrapped around (it was not written by c4-collect train); "
            "its entries are no longer the first env steps"
        )
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
    require_sb3()
    if eval_episodes < 1:
        raise SystemExit(f"--eval-episodes {eval_episodes}: every checkpoint needs at least one evaluation episode")
    import gymnasium as gym
    import torch
    from stable_baselines3 import SAC
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.monitor import Monitor

    from c4_lightning.evaluation.rollout import evaluate_policy

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
        model = SAC(
            "MlpPolicy",
            env,
            buffer_size=total_steps,
            learning_starts=learning_starts,
            seed=seed,
            device="cpu",
            verbose=0,
        )
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
            # episode i is reset with seed 10_000 + n + i. One env at a time (max_envs=1): the policy then
            # sees batches of one observation, and its returns are bit-identical to a plain per-episode
            # loop (batched forward passes round differently, which MuJoCo amplifies over 1000 steps).
            rets = evaluate_policy(
                lambda obs: self.model.predict(obs, deterministic=True)[0],
                env_id,
                episodes=eval_episodes,
                seed=10_000 + n,
                max_envs=1,
            )
            table.append(
                {
                    "steps": n,
                    "path": str(path.relative_to(out)),
                    "return_mean": float(rets.mean()),
                    "return_std": float(rets.std()),
                    "time": time.time(),
                }
            )
            # model + buffer first, then the table: a crash in between leaves a resumable state
            self.model.save(out / "latest.tmp.zip")
            os.replace(out / "latest.tmp.zip", latest)
            self.model.save_replay_buffer(out / "replay_buffer.tmp.pkl")
            os.replace(out / "replay_buffer.tmp.pkl", buffer_path)
            save_checkpoint_table(out, table)
            print(f"[c4-collect] step {n}: return {rets.mean():.1f} +- {rets.std():.1f}", flush=True)

    remaining = total_steps - model.num_timesteps
    if remaining > 0:
        atomic_json(
            out / TRAIN_CONFIG,
            {
                "env_id": env_id,
                "total_steps": total_steps,
                "seed": seed,
                "checkpoint_every": checkpoint_every,
                "learning_starts": learning_starts,
                "algo": "SB3 SAC MlpPolicy",
            },
        )
        model.learn(total_timesteps=remaining, callback=_Checkpoint(), reset_num_timesteps=False, progress_bar=progress)
    return table


def load_sac_policy(path: Path, seed: int):
    """``policy(obs) -> action``: stochastic actions (``deterministic=False``, as D4RL's behaviour data) of
    a saved SB3 SAC model; seeds torch's global generator, which draws the action noise."""
    import torch
    from stable_baselines3 import SAC

    model = SAC.load(path, device="cpu")
    torch.manual_seed(seed)
    return lambda obs: model.predict(obs, deterministic=False)[0]
