"""ClusterBatchSampler: single-cluster batches, size-proportional choice, DDP consistency, resume."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import binomtest, chisquare
from torch.utils.data import DataLoader

from c4_lightning.data.errors import SamplerError
from c4_lightning.data.sampler import ClusterBatchSampler, index_seed


def _labels(sizes, seed=0) -> torch.Tensor:
    """Shuffled labels with the given cluster sizes."""
    lab = np.repeat(np.arange(len(sizes)), sizes)
    return torch.from_numpy(np.random.default_rng(seed).permutation(lab))


def _reference_uniform(n, b, seed, rank, gs):
    return [torch.randint(n, (b,), generator=torch.Generator().manual_seed(index_seed(seed, rank, g))) for g in gs]


def test_labels_none_is_the_plain_uniform_stream(monkeypatch):
    import c4_lightning.data.sampler as sampler_module

    def no_cluster_randomness(*args):
        raise AssertionError("the cluster-choice stream was used without labels")

    monkeypatch.setattr(sampler_module, "cluster_seed", no_cluster_randomness)
    s = ClusterBatchSampler(num_samples=100, batch_size=16, steps_per_epoch=5, seed=7)
    batches = list(s)
    assert len(batches) == 5 and all(b.dtype == torch.int64 and b.shape == (16,) for b in batches)
    ref = _reference_uniform(100, 16, 7, 0, range(5))
    assert all(torch.equal(a, r) for a, r in zip(batches, ref))
    assert s.last_cluster == -1 and s.cluster_sizes.numel() == 0 and s.active_clusters.numel() == 0
    # the global torch RNG plays no part
    torch.manual_seed(0)
    s2 = ClusterBatchSampler(num_samples=100, batch_size=16, steps_per_epoch=5, seed=7)
    torch.rand(3)
    assert all(torch.equal(a, b) for a, b in zip(batches, s2))


def test_every_batch_comes_from_one_cluster():
    labels = _labels([400, 350, 250])
    s = ClusterBatchSampler(1000, 32, 200, labels=labels, seed=1)
    seen = set()
    for idx in s:
        lab = labels[idx]
        assert torch.all(lab == lab[0]) and int(lab[0]) == s.last_cluster
        seen.add(s.last_cluster)
    assert seen == {0, 1, 2}


def test_cluster_frequency_is_proportional_to_size():
    sizes = [500, 300, 200]
    labels = _labels(sizes, seed=3)
    s = ClusterBatchSampler(1000, 8, 3000, labels=labels, seed=11)
    picks = []
    for _ in s:
        picks.append(s.last_cluster)
    counts = np.bincount(picks, minlength=3)
    expected = np.array(sizes) / 1000 * 3000
    assert chisquare(counts, expected).pvalue > 1e-3
    assert binomtest(int(counts[0]), 3000, 0.5).pvalue > 1e-3
    # within a cluster, members are drawn uniformly (with replacement)
    s0 = ClusterBatchSampler(1000, 64, 400, labels=labels, seed=2, min_cluster_size=450)
    members = torch.cat(list(s0))
    assert torch.all(labels[members] == 0)
    hits = np.bincount(members.numpy(), minlength=1000)[labels.numpy() == 0]
    assert chisquare(hits).pvalue > 1e-3


def test_min_cluster_size_rule():
    labels = _labels([500, 450, 50])
    s = ClusterBatchSampler(1000, 64, 300, labels=labels, seed=0)
    assert s.min_cluster_size == max(64, 1000 // 10) == 100
    assert s.active_clusters.tolist() == [0, 1] and s.cluster_sizes.tolist() == [500, 450, 50]
    picked = {s.last_cluster for _ in s}
    assert picked == {0, 1}
    s.min_cluster_size = 460
    assert s.active_clusters.tolist() == [0] and {s.last_cluster for _ in s} == {0}
    # with more than 10 clusters the default is N // K
    many = ClusterBatchSampler(1000, 4, 1, labels=torch.arange(1000) % 20)
    assert many.min_cluster_size == 50 and many.active_clusters.numel() == 20


def test_no_qualifying_cluster_falls_back_to_uniform_with_one_warning():
    labels = _labels([30, 30, 40])
    with pytest.warns(UserWarning, match="no cluster has at least min_cluster_size=64") as rec:
        s = ClusterBatchSampler(100, 64, 4, labels=labels, seed=5)
    assert len(rec) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # sampling itself warns no more
        batches = list(s)
    assert s.uniform and s.last_cluster == -1
    ref = _reference_uniform(100, 64, 5, 0, range(4))
    assert all(torch.equal(a, r) for a, r in zip(batches, ref))


def test_two_ranks_pick_the_same_clusters_and_different_indices():
    labels = _labels([300, 200, 100, 400])
    r0 = ClusterBatchSampler(1000, 16, 50, labels=labels, seed=3, rank=0, world_size=2)
    r1 = ClusterBatchSampler(1000, 16, 50, labels=labels, seed=3, rank=1, world_size=2)
    c0, c1, same_idx = [], [], 0
    for a, b in zip(r0, r1):
        c0.append(r0.last_cluster)
        c1.append(r1.last_cluster)
        same_idx += int(torch.equal(a, b))
        assert torch.all(labels[a] == r0.last_cluster) and torch.all(labels[b] == r1.last_cluster)
    assert c0 == c1 and len(set(c0)) > 1
    assert same_idx == 0


def test_epochs_cover_consecutive_global_batches_and_advance():
    labels = _labels([60, 40])
    s = ClusterBatchSampler(100, 4, 3, labels=labels, seed=9, min_cluster_size=1)
    e0 = list(s)  # no set_epoch: iterating after a finished epoch moves on to the next
    assert s.epoch == 0 and (s.state_dict()["epoch"], s.state_dict()["resume_position"]) == (1, 0)
    e1 = list(s)
    assert s.epoch == 1 and s.state_dict(consumed_in_epoch=3)["epoch"] == 2
    for g, idx in enumerate(e0 + e1):
        assert torch.equal(idx, s.batch(g)[0])
    s.set_epoch(1)
    assert all(torch.equal(a, b) for a, b in zip(list(s), e1))


def test_resume_mid_epoch_continues_the_same_stream():
    labels = _labels([500, 300, 200])
    S = 10

    def run(sampler, epochs):
        out = []
        for e in epochs:
            sampler.set_epoch(e)
            out.extend(sampler)
        return out

    full = run(ClusterBatchSampler(1000, 8, S, labels=labels, seed=4), range(3))

    a = ClusterBatchSampler(1000, 8, S, labels=labels, seed=4)
    first = run(a, [0])
    a.set_epoch(1)
    it = iter(a)
    first += [next(it) for _ in range(7)]
    state = a.state_dict()  # the sampler's own count: 7 batches of epoch 1
    assert state["epoch"] == 1 and state["resume_position"] == 7
    assert a.state_dict(consumed_in_epoch=6)["resume_position"] == 6
    done = a.state_dict(consumed_in_epoch=S)
    assert (done["epoch"], done["resume_position"]) == (2, 0)

    b = ClusterBatchSampler(1000, 8, S, labels=None, seed=999)  # state replaces seed and labels
    b.load_state_dict(state)
    assert torch.equal(b.labels, labels) and b.seed == 4
    b.set_epoch(1)  # what Lightning does after restoring: same epoch keeps the resume point
    rest = list(b)
    assert len(rest) == S - 7
    rest += run(b, [2])
    resumed = first + rest
    assert len(resumed) == len(full)
    assert all(torch.equal(x, y) for x, y in zip(resumed, full))


def test_overlapping_member_lists_and_their_state():
    members = [np.arange(0, 60), np.arange(40, 100), np.array([5, 6])]
    s = ClusterBatchSampler(100, 8, 40, seed=1)
    s.set_members(members)
    assert s.cluster_sizes.tolist() == [60, 60, 2] and s.active_clusters.tolist() == [0, 1]
    picked = set()
    for idx in s:
        assert set(idx.tolist()) <= set(members[s.last_cluster].tolist())
        picked.add(s.last_cluster)
    assert picked == {0, 1}
    s.set_epoch(1)
    state = s.state_dict(consumed_in_epoch=3)
    t = ClusterBatchSampler(100, 8, 40)
    t.load_state_dict(state)
    assert t.labels is None and [m.tolist() for m in t.members] == [m.tolist() for m in members]
    resumed = list(t)
    assert len(resumed) == 37 and all(torch.equal(a, s.batch(40 + 3 + i)[0]) for i, a in enumerate(resumed))
    with pytest.raises(SamplerError, match=r"members\[1\] holds indices in \[0, 100\]"):
        s.set_members([np.arange(3), np.arange(101)])


def test_set_labels_validation():
    s = ClusterBatchSampler(50, 4, 2)
    with pytest.raises(SamplerError, match="length 49 but the dataset has 50 transitions"):
        s.set_labels(torch.zeros(49, dtype=torch.long))
    with pytest.raises(SamplerError, match="must be an integer tensor, got dtype torch.float32"):
        s.set_labels(torch.zeros(50))
    with pytest.raises(SamplerError, match="numpy dtype float64"):
        s.set_labels(np.zeros(50))
    with pytest.raises(SamplerError, match=">= 0"):
        s.set_labels(torch.full((50,), -1))
    s.set_labels(np.zeros(50, dtype=np.int32))
    assert s.cluster_sizes.tolist() == [50]
    s.set_labels(None)
    assert s.uniform
    with pytest.raises(SamplerError, match="rank must be in"):
        ClusterBatchSampler(50, 4, 2, rank=2, world_size=2)
    with pytest.raises(SamplerError, match="batch_size must be an integer >= 1"):
        ClusterBatchSampler(50, 0, 2)
    other = ClusterBatchSampler(60, 4, 2).state_dict()
    with pytest.raises(SamplerError, match="saved for 60 transitions but this dataset has 50"):
        s.load_state_dict(other)


def test_dataloader_with_batch_size_none_yields_the_sampler_batches():
    labels = _labels([70, 30])
    s = ClusterBatchSampler(100, 5, 6, labels=labels, seed=2, min_cluster_size=1)
    data = torch.arange(100) * 10
    loader = DataLoader(data, batch_size=None, sampler=s, num_workers=0, collate_fn=lambda x: x)
    # a map-style dataset indexed with the whole LongTensor: one gather per batch
    got = list(loader)
    assert len(loader) == 6 and len(got) == 6
    for g, batch in enumerate(got):
        assert torch.equal(batch, data[s.batch(g)[0]])


def test_edge_cases_one_point_one_cluster_and_k_larger_than_points():
    one = ClusterBatchSampler(1, 3, 2, labels=torch.zeros(1, dtype=torch.long), min_cluster_size=1)
    assert [b.tolist() for b in one] == [[0, 0, 0], [0, 0, 0]] and one.last_cluster == 0
    single = ClusterBatchSampler(50, 8, 5, labels=torch.zeros(50, dtype=torch.long))
    assert single.min_cluster_size == 8 and {single.last_cluster for _ in single} == {0}
    # K = 100 labels for 5 points: only the cluster with >= batch_size members is sampled
    sparse = ClusterBatchSampler(5, 2, 20, labels=torch.tensor([0, 50, 99, 99, 99]))
    assert sparse.num_clusters == 100 and sparse.min_cluster_size == 2
    assert sparse.active_clusters.tolist() == [99]
    assert all(set(b.tolist()) <= {2, 3, 4} for b in sparse)


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 60),
    k=st.integers(1, 80),
    b=st.integers(1, 70),
    min_size=st.one_of(st.none(), st.integers(1, 30)),
    seed=st.integers(0, 2**31),
    data=st.data(),
)
def test_property_batches_are_single_cluster_or_uniform(n, k, b, min_size, seed, data):
    labels = torch.tensor(data.draw(st.lists(st.integers(0, k - 1), min_size=n, max_size=n)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s = ClusterBatchSampler(n, b, 4, labels=labels, min_cluster_size=min_size, seed=seed)
    sizes = torch.bincount(labels)
    min_eff = min_size if min_size is not None else max(b, n // max(int(labels.max()) + 1, 10))
    assert s.min_cluster_size == min_eff
    assert s.active_clusters.tolist() == torch.nonzero(sizes >= min_eff).flatten().tolist()
    for idx in s:
        assert idx.shape == (b,) and idx.dtype == torch.int64
        assert int(idx.min()) >= 0 and int(idx.max()) < n
        if s.active_clusters.numel():
            assert s.last_cluster in s.active_clusters.tolist()
            assert torch.all(labels[idx] == s.last_cluster)
        else:
            assert s.last_cluster == -1
