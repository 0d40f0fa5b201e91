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

    c4-collect train --env Hopper-v5 --out-dir runs/collect/hopper --total-steps 300000 \\
        --checkpoint-every 10000 --seed 0
    c4-collect record --env Hopper-v5 --out-dir runs/collect/hopper --datasets-dir datasets --seed 0
"""

from __future__ import annotations

import argparse
import shlex
import sys

from c4_lightning.collect.builders import (
    DEFAULT_EXPERT_STEPS,
    DEFAULT_MEDIUM_STEPS,
    DEFAULT_MIX_SIZES,
    DEFAULT_RANDOM_STEPS,
    DEFAULT_REPLAY_MAX_STEPS,
    record_datasets,
)
from c4_lightning.collect.sac import require_sb3, train_behaviour
from c4_lightning.collect.writing import MAX_DATASET_MB


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

    r = sub.add_parser(
        "record",
        help="write the Minari datasets from a finished (or running) behaviour run",
        description="Write random, medium, expert, medium-replay, medium-expert and "
        "random-medium-expert-<N> datasets as <datasets-dir>/<namespace>/<name>-v0 "
        "(Minari's layout), plus <datasets-dir>/<namespace>/PROVENANCE.md.",
    )
    r.add_argument("--env", required=True, help="Gymnasium env id, e.g. Hopper-v5")
    r.add_argument("--out-dir", required=True, help="the behaviour run's folder (c4-collect train --out-dir)")
    r.add_argument("--datasets-dir", required=True, help="root folder for the datasets, e.g. datasets")
    r.add_argument("--namespace", default=None, help="dataset namespace (default: env family, e.g. hopper)")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--random-steps", type=int, default=DEFAULT_RANDOM_STEPS)
    r.add_argument("--medium-steps", type=int, default=DEFAULT_MEDIUM_STEPS)
    r.add_argument("--expert-steps", type=int, default=DEFAULT_EXPERT_STEPS)
    r.add_argument(
        "--replay-max-steps",
        type=int,
        default=DEFAULT_REPLAY_MAX_STEPS,
        help="cap on medium-replay transitions (whole episodes drawn at random above it)",
    )
    r.add_argument(
        "--sizes",
        type=int,
        nargs="+",
        default=list(DEFAULT_MIX_SIZES),
        help="transition counts of the random-medium-expert-<N> mixtures",
    )
    r.add_argument(
        "--medium-fraction",
        type=float,
        default=1 / 3,
        help="medium = checkpoint whose return is closest to this fraction of the expert reference return",
    )
    r.add_argument(
        "--expert-min-score",
        type=float,
        default=80.0,
        help="normalised score below which the expert dataset is flagged as below expert level",
    )
    r.add_argument("--max-mb", type=float, default=MAX_DATASET_MB, help="size limit per dataset on disk (MB)")
    r.add_argument("--overwrite", action="store_true", help="remake datasets that already exist")
    r.add_argument("--threads", type=int, default=1)
    r.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    require_sb3()
    if args.stage == "train":
        table = train_behaviour(
            args.env,
            args.out_dir,
            args.total_steps,
            args.checkpoint_every,
            args.eval_episodes,
            args.learning_starts,
            args.seed,
            args.threads,
            progress=not args.no_progress,
        )
        best = max(table, key=lambda r: r["return_mean"]) if table else None
        print(
            f"done: {len(table)} checkpoints"
            + (f", best return {best['return_mean']:.1f} at {best['steps']}" if best else "")
        )
    elif args.stage == "record":
        summaries = record_datasets(
            args.env,
            args.out_dir,
            args.datasets_dir,
            namespace=args.namespace,
            seed=args.seed,
            random_steps=args.random_steps,
            medium_steps=args.medium_steps,
            expert_steps=args.expert_steps,
            replay_max_steps=args.replay_max_steps,
            mix_sizes=tuple(args.sizes),
            medium_fraction=args.medium_fraction,
            expert_min_score=args.expert_min_score,
            max_mb=args.max_mb,
            overwrite=args.overwrite,
            threads=args.threads,
            progress=not args.no_progress,
            command="c4-collect " + shlex.join(argv),
        )
        for ds_id, summary in summaries.items():
            print(
                f"  {ds_id}: {summary['steps']} steps, {summary['episodes']} episodes, {summary['bytes'] / 1e6:.2f} MB"
            )
    return 0
