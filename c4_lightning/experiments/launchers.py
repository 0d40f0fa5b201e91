"""Running the trials of a sweep: each one is ``python -m c4_lightning.cli fit --config <trial.yaml>`` (the same
program as ``train.py``) in its own process, resumed from its ``last.ckpt`` when one exists.

Launchers: :class:`LocalLauncher` (a process pool on this machine, ``jobs`` at once, one torch thread each by
default) and :class:`RayLauncher` (one Ray task per trial, on a running cluster or a local Ray started for the
sweep). Both need the run folders on a filesystem every worker sees (a shared disk on a cluster).
"""

from __future__ import annotations

import os
import fcntl
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import yaml

from c4_lightning.experiments.spec import Sweep, SweepError, Trial, config_digest, trial_config

CONFIG_NAME = "trial.yaml"


@dataclass
class TrialResult:
    trial: Trial
    returncode: int
    seconds: float
    log: Path

    @property
    def ok(self) -> bool:
        return self.returncode == 0


def summary_path(sweep: Sweep, trial: Trial) -> Path:
    return sweep.trial_dir(trial) / "logs" / "summary.json"


def last_checkpoint(sweep: Sweep, trial: Trial) -> Path:
    return sweep.trial_dir(trial) / "logs" / "checkpoints" / "last.ckpt"


def is_finished(sweep: Sweep, trial: Trial) -> bool:
    """Finished = its summary exists and its last evaluation is at the sweep's final update."""
    import json

    path = summary_path(sweep, trial)
    if not path.is_file():
        return False
    try:
        evals = json.loads(path.read_text()).get("evaluations") or []
    except (OSError, ValueError):
        return False
    return bool(evals) and int(evals[-1].get("step", -1)) >= sweep.budget.updates


def prepare(sweep: Sweep, trial: Trial, python: str = sys.executable) -> list[str]:
    """Write the trial's config into its folder and return its command. A folder whose config was made from
    different settings (the sweep file changed since) is refused: its checkpoints belong to another experiment."""
    cfg = trial_config(sweep, trial)
    digest = config_digest(cfg)
    folder = sweep.trial_dir(trial)
    path = folder / CONFIG_NAME
    if path.is_file():
        old = yaml.safe_load(path.read_text()) or {}
        if config_digest(old) != digest:
            raise SweepError(
                f"trial {trial.key}: {path} was written from other settings than the sweep file gives now; its "
                "checkpoints belong to that experiment. Give the changed variant a new name, or move the folder "
                f"away ({folder}) to start the trial again"
            )
    folder.mkdir(parents=True, exist_ok=True)
    if not path.is_file():
        tmp = path.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(cfg, sort_keys=False))
        os.replace(tmp, path)
    cmd = [python, "-m", "c4_lightning.cli", "fit", "--config", str(path)]
    last = last_checkpoint(sweep, trial)
    if last.is_file():
        cmd += ["--ckpt_path", str(last)]
    return cmd


LOCK_NAME = ".running"


def claim(sweep: Sweep, trial: Trial) -> int | None:
    """Lock the trial so two sweep processes never run it at once: an exclusive ``flock`` on its lock file (which
    also names the host and process). Returns the locked file descriptor, or ``None`` when another process holds
    it. The kernel drops the lock when every process holding the descriptor has exited: pass it to the trial's
    process (``pass_fds``) and the lock lives as long as the training does, even if the sweep driver is killed."""
    folder = sweep.trial_dir(trial)
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK_NAME, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.write(fd, f"{socket.gethostname()} {os.getpid()}\n".encode())
    return fd


def release(fd: int | None) -> None:
    """Close this process's descriptor of a lock taken by :func:`claim`. No explicit unlock: the lock belongs to
    the open file description, which the trial's process shares; it ends when the last holder closes it."""
    if fd is not None:
        os.close(fd)


def trial_env(threads: int) -> dict:
    return dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONWARNINGS="ignore")


def start_trial(
    cmd: list[str], log_path: str | os.PathLike, threads: int, cwd: str, pass_fds: tuple[int, ...] = ()
) -> tuple[subprocess.Popen, object]:
    """Start one trial command with its output appended to ``log_path`` (after a ``$ command`` header line);
    returns the process and the open log file (the caller closes it)."""
    log = open(log_path, "a")
    log.write(f"\n$ {' '.join(cmd)}\n")
    log.flush()
    proc = subprocess.Popen(
        cmd, cwd=cwd, env=trial_env(threads), stdout=log, stderr=subprocess.STDOUT, pass_fds=pass_fds
    )
    return proc, log


def run_command(cmd: list[str], log_path: str, threads: int, cwd: str) -> tuple[int, float]:
    """Run one trial command to the end with its output appended to ``log_path``; (return code, seconds).
    A module-level function so Ray can ship it to a worker."""
    t0 = time.perf_counter()
    proc, log = start_trial(cmd, log_path, threads, cwd)
    with log:
        try:
            rc = proc.wait()
        except BaseException:  # interrupted (Ctrl+C, a cancelled Ray task): let the run checkpoint and stop
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()
            raise
    return rc, time.perf_counter() - t0


Report = Callable[[str], None]


class LocalLauncher:
    """Runs trials as subprocesses on this machine, ``jobs`` at a time, ``threads`` torch threads each.
    Ctrl+C (or SIGTERM) asks every running trial to checkpoint and stop; the next call resumes them."""

    def __init__(self, jobs: int = 1, threads: int = 1):
        if jobs < 1 or threads < 1:
            raise SweepError(f"--jobs={jobs} and --threads={threads} must be >= 1")
        cores = os.cpu_count() or 1
        if jobs * threads > cores:
            print(
                f"note: {jobs} jobs x {threads} threads exceed this machine's {cores} cores; trials will share "
                "cores and each runs slower",
                file=sys.stderr,
            )
        self.jobs, self.threads = jobs, threads

    def run(self, sweep: Sweep, trials: list[Trial], report: Report = print) -> list[TrialResult]:
        queue = list(trials)
        running: list[tuple[Trial, subprocess.Popen, float, object, int]] = []
        results: list[TrialResult] = []
        cwd = os.getcwd()

        def on_sigterm(signum, frame):
            raise KeyboardInterrupt

        previous = signal.signal(signal.SIGTERM, on_sigterm)  # SIGTERM: like Ctrl+C, the trials checkpoint
        try:
            while queue or running:
                while queue and len(running) < self.jobs:
                    trial = queue.pop(0)
                    if is_finished(sweep, trial):  # finished meanwhile by another sweep process
                        continue
                    lock = claim(sweep, trial)
                    if lock is None:
                        report(f"[skip] {trial.key}: another sweep process is running it")
                        continue
                    try:
                        cmd = prepare(sweep, trial)
                    except SweepError as err:  # this trial cannot run; the others go on
                        release(lock)
                        report(f"[FAILED] {trial.key}: {err}")
                        results.append(TrialResult(trial, 2, 0.0, sweep.trial_dir(trial) / "train.log"))
                        continue
                    proc, log = start_trial(
                        cmd, sweep.trial_dir(trial) / "train.log", self.threads, cwd, pass_fds=(lock,)
                    )
                    running.append((trial, proc, time.perf_counter(), log, lock))
                    report(f"[start] {trial.key}" + (" (resuming)" if "--ckpt_path" in cmd else ""))
                time.sleep(0.5)
                for item in list(running):
                    trial, proc, started, log, lock = item
                    if proc.poll() is None:
                        continue
                    running.remove(item)
                    log.close()
                    release(lock)
                    res = TrialResult(
                        trial, proc.returncode, time.perf_counter() - started, sweep.trial_dir(trial) / "train.log"
                    )
                    results.append(res)
                    report(
                        f"[{'done' if res.ok else 'FAILED'}] {trial.key} in {res.seconds:.0f} s"
                        + ("" if res.ok else f" (exit {res.returncode}; see {res.log})")
                    )
        except KeyboardInterrupt:
            report("interrupted: asking the running trials to checkpoint (they resume on the next call)")
            for trial, proc, _, log, lock in running:
                proc.send_signal(signal.SIGTERM)
            for trial, proc, _, log, lock in running:
                try:
                    proc.wait(timeout=120)
                except subprocess.TimeoutExpired:
                    proc.kill()
                log.close()
                release(lock)
            raise
        finally:
            signal.signal(signal.SIGTERM, previous)
        return results


class RayLauncher:
    """One Ray task per trial (``num_cpus=threads``); Ray schedules them over the cluster's CPUs (or GPUs with
    ``gpus_per_trial``). ``address=None`` starts a local Ray for the sweep; ``"auto"`` or ``"ray://host:10001"``
    joins a running cluster. Needs ``pip install c4_lightning[ray]`` and run folders on a shared filesystem."""

    def __init__(
        self,
        address: str | None = None,
        threads: int = 1,
        gpus_per_trial: float = 0.0,
        max_concurrent: int | None = None,
    ):
        try:
            import ray  # noqa: F401
        except ImportError as err:
            raise SweepError("--launcher ray needs Ray: pip install 'c4_lightning[ray]' (or pip install ray)") from err
        self.address, self.threads, self.gpus, self.max_concurrent = address, threads, gpus_per_trial, max_concurrent

    def run(self, sweep: Sweep, trials: list[Trial], report: Report = print) -> list[TrialResult]:
        import ray

        started_here = not ray.is_initialized()
        if started_here:
            if self.address:
                kwargs = {"address": self.address}
            else:  # a local Ray for this sweep: on the loopback interface only, no usage reporting
                os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
                kwargs = {"num_cpus": os.cpu_count() or 1, "_node_ip_address": "127.0.0.1"}
            ray.init(log_to_driver=False, include_dashboard=False, **kwargs)
        remote = ray.remote(num_cpus=self.threads, num_gpus=self.gpus)(run_command)
        cwd = os.getcwd()
        pending: dict = {}
        queue = list(trials)
        results: list[TrialResult] = []
        limit = self.max_concurrent or len(trials) or 1
        try:
            while queue or pending:
                while queue and len(pending) < limit:
                    trial = queue.pop(0)
                    if is_finished(sweep, trial):
                        continue
                    lock = claim(sweep, trial)  # held by the driver while the task runs
                    if lock is None:
                        report(f"[skip] {trial.key}: another sweep process is running it")
                        continue
                    try:
                        cmd = prepare(sweep, trial)
                    except SweepError as err:
                        release(lock)
                        report(f"[FAILED] {trial.key}: {err}")
                        results.append(TrialResult(trial, 2, 0.0, sweep.trial_dir(trial) / "train.log"))
                        continue
                    log = sweep.trial_dir(trial) / "train.log"
                    pending[remote.remote(cmd, str(log.resolve()), self.threads, cwd)] = (trial, lock)
                    report(f"[submit] {trial.key}" + (" (resuming)" if "--ckpt_path" in cmd else ""))
                if not pending:  # everything left was finished or locked elsewhere
                    continue
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    trial, lock = pending.pop(ref)
                    release(lock)
                    try:
                        rc, seconds = ray.get(ref)
                    except ray.exceptions.RayError as err:
                        report(f"[FAILED] {trial.key}: the Ray task failed ({type(err).__name__})")
                        rc, seconds = -1, 0.0
                    res = TrialResult(trial, rc, seconds, sweep.trial_dir(trial) / "train.log")
                    results.append(res)
                    report(
                        f"[{'done' if res.ok else 'FAILED'}] {trial.key} in {seconds:.0f} s"
                        + ("" if res.ok else f" (exit {rc}; see {res.log})")
                    )
        except KeyboardInterrupt:
            report("interrupted: cancelling the Ray tasks (each trial checkpoints; the next call resumes them)")
            for ref, (trial, lock) in pending.items():
                ray.cancel(ref)
                release(lock)
            raise
        finally:
            if started_here:
                ray.shutdown()
        return results
