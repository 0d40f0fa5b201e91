"""Collecting a sweep's finished trials into one JSON file, a Markdown table and PNG plots.

Per trial: its evaluations, score (mean of the last ``score_window`` normalised scores), peak and final-vs-peak,
plus the last value of each ``c4/*`` and ``train/*`` TensorBoard scalar (the diagnostics). Per variant and dataset:
IQM with a 95% bootstrap CI, and against the baseline variant the paired difference (same dataset and seed) with
its CI, the relative IQM gain, the probability of improvement and the verdict of the decision rule below.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np

from c4_lightning.experiments import stats
from c4_lightning.experiments.launchers import is_finished, summary_path
from c4_lightning.experiments.spec import Sweep, Trial, score_of

RULES = {
    "gain": (
        "C4 helps on a dataset if the IQM gain over the baseline is >= 10% of the baseline's IQM and the 95% CI "
        "of the paired (same seed) score difference excludes 0; it hurts if that CI lies below 0; otherwise the "
        "evidence does not decide. Separately: whether a +30% gain (the paper's claim) lies inside the CI."
    ),
    "parity": (
        "No difference is detected on a dataset if the 95% CI of the paired (same seed) score difference to the "
        "baseline includes 0; otherwise the variant scores higher (CI above 0) or lower (CI below 0). A CI that "
        "includes 0 is not proof of equality: read its width."
    ),
}
MIN_GAIN = 0.10
PAPER_GAIN = 0.30
DIAGNOSTIC_PREFIXES = ("c4/", "train/")
CURVE_PREFIX = "c4/cross_"  # whole curves kept for these (probe-set cross-covariance diagnostics)


def read_scalars(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of a run's TensorBoard event files (a resumed run has several; the last write of a step wins)."""
    if not logdir.is_dir():
        return {}
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, dict[int, float]] = {}
    for ev in sorted(logdir.glob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime):
        acc = EventAccumulator(str(ev), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags().get("scalars", []):
            if tag.startswith(DIAGNOSTIC_PREFIXES):
                points = out.setdefault(tag, {})
                for e in acc.Scalars(tag):
                    points[int(e.step)] = float(e.value)
    return {tag: sorted(points.items()) for tag, points in out.items()}


def trial_record(sweep: Sweep, trial: Trial, diagnostics: bool = True) -> dict:
    rec = {
        "key": trial.key,
        "variant": trial.variant,
        "dataset": trial.dataset,
        "seed": trial.seed,
        "finished": is_finished(sweep, trial),
    }
    path = summary_path(sweep, trial)
    evals = []
    if path.is_file():
        evals = json.loads(path.read_text()).get("evaluations") or []
    rec["evaluations"] = [
        {"step": int(e["step"]), "normalized_score": e.get("normalized_score"), "return": e.get("return")}
        for e in evals
    ]
    rec["updates"] = int(evals[-1]["step"]) if evals else 0
    rec.update(score_of(evals, sweep.budget.score_window))
    if diagnostics:
        scalars = read_scalars(path.parent)
        rec["diagnostics"] = {tag: pts[-1][1] for tag, pts in sorted(scalars.items()) if pts}
        rec["curves"] = {tag: pts for tag, pts in sorted(scalars.items()) if tag.startswith(CURVE_PREFIX)}
    return rec


def _by(records: list[dict], variant: str, dataset: str) -> dict[int, float]:
    return {
        r["seed"]: r["score"]
        for r in records
        if r["variant"] == variant and r["dataset"] == dataset and r["finished"] and r["score"] is not None
    }


def aggregate(sweep: Sweep, records: list[dict], seed: int = 0) -> list[dict]:
    """One row per (variant, dataset) with finished trials; comparisons against ``sweep.baseline``."""
    rows = []
    for dataset in sweep.datasets:
        for variant in sweep.variants:
            mine = _by(records, variant, dataset)
            if not mine:
                continue
            scores = np.array(list(mine.values()))
            peaks = [
                r["peak"]
                for r in records
                if r["variant"] == variant and r["dataset"] == dataset and r["finished"] and r["peak"] is not None
            ]
            ratios = [
                r["final_vs_peak"]
                for r in records
                if r["variant"] == variant
                and r["dataset"] == dataset
                and r["finished"]
                and r["final_vs_peak"] is not None
            ]
            point, lo, hi = stats.iqm_with_ci([scores], seed)
            row = {
                "variant": variant,
                "dataset": dataset,
                "n": len(mine),
                "seeds": sorted(mine),
                "iqm": point,
                "iqm_ci": [lo, hi],
                "mean": float(scores.mean()),
                "std": float(scores.std(ddof=1)) if scores.size > 1 else 0.0,
                "peak_iqm": stats.iqm(peaks) if peaks else None,
                "final_vs_peak_median": float(np.median(ratios)) if ratios else None,
            }
            base = _by(records, sweep.baseline, dataset) if sweep.baseline else {}
            if sweep.baseline and variant != sweep.baseline and base:
                row.update(compare(mine, base, seed, min_seeds=len(sweep.seeds), rule=sweep.rule))
            rows.append(row)
    return rows


def compare(
    mine: dict[int, float], base: dict[int, float], seed: int = 0, min_seeds: int = 2, rule: str = "gain"
) -> dict:
    """Paired comparison on the seeds both sides finished, and the verdict of the decision rule ``rule`` (a key of
    :data:`RULES`), given only once ``min_seeds`` pairs, the sweep's planned seeds, have finished ("pending" before)."""
    if rule not in RULES:
        raise ValueError(f"decision rule {rule!r} is unknown; use one of {sorted(RULES)}")
    paired = sorted(set(mine) & set(base))
    out: dict = {"paired_seeds": paired}
    x, y = np.array([mine[s] for s in paired]), np.array([base[s] for s in paired])
    if len(paired) >= 1:
        d, dlo, dhi = stats.paired_difference([x], [y], seed)
        p, plo, phi = stats.probability_of_improvement_with_ci([x], [y], seed)
        base_iqm, my_iqm = stats.iqm(y), stats.iqm(x)
        gain = (my_iqm - base_iqm) / abs(base_iqm) if base_iqm else float("nan")
        out.update(
            diff=d,
            diff_ci=[dlo, dhi],
            rel_gain=gain,
            prob_improvement=p,
            prob_improvement_ci=[plo, phi],
            baseline_iqm_paired=base_iqm,
        )
        if len(paired) < max(2, min_seeds):
            verdict = f"pending ({len(paired)}/{max(2, min_seeds)} seeds)"
        elif rule == "parity":
            verdict = "no difference detected" if dlo <= 0 <= dhi else ("higher" if dlo > 0 else "lower")
        elif gain >= MIN_GAIN and dlo > 0:
            verdict = "helps"
        elif dhi < 0:
            verdict = "hurts"
        else:
            verdict = "undecided"
        out["verdict"] = verdict
        out["paper_gain_in_ci"] = bool(dlo <= PAPER_GAIN * abs(float(y.mean())) <= dhi)  # same estimator as diff
    return out


def _fmt(x, digits: int = 1) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def markdown(sweep: Sweep, rows: list[dict], records: list[dict]) -> str:
    b = sweep.budget
    done = sum(r["finished"] for r in records)
    lines = [
        f"### Sweep `{sweep.name}`: {done}/{len(records)} trials finished",
        "",
        f"Budget per trial: {b.updates:,} updates, evaluation every {b.eval_every:,} updates with "
        f"{b.eval_episodes} episodes; score = mean normalised score of the last {b.score_window} evaluations. "
        "IQM with 95% percentile-bootstrap CIs (scipy.stats.bootstrap, 2000 resamples).",
        "",
        f"Decision rule (fixed before the runs): {RULES[sweep.rule]}",
        "",
        "| dataset | variant | n | score IQM [95% CI] | mean ± sd | peak IQM | final/peak | "
        f"Δ vs {sweep.baseline} (paired) [95% CI] | IQM gain | P(improve) [95% CI] | verdict | +30% in CI |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cmp_cells = ["", "", "", "", ""]
        if "diff" in r:
            cmp_cells = [
                f"{_fmt(r['diff'])} [{_fmt(r['diff_ci'][0])}, {_fmt(r['diff_ci'][1])}]",
                f"{100 * r['rel_gain']:+.0f}%" if not math.isnan(r["rel_gain"]) else "-",
                f"{_fmt(r['prob_improvement'], 2)} [{_fmt(r['prob_improvement_ci'][0], 2)}, "
                f"{_fmt(r['prob_improvement_ci'][1], 2)}]",
                r["verdict"],
                ("yes" if r["paper_gain_in_ci"] else "no") if sweep.rule == "gain" else "-",
            ]
        lines.append(
            f"| {r['dataset']} | {r['variant']} | {r['n']} | {_fmt(r['iqm'])} [{_fmt(r['iqm_ci'][0])}, "
            f"{_fmt(r['iqm_ci'][1])}] | {_fmt(r['mean'])} ± {_fmt(r['std'])} | {_fmt(r['peak_iqm'])} | "
            f"{_fmt(r['final_vs_peak_median'], 2)} | " + " | ".join(cmp_cells) + " |"
        )
    return "\n".join(lines) + "\n"


def curves_figure(sweep: Sweep, records: list[dict]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = [d for d in sweep.datasets if any(r["dataset"] == d and r["evaluations"] for r in records)]
    fig, axes = plt.subplots(1, max(1, len(datasets)), figsize=(6.5 * max(1, len(datasets)), 4.2), squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        for variant in sweep.variants:
            runs = [r for r in records if r["variant"] == variant and r["dataset"] == dataset and r["evaluations"]]
            if not runs:
                continue
            steps = sorted({e["step"] for r in runs for e in r["evaluations"]})
            grid = np.full((len(runs), len(steps)), np.nan)
            for i, r in enumerate(runs):
                for e in r["evaluations"]:
                    if e["normalized_score"] is not None:
                        grid[i, steps.index(e["step"])] = e["normalized_score"]
            mid, lo, hi = stats.curve_with_ci(grid)
            (line,) = ax.plot(steps, mid, label=f"{variant} (n={len(runs)})")
            ax.fill_between(steps, lo, hi, color=line.get_color(), alpha=0.2)
        ax.set_title(f"{dataset}: IQM normalised score, 95% CI")
        ax.set_xlabel("updates")
        ax.set_ylabel("normalised score")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def diagnostics_figure(sweep: Sweep, records: list[dict]):
    """Median curve of each ``c4/cross_*`` probe diagnostic per variant and dataset over finished trials (one panel
    per tag)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tags = sorted({t for r in records if r["finished"] for t in r.get("curves", {})})
    if not tags:
        return None
    fig, axes = plt.subplots(1, len(tags), figsize=(5.5 * len(tags), 4), squeeze=False)
    for ax, tag in zip(axes[0], tags):
        for dataset in sweep.datasets:
            for variant in sweep.variants:
                curves = [
                    dict(r["curves"][tag])
                    for r in records
                    if r["variant"] == variant
                    and r["finished"]
                    and r["dataset"] == dataset
                    and tag in r.get("curves", {})
                ]
                if not curves:
                    continue
                steps = sorted(set().union(*curves))
                med = [np.nanmedian([c.get(s, np.nan) for c in curves]) for s in steps]
                ax.plot(steps, med, label=f"{dataset} / {variant}")
        ax.set_yscale("log")
        ax.set_title(f"{tag} (median over seeds)")
        ax.set_xlabel("updates")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def scores_figure(rows: list[dict]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 0.45 * max(len(rows), 2) + 1.2))
    labels = [f"{r['dataset']} / {r['variant']}" for r in rows]
    for i, r in enumerate(rows):
        ax.errorbar(r["iqm"], i, xerr=[[r["iqm"] - r["iqm_ci"][0]], [r["iqm_ci"][1] - r["iqm"]]], fmt="o", capsize=4)
    ax.set_yticks(range(len(rows)), labels)
    ax.invert_yaxis()
    ax.set_xlabel("score IQM (mean of the last evaluations), 95% CI")
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    return fig


def collect(sweep: Sweep, out: Path | None = None, diagnostics: bool = True, plots: bool = True) -> dict:
    """Read every trial of ``sweep`` and write ``<out>/<name>.json``, ``<name>.md`` and the plots; return the JSON."""
    out = Path(out or sweep.out)
    out.mkdir(parents=True, exist_ok=True)
    records = [trial_record(sweep, t, diagnostics) for t in sweep.trials()]
    rows = aggregate(sweep, records)
    b = sweep.budget
    result = {
        "sweep": sweep.name,
        "source": str(sweep.source) if sweep.source else None,
        "generated": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "baseline": sweep.baseline,
        "budget": {
            "updates": b.updates,
            "eval_every": b.eval_every,
            "eval_episodes": b.eval_episodes,
            "score_window": b.score_window,
        },
        "rule_name": sweep.rule,
        "rule": RULES[sweep.rule],
        "statistics": "IQM, percentile bootstrap (scipy.stats.bootstrap), 2000 resamples, 95%",
        "aggregates": rows,
        "runs": records,
    }
    (out / f"{sweep.name}.json").write_text(json.dumps(result, indent=1))
    (out / f"{sweep.name}.md").write_text(markdown(sweep, rows, records))
    if plots and any(r["evaluations"] for r in records):
        import matplotlib.pyplot as plt

        figures = (
            ("curves", curves_figure(sweep, records)),
            ("scores", scores_figure(rows) if rows else None),
            ("diagnostics", diagnostics_figure(sweep, records) if diagnostics else None),
        )
        for suffix, fig in figures:
            if fig is not None:
                fig.savefig(out / f"{sweep.name}_{suffix}.png", dpi=110)
                plt.close(fig)
    return result
