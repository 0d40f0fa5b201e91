"""Gradient updates per second: our Lightning TD3BC / CQL with and without C4 vs the plain PyTorch loop vs d3rlpy.

    python benchmarks/throughput.py                 # full measurement (lean + default Trainer, d3rlpy if found)
    python benchmarks/throughput.py --quick         # < 3 minutes, tiny budgets, lean Trainer only
    python benchmarks/throughput.py --steps 2000 --repeats 3 --threads 1 --json benchmarks/results/throughput.json

What is timed (all contenders in one sitting, the same torch thread count, batch 256, the same data in memory):

* ``lightning-lean``: ``trainer.fit`` of our LightningModule (TD3BC, CQL; C4 on/off) with ``logger=False``, no
  progress bar, no checkpointing, no model summary, no evaluation. ``lightning-default``: the Trainer as
  ``train.py`` runs the configs (TensorBoard logging every 50 steps, the CLI's progress bar, ModelCheckpoint every
  epoch), no evaluation.
  Times are taken at the end of every training batch, so data fetching and the Lightning loop are included.
* ``plain loop``: benchmarks/plain_loop.py (the same updates written as plain PyTorch in CORL's way, the same
  networks), batches gathered with one ``index_select`` from the datamodule's packed matrix; ``plain loop, fused
  Adam``: the same with ``torch.optim.Adam(fused=True)``, the modules' default.
* ``d3rlpy fit()`` / ``d3rlpy update()``: d3rlpy's TD3PlusBC and CQL with matched hyperparameters on our transitions
  (see d3rlpy_bench.py), run in a subprocess of the Python that has d3rlpy (``--d3rlpy-python``, default: this
  one, else /work/venv-bench/bin/python); skipped with a note when none has it.

C4 runs once per ``--penalties`` entry (cross_cov, the default, and feature_dot unless told otherwise).
The first ``--warmup`` updates of every run are excluded; every contender runs ``--repeats`` times, interleaved
round by round (odd rounds run the whole round in reverse order, so no contender always runs early in a round; use
an even ``--repeats``), and the median is reported. C4's timed fits never refit (``refit_every_n_epochs=0``): one refit
(critic features + standardise/PCA + GMM on at most ``fit_subsample`` rows + prediction on all) is timed
separately on the trained C4 model, warm-started from its partition like a real refit, and amortised over the
default interval (``C4Config().refit_interval_updates`` for the dataset's size: 10,000 updates up to 512k transitions):

    C4 total overhead = (t_step(C4) - t_step(no C4)) + t_refit / interval      (per update)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_utils as bu  # noqa: E402

ALGOS = ("td3bc", "cql")
NAMES = {"td3bc": "TD3+BC", "cql": "CQL"}


def parse_args(argv=None):
    ap = argparse.ArgumentParser(
        description="Gradient updates per second: Lightning (C4 on/off) vs plain loop vs d3rlpy",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument(
        "--quick", action="store_true", help="tiny budgets (< 3 min): 40/8 timed steps, 2 repeats, lean only"
    )
    ap.add_argument("--steps", type=int, default=None, help="timed TD3+BC updates per run (default 2000; quick 40)")
    ap.add_argument("--cql-steps", type=int, default=None, help="timed CQL updates per run (default steps // 8)")
    ap.add_argument(
        "--warmup",
        type=int,
        default=None,
        help="untimed updates before timing (default 50, quick 5; CQL uses max(2, warmup // 5))",
    )
    ap.add_argument(
        "--repeats", type=int, default=None, help="runs per contender, median reported (default 3, quick 2)"
    )
    ap.add_argument("--threads", type=int, default=1, help="torch threads for every contender (default 1)")
    ap.add_argument("--modes", default=None, help="Trainer settings to time: lean,default (default both; quick: lean)")
    ap.add_argument("--algos", default="td3bc,cql", help="comma list of td3bc,cql")
    ap.add_argument(
        "--penalties",
        default=None,
        help="C4 penalties to time, comma list of cross_cov,feature_dot,grad_cross_cov,weighted_cross_cov, each "
        "optionally with C4 options, name+field=value (e.g. cross_cov+penalty_rows=128) "
        "(default cross_cov,feature_dot; quick: cross_cov)",
    )
    ap.add_argument("--dataset", default=bu.DEFAULT_DATASET)
    ap.add_argument("--max-transitions", type=int, default=None)
    ap.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    ap.add_argument("--no-d3rlpy", action="store_true", help="skip d3rlpy")
    ap.add_argument(
        "--d3rlpy-python",
        default=None,
        help="python with d3rlpy==2.8.0 (default: this python if it has d3rlpy, else /work/venv-bench/bin/python)",
    )
    ap.add_argument("--refit-repeats", type=int, default=None, help="timed refits (default 3, quick 1)")
    ap.add_argument(
        "--clock",
        default="wall",
        choices=["wall", "cpu"],
        help="wall (default) or cpu: process CPU time, robust on a machine shared with other jobs",
    )
    ap.add_argument(
        "--before",
        default=None,
        metavar="DIR",
        help="a checkout of an earlier commit (git worktree add DIR <commit>): each round also runs its "
        "throughput.py (lean Trainer, no d3rlpy, one repeat) for a before/after table in one sitting",
    )
    ap.add_argument(
        "--precision",
        default="32-true",
        help="comma list of Trainer precisions to time, e.g. 32-true,bf16-mixed (16-mixed: CUDA); every "
        "contender runs at each, interleaved; ratios are against the fp32 plain loop",
    )
    ap.add_argument("--compile", action="store_true", help="also time the Lightning lean variants with compile=True")
    ap.add_argument("--json", default=None, help="write all measurements to this JSON file")
    args = ap.parse_args(argv)
    q = args.quick
    args.steps = args.steps or (40 if q else 2000)
    args.cql_steps = args.cql_steps or max(2, args.steps // 8 if not q else 8)
    args.warmup = args.warmup if args.warmup is not None else (5 if q else 50)
    args.cql_warmup = max(2, args.warmup // 5) if args.warmup > 0 else 0
    args.repeats = args.repeats or (2 if q else 3)
    args.refit_repeats = args.refit_repeats or (1 if q else 3)
    args.modes = [m for m in (args.modes or ("lean" if q else "lean,default")).split(",") if m]
    args.algos = [a for a in args.algos.split(",") if a]
    args.penalties = [x for x in (args.penalties or ("cross_cov" if q else "cross_cov,feature_dot")).split(",") if x]
    from c4_lightning.c4.config import C4Config
    from c4_lightning.c4.penalty import PENALTIES

    for pen in args.penalties:
        try:
            settings = bu.c4_settings(pen)
            if settings["penalty"] not in PENALTIES:
                raise ValueError(f"unknown penalty; use one of {', '.join(sorted(PENALTIES))}")
            C4Config(enabled=True, **settings)
        except (TypeError, ValueError) as err:
            ap.error(f"--penalties: {pen!r}: {err}")
    args.precision = [p for p in args.precision.split(",") if p]
    for p in args.precision:
        if p not in ("32-true", "bf16-mixed", "16-mixed"):
            ap.error(f"--precision: unknown {p!r}; use 32-true, bf16-mixed or 16-mixed")
    if "32-true" not in args.precision:
        args.precision.insert(0, "32-true")  # the reference every ratio is taken against
    for a in args.algos:
        if a not in ALGOS:
            ap.error(f"--algos: unknown {a!r}; use td3bc,cql")
    for m in args.modes:
        if m not in ("lean", "default"):
            ap.error(f"--modes: unknown {m!r}; use lean,default")
    if args.warmup < 1:
        ap.error("--warmup must be >= 1 (the first update is always excluded)")
    return args


# ---------------------------------------------------------------------------------------------- d3rlpy
def find_d3rlpy_python(explicit: str | None) -> tuple[str | None, str]:
    candidates = (
        [explicit]
        if explicit
        else [sys.executable, os.environ.get("C4_BENCH_D3RLPY_PYTHON"), "/work/venv-bench/bin/python"]
    )
    for py in [c for c in candidates if c]:
        if not (Path(py).exists() or shutil.which(py)):
            continue
        r = subprocess.run([py, "-c", "import d3rlpy; print(d3rlpy.__version__)"], capture_output=True, text=True)
        if r.returncode == 0:
            return py, r.stdout.strip()
    return None, (
        "d3rlpy is not importable (install the `bench` extra, d3rlpy==2.8.0, in a separate venv: "
        "see BENCHMARKS.md) - d3rlpy rows skipped"
    )


def run_before(args, round_index: int) -> dict:
    """One round of an earlier checkout's throughput.py (its own package via PYTHONPATH): median_ups by key."""
    root = Path(args.before).resolve()
    with tempfile.TemporaryDirectory(prefix="c4bench_before_") as tmp:
        out = Path(tmp) / "before.json"
        cmd = [
            sys.executable,
            str(root / "benchmarks" / "throughput.py"),
            "--steps",
            str(args.steps),
            "--cql-steps",
            str(args.cql_steps),
            "--warmup",
            str(args.warmup),
            "--repeats",
            "1",
            "--threads",
            str(args.threads),
            "--modes",
            "lean",
            "--algos",
            ",".join(args.algos),
            "--no-d3rlpy",
            "--refit-repeats",
            "1",
            "--clock",
            args.clock,
            "--device",
            args.device,
            "--json",
            str(out),
        ]
        env = dict(os.environ, PYTHONPATH=str(root), OMP_NUM_THREADS=str(args.threads))
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp)  # cwd: not this checkout
        if r.returncode != 0 or not out.exists():
            return {
                "error": f"--before round {round_index} failed (rc {r.returncode}): {(r.stderr or r.stdout)[-500:]}"
            }
        return json.loads(out.read_text())["median_ups"]


def run_d3rlpy(py: str, args) -> dict:
    cmd = [
        py,
        str(HERE / "d3rlpy_bench.py"),
        "--dataset",
        args.dataset,
        "--steps",
        str(args.steps),
        "--cql-steps",
        str(args.cql_steps),
        "--warmup",
        str(args.warmup),
        "--cql-warmup",
        str(args.cql_warmup),
        "--threads",
        str(args.threads),
        "--device",
        args.device,
        "--algos",
        ",".join(args.algos),
        "--clock",
        args.clock,
    ]
    if args.max_transitions:
        cmd += ["--max-transitions", str(args.max_transitions)]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(HERE.parent))
    for line in r.stdout.splitlines():
        if line.startswith("D3RLPY_RESULT "):
            return json.loads(line[len("D3RLPY_RESULT ") :])
    return {"error": f"d3rlpy worker failed (rc {r.returncode}): {(r.stderr or r.stdout).strip()[-500:]}"}


def variant_key(algo: str, mode: str, penalty: str | None, precision: str = "32-true") -> str:
    """``td3bc/lean`` (no C4), ``td3bc/lean+c4`` (C4, cross_cov), ``td3bc/lean+c4:feature_dot`` (C4, other penalty);
    ``@bf16-mixed`` etc. appended for a precision other than fp32."""
    key = (
        f"{algo}/{mode}" if penalty is None else f"{algo}/{mode}+c4" + ("" if penalty == "cross_cov" else f":{penalty}")
    )
    return key if precision == "32-true" else f"{key}@{precision}"


# ---------------------------------------------------------------------------------------------- main
def main(argv=None) -> dict:
    args = parse_args(argv)
    bu.quiet()
    bu.set_threads(args.threads)
    bu.set_clock(args.clock)
    device = bu.resolve_device(args.device)
    t_start = time.perf_counter()
    info = bu.machine_info(args.threads, device)
    print(
        f"# throughput: {info['cpu']}, {info['cpu_count']} cores, torch {info['torch']} ({args.threads} thread(s)), "
        f"device {device}, load avg {info.get('loadavg_1m', '?')}",
        flush=True,
    )
    print(
        f"# dataset {args.dataset}"
        + (f" (max_transitions {args.max_transitions})" if args.max_transitions else "")
        + f", batch {bu.BATCH_SIZE}; timed updates TD3+BC {args.steps}, CQL {args.cql_steps}; warmup {args.warmup}"
        f"/{args.cql_warmup}; repeats {args.repeats}; modes {','.join(args.modes)}; {args.clock} clock",
        flush=True,
    )

    def dm_factory():
        return bu.make_datamodule(args.dataset, args.max_transitions)

    d3_py, d3_note = (None, "skipped (--no-d3rlpy)") if args.no_d3rlpy else find_d3rlpy_python(args.d3rlpy_python)
    if d3_py:
        d3_note = f"d3rlpy {d3_note} via {d3_py}"
    print(f"# d3rlpy: {d3_note}", flush=True)

    steps = {"td3bc": args.steps, "cql": args.cql_steps}
    warm = {"td3bc": args.warmup, "cql": args.cql_warmup}
    samples: dict[str, list[float]] = {}
    notes: list[str] = []

    def add(key, value):
        samples.setdefault(key, []).append(value)

    dm_plain = dm_factory()
    c4_models = {}
    variants = [None, *args.penalties]  # no C4, then C4 with each penalty

    def contenders(r: int, algo: str, prec: str) -> list:
        """Zero-argument timers of one round: plain loops, the Lightning variants and (``--compile``) compile."""
        suffix = "" if prec == "32-true" else f"@{prec}"

        def plain(key, adam_kwargs):
            res = bu.time_plain(
                algo, dm_plain, warm[algo], steps[algo], args.threads, device, seed=r, adam_kwargs=adam_kwargs,
                precision=prec,
            )  # fmt: skip
            add(f"{algo}/{key}{suffix}", res["ups"])

        def lightning(mode, pen):
            keep = pen == args.penalties[0] and mode == args.modes[0] and prec == "32-true"
            res = bu.time_lightning(
                algo, pen or False, dm_factory, warm[algo], steps[algo], args.threads, mode, device, seed=r,
                return_model=keep, precision=prec,
            )  # fmt: skip
            add(variant_key(algo, mode, pen, prec), res["ups"])
            if "model" in res:
                c4_models[algo] = res
            if res.get("note") and res["note"] not in notes:
                notes.append(res["note"])

        def compiled():
            res = bu.time_lightning(
                algo, False, dm_factory, warm[algo], steps[algo], args.threads, "lean", device, seed=r,
                precision=prec, compile=True,
            )  # fmt: skip
            add(f"{algo}/lean+compile{suffix}", res["ups"])

        runs = [lambda: plain("plain", None), lambda: plain("plain-fused", {"fused": True})]
        runs += [lambda mode=mode, pen=pen: lightning(mode, pen) for mode in args.modes for pen in variants]
        return runs + ([compiled] if args.compile else [])

    for r in range(args.repeats):
        # every contender of every algorithm and precision once; odd rounds run the whole round in reverse order, so a
        # drift within a round (the machine's state, other load) does not always favour the same contenders (use an
        # even --repeats for a balanced order)
        runs = [run for algo in args.algos for prec in args.precision for run in contenders(r, algo, prec)]
        for run in runs[:: 1 if r % 2 == 0 else -1]:
            run()
        if args.before:
            res = run_before(args, r)
            if "error" in res:
                notes.append(res["error"])
                args.before = None
            else:
                for key, ups in res.items():
                    if key.split("/")[1] in ("plain", "lean", "lean+c4"):
                        add(f"before:{key}", ups)
        if d3_py:
            res = run_d3rlpy(d3_py, args)
            if "error" in res:
                notes.append(res["error"])
                d3_py = None
            else:
                for algo in args.algos:
                    add(f"{algo}/d3rlpy-fit", res[algo]["fit_ups"])
                    add(f"{algo}/d3rlpy-update", res[algo]["update_ups"])
                d3_note = f"d3rlpy {res['d3rlpy']} (torch {res['torch']}, {res['threads']} thread(s))"
        print(f"# round {r + 1}/{args.repeats} done ({time.perf_counter() - t_start:.0f} s)", flush=True)

    # ------------------------------------------------------------------ refit timing (features + GMM), amortised
    from c4_lightning.c4.config import C4Config

    cfg = C4Config(enabled=True)
    interval = cfg.refit_interval_updates(bu.STEPS_PER_EPOCH, dm_plain.num_transitions, bu.BATCH_SIZE)
    refits = {}
    for algo in args.algos:
        res = c4_models[algo]
        model, labels, dm = res["model"], res["labels"], res["datamodule"]
        obs, act, next_obs, next_act = dm.features_input()
        times = [
            bu.time_refit(
                model.critic,
                model.critic_target,
                obs,
                act,
                next_obs,
                next_act,
                previous_labels=labels,
                cfg=cfg,
                seed=i + 1,
                scatter=(i == 0 and "default" in args.modes),
                device=device,
            )
            for i in range(args.refit_repeats)
        ]
        refits[algo] = {
            k: bu.median([t[k] for t in times if k in t])
            for k in ("features", "fit", "predict", "refit", "scatter")
            if any(k in t for t in times)
        }
        refits[algo]["n"] = times[0]["n"]

    med = {k: bu.median(v) for k, v in samples.items()}
    results = {
        "machine": info,
        "args": {k: v for k, v in vars(args).items()},
        "samples": samples,
        "median_ups": med,
        "refit_seconds": refits,
        "refit_interval_updates": interval,
        "d3rlpy": d3_note,
        "notes": notes,
    }
    results["summary"] = summarise(med, refits, interval, args)
    print()
    print(render(results, args))
    for n in notes:
        print(f"note: {n}")
    print(f"# total wall time {time.perf_counter() - t_start:.0f} s")
    if args.json:
        bu.write_json(args.json, results)
        print(f"# wrote {args.json}")
    return results


def _ratio(a, b):
    return a / b if a and b and a == a and b == b else float("nan")


def _overhead(med: dict, refits: dict, interval: int, algo: str, mode: str, penalty: str) -> dict:
    """C4 (with ``penalty``) against no C4, same algorithm and Trainer mode: per-step cost and amortised refit."""
    base, c4 = med.get(variant_key(algo, mode, None)), med.get(variant_key(algo, mode, penalty))
    t_base, t_c4 = 1.0 / base, 1.0 / c4
    refit = refits.get(algo, {}).get("refit", float("nan"))
    if mode == "default":
        refit += refits.get(algo, {}).get("scatter", 0.0)  # the TensorBoard scatter image is part of a refit there
    step_over = t_c4 - t_base
    amort = refit / interval
    return {
        "c4/no-c4 (step)": _ratio(c4, base),
        "c4/no-c4 (total)": t_base / (t_c4 + amort),
        "ms/update": 1e3 * t_base,
        "ms/update c4": 1e3 * t_c4,
        "penalty ms/update": 1e3 * step_over,
        "refit s": refit,
        "refit ms/update": 1e3 * amort,
        "c4 overhead %": 100 * (step_over + amort) / t_base,
        "refit % of training": 100 * refit / (interval * t_c4),
    }


def summarise(med: dict, refits: dict, interval: int, args) -> dict:
    """Per algorithm and Trainer mode: our ratios against the plain loops and d3rlpy, and C4's overhead per penalty
    (the first penalty's figures also at the top level)."""
    out = {}
    for algo in args.algos:
        s = {}
        for mode in args.modes:
            base = med.get(variant_key(algo, mode, None))
            per_penalty = {pen: _overhead(med, refits, interval, algo, mode, pen) for pen in args.penalties}
            s[mode] = {
                "ours/plain": _ratio(base, med.get(f"{algo}/plain")),
                "ours/plain-fused": _ratio(base, med.get(f"{algo}/plain-fused")),
                "ours/d3rlpy-fit": _ratio(base, med.get(f"{algo}/d3rlpy-fit")),
                "ours/d3rlpy-update": _ratio(base, med.get(f"{algo}/d3rlpy-update")),
                **per_penalty[args.penalties[0]],
                "penalties": per_penalty,
            }
        out[algo] = s
    return out


def render(results: dict, args) -> str:
    med, summ = results["median_ups"], results["summary"]
    cols = [NAMES[a] for a in args.algos]
    rows = [
        ["plain PyTorch loop (CORL-style)", *[med.get(f"{a}/plain") for a in args.algos]],
        ["plain PyTorch loop, fused Adam", *[med.get(f"{a}/plain-fused") for a in args.algos]],
    ]
    for mode in args.modes:
        rows.append([f"Lightning {mode}", *[med.get(variant_key(a, mode, None)) for a in args.algos]])
        for pen in args.penalties:
            rows.append(
                [f"Lightning {mode} + C4 {pen} (no refit)", *[med.get(variant_key(a, mode, pen)) for a in args.algos]]
            )
    rows.append(["d3rlpy fit()", *[med.get(f"{a}/d3rlpy-fit") for a in args.algos]])
    rows.append(["d3rlpy update() only", *[med.get(f"{a}/d3rlpy-update") for a in args.algos]])
    parts = [
        bu.format_table(
            ["updates/s (median)", *cols],
            rows,
            title=f"## Updates per second (median of {args.repeats}, batch 256, {args.threads} thread(s))",
        )
    ]
    rrows = []
    for mode in args.modes:
        for key, label in (
            ("ours/plain", "ours / plain loop"),
            ("ours/plain-fused", "ours / plain loop, fused Adam"),
            ("ours/d3rlpy-fit", "ours / d3rlpy fit()"),
            ("ours/d3rlpy-update", "ours / d3rlpy update()"),
        ):
            rrows.append([f"{label} [{mode}]", *[summ[a][mode][key] for a in args.algos]])
        for pen in args.penalties:
            for key, label in (
                ("c4/no-c4 (step)", "C4 / no-C4 (per step, no refit)"),
                ("c4/no-c4 (total)", "C4 / no-C4 (incl. amortised refit)"),
            ):
                rrows.append([f"{label}, {pen} [{mode}]", *[summ[a][mode]["penalties"][pen][key] for a in args.algos]])
    parts.append(bu.format_table(["ratio (updates/s)", *cols], rrows, title="## Ratios (>1: the first is faster)"))
    orows = []
    for mode in args.modes:
        orows.append([f"ms/update, no C4 [{mode}]", *[summ[a][mode]["ms/update"] for a in args.algos]])
        orows.append(
            [
                f"one refit s{' (+ TensorBoard scatter)' if mode == 'default' else ''} [{mode}]",
                *[summ[a][mode]["refit s"] for a in args.algos],
            ]
        )
        orows.append(
            [
                f"refit amortised over {results['refit_interval_updates']} updates, ms [{mode}]",
                *[summ[a][mode]["refit ms/update"] for a in args.algos],
            ]
        )
        for pen in args.penalties:
            for key, label in (
                ("ms/update c4", "ms/update, C4 (no refit)"),
                ("penalty ms/update", "C4 per-step cost ms (penalty + cluster sampling)"),
                ("c4 overhead %", "C4 total overhead %"),
                ("refit % of training", "refit time / training time between refits %"),
            ):
                orows.append([f"{label}, {pen} [{mode}]", *[summ[a][mode]["penalties"][pen][key] for a in args.algos]])
    parts.append(
        bu.format_table(
            ["C4 overhead", *cols], orows, title="## C4 overhead (penalty + amortised refit at the default interval)"
        )
    )
    if len(args.precision) > 1 or args.compile:
        prows = []
        for prec in args.precision:
            suffix = "" if prec == "32-true" else f"@{prec}"
            items = [
                ("plain loop", "plain"),
                ("plain loop, fused Adam", "plain-fused"),
                ("Lightning lean", "lean"),
                *[(f"Lightning lean + C4 {pen}", variant_key("", "lean", pen)[1:]) for pen in args.penalties],
            ]
            if args.compile:
                items.append(("Lightning lean, compile=True", "lean+compile"))
            for label, key in items:
                prows.append(
                    [
                        f"{label} [{prec}]",
                        *[_ratio(med.get(f"{a}/{key}{suffix}"), med.get(f"{a}/plain")) for a in args.algos],
                    ]
                )
        parts.append(
            bu.format_table(
                ["speed / fp32 plain loop", *cols],
                prows,
                title="## Precision: updates/s relative to the fp32 plain loop (same sitting)",
            )
        )
    if any(k.startswith("before:") for k in med):
        brows = []
        for a in args.algos:
            for key, label in (
                ("plain", "plain loop"),
                ("lean", "Lightning lean"),
                ("lean+c4", "Lightning lean + C4 cross_cov"),
            ):
                before, after = med.get(f"before:{a}/{key}"), med.get(f"{a}/{key}")
                brows.append([f"{NAMES[a]} {label}", before, after, _ratio(after, before)])
        parts.append(
            bu.format_table(
                ["updates/s (median)", "before", "after", "after / before"],
                brows,
                title=f"## Before ({results['args']['before']}) / after, same sitting",
            )
        )
    frows = []
    for a in args.algos:
        r = results["refit_seconds"][a]
        frows.append(
            [NAMES[a], r["n"], r.get("features"), r.get("fit"), r.get("predict"), r.get("refit"), r.get("scatter")]
        )
    parts.append(
        bu.format_table(
            ["refit phases (s)", "N", "features", "fit (std+PCA+GMM)", "predict", "total", "scatter (TB only)"],
            frows,
            title="## One refit, by phase (median)",
        )
    )
    return "\n\n".join(parts)


if __name__ == "__main__":
    main()
