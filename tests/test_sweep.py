"""``c4-sweep``: trials are ordinary train.py runs, launched locally or through Ray, resumable after a kill,
aggregated with rliable's statistics (checked here against direct computations)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy import stats as sstats

from c4_lightning.experiments import stats
from c4_lightning.experiments.cli import main as sweep_main
from c4_lightning.experiments.report import RULES, compare
from c4_lightning.experiments.spec import RULE_NAMES, SweepError, load_sweep, score_of, trial_config

REPO = Path(__file__).resolve().parents[1]
TINY = {"model.hidden_dims": [32, 32], "data.batch_size": 32, "model.probe_size": 64, "model.c4.pca_dim": 4}


def write_sweep(tmp_path: Path, variants: dict, **extra) -> Path:
    spec = {
        "name": "tiny",
        "out": str(tmp_path / "out"),
        "runs_dir": str(tmp_path / "runs"),
        "baseline": "base",
        "seeds": [0, 1],
        "budget": {"updates": 40, "eval_every": 20, "eval_episodes": 1, "score_window": 2, "steps_per_epoch": 10},
        "datasets": {"mix": {"dataset_id": "hopper/random-medium-expert-10k"}},
        "variants": variants,
    }
    spec.update(extra)
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def two_variants() -> dict:
    return {
        "base": {"config": str(REPO / "configs/td3bc.yaml"), "overrides": dict(TINY)},
        "c4": {"config": str(REPO / "configs/td3bc_c4.yaml"), "overrides": dict(TINY)},
    }


def launches(trial_dir: Path) -> list[str]:
    return [line for line in (trial_dir / "train.log").read_text().splitlines() if line.startswith("$ ")]


@pytest.fixture
def in_repo(monkeypatch):
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO / "tests"), os.environ.get("PYTHONPATH", "")]))


# ---------------------------------------------------------------------------------------------- spec
def test_trial_config_fills_dataset_seed_budget(tmp_path, in_repo):
    sweep = load_sweep(write_sweep(tmp_path, two_variants()))
    assert [t.key for t in sweep.trials()] == ["base__mix__s0", "base__mix__s1", "c4__mix__s0", "c4__mix__s1"]
    cfg = trial_config(sweep, sweep.trials()[3])
    assert cfg["seed_everything"] == 1
    assert cfg["model"]["init_args"]["hidden_dims"] == [32, 32]
    assert cfg["model"]["init_args"]["c4"]["pca_dim"] == 4 and cfg["model"]["init_args"]["c4"]["enabled"] is True
    assert cfg["trainer"]["max_epochs"] == 4 and cfg["data"]["steps_per_epoch"] == 10
    evals = [cb for cb in cfg["trainer"]["callbacks"] if cb["class_path"].endswith("EvalCallback")]
    assert len(evals) == 1 and evals[0]["init_args"] == {"every_n_epochs": 2, "episodes": 1, "final_window": 2}
    assert cfg["trainer"]["default_root_dir"].endswith("c4__mix__s1")


def test_trial_config_records_the_precision_it_runs_at(tmp_path, in_repo, monkeypatch):
    """A config without a precision (td3bc.yaml) gets the CLI's default resolved into the trial's config, so a
    resume on another host keeps it; a precision in the config or the overrides is kept."""
    import c4_lightning.experiments.spec as spec

    monkeypatch.setattr(spec, "default_precision", lambda: "bf16-mixed")
    variants = {
        "plain": {"config": str(REPO / "configs/td3bc.yaml"), "overrides": dict(TINY)},
        "pinned": {"config": str(REPO / "configs/td3bc.yaml"), "overrides": {**TINY, "trainer.precision": "32-true"}},
        "c4": {"config": str(REPO / "configs/td3bc_c4.yaml"), "overrides": dict(TINY)},
    }
    sweep = load_sweep(write_sweep(tmp_path, variants, seeds=[0], baseline="plain"))
    got = {t.variant: trial_config(sweep, t)["trainer"]["precision"] for t in sweep.trials()}
    assert got == {"plain": "bf16-mixed", "pinned": "32-true", "c4": "32-true"}


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"budget": {"updates": 45, "eval_every": 20, "steps_per_epoch": 10}}, "multiples"),
        ({"baseline": "nope"}, "baseline 'nope' is not a variant"),
        ({"seeds": [1, 1]}, "repeat"),
        ({"variants": {"a__b": {"config": "configs/td3bc.yaml"}}}, "no '__'"),
        ({"variants": {"a": {"config": "configs/td3bc.yaml", "datasets": ["zz"]}}}, "does not define"),
        ({"colour": 1}, "unknown keys"),
        ({"rule": "equivalence"}, "rule 'equivalence' is unknown; use one of gain, parity"),
    ],
)
def test_bad_sweep_files_are_refused(tmp_path, in_repo, bad, message):
    variants = bad.pop("variants", two_variants())
    if "baseline" not in bad and "base" not in variants:
        bad["baseline"] = None
    with pytest.raises(SweepError, match=message):
        load_sweep(write_sweep(tmp_path, variants, **bad))


def test_score_peak_and_collapse():
    evals = [{"step": s, "normalized_score": v} for s, v in zip(range(5), [10, 50, 40, 30, 20])]
    assert score_of(evals, 2) == {"score": 25.0, "peak": 50.0, "final_vs_peak": 0.5}


# ---------------------------------------------------------------------------------------------- statistics
def test_iqm_matches_direct_computation():
    x = np.array([1.0, 2, 3, 4, 100, 5, 6, 7])
    srt = np.sort(x)
    assert stats.iqm(x) == pytest.approx(srt[2:6].mean())  # the middle 50% of 8 runs
    assert stats.iqm(x) == pytest.approx(sstats.trim_mean(x, 0.25))


def test_stratified_bootstrap_ci_matches_direct_resampling():
    rng = np.random.default_rng(3)
    tasks = [rng.normal(50, 10, 6), rng.normal(20, 5, 9)]
    point, lo, hi = stats.iqm_with_ci(tasks, seed=0, resamples=4000)
    assert point == pytest.approx(sstats.trim_mean(np.concatenate(tasks), 0.25))
    # direct: resample the runs of each task independently, IQM of the pooled resample, percentiles
    g = np.random.default_rng(1)
    boot = [
        sstats.trim_mean(np.concatenate([t[g.integers(0, t.size, t.size)] for t in tasks]), 0.25) for _ in range(8000)
    ]
    d_lo, d_hi = np.percentile(boot, [2.5, 97.5])
    width = d_hi - d_lo
    assert lo == pytest.approx(d_lo, abs=0.08 * width) and hi == pytest.approx(d_hi, abs=0.08 * width)


def test_paired_difference_and_probability_of_improvement():
    base = np.array([10.0, 20, 30, 40, 50])
    better = base + np.array([5.0, 6, 4, 5, 5])
    d, lo, hi = stats.paired_difference([better], [base])
    assert d == pytest.approx(5.0) and 4.0 <= lo <= 5.0 <= hi <= 6.0
    # pairing matters: the unpaired spread (sd ~16) would give a CI containing 0
    assert lo > 0
    assert stats.probability_of_improvement([better], [base]) == pytest.approx(
        sum((a > b) + 0.5 * (a == b) for a in better for b in base) / 25
    )
    assert stats.probability_of_improvement([base], [base]) == pytest.approx(0.5)


def test_decision_rule_verdicts():
    base = {s: 40.0 + s for s in range(5)}
    early = compare({0: 60.0, 1: 61.0}, base, min_seeds=5)  # no verdict before the planned seeds have finished
    assert early["verdict"] == "pending (2/5 seeds)"
    assert compare({s: v * 1.5 for s, v in base.items()}, base)["verdict"] == "helps"
    assert compare({s: v - 10 for s, v in base.items()}, base)["verdict"] == "hurts"
    small = compare({s: v + 1 for s, v in base.items()}, base)  # CI excludes 0, but a gain under 10%
    assert small["diff_ci"][0] > 0 and small["verdict"] == "undecided"
    assert compare({s: v * 1.3 for s, v in base.items()}, base)["paper_gain_in_ci"] is True


def test_parity_rule_verdicts(tmp_path, in_repo):
    """A sweep file with ``rule: parity`` (bf16 vs fp32): the verdict asks whether the paired CI includes 0."""
    base = {s: 40.0 + s for s in range(5)}
    noisy = {s: v + d for (s, v), d in zip(base.items(), [-2.0, 1.5, -1.0, 2.0, -0.5])}
    assert compare(noisy, base, rule="parity")["verdict"] == "no difference detected"
    assert compare(noisy, base)["verdict"] == "undecided"  # the same numbers under the gain rule
    assert compare({s: v + 5 for s, v in base.items()}, base, rule="parity")["verdict"] == "higher"
    assert compare({s: v - 5 for s, v in base.items()}, base, rule="parity")["verdict"] == "lower"
    assert compare({0: 1.0, 1: 2.0}, base, min_seeds=5, rule="parity")["verdict"] == "pending (2/5 seeds)"
    assert load_sweep(write_sweep(tmp_path, two_variants())).rule == "gain"
    assert load_sweep(write_sweep(tmp_path, two_variants(), rule="parity")).rule == "parity"
    assert load_sweep(REPO / "configs/sweeps/bf16_parity.yaml").rule == "parity"
    assert load_sweep(REPO / "configs/sweeps/c4_evidence.yaml").rule == "gain"
    with pytest.raises(ValueError, match="decision rule 'equivalence' is unknown"):
        compare(noisy, base, rule="equivalence")
    assert set(RULES) == set(RULE_NAMES)  # the sweep files' names and the report's texts, one set


# ---------------------------------------------------------------------------------------------- running
@pytest.mark.slow
def test_local_sweep_runs_resumes_after_kill_and_aggregates(tmp_path, in_repo):
    variants = two_variants()
    callbacks = [
        {
            "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
            "init_args": {"save_last": True, "every_n_epochs": 1},
        },
        {"class_path": "sweep_helpers.KillOnce", "init_args": {"at_step": 25, "seed_suffix": "c4__mix__s1"}},
    ]
    variants["c4"]["overrides"]["trainer.callbacks"] = callbacks
    path = write_sweep(tmp_path, variants)
    assert sweep_main([str(path), "--jobs", "2", "--no-diagnostics"]) == 1  # c4 s1 was killed
    sweep = load_sweep(path)
    killed = sweep.runs_dir / "c4__mix__s1"
    assert (killed / "killed-once").exists() and not (killed / "logs" / "summary.json").exists()
    assert (killed / "logs" / "checkpoints" / "last.ckpt").exists()

    assert sweep_main([str(path), "--jobs", "2", "--no-diagnostics"]) == 0
    for key in ("base__mix__s0", "base__mix__s1", "c4__mix__s0"):
        assert len(launches(sweep.runs_dir / key)) == 1, f"{key} was run again"
    relaunch = launches(killed)
    assert len(relaunch) == 2 and "--ckpt_path" in relaunch[1]
    summary = json.loads((killed / "logs" / "summary.json").read_text())
    assert [e["step"] for e in summary["evaluations"]] == [20, 40]  # no duplicated evaluation after the resume

    result = json.loads((tmp_path / "out" / "tiny.json").read_text())
    assert len(result["runs"]) == 4 and all(r["finished"] for r in result["runs"])
    rows = {r["variant"]: r for r in result["aggregates"]}
    base_scores = [r["score"] for r in result["runs"] if r["variant"] == "base"]
    assert rows["base"]["iqm"] == pytest.approx(sstats.trim_mean(base_scores, 0.25))
    assert rows["c4"]["verdict"] in ("helps", "hurts", "undecided") and rows["c4"]["paired_seeds"] == [0, 1]
    assert (tmp_path / "out" / "tiny.md").read_text().count("| mix |") == 2
    assert (tmp_path / "out" / "tiny_curves.png").stat().st_size > 0

    # --collect-only rebuilds the same aggregates from the finished runs
    (tmp_path / "out" / "tiny.json").unlink()
    assert sweep_main([str(path), "--collect-only", "--no-diagnostics"]) == 0
    again = json.loads((tmp_path / "out" / "tiny.json").read_text())
    assert again["aggregates"] == result["aggregates"]


@pytest.mark.slow
def test_changed_variant_is_not_resumed_silently(tmp_path, in_repo):
    variants = {"base": {"config": str(REPO / "configs/td3bc.yaml"), "overrides": dict(TINY)}}
    path = write_sweep(tmp_path, variants, seeds=[0])
    sweep = load_sweep(path)
    from c4_lightning.experiments.launchers import prepare

    prepare(sweep, sweep.trials()[0])
    variants["base"]["overrides"]["model.alpha"] = 5.0
    changed = load_sweep(write_sweep(tmp_path, variants, seeds=[0]))
    with pytest.raises(SweepError, match="other settings"):
        prepare(changed, changed.trials()[0])


@pytest.mark.slow
def test_ray_launcher_runs_two_trials(tmp_path, in_repo):
    pytest.importorskip("ray")
    variants = {"base": {"config": str(REPO / "configs/td3bc.yaml"), "overrides": dict(TINY)}}
    path = write_sweep(tmp_path, variants)
    assert sweep_main([str(path), "--launcher", "ray", "--no-diagnostics"]) == 0
    result = json.loads((tmp_path / "out" / "tiny.json").read_text())
    assert [r["finished"] for r in result["runs"]] == [True, True]
    assert all(len(r["evaluations"]) == 2 for r in result["runs"])


def test_flags_build_a_sweep_without_a_file(tmp_path, in_repo, capsys):
    rc = sweep_main(
        [
            "--variant",
            f"a={REPO / 'configs/td3bc.yaml'}",
            "--variant",
            f"b={REPO / 'configs/td3bc_c4.yaml'},model.c4.penalty_weight=0.5",
            "--dataset",
            "mix=hopper/random-medium-expert-10k:5000",
            "--seeds",
            "0,1",
            "--updates",
            "2000",
            "--eval-every",
            "1000",
            "--runs-dir",
            str(tmp_path / "r"),
            "--dry-run",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0 and "4 trials" in out and "b__mix__s1: new" in out


def test_trial_lock_keeps_two_sweep_processes_apart(tmp_path, in_repo):
    import subprocess
    import sys

    from c4_lightning.experiments.launchers import claim, release

    sweep = load_sweep(write_sweep(tmp_path, two_variants()))
    trial = sweep.trials()[0]
    lock = claim(sweep, trial)
    assert lock is not None
    assert claim(sweep, trial) is None  # held (another open file description, as another process would have)
    # a process that inherited the lock keeps it after the claimer let go (the trial outlives a killed driver)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3)"], pass_fds=(lock,))
    release(lock)
    assert claim(sweep, trial) is None
    child.wait()
    lock = claim(sweep, trial)  # every holder gone: free again
    assert lock is not None
    release(lock)


def test_bootstrap_holds_single_run_tasks_fixed():
    point, lo, hi = stats.iqm_with_ci([[10.0, 12.0, 14.0, 16.0], [50.0]])
    assert lo <= point <= hi and lo < hi  # the multi-run task is resampled, the single run kept as it is


def test_rule_flag_overrides_the_sweep_files_rule(tmp_path, in_repo):
    from c4_lightning.experiments.cli import build_sweep, parser

    path = write_sweep(tmp_path, two_variants())
    assert build_sweep(parser().parse_args([str(path)])).rule == "gain"
    assert build_sweep(parser().parse_args([str(path), "--rule", "parity"])).rule == "parity"
    with pytest.raises(SystemExit):
        parser().parse_args([str(path), "--rule", "equivalence"])
