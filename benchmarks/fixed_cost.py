"""Where a TD3+BC update's time goes: the fixed per-update cost (operator dispatch, autocast casts, autograd and
optimiser bookkeeping, the Trainer) against the arithmetic that shrinks with the network and speeds up in bf16.

    OMP_NUM_THREADS=1 python benchmarks/fixed_cost.py                 # widths 8 and 256, fp32 and bf16-mixed
    OMP_NUM_THREADS=1 python benchmarks/fixed_cost.py --json benchmarks/results/fixed_cost.json

Each contender (the plain PyTorch loop with the default and with fused Adam, and our LightningModule through a lean
Trainer, which uses fused Adam) runs at each precision with 2x``w`` hidden layers for each width ``w`` in ``--widths``,
interleaved, ``--repeats`` times (median). At width 8 the arithmetic is negligible, so the time per update there is the
fixed cost of the update's operators (a TD3+BC update runs ~600 of them in fp32 and ~780 under bf16 autocast, by the
PyTorch profiler); the time at width 256 minus that is the arithmetic. Reported: milliseconds per update, that split,
the ratio to the fp32 plain loop with the default Adam (``throughput.py``'s reference), and the ratio the Trainer's
bf16-mixed update would reach with the fixed cost of the fp32 plain loop with fused Adam. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_utils as bu  # noqa: E402

PRECISIONS = ("32-true", "bf16-mixed")
CONTENDERS = ("plain", "plain-fused", "lean")


def ref_ms(ms: dict, width: int) -> float:
    """The reference: the fp32 plain loop with PyTorch's default (for-loop) Adam, as in ``throughput.py``."""
    return ms[f"plain/32-true/{width}"]


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--widths", default="8,256", help="hidden widths, comma list (the first the smallest)")
    ap.add_argument("--steps", type=int, default=600, help="timed updates per run (default 600)")
    ap.add_argument("--warmup", type=int, default=50, help="untimed updates before timing (default 50)")
    ap.add_argument("--repeats", type=int, default=3, help="runs per contender, median reported (default 3)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--clock", choices=["wall", "cpu"], default="cpu", help="cpu (default): process CPU time")
    ap.add_argument("--json", help="write the measurements to this JSON file")
    ap.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="N",
        help="also profile N updates of the lean Trainer at the smallest width per precision (torch.profiler): "
        "operators per update and the operators whose self time changes most (default 0: off)",
    )
    args = ap.parse_args(argv)
    args.widths = [int(w) for w in args.widths.split(",") if w]
    if len(args.widths) < 2 or any(w < 1 for w in args.widths):
        ap.error("--widths: give at least two widths >= 1, e.g. 8,256")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    bu.quiet()
    bu.set_threads(args.threads)
    bu.set_clock(args.clock)
    info = bu.machine_info(args.threads)
    t0 = time.perf_counter()
    dm = bu.make_datamodule()
    samples: dict[str, list[float]] = {}

    def timer(r: int, who: str, prec: str, width: int):
        """One run: updates/s of ``who`` (plain, plain-fused, lean) at ``prec`` with two hidden layers of ``width``."""

        def run():
            hidden = (width, width)
            if who == "lean":
                res = bu.time_lightning(
                    "td3bc", False, bu.make_datamodule, args.warmup, args.steps, args.threads, seed=r,
                    precision=prec, hidden_dims=hidden,
                )  # fmt: skip
            else:
                adam = {"fused": True} if who == "plain-fused" else None
                res = bu.time_plain(
                    "td3bc", dm, args.warmup, args.steps, args.threads, seed=r, adam_kwargs=adam, precision=prec,
                    hidden=hidden,
                )  # fmt: skip
            samples.setdefault(f"{who}/{prec}/{width}", []).append(1e3 / res["ups"])

        return run

    for r in range(args.repeats):
        runs = [timer(r, who, p, w) for w in args.widths for p in PRECISIONS for who in CONTENDERS]
        for run in runs[:: 1 if r % 2 == 0 else -1]:  # odd rounds in reverse order (no position always first)
            run()
        print(f"# round {r + 1}/{args.repeats} done ({time.perf_counter() - t0:.0f} s)", flush=True)
    ms = {k: bu.median(v) for k, v in samples.items()}
    small, big = args.widths[0], args.widths[-1]
    rows, split = [], {}
    for who in CONTENDERS:
        for prec in PRECISIONS:
            fixed, total = ms[f"{who}/{prec}/{small}"], ms[f"{who}/{prec}/{big}"]
            split[f"{who}/{prec}"] = {"fixed_ms": fixed, "total_ms": total, "arithmetic_ms": total - fixed}
            rows.append(
                [who, prec, *[ms[f"{who}/{prec}/{w}"] for w in args.widths], total - fixed, ref_ms(ms, big) / total]
            )
    ref = ref_ms(ms, big)
    lean_bf16, plain_bf16 = split["lean/bf16-mixed"], split["plain-fused/bf16-mixed"]
    fused_fp32 = split["plain-fused/32-true"]
    summary = {
        "lean bf16-mixed vs plain fp32 (the goal's ratio)": ref / lean_bf16["total_ms"],
        "fixed ms: bf16-mixed minus 32-true (plain, fused Adam)": plain_bf16["fixed_ms"] - fused_fp32["fixed_ms"],
        "fixed ms: Trainer minus plain (bf16-mixed, fused Adam)": lean_bf16["fixed_ms"] - plain_bf16["fixed_ms"],
        "arithmetic speed-up of bf16 (plain, fused Adam)": fused_fp32["arithmetic_ms"] / plain_bf16["arithmetic_ms"],
        "lean bf16-mixed vs plain fp32 without bf16's extra fixed cost (lean's fp32 fixed cost)": ref
        / (split["lean/32-true"]["fixed_ms"] + lean_bf16["arithmetic_ms"]),
        "lean bf16-mixed vs plain fp32 with the fp32 plain loop's fixed cost (fused Adam; no Trainer either)": ref
        / (fused_fp32["fixed_ms"] + lean_bf16["arithmetic_ms"]),
    }
    print()
    print(
        bu.format_table(
            [
                "loop",
                "precision",
                *[f"ms/update, width {w}" for w in args.widths],
                f"arithmetic ms (width {big})",
                f"vs plain fp32 (width {big})",
            ],
            rows,
            title=f"TD3+BC, batch {bu.BATCH_SIZE}, 2 hidden layers; {info['cpu']}, {args.threads} thread(s), "
            f"{args.clock} clock, median of {args.repeats}",
        )
    )
    for k, v in summary.items():
        print(f"{k}: {v:.3f}")
    profile = operator_profile(args, small) if args.profile else None
    print(f"# total wall time {time.perf_counter() - t0:.0f} s")
    results = {
        "machine": info,
        "args": vars(args),
        "samples_ms": samples,
        "median_ms": ms,
        "split": split,
        "summary": summary,
        "profile": profile,
    }
    if args.json:
        bu.write_json(args.json, results)
        print(f"# wrote {args.json}")
    return results


def operator_profile(args, width: int, top: int = 12) -> dict:
    """Per precision: operators per update and self time per update (us) by operator, from ``torch.profiler`` over
    ``args.profile`` updates of the lean Trainer at ``width``; prints the operators whose self time differs most."""
    from torch.profiler import ProfilerActivity, profile

    from lightning.pytorch import Callback

    class Window(Callback):
        """Profiles updates ``warmup+1 .. warmup+N`` only (no set-up, first updates or tear-down)."""

        def __init__(self):
            self.prof = profile(activities=[ProfilerActivity.CPU])

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == args.warmup:
                self.prof.start()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.global_step == args.warmup + args.profile:
                self.prof.stop()

    per_update = {}
    for prec in PRECISIONS:
        window = Window()
        bu.time_lightning(
            "td3bc", False, bu.make_datamodule, args.warmup, args.profile, args.threads, precision=prec,
            hidden_dims=(width, width), callbacks=[window],
        )  # fmt: skip
        prof = window.prof
        per_update[prec] = {
            e.key: (e.count / args.profile, e.self_cpu_time_total / args.profile) for e in prof.key_averages()
        }
    fp32, bf16 = (per_update[p] for p in PRECISIONS)
    totals = {p: (sum(c for c, _ in ops.values()), sum(t for _, t in ops.values())) for p, ops in per_update.items()}
    rows = sorted(
        (
            [k[:48], fp32.get(k, (0, 0))[0], bf16.get(k, (0, 0))[0], fp32.get(k, (0, 0))[1], bf16.get(k, (0, 0))[1]]
            for k in set(fp32) | set(bf16)
        ),
        key=lambda r: -abs(r[4] - r[3]),
    )[:top]
    print()
    print(
        bu.format_table(
            ["operator", "calls/update fp32", "calls/update bf16", "self us/update fp32", "self us/update bf16"],
            [["all operators", totals["32-true"][0], totals["bf16-mixed"][0], *[totals[p][1] for p in PRECISIONS]]]
            + rows,
            title=f"torch.profiler, lean Trainer, width {width}, updates {args.warmup + 1}-"
            f"{args.warmup + args.profile} (profiler overhead included)",
        )
    )
    return {p: {k: list(v) for k, v in ops.items()} for p, ops in per_update.items()}


if __name__ == "__main__":
    main()
