"""``python -m c4_lightning.evaluate --ckpt PATH --episodes 10``: return and normalised score of a checkpoint."""

from __future__ import annotations

import argparse
import sys

import gymnasium as gym

from c4_lightning.data.scores import normalized_score, reference_scores
from c4_lightning.evaluation.rollout import evaluate_policy
from c4_lightning.policy import load_policy


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="c4-evaluate", description=__doc__)
    p.add_argument("--ckpt", required=True, help="checkpoint written by train.py (e.g. .../checkpoints/last.ckpt)")
    p.add_argument("--episodes", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--env-id", default=None, help="override the env recorded in the checkpoint")
    p.add_argument("--device", default="cpu", help="torch device to act on (default cpu)")
    args = p.parse_args(argv)
    if args.episodes < 1:
        p.error(f"--episodes={args.episodes} must be >= 1")
    try:
        policy = load_policy(args.ckpt, map_location=args.device)
    except (FileNotFoundError, ValueError, RuntimeError) as err:
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    env_id = args.env_id or policy.env_id
    if env_id is None:
        print("error: the checkpoint names no env; pass --env-id", file=sys.stderr)
        return 2
    try:
        rets = evaluate_policy(policy, env_id, args.episodes, args.seed)
    except (gym.error.Error, ValueError, ImportError) as err:
        print(f"error: evaluating on {env_id!r} failed: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    line = f"{env_id}: return {rets.mean():.1f} +- {rets.std():.1f} over {args.episodes} episodes"
    ref = policy.ref_scores or reference_scores(env_id)
    if ref is not None:
        line += f", normalized score {normalized_score(rets.mean(), *ref):.1f}"
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
