"""The paper's experiments at small scale on the embedded Hopper datasets, through ``train.py``.

    python benchmarks/returns.py --dry-run                        # the plan and its estimated wall time only
    python benchmarks/returns.py --td3bc-steps 20000 --cql-steps 5000 --seeds 0,1,2 --jobs 2
    python benchmarks/returns.py --collect-only                   # rebuild tables/plots from finished runs

Experiments (each run is ``python train.py fit --config <generated yaml>`` in its own subprocess, one torch thread
each by default, ``--jobs`` at once):

* ``main``: baseline vs C4 (cross_cov, lambda 0.1) for TD3+BC and CQL on ``hopper/random-medium-expert-10k``
  (``mix10k``) and on a 10k subset of ``hopper/medium-replay`` (``replay10k``: ``--data.max_transitions 10000``).
* ``sweep``: TD3+BC + C4 on ``mix10k`` with lambda in {0, 0.1, 0.5, 1.0} (lambda 0 = single-cluster batches
  without the penalty; the 0.1 runs are shared with ``main``).

Each run evaluates ``--evals`` times (every ``steps / evals`` updates, ``--eval-episodes`` episodes) and its
final score is the mean normalised score of the last 10 evaluations (the package's run summary). The
``c4/cross_cov_fro`` curve (probe-set cross-covariance, logged every epoch for baselines and C4 alike) is read
from each run's TensorBoard events. C4 refits every ``--refit-every-updates`` updates (``auto``:
min(10000, steps // 4), i.e. the package default of 10 epochs x 1000 steps scaled down for small budgets).

Resumable: a run whose ``summary.json`` exists is skipped; an interrupted run resumes from its ``last.ckpt``.
Outputs: ``<out>/returns.json``, ``<out>/returns.md`` (also printed), ``<out>/cross_cov.png``,
``<out>/lambda_sweep.png``; run folders under ``<out>/runs/`` (git-ignored).
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

DATASETS = {"mix10k": ("hopper/random-medium-expert-10k", None), "replay10k": ("hopper/medium-replay", 10000)}
DATASET_LABEL = {"mix10k": "random-medium-expert-10k", "replay10k": "medium-replay (10k subset)"}
ALGO_LABEL = {"td3bc": "TD3+BC", "cql": "CQL"}
DEFAULT_LAMBDA = 0.1
FINAL_WINDOW = 10


@dataclass
class Run:
    algo: str
    dataset: str
    seed: int
    c4: bool
    lam: float | None = None
    experiments: set = field(default_factory=set)

    @property
    def key(self) -> str:
        variant = f"c4-l{self.lam:g}" if self.c4 else "base"
        return f"{self.algo}_{variant}__{self.dataset}__s{self.seed}"

    @property
    def variant(self) -> str:
        return f"C4 (lambda {self.lam:g})" if self.c4 else "baseline"


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description="Returns and cross-covariance: baseline vs C4 on the embedded Hopper data",
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--td3bc-steps", type=int, default=20000, help="updates per TD3+BC run (default 20000)")
    ap.add_argument("--cql-steps", type=int, default=5000, help="updates per CQL run (default 5000)")
    ap.add_argument("--seeds", default="0,1,2", help="comma list of training seeds (default 0,1,2)")
    ap.add_argument("--jobs", type=int, default=2, help="runs at once (default 2: one per core)")
    ap.add_argument("--threads-per-job", type=int, default=1, help="torch threads per run (default 1)")
    ap.add_argument("--experiments", default="main,sweep", help="comma list of main,sweep")
    ap.add_argument("--algos", default="td3bc,cql", help="main experiment algorithms (default td3bc,cql)")
    ap.add_argument("--datasets", default="mix10k,replay10k", help="main experiment datasets (mix10k,replay10k)")
    ap.add_argument("--lambdas", default="0,0.1,0.5,1.0", help="sweep penalty weights (default 0,0.1,0.5,1.0)")
    ap.add_argument("--evals", type=int, default=20, help="evaluations per run = epochs (default 20)")
    ap.add_argument("--eval-episodes", type=int, default=5, help="episodes per evaluation (default 5)")
    ap.add_argument("--refit-every-updates", default="auto",
                    help="C4 refit interval in updates (auto: min(10000, steps // 4)); 0 = initial partition only")
    ap.add_argument("--out", default=str(HERE / "results"), help="output folder (default benchmarks/results)")
    ap.add_argument("--runs-dir", default=None, help="run folders (default <out>/runs)")
    ap.add_argument("--td3bc-ups", type=float, default=60.0, help="TD3+BC updates/s per job, for the estimate")
    ap.add_argument("--cql-ups", type=float, default=5.0, help="CQL updates/s per job, for the estimate")
    ap.add_argument("--throughput-json", default=None, help="take the two rates above from throughput.py --json")
    ap.add_argument("--eval-seconds", type=float, default=3.0, help="seconds per evaluation, for the estimate")
    ap.add_argument("--dry-run", action="store_true", help="print the plan and the estimate, run nothing")
    ap.add_argument("--yes", "-y", action="store_true", help="no 5-second pause after the estimate")
    ap.add_argument("--collect-only", action="store_true", help="run nothing; tabulate finished runs")
    ap.add_argument("--python", default=sys.executable, help="python that runs train.py")
    args = ap.parse_args(argv)
    args.seeds = [int(s) for s in args.seeds.split(",") if s != ""]
    args.experiments = [e for e in args.experiments.split(",") if e]
    args.algos = [a for a in args.algos.split(",") if a]
    args.datasets = [d for d in args.datasets.split(",") if d]
    args.lambdas = [float(x) for x in args.lambdas.split(",") if x != ""]
    for e in args.experiments:
        if e not in ("main", "sweep"):
            ap.error(f"--experiments: unknown {e!r}")
    for a in args.algos:
        if a not in ALGO_LABEL:
            ap.error(f"--algos: unknown {a!r}")
    for d in args.datasets:
        if d not in DATASETS:
            ap.error(f"--datasets: unknown {d!r}; use {','.join(DATASETS)}")
    if args.evals < 1 or args.eval_episodes < 1 or args.jobs < 1:
        ap.error("--evals, --eval-episodes and --jobs must be >= 1")
    args.out = Path(args.out)
    args.runs_dir = Path(args.runs_dir) if args.runs_dir else args.out / "runs"
    if args.throughput_json:
        med = json.loads(Path(args.throughput_json).read_text())["median_ups"]
        for algo in ("td3bc", "cql"):
            for key in (f"{algo}/default+c4", f"{algo}/lean+c4"):
                if key in med:
                    setattr(args, f"{algo}_ups", float(med[key]))
                    break
    return args


# ---------------------------------------------------------------------------------------------- plan
def plan(args) -> list[Run]:
    runs: dict[str, Run] = {}

    def add(run: Run, experiment: str):
        runs.setdefault(run.key, run).experiments.add(experiment)

    if "main" in args.experiments:
        for algo in args.algos:
            for ds in args.datasets:
                for seed in args.seeds:
                    add(Run(algo, ds, seed, False), "main")
                    add(Run(algo, ds, seed, True, DEFAULT_LAMBDA), "main")
    if "sweep" in args.experiments:
        for lam in args.lambdas:
            for seed in args.seeds:
                add(Run("td3bc", "mix10k", seed, True, lam), "sweep")
    return list(runs.values())


def steps_of(args, algo: str) -> int:
    return args.td3bc_steps if algo == "td3bc" else args.cql_steps


def schedule(args, algo: str) -> dict:
    total = steps_of(args, algo)
    spe = max(1, total // args.evals)
    refit_updates = (min(10000, total // 4) if args.refit_every_updates == "auto" else int(args.refit_every_updates))
    refit_epochs = 0 if refit_updates <= 0 else max(1, round(refit_updates / spe))
    return {"steps_per_epoch": spe, "epochs": args.evals, "updates": spe * args.evals, "refit_every_n_epochs": refit_epochs,
            "refits": 0 if refit_epochs == 0 else args.evals // refit_epochs}


def run_dir(args, run: Run) -> Path:
    return args.runs_dir / run.key


def log_dir(args, run: Run) -> Path:
    return run_dir(args, run) / "logs"


def make_config(args, run: Run) -> dict:
    base = yaml.safe_load((REPO / "configs" / f"{run.algo}{'_c4' if run.c4 else ''}.yaml").read_text())
    cfg = copy.deepcopy(base)
    sch = schedule(args, run.algo)
    dataset_id, max_t = DATASETS[run.dataset]
    cfg["seed_everything"] = run.seed
    c4 = cfg["model"]["init_args"].setdefault("c4", {})
    if run.c4:
        c4.update(enabled=True, penalty_weight=float(run.lam), refit_every_n_epochs=sch["refit_every_n_epochs"])
    cfg["data"].update(dataset_id=dataset_id, steps_per_epoch=sch["steps_per_epoch"])
    if max_t:
        cfg["data"]["max_transitions"] = max_t
    tr = cfg["trainer"]
    tr.update(max_epochs=sch["epochs"], default_root_dir=str(run_dir(args, run)), enable_progress_bar=False,
              enable_model_summary=False)
    tr["logger"] = {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                    "init_args": {"save_dir": str(run_dir(args, run)), "name": "", "version": "logs"}}
    for cb in tr.get("callbacks", []):
        if cb["class_path"].endswith("EvalCallback"):
            cb.setdefault("init_args", {}).update(every_n_epochs=1, episodes=args.eval_episodes,
                                                  final_window=FINAL_WINDOW)
    return cfg


def estimate_seconds(args, run: Run) -> float:
    sch = schedule(args, run.algo)
    ups = args.td3bc_ups if run.algo == "td3bc" else args.cql_ups
    refit_s = 1.5 if run.c4 else 0.0  # one refit on 10k transitions (benchmarks/refit_scale.py), generous
    return 20.0 + sch["updates"] / ups + sch["epochs"] * args.eval_seconds + sch["refits"] * refit_s


def is_done(args, run: Run) -> bool:
    return (log_dir(args, run) / "summary.json").exists()


# ---------------------------------------------------------------------------------------------- running
def command(args, run: Run) -> list[str]:
    d = run_dir(args, run)
    d.mkdir(parents=True, exist_ok=True)
    cfg_path = d / "config.yaml"
    cfg_path.write_text(yaml.safe_dump(make_config(args, run), sort_keys=False))
    cmd = [args.python, str(REPO / "train.py"), "fit", "--config", str(cfg_path)]
    last = log_dir(args, run) / "checkpoints" / "last.ckpt"
    if last.exists():
        cmd += ["--ckpt_path", str(last)]
    return cmd


def execute(args, todo: list[Run]) -> list[dict]:
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads_per_job), MKL_NUM_THREADS=str(args.threads_per_job),
               PYTHONWARNINGS="ignore")
    queue = sorted(todo, key=lambda r: -estimate_seconds(args, r))  # longest first packs the jobs best
    running: list[tuple[Run, subprocess.Popen, float, object]] = []
    failures = []
    t0, done = time.perf_counter(), 0
    try:
        while queue or running:
            while queue and len(running) < args.jobs:
                run = queue.pop(0)
                cmd = command(args, run)
                log = open(run_dir(args, run) / "train.log", "a")
                log.write(f"\n$ {' '.join(cmd)}\n")
                log.flush()
                proc = subprocess.Popen(cmd, cwd=str(REPO), env=env, stdout=log, stderr=subprocess.STDOUT)
                running.append((run, proc, time.perf_counter(), log))
                print(f"[start] {run.key}" + (" (resuming)" if "--ckpt_path" in cmd else ""), flush=True)
            time.sleep(1.0)
            for item in list(running):
                run, proc, started, log = item
                if proc.poll() is None:
                    continue
                running.remove(item)
                log.close()
                done += 1
                ok = proc.returncode == 0 and (is_done(args, run) or recover_summary(args, run))
                if not ok:
                    failures.append({"run": run.key, "returncode": proc.returncode,
                                     "log": str(run_dir(args, run) / "train.log")})
                print(f"[{'done' if ok else 'FAILED'}] {run.key} in {time.perf_counter() - started:.0f} s "
                      f"({done}/{len(todo)}, {time.perf_counter() - t0:.0f} s elapsed)"
                      + ("" if ok else f" rc={proc.returncode}, see {run_dir(args, run) / 'train.log'}"), flush=True)
    except KeyboardInterrupt:
        print("interrupted: waiting for the runs to checkpoint (they resume on the next call)", flush=True)
        for run, proc, _, log in running:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
            log.close()
        raise
    return failures


# ---------------------------------------------------------------------------------------------- collecting
def read_scalars(logdir: Path, tag: str) -> list[tuple[int, float]]:
    """(step, value) of a TensorBoard scalar over all event files of a run (a resumed run has several);
    the last value written for a step wins."""
    if not logdir.exists():
        return []
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    points: dict[int, float] = {}
    for ev in sorted(logdir.glob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime):
        acc = EventAccumulator(str(ev), size_guidance={"scalars": 0})
        acc.Reload()
        if tag in acc.Tags().get("scalars", []):
            for e in acc.Scalars(tag):
                points[int(e.step)] = float(e.value)
    return sorted(points.items())


def recover_summary(args, run: Run) -> bool:
    """A run stopped after its last checkpoint but before ``on_train_end`` (or resumed when already finished,
    where Lightning skips ``on_train_end``) has no summary.json: rebuild it from the EvalCallback state in
    ``last.ckpt`` when that checkpoint is at the planned final update."""
    last = log_dir(args, run) / "checkpoints" / "last.ckpt"
    if not last.exists():
        return False
    import torch

    ckpt = torch.load(last, map_location="cpu", weights_only=False)
    if int(ckpt.get("global_step", -1)) < schedule(args, run.algo)["updates"]:
        return False
    state = next((v for k, v in ckpt.get("callbacks", {}).items() if "EvalCallback" in str(k)), None)
    if not state or not state.get("history"):
        return False
    hist = state["history"]
    scores = [h["normalized_score"] for h in hist if "normalized_score" in h]
    summary = {"final_normalized_score": float(np.mean(scores[-FINAL_WINDOW:])) if scores else None,
               "final_return": float(np.mean([h["return"] for h in hist][-FINAL_WINDOW:])),
               "final_window": FINAL_WINDOW, "evaluations": hist, "eval_failures": state.get("failures", 0),
               "recovered_from": str(last)}
    (log_dir(args, run) / "summary.json").write_text(json.dumps(summary, indent=2))
    return True


def collect_run(args, run: Run) -> dict:
    if not is_done(args, run):
        recover_summary(args, run)
    rec = {"key": run.key, "algo": run.algo, "dataset": run.dataset, "seed": run.seed, "c4": run.c4,
           "lambda": run.lam, "experiments": sorted(run.experiments), "done": is_done(args, run)}
    if rec["done"]:
        summary = json.loads((log_dir(args, run) / "summary.json").read_text())
        rec["final_normalized_score"] = summary.get("final_normalized_score")
        rec["final_return"] = summary.get("final_return")
        rec["evaluations"] = [{"step": e.get("step"), "normalized_score": e.get("normalized_score"),
                               "return": e.get("return")} for e in summary.get("evaluations", [])]
    rec["cross_cov_fro"] = read_scalars(log_dir(args, run), "c4/cross_cov_fro")
    return rec


def mean_std(xs: list[float]) -> tuple[float, float, int]:
    xs = [x for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    if not xs:
        return float("nan"), float("nan"), 0
    return float(np.mean(xs)), float(np.std(xs, ddof=1)) if len(xs) > 1 else 0.0, len(xs)


def fmt_ms(m: float, s: float, n: int, want: int, digits: int = 1) -> str:
    if n == 0:
        return "-"
    text = f"{m:.{digits}f} ± {s:.{digits}f}"
    return text + (f" (n={n}/{want})" if n < want else "")


def final_cc(rec: dict, last: int = 3) -> float | None:
    cc = rec.get("cross_cov_fro") or []
    return float(np.mean([v for _, v in cc[-last:]])) if cc else None


def cc_at_fractions(records: list[dict], fractions=(0.25, 0.5, 0.75, 1.0)) -> list[float | None]:
    """Mean over runs of the cross-covariance at the logged epoch nearest to each fraction of training."""
    out = []
    for f in fractions:
        vals = []
        for r in records:
            cc = r.get("cross_cov_fro") or []
            if cc:
                last_step = cc[-1][0]
                vals.append(min(cc, key=lambda p: abs(p[0] - f * last_step))[1])
        out.append(float(np.mean(vals)) if vals else None)
    return out


def tabulate(args, records: list[dict]) -> tuple[str, dict]:
    want = len(args.seeds)
    lines = ["# Returns and cross-covariance: baseline vs C4 (small-scale, embedded Hopper data)", "",
             f"Seeds {args.seeds}; TD3+BC {schedule(args, 'td3bc')['updates']} updates, CQL "
             f"{schedule(args, 'cql')['updates']} updates; {args.evals} evaluations x {args.eval_episodes} episodes; "
             f"final score = mean normalised score of the last {FINAL_WINDOW} evaluations; mean ± std over seeds. "
             f"C4 = cross_cov penalty, lambda {DEFAULT_LAMBDA}, K=3, refit every "
             f"TD3+BC {schedule(args, 'td3bc')['refit_every_n_epochs'] * schedule(args, 'td3bc')['steps_per_epoch']} / "
             f"CQL {schedule(args, 'cql')['refit_every_n_epochs'] * schedule(args, 'cql')['steps_per_epoch']} updates.", ""]
    agg: dict = {"main": [], "sweep": []}

    def select(**kw):
        return [r for r in records if all(r.get(k) == v for k, v in kw.items())]

    if "main" in args.experiments:
        lines += ["## Final normalised score", "",
                  "| dataset | algorithm | baseline | C4 | C4 - baseline |", "|---|---|---|---|---|"]
        cc_lines = ["## Cross-covariance ||Cov(phi_bar(s',a'), phi(s,a))||_F on the probe set (c4/cross_cov_fro)", "",
                    "Mean over seeds at 25/50/75/100 % of training, and the final value (mean of the last 3 epochs).",
                    "", "| dataset | algorithm | variant | 25% | 50% | 75% | 100% | final (mean ± std) |",
                    "|---|---|---|---|---|---|---|---|"]
        for ds in args.datasets:
            for algo in args.algos:
                base = select(algo=algo, dataset=ds, c4=False)
                c4 = select(algo=algo, dataset=ds, c4=True, **{"lambda": DEFAULT_LAMBDA})
                b = mean_std([r.get("final_normalized_score") for r in base if r["done"]])
                c = mean_std([r.get("final_normalized_score") for r in c4 if r["done"]])
                diff = f"{c[0] - b[0]:+.1f}" if b[2] and c[2] else "-"
                lines.append(f"| {DATASET_LABEL[ds]} | {ALGO_LABEL[algo]} | {fmt_ms(*b, want)} | {fmt_ms(*c, want)} | {diff} |")
                entry = {"dataset": ds, "algo": algo, "baseline": b, "c4": c}
                for name, recs in (("baseline", base), ("C4", c4)):
                    fr = cc_at_fractions(recs)
                    fin = mean_std([final_cc(r) for r in recs])
                    entry[f"cross_cov_{name}"] = {"at_fractions": fr, "final": fin}
                    cc_lines.append(f"| {DATASET_LABEL[ds]} | {ALGO_LABEL[algo]} | {name} | "
                                    + " | ".join("-" if v is None else f"{v:.3g}" for v in fr)
                                    + f" | {fmt_ms(*fin, want, 3) if fin[2] else '-'} |")
                agg["main"].append(entry)
        lines += ["", *cc_lines, "", "![cross-covariance curves](cross_cov.png)", ""]
    if "sweep" in args.experiments:
        lines += [f"## Lambda sweep: TD3+BC + C4 on {DATASET_LABEL['mix10k']}", "",
                  "| lambda | final normalised score | final cross-cov (fro) |", "|---|---|---|"]
        base = select(algo="td3bc", dataset="mix10k", c4=False)
        if base:
            b = mean_std([r.get("final_normalized_score") for r in base if r["done"]])
            bc = mean_std([final_cc(r) for r in base])
            lines.append(f"| baseline (no C4) | {fmt_ms(*b, want)} | {fmt_ms(*bc, want, 3) if bc[2] else '-'} |")
        for lam in args.lambdas:
            recs = select(algo="td3bc", dataset="mix10k", c4=True, **{"lambda": lam})
            s = mean_std([r.get("final_normalized_score") for r in recs if r["done"]])
            cc = mean_std([final_cc(r) for r in recs])
            lines.append(f"| {lam:g} | {fmt_ms(*s, want)} | {fmt_ms(*cc, want, 3) if cc[2] else '-'} |")
            agg["sweep"].append({"lambda": lam, "score": s, "cross_cov_final": cc})
        lines += ["", "![lambda sweep](lambda_sweep.png)", ""]
    missing = [r["key"] for r in records if not r["done"]]
    if missing:
        lines += [f"Runs not finished ({len(missing)}): " + ", ".join(missing), ""]
    return "\n".join(lines), agg


def plot(args, records: list[dict]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    if "main" in args.experiments:
        panels = [(ds, algo) for ds in args.datasets for algo in args.algos]
        fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
        for ax, (ds, algo) in zip(axes[0], panels):
            for c4, colour, label in ((False, "tab:blue", "baseline"), (True, "tab:red", f"C4 (λ={DEFAULT_LAMBDA:g})")):
                recs = [r for r in records if r["algo"] == algo and r["dataset"] == ds and r["c4"] == c4
                        and (not c4 or r["lambda"] == DEFAULT_LAMBDA) and r.get("cross_cov_fro")]
                _band(ax, recs, colour, label)
            ax.set_title(f"{ALGO_LABEL[algo]} · {DATASET_LABEL[ds]}", fontsize=9)
            ax.set_xlabel("updates")
            ax.set_yscale("log")
            ax.grid(alpha=0.3)
        axes[0][0].set_ylabel("cross-cov ‖·‖_F (probe set)")
        axes[0][0].legend(fontsize=8)
        fig.tight_layout()
        path = args.out / "cross_cov.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(str(path))
    if "sweep" in args.experiments:
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(8.4, 3.4))
        for lam, colour in zip(args.lambdas, plt.cm.viridis(np.linspace(0, 0.9, len(args.lambdas)))):
            recs = [r for r in records if r["algo"] == "td3bc" and r["dataset"] == "mix10k" and r["c4"]
                    and r["lambda"] == lam and r.get("cross_cov_fro")]
            _band(a2, recs, colour, f"λ={lam:g}")
        base_recs = [r for r in records if r["algo"] == "td3bc" and r["dataset"] == "mix10k" and not r["c4"]]
        _band(a2, [r for r in base_recs if r.get("cross_cov_fro")], "tab:blue", "baseline")
        scores = [mean_std([r.get("final_normalized_score") for r in base_recs if r["done"]])]
        scores += [mean_std([r.get("final_normalized_score") for r in records if r["algo"] == "td3bc"
                             and r["dataset"] == "mix10k" and r["c4"] and r["lambda"] == lam and r["done"]])
                   for lam in args.lambdas]
        xs = np.arange(len(scores))
        a1.bar(xs, [s[0] if s[2] else 0 for s in scores], yerr=[s[1] if s[2] else 0 for s in scores],
               color=["tab:blue"] + ["tab:red"] * len(args.lambdas), alpha=0.7, capsize=4)
        a1.set_xticks(xs, ["base"] + [f"{lam:g}" for lam in args.lambdas])
        a1.set_xlabel("λ")
        a1.set_ylabel("final normalised score")
        a1.set_title("TD3+BC + C4 · random-medium-expert-10k", fontsize=9)
        a2.set_yscale("log")
        a2.set_xlabel("updates")
        a2.set_ylabel("cross-cov ‖·‖_F")
        a2.legend(fontsize=8)
        a2.grid(alpha=0.3)
        fig.tight_layout()
        path = args.out / "lambda_sweep.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(str(path))
    return written


def _band(ax, recs: list[dict], colour, label: str) -> None:
    if not recs:
        return
    steps = sorted({s for r in recs for s, _ in r["cross_cov_fro"]})
    grid = np.full((len(recs), len(steps)), np.nan)
    pos = {s: i for i, s in enumerate(steps)}
    for j, r in enumerate(recs):
        for s, v in r["cross_cov_fro"]:
            grid[j, pos[s]] = v
    with np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            mean, lo, hi = np.nanmean(grid, 0), np.nanmin(grid, 0), np.nanmax(grid, 0)
    ax.plot(steps, mean, color=colour, label=f"{label} (n={len(recs)})")
    if len(recs) > 1:
        ax.fill_between(steps, lo, hi, color=colour, alpha=0.2)


# ---------------------------------------------------------------------------------------------- main
def main(argv=None) -> dict:
    args = parse_args(argv)
    runs = plan(args)
    todo = [r for r in runs if not is_done(args, r)]
    print(f"# returns: {len(runs)} runs planned, {len(runs) - len(todo)} already finished, {len(todo)} to run", flush=True)
    for algo in sorted({r.algo for r in runs}):
        s = schedule(args, algo)
        print(f"#   {ALGO_LABEL[algo]}: {s['updates']} updates = {s['epochs']} epochs x {s['steps_per_epoch']}, "
              f"eval every epoch ({args.eval_episodes} episodes), C4 refit every {s['refit_every_n_epochs']} epochs "
              f"({s['refits']} refits)", flush=True)
    if todo and not args.collect_only:
        serial = sum(estimate_seconds(args, r) for r in todo)
        longest = max(estimate_seconds(args, r) for r in todo)
        wall = max(serial / args.jobs, longest)
        print(f"# estimated wall time: {wall / 3600:.2f} h ({serial / 3600:.2f} h of runs on {args.jobs} job(s); "
              f"assumes TD3+BC {args.td3bc_ups:g} and CQL {args.cql_ups:g} updates/s per job, "
              f"{args.eval_seconds:g} s per evaluation, ~20 s start-up per run)", flush=True)
        if args.dry_run:
            for r in todo:
                print(f"#   {r.key}: ~{estimate_seconds(args, r) / 60:.1f} min")
            return {"planned": [r.key for r in runs], "todo": [r.key for r in todo], "estimated_wall_s": wall}
        if not args.yes:
            print("# starting in 5 s (Ctrl-C to cancel; --yes skips this pause)", flush=True)
            time.sleep(5)
        failures = execute(args, todo)
    else:
        failures = []
        if args.dry_run:
            return {"planned": [r.key for r in runs], "todo": [], "estimated_wall_s": 0.0}

    records = [collect_run(args, r) for r in runs]
    md, agg = tabulate(args, records)
    args.out.mkdir(parents=True, exist_ok=True)
    written = plot(args, records)
    (args.out / "returns.md").write_text(md + "\n")
    out = {"settings": {"seeds": args.seeds, "td3bc": schedule(args, "td3bc"), "cql": schedule(args, "cql"),
                        "evals": args.evals, "eval_episodes": args.eval_episodes, "final_window": FINAL_WINDOW,
                        "default_lambda": DEFAULT_LAMBDA, "lambdas": args.lambdas, "experiments": args.experiments},
           "aggregates": agg, "runs": records, "failures": failures}
    (args.out / "returns.json").write_text(json.dumps(out, indent=2))
    print()
    print(md)
    print(f"# wrote {args.out / 'returns.json'}, {args.out / 'returns.md'}" + "".join(f", {w}" for w in written))
    if failures:
        print(f"# {len(failures)} run(s) failed: " + ", ".join(f["run"] for f in failures))
    return out


if __name__ == "__main__":
    main()
