"""The statistics of rliable (Agarwal et al., 2021, "Deep RL at the edge of the statistical precipice") as pure
functions, computed with ``scipy.stats.bootstrap``.

rliable itself is not a dependency: its release pins ``arch``, whose import fails beside current pandas
(checked 2026-12-01: ``rliable 1.2.0`` + ``arch`` -> ``TypeError`` in ``arch.univariate``). The same estimators are
used here: interquartile mean (``scipy.stats.trim_mean(x, 0.25)``), 95% percentile-bootstrap confidence
intervals, stratified over tasks (datasets: ``scipy.stats.bootstrap`` resamples each sample it is given
independently, so passing one sample per task *is* the stratified bootstrap), and the probability of
improvement ``P(X > Y)`` (the Mann-Whitney statistic averaged over tasks).

All functions take ``scores`` as a list with one 1-D array per task (the seeds of that task).
"""

from __future__ import annotations

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
RESAMPLES = 2000


def iqm(x) -> float:
    """Interquartile mean: the mean of the middle 50% (``trim_mean(x, 0.25)``, rliable's ``aggregate_iqm``)."""
    x = np.asarray(x, dtype=float).ravel()
    if x.size == 0:
        return float("nan")
    return float(stats.trim_mean(x, 0.25))


def _tasks(scores) -> list[np.ndarray]:
    tasks = [np.asarray(t, dtype=float).ravel() for t in scores]
    tasks = [t for t in tasks if t.size]
    if not tasks:
        raise ValueError("no scores: every task is empty")
    return tasks


def bootstrap_ci(
    scores, statistic, seed: int = 0, resamples: int = RESAMPLES, confidence: float = CONFIDENCE
) -> tuple[float, float]:
    """Percentile-bootstrap CI of ``statistic(list of per-task arrays)``, resampling runs within each task.

    With a single run in every task there is nothing to resample: the interval collapses to the point value."""
    tasks = _tasks(scores)
    varying = [i for i, t in enumerate(tasks) if t.size >= 2]  # a task with one run has nothing to resample
    if not varying:
        v = float(statistic(tasks))
        return v, v

    def resampled(*ts):
        full = list(tasks)
        for i, t in zip(varying, ts):
            full[i] = t
        return statistic(full)

    res = stats.bootstrap(
        tuple(tasks[i] for i in varying),
        resampled,
        vectorized=False,
        paired=False,
        n_resamples=resamples,
        confidence_level=confidence,
        method="percentile",
        random_state=np.random.default_rng(seed),
    )
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def iqm_with_ci(scores, seed: int = 0, resamples: int = RESAMPLES) -> tuple[float, float, float]:
    """(IQM over all runs of all tasks, CI low, CI high)."""
    stat = lambda ts: iqm(np.concatenate(ts))  # noqa: E731
    tasks = _tasks(scores)
    return (stat(tasks), *bootstrap_ci(tasks, stat, seed, resamples))


def mean_with_ci(scores, seed: int = 0, resamples: int = RESAMPLES) -> tuple[float, float, float]:
    stat = lambda ts: float(np.mean(np.concatenate(ts)))  # noqa: E731
    tasks = _tasks(scores)
    return (stat(tasks), *bootstrap_ci(tasks, stat, seed, resamples))


def paired_difference(x, y, seed: int = 0, resamples: int = RESAMPLES) -> tuple[float, float, float]:
    """Mean of ``x - y`` over paired runs (same task, same seed), with its bootstrap CI.

    ``x`` and ``y`` are lists of per-task arrays in the same seed order; pairs resample together."""
    xs, ys = _tasks(x), _tasks(y)
    if len(xs) != len(ys) or any(a.shape != b.shape for a, b in zip(xs, ys)):
        raise ValueError("paired_difference needs the same tasks and seeds on both sides")
    diffs = [a - b for a, b in zip(xs, ys)]
    return mean_with_ci(diffs, seed, resamples)


def probability_of_improvement(x, y) -> float:
    """``P(X > Y)``: for each task the probability that a run of ``x`` beats a run of ``y`` (ties count
    one half; the Mann-Whitney U statistic over ``n * m``), averaged over tasks."""
    xs, ys = _tasks(x), _tasks(y)
    if len(xs) != len(ys):
        raise ValueError("probability_of_improvement needs the same tasks on both sides")
    per_task = []
    for a, b in zip(xs, ys):
        gt = (a[:, None] > b[None, :]).sum()
        eq = (a[:, None] == b[None, :]).sum()
        per_task.append((gt + 0.5 * eq) / (a.size * b.size))
    return float(np.mean(per_task))


def probability_of_improvement_with_ci(x, y, seed: int = 0, resamples: int = RESAMPLES) -> tuple[float, float, float]:
    """``P(X > Y)`` with a stratified bootstrap CI (``x`` and ``y`` resampled independently within each task)."""
    xs, ys = _tasks(x), _tasks(y)
    k = len(xs)
    stat = lambda ts: probability_of_improvement(ts[:k], ts[k:])  # noqa: E731
    return (stat(xs + ys), *bootstrap_ci(xs + ys, stat, seed, resamples))


def curve_with_ci(runs: np.ndarray, seed: int = 0, resamples: int = 500) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """IQM and its CI at each evaluation point of ``runs`` (``[n_runs, n_points]``, NaN where a run has no
    value yet): three arrays of ``n_points``."""
    runs = np.asarray(runs, dtype=float)
    mid, lo, hi = (np.full(runs.shape[1], np.nan) for _ in range(3))
    for j in range(runs.shape[1]):
        col = runs[:, j][np.isfinite(runs[:, j])]
        if col.size:
            mid[j], lo[j], hi[j] = iqm_with_ci([col], seed, resamples)
    return mid, lo, hi
