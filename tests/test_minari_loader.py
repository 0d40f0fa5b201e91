"""Finding, opening and converting Minari datasets (c4_lightning/data/minari.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import c4_lightning.data.minari as cm
from c4_lightning.data.errors import DatasetError
from c4_lightning.data.minari import (
    EMBEDDED_DATASETS_DIR,
    embedded_datasets_dir,
    episodes_to_transitions,
    list_local_datasets,
    load_transitions,
    locate_dataset,
    open_dataset_folder,
    resolve_dataset,
)
from conftest import LABELLED_SOURCES, OTHER_EPISODES
from minari_fixtures import DEFAULT_EPISODES, act_code, build_minari_dataset, episode_buffers, obs_code, rew_code


def _expected(episodes, obs_dim=3, act_dim=2, ep_base=0):
    """Row-by-row expectations built from the codes, independent of the loader."""
    rows = []
    for e, (length, end) in enumerate(episodes):
        for t in range(length):
            last = t == length - 1
            rows.append(
                dict(
                    obs=obs_code(e, t, np.arange(obs_dim), ep_base),
                    next_obs=obs_code(e, t + 1, np.arange(obs_dim), ep_base),
                    act=act_code(e, t, np.arange(act_dim), ep_base),
                    next_act=act_code(e, t if last else t + 1, np.arange(act_dim), ep_base),
                    rew=rew_code(e, t, ep_base),
                    term=float(last and end == "term"),
                    tout=float(last and end != "term"),
                    last=float(last),
                    ep=e,
                    step=t,
                )
            )
    return rows


def _check_against_codes(t, episodes, **kw):
    rows = _expected(episodes, **kw)
    assert len(t) == len(rows)
    col = lambda k: np.stack([np.atleast_1d(r[k]) for r in rows]).astype(np.float64)  # noqa: E731
    np.testing.assert_array_equal(t.observations.numpy(), col("obs"))
    np.testing.assert_array_equal(t.next_observations.numpy(), col("next_obs"))
    np.testing.assert_array_equal(t.actions.numpy(), col("act"))
    np.testing.assert_array_equal(t.next_actions.numpy(), col("next_act"))
    np.testing.assert_array_equal(t.rewards.numpy(), col("rew")[:, 0])
    np.testing.assert_array_equal(t.terminals.numpy(), col("term")[:, 0])
    np.testing.assert_array_equal(t.timeouts.numpy(), col("tout")[:, 0])
    np.testing.assert_array_equal(t.last_steps.numpy(), col("last")[:, 0])
    np.testing.assert_array_equal(t.episode_ids.numpy(), col("ep")[:, 0])
    np.testing.assert_array_equal(t.steps.numpy(), col("step")[:, 0])


def test_conversion_matches_codes_terminals_timeouts_next_actions(toy_minari):
    t = episodes_to_transitions(resolve_dataset("toy/mixed-v0"), "toy/mixed-v0")
    _check_against_codes(t, DEFAULT_EPISODES)
    assert t.observations.dtype == torch.float32 and t.episode_ids.dtype == torch.int64
    # bootstrapping stops at terminals only; time-limit ends are timeouts
    ends = t.last_steps.bool()
    assert t.terminals[ends].tolist() == [1.0, 0.0, 1.0, 0.0, 0.0, 1.0]
    assert t.timeouts[ends].tolist() == [0.0, 1.0, 0.0, 1.0, 1.0, 0.0]
    assert t.terminals[~ends].sum() == 0 and t.timeouts[~ends].sum() == 0


def test_observations_stay_aligned_with_actions_across_episode_boundaries(toy_minari):
    t = load_transitions("toy/other")  # 4 episodes, codes start at episode 100
    _check_against_codes(t, OTHER_EPISODES, ep_base=100)
    # each action's code matches its observation's code on every row, including after boundaries
    obs_c = t.observations[:, :2].numpy()
    np.testing.assert_array_equal(t.actions.numpy(), -obs_c - 0.5)
    starts = np.flatnonzero(t.steps.numpy() == 0)
    assert starts.tolist() == [0, 4, 13, 15]
    # the row after an episode's last step starts the next episode (step 0, its own first obs)
    for s in starts[1:]:
        assert t.last_steps[s - 1] == 1.0
        assert not torch.equal(t.next_observations[s - 1], t.observations[s])


def test_episode_without_end_flag_bootstraps(minari_dirs):
    build_minari_dataset(minari_dirs.cache, "toy/cut-v0", [(3, "none"), (2, "term")])
    t = load_transitions("toy/cut-v0")
    assert t.timeouts.tolist() == [0, 0, 1, 0, 0] and t.terminals.tolist() == [0, 0, 0, 0, 1]


def test_sources_names_and_ref_scores_from_metadata(toy_minari):
    t = load_transitions("toy/labelled")
    assert t.source_names == ["alpha", "beta", "gamma"]
    per_row = np.repeat(LABELLED_SOURCES, [n for n, _ in DEFAULT_EPISODES])
    assert t.sources.tolist() == per_row.tolist()
    assert t.ref_scores == (-5.0, 50.0)
    assert t.env_id is None and t.dataset_ids == ["toy/labelled-v0"]
    plain = load_transitions("toy/mixed")
    assert plain.source_names == ["toy/mixed-v0"] and plain.sources.sum() == 0
    assert plain.ref_scores is None


def test_env_id_and_d4rl_reference_scores(minari_dirs):
    build_minari_dataset(minari_dirs.cache, "hopper/coded-v0", [(3, "term")], obs_dim=11, act_dim=3, env_id="Hopper-v5")
    t = load_transitions("hopper/coded")
    assert t.env_id == "Hopper-v5"
    assert t.ref_scores == (-20.272305, 3234.3)
    build_minari_dataset(
        minari_dirs.cache,
        "hopper/own-v0",
        [(2, "term")],
        obs_dim=11,
        act_dim=3,
        env_id="Hopper-v5",
        ref_scores=(1.0, 2.0),
    )
    assert load_transitions("hopper/own").ref_scores == (1.0, 2.0)


def test_search_order_versions_and_listing(minari_dirs):
    # v0 in both places (embedded wins), v1 only in the cache
    build_minari_dataset(minari_dirs.cache, "toy/ver-v0", [(2, "term")], ep_base=1)
    build_minari_dataset(minari_dirs.embedded, "toy/ver-v0", [(2, "term")], ep_base=2)
    build_minari_dataset(minari_dirs.cache, "toy/ver-v1", [(3, "term")], ep_base=3)
    assert list_local_datasets() == ["toy/ver-v0", "toy/ver-v1"]
    assert locate_dataset("toy/ver-v0")[1] == minari_dirs.embedded / "toy" / "ver-v0"
    assert locate_dataset("toy/ver") == ("toy/ver-v1", minari_dirs.cache / "toy" / "ver-v1")
    assert load_transitions("toy/ver-v0").observations[0, 0] == 20_000  # the embedded copy
    latest = load_transitions("toy/ver")
    assert latest.observations[0, 0] == 30_000 and latest.dataset_ids == ["toy/ver-v1"]
    assert locate_dataset("toy/ver-v7") is None


def test_embedded_dir_default_and_override(monkeypatch, tmp_path):
    monkeypatch.delenv("C4_DATASETS_PATH", raising=False)
    assert embedded_datasets_dir() == EMBEDDED_DATASETS_DIR
    assert EMBEDDED_DATASETS_DIR == cm.Path(cm.__file__).resolve().parents[2] / "datasets"
    monkeypatch.setenv("C4_DATASETS_PATH", str(tmp_path))
    assert embedded_datasets_dir() == tmp_path


def test_unknown_id_lists_local_ids_and_collect_command(toy_minari):
    with pytest.raises(DatasetError) as err:
        resolve_dataset("hopper/medium-v0", download=False)
    msg = str(err.value)
    assert "'hopper/medium-v0' was not found" in msg
    for dataset_id in ("toy/mixed-v0", "toy/other-v0", "toy/labelled-v0", "toy/long-v0"):
        assert dataset_id in msg
    assert (
        "c4-collect train --env Hopper-v5 --out-dir runs/collect/hopper && "
        "c4-collect record --env Hopper-v5 --out-dir runs/collect/hopper --datasets-dir datasets"
    ) in msg
    with pytest.raises(DatasetError, match=r"--env <Env>"):
        resolve_dataset("mystery/thing", download=False)


def test_download_is_tried_and_network_failure_is_a_clear_error(toy_minari, monkeypatch):
    import minari

    calls = []

    def offline(dataset_id, download=False):
        calls.append((dataset_id, download))
        raise ConnectionError("Name or service not known")

    monkeypatch.setattr(minari, "load_dataset", offline)
    with pytest.raises(DatasetError) as err:
        resolve_dataset("D4RL/hopper/medium-v2")
    assert calls == [("D4RL/hopper/medium-v2", True)]
    msg = str(err.value)
    assert "downloading it failed (ConnectionError: Name or service not known)" in msg
    assert "toy/mixed-v0" in msg and "c4-collect train" in msg
    # a successful download is used as is
    downloaded = open_dataset_folder(toy_minari.cache / "toy" / "other-v0")
    monkeypatch.setattr(minari, "load_dataset", lambda dataset_id, download=False: downloaded)
    assert len(load_transitions("remote/other-v0")) == sum(n for n, _ in OTHER_EPISODES)


def test_unversioned_unknown_id_is_not_sent_to_minari(toy_minari, monkeypatch):
    """``mystery/thing`` has no ``-vN``: Minari's remote loader would fail parsing it (``TypeError: int()``); the
    message says what a remote id looks like instead, and no download is attempted."""
    import minari

    calls = []
    monkeypatch.setattr(minari, "load_dataset", lambda *a, **k: calls.append(a))
    with pytest.raises(DatasetError) as err:
        resolve_dataset("mystery/thing")
    assert calls == []
    assert "namespace/name-vN" in str(err.value) and "TypeError" not in str(err.value)


def test_remote_loading_dependency_is_installed():
    """``minari[hf]``: remote ids need huggingface_hub (a plain ``minari`` install fails with ImportError)."""
    import huggingface_hub  # noqa: F401


def test_corrupt_hdf5_names_file_and_suggests_recreating(minari_dirs):
    folder = build_minari_dataset(minari_dirs.cache, "toy/broken-v0", [(3, "term"), (4, "trunc")])
    data_file = folder / "data" / "main_data.hdf5"
    raw = data_file.read_bytes()
    data_file.write_bytes(raw[: len(raw) // 3])
    with pytest.raises(DatasetError) as err:
        load_transitions("toy/broken-v0")
    assert str(data_file) in str(err.value) and "re-create" in str(err.value)


def test_corrupt_metadata_names_file(minari_dirs):
    folder = build_minari_dataset(minari_dirs.cache, "toy/badmeta-v0", [(3, "term")])
    meta = folder / "data" / "metadata.json"
    meta.write_text(meta.read_text()[:20])
    with pytest.raises(DatasetError) as err:
        load_transitions("toy/badmeta-v0")
    assert str(meta) in str(err.value) and "re-create" in str(err.value)


def test_nan_in_dataset_names_field_and_rows(minari_dirs):
    buffers = episode_buffers([(3, "term"), (4, "trunc")])
    buffers[1].observations[2, 0] = np.nan  # episode 1, t=2: observations of row 3+2=5, next_observations of row 4
    buffers[0].rewards[1] = np.inf
    build_minari_dataset(minari_dirs.cache, "toy/nan-v0", buffers=buffers)
    with pytest.raises(DatasetError) as err:
        load_transitions("toy/nan-v0")
    msg = str(err.value)
    assert "toy/nan-v0" in msg
    assert "'observations' has 1 row(s) with NaN/Inf (first at row 5)" in msg
    assert "'next_observations' has 1 row(s) with NaN/Inf (first at row 4)" in msg
    assert "'rewards' has 1 row(s) with NaN/Inf (first at row 1)" in msg


def test_load_transitions_subsample_and_mixture(toy_minari):
    t = load_transitions("toy/mixed", max_transitions=11, subsample_seed=4)
    assert len(t) == 11 and int(t.last_steps.sum()) == t.num_episodes
    with pytest.raises(DatasetError, match=r"max_transitions=27 is larger than the dataset, which has 26"):
        load_transitions("toy/mixed", max_transitions=27)
    m = load_transitions(["toy/mixed", "toy/labelled", "toy/other"], max_transitions=15, subsample_seed=2)
    assert len(m) == 15
    assert m.source_names == ["toy/mixed-v0", "alpha", "beta", "gamma", "toy/other-v0"]
    origin = m.observations[:, 0].numpy().astype(np.int64) // 10_000
    part = origin // 100  # 0: mixed, 2: labelled, 1: other
    assert np.bincount(part, minlength=3).tolist() == [5, 5, 5]
    names = np.array(m.source_names)[m.sources.numpy()]
    assert np.all(names[part == 0] == "toy/mixed-v0") and np.all(names[part == 1] == "toy/other-v0")
    labelled_ep = origin[part == 2] - 200
    assert np.array_equal(
        names[part == 2], np.array(["alpha", "beta", "gamma"])[np.array(LABELLED_SOURCES)[labelled_ep]]
    )
    assert m.dataset_ids == ["toy/mixed-v0", "toy/labelled-v0", "toy/other-v0"]
    shares = load_transitions(["toy/mixed", "toy/other"], shares=[3, 1], max_transitions=20)
    assert np.bincount(shares.observations[:, 0].numpy().astype(np.int64) // 1_000_000, minlength=2).tolist() == [15, 5]
