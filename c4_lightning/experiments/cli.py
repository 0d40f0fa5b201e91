"""``c4-sweep`` (also ``python -m c4_lightning.experiments``): run a grid of variants x datasets x seeds and
aggregate it.

    c4-sweep configs/sweeps/c4_evidence.yaml --jobs 2                  # run (resumable), then aggregate
    c4-sweep configs/sweeps/c4_evidence.yaml --variants baseline --seeds 0,1
    c4-sweep configs/sweeps/c4_evidence.yaml --launcher ray --ray-address auto
    c4-sweep configs/sweeps/c4_evidence.yaml --collect-only            # tables, JSON and plots from finished runs
    c4-sweep configs/sweeps/c4_evidence.yaml --collect-only --variants c4_crosscov_v0,c4_sketch16_policy \\
             --datasets mix10k --baseline c4_crosscov_v0 --rule parity --out /tmp/vs_exact   # two arms, parity rule
    c4-sweep --variant base=configs/td3bc.yaml,trainer.precision=32-true \\
             --variant c4=configs/td3bc_c4.yaml,model.c4.penalty_weight=0.5 \\
             --dataset mix=hopper/random-medium-expert-10k --seeds 0,1,2 --updates 20000 --eval-every 5000

Finished trials are skipped; an interrupted one resumes from its ``last.ckpt``. Ctrl+C checkpoints the running
trials. Exit status: 0 when every selected trial finished, 1 when some failed, 2 for a bad sweep.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace
from pathlib import Path

import yaml

from c4_lightning.experiments.launchers import LocalLauncher, RayLauncher, is_finished
from c4_lightning.experiments.report import collect
from c4_lightning.experiments.spec import RULE_NAMES, Dataset, Sweep, SweepError, Variant, load_sweep


def _csv(text: str | None) -> list[str] | None:
    return [t for t in text.split(",") if t] if text else None


def _variant_flag(text: str) -> Variant:
    """``NAME=CONFIG[,dotted.key=value,...]`` (values parsed as YAML)."""
    name, sep, rest = text.partition("=")
    if not sep or not rest:
        raise SweepError(f"--variant {text!r}: use NAME=CONFIG[,key=value,...]")
    config, *pairs = rest.split(",")
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SweepError(f"--variant {text!r}: override {pair!r} is not key=value")
        overrides[key] = yaml.safe_load(value)
    return Variant(name, config, overrides)


def _dataset_flag(text: str) -> Dataset:
    """``NAME=DATASET_ID[:MAX_TRANSITIONS]``."""
    name, sep, rest = text.partition("=")
    if not sep or not rest:
        raise SweepError(f"--dataset {text!r}: use NAME=DATASET_ID[:MAX_TRANSITIONS]")
    dataset_id, _, max_t = rest.partition(":")
    return Dataset(name, dataset_id, int(max_t) if max_t else None)


def build_sweep(args) -> Sweep:
    if args.sweep:
        sweep = load_sweep(args.sweep)
    elif args.variant and args.dataset:
        sweep = Sweep(
            name=args.name or "sweep",
            variants={v.name: v for v in map(_variant_flag, args.variant)},
            datasets={d.name: d for d in map(_dataset_flag, args.dataset)},
            seeds=[0, 1, 2, 3, 4],
            baseline=None,
        )
        sweep.baseline = args.baseline or next(iter(sweep.variants))
        sweep.runs_dir = Path("runs/sweeps") / sweep.name
    else:
        raise SweepError("give a sweep file, or at least one --variant and one --dataset")
    if args.sweep and (args.variant or args.dataset):
        sweep.variants.update({v.name: v for v in map(_variant_flag, args.variant or [])})
        sweep.datasets.update({d.name: d for d in map(_dataset_flag, args.dataset or [])})
    budget = {
        k: getattr(args, k)
        for k in ("updates", "eval_every", "eval_episodes", "score_window", "steps_per_epoch")
        if getattr(args, k) is not None
    }
    if budget:
        sweep.budget = replace(sweep.budget, **budget)
    if args.baseline:
        sweep.baseline = args.baseline
    if args.rule:
        sweep.rule = args.rule
    if args.out:
        sweep.out = Path(args.out)
    if args.runs_dir:
        sweep.runs_dir = Path(args.runs_dir)
    sweep.__post_init__()  # re-check after the flags
    seeds = [int(s) for s in _csv(args.seeds)] if args.seeds else None
    return sweep.select(_csv(args.variants), _csv(args.datasets), seeds)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="c4-sweep", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("sweep", nargs="?", help="sweep YAML file (see configs/sweeps/)")
    p.add_argument("--variants", help="run only these variants (comma list)")
    p.add_argument("--datasets", help="run only these datasets (comma list)")
    p.add_argument("--seeds", help="run only these seeds (comma list)")
    p.add_argument("--variant", action="append", help="add a variant NAME=CONFIG[,key=value,...] (repeatable)")
    p.add_argument("--dataset", action="append", help="add a dataset NAME=ID[:MAX_TRANSITIONS] (repeatable)")
    p.add_argument("--name", help="sweep name when built from flags (default 'sweep')")
    p.add_argument("--baseline", help="variant the others are compared with")
    p.add_argument(
        "--rule", choices=RULE_NAMES, help="decision rule of the verdicts (default: the sweep file's, else gain)"
    )
    for flag in ("updates", "eval-every", "eval-episodes", "score-window", "steps-per-epoch"):
        p.add_argument(f"--{flag}", type=int, dest=flag.replace("-", "_"), help=f"budget.{flag.replace('-', '_')}")
    p.add_argument("--launcher", choices=["local", "ray"], default="local")
    p.add_argument("--jobs", type=int, default=1, help="local launcher: trials at once (default 1)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per trial (default 1)")
    p.add_argument(
        "--ray-address",
        default=None,
        help="ray launcher: cluster address ('auto', 'ray://host:10001'); default: start a local Ray for this sweep",
    )
    p.add_argument("--gpus-per-trial", type=float, default=0.0, help="ray launcher: GPUs per trial (default 0)")
    p.add_argument("--collect-only", action="store_true", help="run nothing; aggregate finished trials")
    p.add_argument("--no-collect", action="store_true", help="do not aggregate after running")
    p.add_argument("--no-diagnostics", action="store_true", help="skip reading TensorBoard diagnostics when collecting")
    p.add_argument("--dry-run", action="store_true", help="print the trials and their state; run nothing")
    p.add_argument("--out", help="folder for the table, JSON and plots (default: the sweep file's 'out')")
    p.add_argument("--runs-dir", help="folder of the trial folders (default: the sweep file's 'runs_dir')")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        sweep = build_sweep(args)
        trials = sweep.trials()
        todo = [t for t in trials if not is_finished(sweep, t)]
        print(
            f"sweep {sweep.name}: {len(trials)} trials ({len(trials) - len(todo)} finished, {len(todo)} to run); "
            f"{sweep.budget.updates:,} updates each; runs in {sweep.runs_dir}",
            flush=True,
        )
        if args.dry_run:
            for t in trials:
                state = (
                    "finished"
                    if t not in todo
                    else (
                        "resumable" if (sweep.trial_dir(t) / "logs" / "checkpoints" / "last.ckpt").is_file() else "new"
                    )
                )
                print(f"  {t.key}: {state}")
            return 0
        failed = []
        if not args.collect_only and todo:
            if args.launcher == "ray":
                launcher = RayLauncher(args.ray_address, args.threads, args.gpus_per_trial)
            else:
                launcher = LocalLauncher(args.jobs, args.threads)
            report = lambda msg: print(msg, flush=True)  # noqa: E731
            failed = [r for r in launcher.run(sweep, todo, report) if not r.ok]
        if not args.no_collect:
            result = collect(sweep, diagnostics=not args.no_diagnostics)
            print((Path(sweep.out) / f"{sweep.name}.md").read_text())
            print(
                f"wrote {Path(sweep.out) / sweep.name}.json, .md and plots "
                f"({sum(r['finished'] for r in result['runs'])} finished trials)"
            )
        if failed:
            print(
                f"{len(failed)} trial(s) failed: " + ", ".join(f"{r.trial.key} (see {r.log})" for r in failed),
                file=sys.stderr,
            )
            return 1
        return 0
    except SweepError as err:
        if os.environ.get("C4_DEBUG"):
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("stopped; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
