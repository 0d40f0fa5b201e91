"""Property tests for the data path, complementing tests/test_transitions.py and tests/test_sampler.py.

Added here (not covered there): subsampling and mixing of inputs that already carry several sources
(labels follow every row), determinism in the seed, no duplicated rows, original order kept, the one-dataset
path of the datamodule (``combine_loaded``); the sampler's cluster proportions for arbitrary partitions, exact
resume from any position, overlapping member lists; and the partition itself when K exceeds the number of
distinct points.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from c4_lightning.c4.clustering import ClusterFitError, fit_partition
from c4_lightning.data.minari import combine_loaded
from c4_lightning.data.sampler import ClusterBatchSampler
from c4_lightning.data.transitions import Transitions, concatenate, mix, subsample_episodes
from minari_fixtures import synthetic_transitions

lengths_st = st.lists(st.integers(1, 9), min_size=1, max_size=8)


def _origin(t: Transitions) -> np.ndarray:
    """(ep_base + episode) of every row, decoded from the observation codes."""
    return t.observations[:, 0].numpy().astype(np.int64) // 10_000


def _labelled(parts_lengths: list[list[int]]) -> Transitions:
    """Parts with ep_base 100, 200, ... and source names s0, s1, ... concatenated: several sources in one."""
    parts = [
        synthetic_transitions(ls, ep_base=100 * (i + 1), source_name=f"s{i}", dataset_id=f"d{i}-v0")
        for i, ls in enumerate(parts_lengths)
    ]
    return concatenate(parts)


def _source_of_row(t: Transitions) -> list[str]:
    return [t.source_names[int(s)] for s in t.sources]


def _expected_source(t: Transitions) -> list[str]:
    return [f"s{o // 100 - 1}" for o in _origin(t)]


def _check_episodes(out: Transitions, source: Transitions) -> None:
    """Whole episodes (prefixes from step 0) except at most one cut, which ends as a time-out."""
    full = dict(zip(*np.unique(_origin(source), return_counts=True)))
    cut = 0
    for e in torch.unique(out.episode_ids):
        rows = torch.nonzero(out.episode_ids == e).flatten()
        assert torch.equal(out.steps[rows], torch.arange(rows.numel()))
        assert np.unique(_origin(out)[rows.numpy()]).size == 1
        assert out.last_steps[rows[-1]] == 1 and out.last_steps[rows[:-1]].sum() == 0
        if rows.numel() < full[_origin(out)[int(rows[0])]]:
            cut += 1
            assert out.timeouts[rows[-1]] == 1 and out.terminals[rows[-1]] == 0
            assert torch.equal(out.next_actions[rows[-1]], out.actions[rows[-1]])
    assert cut <= 1


# ---------------------------------------------------------------------------------------------- subsampling


@settings(max_examples=40, deadline=None)
@given(parts=st.lists(lengths_st, min_size=1, max_size=3), frac=st.floats(0, 1), seed=st.integers(0, 2**32 - 1))
@example(parts=[[7]], frac=0.5, seed=0)  # one episode: the result is its first steps, cut
@example(parts=[[1]], frac=1.0, seed=3)  # one one-step episode
def test_subsample_keeps_sources_order_and_is_deterministic(parts, frac, seed):
    t = _labelled(parts)
    t.ref_min_score, t.ref_max_score, t.env_id = -1.0, 2.0, "Toy-v0"
    k = max(1, round(frac * len(t)))
    out = subsample_episodes(t, k, seed)
    assert len(out) == k
    _check_episodes(out, t)
    # every row is one of the input's rows, once, in the input's order
    codes = out.observations[:, 0].numpy()
    source_codes = t.observations[:, 0].numpy()
    pos = np.searchsorted(source_codes, codes)
    assert np.all(np.diff(pos) > 0) and np.array_equal(source_codes[pos], codes)
    # the source labels, names and metadata travel with the rows
    assert out.source_names == t.source_names and out.dataset_ids == t.dataset_ids
    assert _source_of_row(out) == _expected_source(out)
    assert (out.env_id, out.ref_min_score, out.ref_max_score) == ("Toy-v0", -1.0, 2.0)
    again = subsample_episodes(t, k, seed)
    assert all(torch.equal(a, b) for a, b in zip(out.tensors().values(), again.tensors().values()))
    if len(parts) == 1 and len(parts[0]) == 1:  # one episode: its first k steps
        assert torch.equal(out.steps, torch.arange(k))


@settings(max_examples=30, deadline=None)
@given(parts=st.lists(lengths_st, min_size=1, max_size=3), frac=st.floats(0, 1), seed=st.integers(0, 1000))
def test_combine_loaded_single_dataset_is_an_exact_subsample(parts, frac, seed):
    t = _labelled(parts)
    k = max(1, round(frac * len(t)))
    out = combine_loaded([t], None, k, seed)
    assert len(out) == k and _source_of_row(out) == _expected_source(out)
    assert combine_loaded([t], None, None, seed) is t


# ---------------------------------------------------------------------------------------------- mixing


@settings(max_examples=30, deadline=None)
@given(
    a=st.lists(lengths_st, min_size=1, max_size=2),
    b=st.lists(lengths_st, min_size=1, max_size=2),
    share=st.floats(0.1, 0.9),
    frac=st.floats(0.05, 1.0),
    seed=st.integers(0, 10_000),
)
def test_mix_of_mixtures_keeps_every_rows_source(a, b, share, frac, seed):
    # b's sources are named s{len(a)}.. so the two inputs never share a name
    left = _labelled(a)
    right = concatenate(
        [
            synthetic_transitions(
                ls, ep_base=100 * (len(a) + i + 1), source_name=f"s{len(a) + i}", dataset_id=f"d{len(a) + i}-v0"
            )
            for i, ls in enumerate(b)
        ]
    )
    largest = len(mix([left, right], shares=[share, 1 - share], seed=seed))
    total = max(1, int(frac * largest))
    out = mix([left, right], shares=[share, 1 - share], total=total, seed=seed)
    assert len(out) == total
    assert _source_of_row(out) == _expected_source(out)
    assert set(out.source_names) <= set(left.source_names) | set(right.source_names)
    from_left = np.isin(_origin(out), np.unique(_origin(left)))
    counts = np.array([from_left.sum(), (~from_left).sum()])
    assert np.all(np.abs(counts - np.array([share, 1 - share]) * total) < 1 + 1e-9)
    # no row twice, episode ids unique per origin episode
    assert np.unique(out.observations[:, 0].numpy()).size == total
    for e in torch.unique(out.episode_ids):
        assert np.unique(_origin(out)[(out.episode_ids == e).numpy()]).size == 1
    _check_episodes(out.select(torch.from_numpy(from_left)), left)
    _check_episodes(out.select(torch.from_numpy(~from_left)), right)
    again = mix([left, right], shares=[share, 1 - share], total=total, seed=seed)
    assert torch.equal(out.observations, again.observations) and torch.equal(out.sources, again.sources)


# ---------------------------------------------------------------------------------------------- sampler


@settings(max_examples=15, deadline=None)
@given(sizes=st.lists(st.integers(1, 60), min_size=1, max_size=6), b=st.integers(1, 8), seed=st.integers(0, 2**31))
def test_cluster_choice_follows_sizes_of_the_qualifying_clusters(sizes, b, seed):
    labels = torch.from_numpy(np.random.default_rng(seed).permutation(np.repeat(np.arange(len(sizes)), sizes)))
    n = len(labels)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s = ClusterBatchSampler(n, b, 1, labels=labels, min_cluster_size=b, seed=seed)
    sizes_t = torch.tensor(sizes)
    active = sizes_t >= b
    if not active.any():
        assert s.uniform and s.batch(0)[1] == -1
        return
    draws = 2000
    picks = np.bincount([s.batch(g)[1] for g in range(draws)], minlength=len(sizes))
    assert picks[~active.numpy()].sum() == 0  # clusters smaller than a batch: never
    p = (sizes_t * active).double() / float((sizes_t * active).sum())
    # 2000 draws: the standard deviation of a frequency is <= 0.011, the bound is > 5 of them
    assert np.all(np.abs(picks / draws - p.numpy()) < 0.06)


@settings(max_examples=25, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 30), min_size=1, max_size=4),
    steps=st.integers(1, 6),
    epoch=st.integers(0, 3),
    data=st.data(),
)
def test_resume_from_any_position_continues_the_same_stream(sizes, steps, epoch, data):
    labels = torch.from_numpy(np.repeat(np.arange(len(sizes)), sizes))
    n = len(labels)
    kw = dict(num_samples=n, batch_size=3, steps_per_epoch=steps, labels=labels, min_cluster_size=1, seed=11)
    full = ClusterBatchSampler(**kw)
    full.set_epoch(epoch)
    reference = list(full)
    pos = data.draw(st.integers(0, steps - 1))
    first = ClusterBatchSampler(**kw)
    first.set_epoch(epoch)
    it = iter(first)
    for _ in range(pos):
        next(it)
    state = first.state_dict()
    resumed = ClusterBatchSampler(**{**kw, "labels": None, "seed": 0})
    resumed.load_state_dict(state)
    resumed.set_epoch(epoch)  # Lightning calls set_epoch again after a restore
    rest = list(resumed)
    assert len(rest) == steps - pos
    assert all(torch.equal(a, b) for a, b in zip(rest, reference[pos:]))


@settings(max_examples=25, deadline=None)
@given(n=st.integers(2, 40), k=st.integers(1, 5), b=st.integers(1, 6), seed=st.integers(0, 1000), data=st.data())
def test_overlapping_members_each_batch_inside_one_qualifying_list(n, k, b, seed, data):
    members = [
        np.array(sorted(data.draw(st.sets(st.integers(0, n - 1), max_size=n))), dtype=np.int64) for _ in range(k)
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s = ClusterBatchSampler(n, b, 8, min_cluster_size=b, seed=seed)
        s.set_members(members)
    qualifying = [i for i, m in enumerate(members) if len(m) >= b]
    for idx in s:
        if qualifying:
            assert s.last_cluster in qualifying and np.isin(idx.numpy(), members[s.last_cluster]).all()
        else:
            assert s.last_cluster == -1


# ---------------------------------------------------------------------------------------------- partition


@settings(max_examples=12, deadline=None)
@given(distinct=st.integers(1, 6), k=st.integers(1, 6), repeat=st.integers(2, 6), seed=st.integers(0, 100))
def test_partition_with_more_clusters_than_distinct_points_refuses(distinct, k, repeat, seed):
    rng = np.random.default_rng(seed)
    points = rng.normal(size=(distinct, 3)) * 10
    x = np.repeat(points, repeat, axis=0)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            labels, _ = fit_partition(x, n_clusters=k, pca_dim=2, seed=seed)
    except ClusterFitError as err:
        assert k > 1 and (distinct < k or "no rows" in str(err) or "GaussianMixture" in str(err)), str(err)
        return
    assert distinct >= k
    assert labels.shape == (len(x),) and labels.min() >= 0 and labels.max() < k
    assert np.bincount(labels, minlength=k).min() > 0  # no empty cluster is ever returned
    # duplicates of one point always share a label
    assert all(np.unique(labels[i * repeat : (i + 1) * repeat]).size == 1 for i in range(distinct))


def test_partition_refuses_k_larger_than_distinct_points_with_a_clear_message():
    x = np.repeat(np.eye(3), 5, axis=0)
    with pytest.raises(ClusterFitError, match="distinct"):
        fit_partition(x, n_clusters=4, pca_dim=2)
