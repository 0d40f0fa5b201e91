"""Make D4RL-style Minari datasets for any Gymnasium env (``c4-collect``).

Two stages, each resumable:

``train``
    Trains a behaviour policy with Stable-Baselines3 SAC. Every
    ``--checkpoint-every`` env steps the policy is saved and evaluated
    (deterministic actions); the model, replay buffer and the checkpoint table
    (``checkpoints.json``) are written so that a killed run resumes from its
    last checkpoint with ``c4-collect train`` and the same ``--out-dir``.

``record``
    Picks a *medium* checkpoint (evaluated return closest to
    ``--medium-fraction`` of the expert reference return) and an *expert* one
    (best evaluated return), then writes Minari datasets:
    ``random``, ``medium``, ``expert``, ``medium-replay`` (the SAC replay buffer
    up to the medium checkpoint), ``medium-expert`` and a small
    ``random-medium-expert-<N>`` mixture, with reference scores and provenance
    in the metadata.

Needs the optional extra ``collect`` (``pip install c4_lightning[collect]``).
Example (what made the embedded Hopper datasets; see datasets/README.md)::

    c4-collect train --env Hopper-v5 --out-dir runs/collect/hopper --total-steps 300000
    c4-collect record --env Hopper-v5 --out-dir runs/collect/hopper --datasets-dir datasets
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from c4_lightning.data.scores import env_family, reference_scores

CHECKPOINT_TABLE = "checkpoints.json"


def _require_sb3():
    try:
        import stable_baselines3  # noqa: F401
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise SystemExit(
            "c4-collect needs Stable-Baselines3: pip install 'c4_lightning[collect]'"
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
        print(f"resuming SAC from {latest} at {model.num_timesteps} steps", flush=True)
    else:
        model = SAC("MlpPolicy", env, buffer_size=total_steps, learning_starts=learning_starts, seed=seed,
                    device="cpu", verbose=0)
        table = []

    class _Checkpoint(BaseCallback):
        def _on_step(self) -> bool:
            n = self.model.num_timesteps
            if n % checkpoint_every == 0:
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
            return True

    remaining = total_steps - model.num_timesteps
    if remaining > 0:
        _atomic_json(out / "train_config.json", {"env_id": env_id, "total_steps": total_steps, "seed": seed,
                                                 "checkpoint_every": checkpoint_every,
                                                 "learning_starts": learning_starts, "algo": "SB3 SAC MlpPolicy"})
        model.learn(total_timesteps=remaining, callback=_Checkpoint(), reset_num_timesteps=False,
                    progress_bar=progress)
    return table


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
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.stage == "train":
        table = train_behaviour(args.env, args.out_dir, args.total_steps, args.checkpoint_every, args.eval_episodes,
                                args.learning_starts, args.seed, args.threads, progress=not args.no_progress)
        best = max(table, key=lambda r: r["return_mean"]) if table else None
        print(f"done: {len(table)} checkpoints" + (f", best return {best['return_mean']:.1f} at {best['steps']}" if best else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
