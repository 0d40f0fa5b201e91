"""c4-collect: the SAC behaviour run (``train``) and the Minari datasets made from it (``record``).

The end-to-end tests train a tiny SAC run on Hopper-v5 (800 env steps, resumed once) and record tiny
datasets from it, so they need no pre-trained model.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from c4_lightning import collect
from c4_lightning.data.scores import REF_SCORES

pytest.importorskip("stable_baselines3")
minari = pytest.importorskip("minari")

ENV = "Hopper-v5"
NAMES = ("random", "medium", "expert", "medium-replay", "medium-expert", "random-medium-expert-300")
SIZES = {"random": 300, "medium": 250, "expert": 250}
MIX = 300


def _train_argv(out: Path, total: int) -> list[str]:
    return [
        "train",
        "--env",
        ENV,
        "--out-dir",
        str(out),
        "--total-steps",
        str(total),
        "--checkpoint-every",
        "200",
        "--learning-starts",
        "100",
        "--eval-episodes",
        "1",
        "--no-progress",
    ]


def _record_argv(out: Path, root: Path, *extra: str) -> list[str]:
    return [
        "record",
        "--env",
        ENV,
        "--out-dir",
        str(out),
        "--datasets-dir",
        str(root),
        "--random-steps",
        str(SIZES["random"]),
        "--medium-steps",
        str(SIZES["medium"]),
        "--expert-steps",
        str(SIZES["expert"]),
        "--sizes",
        str(MIX),
        "--no-progress",
        *extra,
    ]


def _load_buffer(path: Path):
    with open(path, "rb") as f:
        return pickle.load(f)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 600-step SAC run, resumed to 800 steps."""
    out = tmp_path_factory.mktemp("behaviour") / "hopper"
    assert collect.main(_train_argv(out, 600)) == 0
    first_table = collect.load_checkpoint_table(out)
    first_buffer = _load_buffer(out / "replay_buffer.pkl")
    assert collect.main(_train_argv(out, 800)) == 0
    return {
        "out": out,
        "first_table": first_table,
        "first_buffer": first_buffer,
        "table": collect.load_checkpoint_table(out),
        "buffer": _load_buffer(out / "replay_buffer.pkl"),
    }


@pytest.fixture(scope="module")
def datasets(run, tmp_path_factory):
    root = tmp_path_factory.mktemp("datasets")
    assert collect.main(_record_argv(run["out"], root)) == 0
    return root


def _data_dir(root: Path, name: str) -> Path:
    return root / "hopper" / f"{name}-v0" / "data"


def _episodes(root: Path, name: str):
    return list(minari.MinariDataset(_data_dir(root, name)).iterate_episodes())


def _provenance(root: Path, name: str) -> dict:
    return json.loads(minari.MinariDataset(_data_dir(root, name)).storage.metadata["provenance"])


# --------------------------------------------------------------------------- train
def test_train_checkpoints_and_resume(run):
    from stable_baselines3 import SAC

    assert [r["steps"] for r in run["first_table"]] == [200, 400, 600]
    assert [r["steps"] for r in run["table"]] == [200, 400, 600, 800]
    assert run["table"][:3] == run["first_table"]  # resuming keeps the earlier checkpoints as they were
    for row in run["table"]:
        assert (run["out"] / row["path"]).exists() and np.isfinite(row["return_mean"])
    assert SAC.load(run["out"] / "latest.zip", device="cpu").num_timesteps == 800


def test_train_replay_buffer_is_exact_and_append_only(run):
    first, final = run["first_buffer"], run["buffer"]
    # the snapshot at a checkpoint holds exactly that many env steps (including the newest one)
    assert (first.buffer_size if first.full else first.pos) == 600
    # resuming with a larger --total-steps grows the buffer instead of wrapping around
    assert final.buffer_size == 800 and (final.buffer_size if final.full else final.pos) == 800
    for name in ("observations", "next_observations", "actions", "rewards", "dones", "timeouts"):
        np.testing.assert_array_equal(getattr(final, name)[:600], getattr(first, name)[:600])
    # the resumed run restarted the env: entry 599 does not continue into entry 600, and the
    # converter ends an episode there
    assert not np.array_equal(final.next_observations[599], final.observations[600])
    episodes, _, info = collect.replay_buffer_episodes(final, 800, progress=False)
    assert 600 in np.cumsum([len(e.rewards) for e in episodes])
    assert info["entries_read"] == 800


# --------------------------------------------------------------------------- record
def test_record_writes_every_dataset_and_reloads(datasets):
    for name in NAMES:
        ds = minari.MinariDataset(_data_dir(datasets, name))
        assert ds.total_episodes > 0
        summary = collect.check_dataset(_data_dir(datasets, name), max_mb=collect.MAX_DATASET_MB)
        assert summary["steps"] == ds.total_steps
    for name, steps in SIZES.items():
        eps = _episodes(datasets, name)
        assert sum(len(e.rewards) for e in eps) == steps
        assert eps[-1].terminations[-1] or eps[-1].truncations[-1]
    assert (datasets / "hopper" / "namespace_metadata.json").exists()
    assert not any(p.name.startswith(".c4-collect-") for p in datasets.iterdir())  # no temporary roots left


def test_record_metadata_round_trips(datasets, run):
    ref_min, ref_max = REF_SCORES["hopper"]
    table = run["table"]
    best = max(table, key=lambda r: r["return_mean"])
    for name in NAMES:
        meta = minari.MinariDataset(_data_dir(datasets, name)).storage.metadata
        assert meta["ref_min_score"] == pytest.approx(ref_min) and meta["ref_max_score"] == pytest.approx(ref_max)
        assert json.loads(meta["eval_env_spec"])["id"] == ENV
        assert meta["dataset_id"] == f"hopper/{name}-v0"
        assert isinstance(json.loads(meta["source_names"]), list)
        prov = json.loads(meta["provenance"])
        for key in ("collector_version", "command", "seed", "date", "num_steps", "plan", "versions"):
            assert key in prov, (name, key)
        assert prov["num_steps"] == meta["total_steps"] and prov["seed"] == 0
        assert prov["command"].startswith("c4-collect record --env Hopper-v5")
    for name in ("medium", "expert", "medium-replay"):
        meta = minari.MinariDataset(_data_dir(datasets, name)).storage.metadata
        prov = json.loads(meta["provenance"])
        assert meta["algorithm_name"].startswith("SB3-SAC")
        assert prov["checkpoints"]["expert"]["steps"] == best["steps"]
        assert prov["checkpoints"]["expert"]["return_mean"] == pytest.approx(best["return_mean"])
        assert prov["checkpoints"]["medium"]["steps"] <= best["steps"]
        assert [c[0] for c in prov["checkpoint_curve"]] == [r["steps"] for r in table]
    # a tiny run is far from expert level: the expert dataset says so instead of pretending
    expert_meta = minari.MinariDataset(_data_dir(datasets, "expert")).storage.metadata
    assert json.loads(expert_meta["provenance"])["expert_below_min_score"] is True
    assert "below expert level" in expert_meta["description"]


def test_record_mixture_exact_count_and_sources(datasets):
    meta = minari.MinariDataset(_data_dir(datasets, "random-medium-expert-300")).storage.metadata
    names = json.loads(meta["source_names"])
    assert names == ["hopper/random-v0", "hopper/medium-v0", "hopper/expert-v0"]
    counts = np.zeros(3, dtype=int)
    sources = {n: _episodes(datasets, n.split("/")[1][:-3]) for n in names}
    for ep in _episodes(datasets, "random-medium-expert-300"):
        labels = np.asarray(ep.infos["source"])
        assert labels.shape == (len(ep.rewards) + 1,) and len(np.unique(labels)) == 1
        counts[labels[0]] += len(ep.rewards)
        # every mixture episode is a (prefix of a) whole episode of its source dataset
        src = sources[names[labels[0]]]
        assert any(
            len(s.rewards) >= len(ep.rewards)
            and np.array_equal(s.observations[: len(ep.observations)], ep.observations)
            for s in src
        )
    assert counts.sum() == MIX and counts.tolist() == [100, 100, 100]


def test_record_medium_expert_concatenates_whole_datasets(datasets):
    medium, expert = _episodes(datasets, "medium"), _episodes(datasets, "expert")
    both = _episodes(datasets, "medium-expert")
    assert len(both) == len(medium) + len(expert)
    for got, want, label in zip(both, medium + expert, [0] * len(medium) + [1] * len(expert)):
        np.testing.assert_array_equal(got.observations, want.observations)
        np.testing.assert_array_equal(got.actions, want.actions)
        assert np.all(np.asarray(got.infos["source"]) == label)


def test_record_medium_replay_is_the_buffer_up_to_medium(datasets, run):
    medium_steps = _provenance(datasets, "medium-replay")["checkpoints"]["medium"]["steps"]
    eps = _episodes(datasets, "medium-replay")
    assert sum(len(e.rewards) for e in eps) == medium_steps
    buf = run["buffer"]
    obs = np.concatenate([e.observations[:-1] for e in eps])
    nxt = np.concatenate([e.observations[1:] for e in eps])  # obs[t+1] within each episode
    np.testing.assert_array_equal(obs, buf.observations[:medium_steps, 0].astype(np.float32))
    np.testing.assert_array_equal(nxt, buf.next_observations[:medium_steps, 0].astype(np.float32))
    np.testing.assert_allclose(np.concatenate([e.actions for e in eps]), buf.actions[:medium_steps, 0], atol=1e-6)
    np.testing.assert_array_equal(np.concatenate([e.rewards for e in eps]), buf.rewards[:medium_steps, 0])
    dones, timeouts = buf.dones[:medium_steps, 0] > 0, buf.timeouts[:medium_steps, 0] > 0
    np.testing.assert_array_equal(np.concatenate([e.terminations for e in eps]), dones & ~timeouts)


def test_record_writes_provenance_table(datasets, run):
    text = (datasets / "hopper" / "PROVENANCE.md").read_text()
    for name in NAMES:
        assert f"`hopper/{name}-v0`" in text
    for row in run["table"]:
        assert f"| {row['steps']} | {row['return_mean']:.1f} ± {row['return_std']:.1f} |" in text
    assert "c4-collect record --env Hopper-v5" in text


def test_record_skips_valid_datasets_and_refuses_to_overwrite(datasets, run, tmp_path, capsys):
    root = tmp_path / "copy"
    shutil.copytree(datasets, root)
    files = {n: _data_dir(root, n) / "main_data.hdf5" for n in NAMES}
    before = {n: f.stat().st_mtime_ns for n, f in files.items()}
    assert collect.main(_record_argv(run["out"], root)) == 0
    assert {n: f.stat().st_mtime_ns for n, f in files.items()} == before
    assert capsys.readouterr().out.count("exists and matches, skipping") == len(NAMES)
    with pytest.raises(SystemExit, match="--overwrite"):
        collect.main(_record_argv(run["out"], root, "--random-steps", "350"))
    assert collect.main(_record_argv(run["out"], root, "--random-steps", "350", "--overwrite")) == 0
    assert minari.MinariDataset(_data_dir(root, "random")).total_steps == 350


def test_record_size_limit_fails_loudly(run, tmp_path):
    with pytest.raises(SystemExit, match=r"MB on disk.*lower --random-steps"):
        collect.main(_record_argv(run["out"], tmp_path, "--max-mb", "0.01"))
    assert not (tmp_path / "hopper" / "random-v0").exists()


# --------------------------------------------------------------------------- units
def test_select_checkpoints_medium_never_after_expert():
    ref_min, ref_max = REF_SCORES["hopper"]
    table = [
        {"steps": 10 * (i + 1), "return_mean": r, "return_std": 0.0, "path": f"m{i}"}
        for i, r in enumerate([10.0, 500.0, 1000.0, 1200.0, 3000.0, 1070.0])
    ]
    choice = collect.select_checkpoints(table, 1 / 3, ref_min, ref_max)
    assert choice["expert"]["steps"] == 50
    assert choice["medium"]["steps"] == 30  # 1070 at step 60 is closer to the target but after the expert
    assert choice["medium_target_return"] == pytest.approx(ref_min + (ref_max - ref_min) / 3)
    # without reference scores the best return is the reference and normalising keeps negative returns sane
    neg = [
        {"steps": s, "return_mean": r, "return_std": 0.0, "path": ""}
        for s, r in [(1, -1200.0), (2, -900.0), (3, -600.0), (4, -150.0)]
    ]
    choice = collect.select_checkpoints(neg, 1 / 3, ref_min=-1300.0)
    assert choice["expert"]["steps"] == 4 and choice["medium"]["steps"] == 2
    with pytest.raises(SystemExit, match="train"):
        collect.best_checkpoint([])


def _synthetic_buffer():
    """Four episodes: terminated (3 steps), time-limit truncated (2), cut by a restart (2), partial (2)."""
    from gymnasium import spaces
    from stable_baselines3.common.buffers import ReplayBuffer

    obs_space = spaces.Box(-np.inf, np.inf, (2,), np.float64)
    act_space = spaces.Box(np.array([0.0, -2.0], np.float32), np.array([2.0, 2.0], np.float32))
    buf = ReplayBuffer(9, obs_space, act_space, device="cpu", handle_timeout_termination=True)
    rng = np.random.default_rng(0)
    plan = [(3, "term"), (2, "trunc"), (2, "restart"), (2, "partial")]
    for length, end in plan:
        o = rng.normal(size=2)
        for t in range(length):
            nxt = rng.normal(size=2)
            last = t == length - 1
            done = last and end in ("term", "trunc")
            buf.add(
                o[None],
                nxt[None],
                rng.uniform(-1, 1, size=(1, 2)),
                np.array([float(t)]),
                np.array([done]),
                [{"TimeLimit.truncated": done and end == "trunc"}],
            )
            o = nxt
    return buf, act_space


def test_replay_buffer_episodes_boundaries_alignment_and_actions():
    buf, act_space = _synthetic_buffer()
    episodes, cut, info = collect.replay_buffer_episodes(buf, 9, action_space=act_space, progress=False)
    assert [len(e.rewards) for e in episodes] == [3, 2, 2, 2]
    assert [bool(e.terminations[-1]) for e in episodes] == [True, False, False, False]
    assert [bool(e.truncations[-1]) for e in episodes] == [False, True, True, True]
    assert cut == [False, False, True, True] and info["restarts_without_done"] == 1
    start = 0
    for ep in episodes:
        n = len(ep.rewards)
        np.testing.assert_allclose(ep.observations[:-1], buf.observations[start : start + n, 0], rtol=1e-6)
        np.testing.assert_allclose(ep.observations[1:], buf.next_observations[start : start + n, 0], rtol=1e-6)
        scaled = buf.actions[start : start + n, 0]
        np.testing.assert_allclose(
            ep.actions, act_space.low + 0.5 * (scaled + 1) * (act_space.high - act_space.low), rtol=1e-6
        )
        assert not (ep.terminations[:-1].any() or ep.truncations[:-1].any())
        start += n
    # only the first entries, and a cap on the transitions that draws whole episodes
    first, _, _ = collect.replay_buffer_episodes(buf, 4, progress=False)
    assert [len(e.rewards) for e in first] == [3, 1] and first[1].truncations[-1]
    capped, _, info = collect.replay_buffer_episodes(buf, 9, max_steps=5, seed=1, progress=False)
    assert sum(len(e.rewards) for e in capped) == 5 and info["subsampled"]
    assert info["episodes_kept"] == sorted(info["episodes_kept"])
    assert all(e.terminations[-1] or e.truncations[-1] for e in capped)


def test_take_whole_episodes_cuts_only_the_last():
    eps = [
        collect.make_episode(
            np.zeros((n + 1, 2)), np.zeros((n, 1)), np.ones(n), [False] * (n - 1) + [True], [False] * n
        )
        for n in (5, 7, 3, 9)
    ]
    drawn = collect.take_whole_episodes(eps, 12, np.random.default_rng(0))
    assert sum(len(e.rewards) for _, e, _ in drawn) == 12
    assert [c for _, _, c in drawn][:-1] == [False] * (len(drawn) - 1)
    _, last, was_cut = drawn[-1]
    if was_cut:
        assert last.truncations[-1] and not last.terminations[-1]
    with pytest.raises(SystemExit, match="only 24"):
        collect.take_whole_episodes(eps, 25, np.random.default_rng(0))


def test_compact_hdf5_keeps_minari_readable_and_shrinks(tmp_path):
    import gymnasium as gym
    from minari.utils import create_dataset_from_buffers

    episodes, _ = collect.rollout_episodes(ENV, 400, seed=0, progress=False)
    old = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(tmp_path)
    try:
        env = gym.make(ENV)
        obs_space = gym.spaces.Box(-np.inf, np.inf, env.observation_space.shape, np.float32)
        create_dataset_from_buffers(
            "tt/raw-v0",
            episodes,
            env=ENV,
            eval_env=ENV,
            observation_space=obs_space,
            algorithm_name="x",
            description="x",
            author="x",
            author_email="x",
            code_permalink="x",
            ref_min_score=0.0,
            ref_max_score=1.0,
        )
    finally:
        os.environ.pop("MINARI_DATASETS_PATH") if old is None else os.environ.__setitem__("MINARI_DATASETS_PATH", old)
    data = tmp_path / "tt" / "raw-v0" / "data"
    raw = (data / "main_data.hdf5").stat().st_size
    before = list(minari.MinariDataset(data).iterate_episodes())
    collect.compact_hdf5(data / "main_data.hdf5", progress=False)
    after = list(minari.MinariDataset(data).iterate_episodes())
    assert (data / "main_data.hdf5").stat().st_size < raw / 3
    meta = minari.MinariDataset(data).storage.get_episode_metadata(range(len(after)))
    assert [m["seed"] for m in meta] == [e.seed for e in episodes]
    assert len(after) == len(before) == len(episodes)
    for a, b in zip(before, after):
        for key in ("observations", "actions", "rewards", "terminations", "truncations"):
            np.testing.assert_array_equal(getattr(a, key), getattr(b, key))


def test_rollout_episodes_exact_count_and_seeded():
    a, cut_a = collect.rollout_episodes(ENV, 100, seed=3, progress=False)
    b, _ = collect.rollout_episodes(ENV, 100, seed=3, progress=False)
    assert sum(len(e.rewards) for e in a) == 100
    assert a[-1].truncations[-1] or a[-1].terminations[-1]
    assert cut_a[:-1] == [False] * (len(a) - 1)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.observations, y.observations)
        assert x.seed == y.seed


def test_missing_stable_baselines3_message(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "stable_baselines3", None)
    with pytest.raises(SystemExit, match="Stable-Baselines3"):
        collect.main(["record", "--env", ENV, "--out-dir", str(tmp_path), "--datasets-dir", str(tmp_path)])
    code = (
        "import runpy, sys; sys.modules['stable_baselines3'] = None; "
        f"sys.argv = ['c4-collect', 'train', '--env', '{ENV}', '--out-dir', {str(tmp_path)!r}]; "
        "runpy.run_module('c4_lightning.collect', run_name='__main__')"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "Stable-Baselines3" in proc.stderr and "pip install" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_record_env_without_d4rl_scores(tmp_path):
    """Pendulum-v1: no D4RL scores (reference = random dataset's return and best checkpoint's), actions in [-2, 2]."""
    out, root = tmp_path / "run", tmp_path / "ds"
    assert (
        collect.main(
            [
                "train",
                "--env",
                "Pendulum-v1",
                "--out-dir",
                str(out),
                "--total-steps",
                "400",
                "--checkpoint-every",
                "200",
                "--learning-starts",
                "100",
                "--eval-episodes",
                "1",
                "--no-progress",
            ]
        )
        == 0
    )
    assert (
        collect.main(
            [
                "record",
                "--env",
                "Pendulum-v1",
                "--out-dir",
                str(out),
                "--datasets-dir",
                str(root),
                "--random-steps",
                "400",
                "--medium-steps",
                "200",
                "--expert-steps",
                "200",
                "--sizes",
                "300",
                "--no-progress",
            ]
        )
        == 0
    )
    best = max(collect.load_checkpoint_table(out), key=lambda r: r["return_mean"])
    random_returns = [
        float(np.sum(e.rewards))
        for e in minari.MinariDataset(root / "pendulum" / "random-v0" / "data").iterate_episodes()
    ]
    for name in ("random", "medium", "expert", "medium-replay", "medium-expert", "random-medium-expert-300"):
        meta = minari.MinariDataset(root / "pendulum" / f"{name}-v0" / "data").storage.metadata
        assert meta["ref_min_score"] == pytest.approx(np.mean(random_returns))  # 2 whole 200-step episodes
        assert meta["ref_max_score"] == pytest.approx(best["return_mean"])
    buf = _load_buffer(out / "replay_buffer.pkl")
    replay = list(minari.MinariDataset(root / "pendulum" / "medium-replay-v0" / "data").iterate_episodes())
    n = sum(len(e.rewards) for e in replay)
    np.testing.assert_allclose(np.concatenate([e.actions for e in replay]), 2.0 * buf.actions[:n, 0], rtol=1e-6)
