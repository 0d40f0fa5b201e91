"""Transitions dataclass and its pure functions: subsample_episodes, mix, check_finite, observation_stats."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from c4_lightning.data.errors import DatasetError
from c4_lightning.data.transitions import (
    Transitions,
    check_finite,
    concatenate,
    mix,
    observation_stats,
    subsample_episodes,
)
from minari_fixtures import act_code, obs_code, synthetic_transitions


def _episodes(t: Transitions) -> dict[int, np.ndarray]:
    ep = t.episode_ids.numpy()
    return {int(e): np.flatnonzero(ep == e) for e in np.unique(ep)}


def _origin(t: Transitions) -> np.ndarray:
    """Original (ep_base + episode) of every row, decoded from the observation codes."""
    return (t.observations[:, 0].numpy().astype(np.int64)) // 10_000


def assert_whole_episodes_plus_one_cut(t: Transitions, source: Transitions) -> int:
    """Every episode of ``t`` is a prefix (from step 0) of a source episode, complete except at most
    one; the cut one ends with last_steps=1, timeouts=1 (not terminal), next_action = own action.
    Returns the number of cut episodes."""
    full_len = {int(o): int(n) for o, n in zip(*np.unique(_origin(source), return_counts=True))}
    cut = 0
    for rows in _episodes(t).values():
        steps = t.steps[rows].numpy()
        origin = np.unique(_origin(t)[rows])
        assert origin.size == 1, "an episode id mixes rows of different source episodes"
        assert np.array_equal(steps, np.arange(rows.size)), "episode rows must be a prefix in step order"
        last = rows[-1]
        assert t.last_steps[rows].tolist() == [0.0] * (rows.size - 1) + [1.0]
        assert t.terminals[last] + t.timeouts[last] == 1.0
        # inside an episode next_actions is the following row's action
        assert torch.equal(t.next_actions[rows[:-1]], t.actions[rows[1:]])
        assert torch.equal(t.next_observations[rows[:-1]], t.observations[rows[1:]])
        assert torch.equal(t.next_actions[last], t.actions[last])
        if rows.size < full_len[int(origin[0])]:
            cut += 1
            assert t.timeouts[last] == 1.0 and t.terminals[last] == 0.0
    assert cut <= 1
    return cut


# --------------------------------------------------------------------------- dataclass


def test_dataclass_basics():
    t = synthetic_transitions([3, 2, 4], obs_dim=2, act_dim=1)
    assert len(t) == 9 and t.obs_dim == 2 and t.act_dim == 1 and t.num_episodes == 3
    assert t.observations.dtype == torch.float32 and t.episode_ids.dtype == torch.int64
    sub = t.select(torch.tensor([0, 5, 8]))
    assert len(sub) == 3 and sub.steps.tolist() == [0, 0, 3] and sub.episode_ids.tolist() == [0, 2, 2]
    assert sub.source_names == t.source_names and sub.source_names is not t.source_names
    assert len(t.select(slice(2, 5))) == 3
    assert len(t.select(t.terminals.bool())) == int(t.terminals.sum())
    moved = t.to("cpu")
    assert torch.equal(moved.observations, t.observations)


def test_dataclass_rejects_bad_fields():
    t = synthetic_transitions([3, 2])
    fields = t.tensors()
    with pytest.raises(DatasetError, match=r"rewards has shape \(4,\).*N=5"):
        Transitions(**{**fields, "rewards": fields["rewards"][:4]}, source_names=["s"])
    with pytest.raises(DatasetError, match="episode_ids must hold integers"):
        Transitions(**{**fields, "episode_ids": fields["episode_ids"].float()}, source_names=["s"])
    with pytest.raises(DatasetError, match="source_names has 0 entries"):
        Transitions(**fields, source_names=[])
    with pytest.raises(DatasetError, match="only 5 transitions"):
        t.select([7])


# --------------------------------------------------------------------------- subsample


def test_subsample_exact_count_whole_episodes_plus_one_cut():
    t = synthetic_transitions([5, 3, 7, 1, 4, 6], terminal_ends=[True, False, True, False, False, True])
    out = subsample_episodes(t, 11, seed=3)
    assert len(out) == 11
    assert assert_whole_episodes_plus_one_cut(out, t) in (0, 1)
    # the same seed gives the same rows, another seed (usually) other rows
    assert torch.equal(subsample_episodes(t, 11, seed=3).observations, out.observations)
    others = [subsample_episodes(t, 11, seed=s).observations for s in range(4, 10)]
    assert any(not torch.equal(o, out.observations) for o in others)


def test_subsample_cut_episode_flags():
    # one 6-step episode ending in a terminal, cut to 4 steps: the 4th step becomes a timeout
    t = synthetic_transitions([6], terminal_ends=[True])
    out = subsample_episodes(t, 4, seed=0)
    assert out.last_steps.tolist() == [0, 0, 0, 1]
    assert out.timeouts.tolist() == [0, 0, 0, 1]
    assert out.terminals.tolist() == [0, 0, 0, 0]
    assert torch.equal(out.next_actions[3], out.actions[3])
    assert not torch.equal(t.next_actions[3], t.actions[3])  # the source is left untouched
    assert torch.equal(out.next_observations[3], t.next_observations[3])
    assert t.timeouts.sum() == 0


def test_subsample_cut_at_true_terminal_keeps_terminal():
    t = synthetic_transitions([5], terminal_ends=[True])
    t.terminals[2] = 1.0  # a (malformed) mid-episode terminal exactly where the cut falls
    out = subsample_episodes(t, 3, seed=0)
    assert out.terminals[2] == 1.0 and out.timeouts[2] == 0.0 and out.last_steps[2] == 1.0


def test_subsample_uses_its_own_seed_not_torch_global():
    t = synthetic_transitions([4] * 10)
    torch.manual_seed(0)
    a = subsample_episodes(t, 17, seed=1)
    torch.manual_seed(123)
    np.random.seed(5)
    b = subsample_episodes(t, 17, seed=1)
    assert torch.equal(a.observations, b.observations)


def test_subsample_full_size_is_identity_and_too_large_errors():
    t = synthetic_transitions([3, 4])
    same = subsample_episodes(t, len(t), seed=9)
    for k, v in t.tensors().items():
        assert torch.equal(v, getattr(same, k)), k
    with pytest.raises(DatasetError, match=r"max_transitions=8 .* has 7 transitions"):
        subsample_episodes(t, 8, seed=0)
    with pytest.raises(DatasetError, match=">= 1"):
        subsample_episodes(t, 0, seed=0)


@settings(max_examples=60, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 12), min_size=1, max_size=12),
    frac=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**32 - 1),
)
def test_property_subsample(lengths, frac, seed):
    t = synthetic_transitions(lengths)
    k = max(1, int(round(frac * len(t))))
    out = subsample_episodes(t, k, seed)
    assert len(out) == k
    assert_whole_episodes_plus_one_cut(out, t)
    # the kept episodes are whole except one: the count of complete episodes is consistent
    assert out.num_episodes <= len(lengths)


# --------------------------------------------------------------------------- mix


def _parts():
    a = synthetic_transitions([5, 5, 5, 5], ep_base=100, source_name="a", dataset_id="a-v0")
    b = synthetic_transitions([3, 3, 3, 3, 3, 3], ep_base=200, source_name="b", dataset_id="b-v0")
    c = synthetic_transitions([10, 10], ep_base=300, source_name="c", dataset_id="c-v0")
    return a, b, c


def _part_of(t: Transitions) -> np.ndarray:
    return _origin(t) // 100


def test_mix_equal_shares_sources_and_unique_episode_ids():
    a, b, c = _parts()
    out = mix([a, b, c], total=10, seed=0)
    assert len(out) == 10
    counts = np.bincount(_part_of(out), minlength=4)[1:]
    assert sorted(counts.tolist()) == [3, 3, 4]  # 10/3 each, rounded to add up to 10
    assert out.source_names == ["a", "b", "c"]
    assert out.dataset_ids == ["a-v0", "b-v0", "c-v0"]
    # source labels follow the rows' true origin
    assert np.array_equal(out.sources.numpy(), _part_of(out) - 1)
    # episode ids are unique across parts: an id never spans two origins
    for rows in _episodes(out).values():
        assert np.unique(_origin(out)[rows]).size == 1
    for part, src in zip((a, b, c), range(3)):
        assert_whole_episodes_plus_one_cut(out.select(out.sources == src), part)


def test_mix_given_shares_are_normalised_and_total_none_takes_largest():
    a, b, _ = _parts()  # 20 and 18 transitions
    out = mix([a, b], shares=[2.0, 1.0], total=None, seed=1)
    # largest total with a at 2/3 and b at 1/3: min(20 / (2/3), 18 / (1/3)) = 30
    assert len(out) == 30
    assert np.bincount(_part_of(out), minlength=3)[1:].tolist() == [20, 10]
    equal = mix([a, b], seed=1)
    assert len(equal) == 36 and np.bincount(_part_of(equal), minlength=3)[1:].tolist() == [18, 18]


def test_mix_dedupes_identical_source_names_and_remaps():
    a = synthetic_transitions([4, 4], ep_base=100, source_name="same")
    b = synthetic_transitions([4, 4], ep_base=200, source_name="same")
    c = synthetic_transitions([4, 4], ep_base=300, source_name="other")
    out = mix([a, b, c], total=12, seed=0)
    assert out.source_names == ["same", "other"]
    assert np.array_equal(out.sources.numpy(), np.where(_part_of(out) == 3, 1, 0))


def test_mix_errors():
    a, b, _ = _parts()
    with pytest.raises(DatasetError, match=r"needs 19 from b-v0, which has only 18"):
        mix([a, b], total=38, seed=0)
    with pytest.raises(DatasetError, match="shares has 3 entries but there are 2 datasets"):
        mix([a, b], shares=[1, 1, 1])
    with pytest.raises(DatasetError, match="not all zero"):
        mix([a, b], shares=[0, 0])
    odd = synthetic_transitions([3], obs_dim=5)
    with pytest.raises(DatasetError, match="different observation/action sizes"):
        concatenate([a, odd])


@settings(max_examples=40, deadline=None)
@given(
    lengths=st.lists(st.lists(st.integers(1, 8), min_size=1, max_size=6), min_size=1, max_size=3),
    shares=st.lists(st.floats(0.1, 5.0), min_size=3, max_size=3),
    frac=st.floats(0.05, 1.0),
    seed=st.integers(0, 10_000),
)
def test_property_mix(lengths, shares, frac, seed):
    parts = [
        synthetic_transitions(ls, ep_base=100 * (i + 1), source_name=f"s{i}", dataset_id=f"d{i}")
        for i, ls in enumerate(lengths)
    ]
    w = np.asarray(shares[: len(parts)])
    w = w / w.sum()
    largest = len(mix(parts, shares=list(w), seed=seed))
    sizes = np.array([len(p) for p in parts])
    # "largest": every part supplies its exact share of it, but not of one more transition
    assert np.all(w * largest <= sizes + 1e-6)
    assert np.any(w * (largest + 1) > sizes)
    total = max(1, int(frac * largest))
    out = mix(parts, shares=list(w), total=total, seed=seed)
    assert len(out) == total
    counts = np.bincount(_part_of(out), minlength=len(parts) + 1)[1:]
    assert counts.sum() == total
    assert np.all(np.abs(counts - w * total) < 1.0 + 1e-9)  # largest-remainder rounding
    for i, part in enumerate(parts):
        sel = out.sources == out.source_names.index(f"s{i}") if f"s{i}" in out.source_names else None
        if sel is not None:
            assert_whole_episodes_plus_one_cut(out.select(sel), part)
    assert len(set(out.episode_ids.tolist())) == out.num_episodes


# --------------------------------------------------------------------------- checks and stats


def test_check_finite_names_fields_and_row_counts():
    t = synthetic_transitions([4, 4])
    assert check_finite(t, "ok") is t
    t.observations[1, 0] = float("nan")
    t.observations[5, 1] = float("inf")
    t.observations[5, 0] = float("nan")
    t.rewards[2] = float("-inf")
    with pytest.raises(DatasetError) as err:
        check_finite(t, "hopper/bad-v0")
    msg = str(err.value)
    assert "hopper/bad-v0" in msg
    assert "'observations' has 2 row(s) with NaN/Inf (first at row 1)" in msg
    assert "'rewards' has 1 row(s)" in msg
    assert "actions" not in msg.replace("next_actions", "")


def test_observation_stats_matches_d4rl_convention():
    t = synthetic_transitions([3, 5, 2], obs_dim=3)
    mean, std = observation_stats(t)
    obs = t.observations.numpy().astype(np.float64)
    np.testing.assert_allclose(mean.numpy(), obs.mean(0), rtol=1e-6)
    np.testing.assert_allclose(std.numpy(), obs.std(0) + 1e-3, rtol=1e-6)
    assert mean.dtype == torch.float32 and std.shape == (3,)
    one = synthetic_transitions([1], obs_dim=2)
    _, std1 = observation_stats(one, eps=0.5)
    assert torch.allclose(std1, torch.full((2,), 0.5))


def test_synthetic_codes_are_aligned():
    """Sanity check of the test helper itself (used by the property tests above)."""
    t = synthetic_transitions([2, 3], obs_dim=2, act_dim=2)
    assert t.observations[3].tolist() == obs_code(1, 1, np.arange(2)).tolist()
    assert t.actions[3].tolist() == act_code(1, 1, np.arange(2)).tolist()
