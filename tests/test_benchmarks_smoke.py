"""Smoke tests of the benchmark scripts (tiny budgets) and of the d3rlpy data conversion.

They check that the scripts run and print their tables and ratio columns; they never assert a speed.
The d3rlpy alignment test runs only where d3rlpy is importable (the `bench` extra, kept in its own venv:
``/work/venv-bench/bin/python -m pytest tests/test_benchmarks_smoke.py``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "benchmarks"
sys.path.insert(0, str(BENCH))

from d3rlpy_bench import transitions_to_mdp_arrays  # noqa: E402

REAL_ID = "hopper/random-medium-expert-10k"


def _run(args: list[str], timeout: float = 120) -> str:
    r = subprocess.run([sys.executable, *args], cwd=str(REPO), capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{args[0]} failed (rc {r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    return r.stdout


# ---------------------------------------------------------------------------------------------- conversion
def _toy_episodes():
    """Three episodes: terminal (3 steps), timeout (2 steps), cut by subsampling (2 steps, no flag)."""
    rows, ep_ids = [], []
    obs_next = {}
    code = 0
    for ep, (length, end) in enumerate([(3, "term"), (2, "timeout"), (2, "cut")]):
        for t in range(length):
            last = t == length - 1
            o = np.array([ep, t, code], np.float32)
            rows.append(
                dict(
                    obs=o,
                    act=np.array([ep + 0.5, t + 0.5], np.float32),
                    rew=float(10 * ep + t),
                    next_obs=np.array([ep, t + 1, code + 1], np.float32),
                    next_act=np.array([ep + 0.5, (t + 1.5) if not last else (t + 0.5)], np.float32),
                    terminal=float(last and end == "term"),
                    last=float(last),
                )
            )
            ep_ids.append(ep)
            code += 1
        obs_next[ep] = rows[-1]["next_obs"]
    stack = lambda k: np.stack([r[k] for r in rows])  # noqa: E731
    arr = dict(
        obs=stack("obs"),
        act=stack("act"),
        rew=stack("rew"),
        next_obs=stack("next_obs"),
        next_act=stack("next_act"),
        terminals=stack("terminal"),
        last_steps=stack("last"),
        episode_ids=np.array(ep_ids),
    )
    return arr


def test_mdp_arrays_keep_every_transition_aligned():
    arr = _toy_episodes()
    out = transitions_to_mdp_arrays(**arr)
    n = arr["obs"].shape[0]
    # terminal episode: no extra row; the two bootstrapping episodes get one extra row each
    assert out["observations"].shape[0] == n + 2
    assert out["terminals"].sum() == 1 and out["timeouts"].sum() == 2
    rows = out["row_of"]
    np.testing.assert_array_equal(out["observations"][rows], arr["obs"])
    np.testing.assert_array_equal(out["actions"][rows], arr["act"])
    np.testing.assert_array_equal(out["rewards"][rows], arr["rew"])
    # d3rlpy's next observation of a non-terminal step is the following row: it must be ours
    nonterm = arr["terminals"] < 0.5
    np.testing.assert_array_equal(out["observations"][rows[nonterm] + 1], arr["next_obs"][nonterm])
    # flags sit where d3rlpy splits episodes: on the terminal step itself, on the extra row for the others
    assert out["terminals"][rows[2]] == 1
    assert out["timeouts"][rows[4] + 1] == 1 and out["timeouts"][rows[6] + 1] == 1
    assert out["timeouts"][rows].sum() == 0


def test_mdp_arrays_refuse_non_contiguous_episodes():
    arr = _toy_episodes()
    arr["episode_ids"] = arr["episode_ids"][::-1].copy()
    with pytest.raises(ValueError, match="contiguous"):
        transitions_to_mdp_arrays(**arr)


def test_d3rlpy_dataset_matches_our_transitions_across_episode_boundaries():
    d3rlpy = pytest.importorskip("d3rlpy")
    from bench_utils import make_datamodule
    from d3rlpy.dataset import BasicTransitionPicker
    from d3rlpy_bench import datamodule_arrays, to_mdp_dataset

    dm = make_datamodule(REAL_ID)
    arr = datamodule_arrays(dm)
    ds = to_mdp_dataset(transitions_to_mdp_arrays(**arr))
    n = arr["obs"].shape[0]
    assert ds.transition_count == n  # every one of our transitions is sampleable, nothing else is
    picker = BasicTransitionPicker()
    starts = np.flatnonzero(np.r_[1.0, arr["last_steps"][:-1]] > 0.5)
    assert len(ds.episodes) == len(starts) > 1
    for e, (episode, s) in enumerate(zip(ds.episodes, starts)):
        count = episode.transition_count
        for j in range(count):
            i = s + j
            tr = picker(episode, j)
            np.testing.assert_array_equal(tr.observation, arr["obs"][i], err_msg=f"obs, episode {e} step {j}")
            np.testing.assert_array_equal(tr.action, arr["act"][i], err_msg=f"action, episode {e} step {j}")
            assert float(tr.reward[0]) == pytest.approx(float(arr["rew"][i]))
            assert float(tr.terminal) == float(arr["terminals"][i])
            if not arr["terminals"][i]:
                np.testing.assert_array_equal(
                    tr.next_observation, arr["next_obs"][i], err_msg=f"next obs, episode {e} step {j}"
                )
        assert arr["last_steps"][s + count - 1] == 1  # the episode ends exactly where ours does
    assert d3rlpy.__version__


# ---------------------------------------------------------------------------------------------- scripts
def test_throughput_quick_prints_tables_and_ratios(tmp_path):
    out_json = tmp_path / "tp.json"
    out = _run(
        [
            "benchmarks/throughput.py",
            "--steps",
            "4",
            "--cql-steps",
            "2",
            "--warmup",
            "1",
            "--repeats",
            "1",
            "--modes",
            "lean",
            "--refit-repeats",
            "1",
            "--no-d3rlpy",
            "--penalties",
            "cross_cov,feature_dot",
            "--before",
            str(REPO),
            "--json",
            str(out_json),
        ],
        timeout=240,
    )
    for text in (
        "## Updates per second",
        "plain PyTorch loop",
        "plain PyTorch loop, fused Adam",
        "Lightning lean",
        "Lightning lean + C4 cross_cov",
        "Lightning lean + C4 feature_dot",
        "ours / plain loop, fused Adam",
        "d3rlpy fit()",
        "## Ratios",
        "ours / plain loop [lean]",
        "ours / d3rlpy fit() [lean]",
        "C4 / no-C4 (per step, no refit), cross_cov [lean]",
        "C4 / no-C4 (incl. amortised refit), cross_cov [lean]",
        "C4 total overhead %, feature_dot [lean]",
        "## Before (",
        "| TD3+BC Lightning lean + C4 cross_cov |",
        "C4 total overhead %",
        "refit amortised over 10000 updates",  # the default interval at 10k transitions
        "## One refit, by phase",
        "| TD3+BC",
        "| CQL",
    ):
        assert text in out, f"missing {text!r} in:\n{out}"
    assert "skipped (--no-d3rlpy)" in out
    data = json.loads(out_json.read_text())
    for key in (
        "td3bc/plain",
        "td3bc/plain-fused",
        "td3bc/lean",
        "td3bc/lean+c4",
        "td3bc/lean+c4:feature_dot",
        "cql/plain",
        "cql/lean",
        "cql/lean+c4",
    ):
        assert data["median_ups"][key] > 0
    assert set(data["summary"]["td3bc"]["lean"]) >= {"ours/plain", "c4/no-c4 (total)", "c4 overhead %"}
    assert set(data["summary"]["td3bc"]["lean"]["penalties"]) == {"cross_cov", "feature_dot"}
    assert data["median_ups"]["before:cql/lean+c4"] > 0  # --before ran the (here: same) checkout's script too


def test_refit_scale_tiny_prints_table(tmp_path):
    out = _run(
        [
            "benchmarks/refit_scale.py",
            "--sizes",
            "1500,3000",
            "--ups",
            "50",
            "--real-dataset",
            "",
            "--json",
            str(tmp_path / "rs.json"),
        ]
    )
    for text in (
        "## One C4 refit vs the training time between refits",
        "features s",
        "fit s (std+PCA+GMM)",
        "predict s",
        "refit % of training",
        "1,500",
        "3,000",
        "synthetic Hopper-shaped",
    ):
        assert text in out, f"missing {text!r} in:\n{out}"
    data = json.loads((tmp_path / "rs.json").read_text())
    assert [r["n"] for r in data["results"]] == [1500, 3000]


def test_fixed_cost_tiny_prints_split_and_ratios(tmp_path):
    out = _run(
        ["benchmarks/fixed_cost.py", "--widths", "4,16", "--steps", "4", "--warmup", "1", "--repeats", "1"]
        + ["--profile", "3"]
        + ["--json", str(tmp_path / "fc.json")]
    )
    for text in (
        "ms/update, width 4",
        "ms/update, width 16",
        "arithmetic ms (width 16)",
        "the goal's ratio",
        "all operators",
    ):
        assert text in out, f"missing {text!r} in:\n{out}"
    data = json.loads((tmp_path / "fc.json").read_text())
    assert set(data["split"]) == {
        f"{w}/{p}" for w in ("plain", "plain-fused", "lean") for p in ("32-true", "bf16-mixed")
    }
    assert set(data["median_ms"]) == {
        f"{c}/{p}/{w}" for c in ("plain", "plain-fused", "lean") for p in ("32-true", "bf16-mixed") for w in (4, 16)
    }
    profile = data["profile"]
    assert set(profile) == {"32-true", "bf16-mixed"}
    calls = {p: sum(c for c, _ in ops.values()) for p, ops in profile.items()}
    assert 0 < calls["32-true"] < calls["bf16-mixed"]  # autocast's casts are extra operators
    assert profile["bf16-mixed"]["aten::_to_copy"][0] > profile["32-true"].get("aten::_to_copy", [0])[0]
