"""``ClusterRefitCallback`` through the Trainer: first partition before the first step, refits replace the
sampler's partition (and the batches follow it), sizes/counters logged, a failed GMM fit keeps the previous
partition, and the trajectory-tail and average-critics flags."""

from __future__ import annotations

import warnings

import lightning as L
import numpy as np
import pytest
import torch

from helpers_lightning import BatchSpy, MemoryLogger, make_datamodule, make_trainer, toy_env  # noqa: F401

import c4_lightning.c4.callback as callback_mod
from c4_lightning.algos import TD3BC
from c4_lightning.c4.callback import ClusterRefitCallback, trajectory_tail_members
from c4_lightning.c4.clustering import ClusterFitError
from c4_lightning.c4.config import C4Config

CHAIN = "toy/chain-v0"  # 40 episodes x 12 steps, N = 480, obs 4, act 2
N, K, B, S = 480, 3, 32, 4  # transitions, clusters, batch, steps per epoch


def run(tmp_path, max_steps, c4_kwargs=None, module_kwargs=None, expect_warning=False):
    L.seed_everything(0, verbose=False)
    cfg = dict(enabled=True, n_clusters=K, penalty_weight=0.1, pca_dim=6, refit_every_n_epochs=1)
    cfg.update(c4_kwargs or {})
    module = TD3BC(obs_dim=4, act_dim=2, hidden_dims=(16, 16), c4=C4Config(**cfg), **(module_kwargs or {}))
    dm = make_datamodule(CHAIN, batch_size=B, steps_per_epoch=S)
    spy, logger = BatchSpy(), MemoryLogger()
    trainer = make_trainer(tmp_path, max_steps=max_steps, callbacks=[spy], logger=logger)
    with warnings.catch_warnings():
        if not expect_warning:
            warnings.simplefilter("ignore")
        trainer.fit(module, datamodule=dm)
    refit = [c for c in trainer.callbacks if isinstance(c, ClusterRefitCallback)]
    assert len(refit) == 1
    return module, dm, spy, logger, refit[0], trainer


def cluster_of_batch(labels: torch.Tensor, idx: torch.Tensor) -> int:
    ks = labels[idx].unique()
    assert ks.numel() == 1, f"batch spans clusters {ks.tolist()}"
    return int(ks)


def test_first_partition_before_first_step_and_refits_replace_labels(toy_env, tmp_path):
    module, dm, spy, logger, refit, trainer = run(tmp_path, max_steps=2 * S)
    assert trainer.global_step == 2 * S
    parts = spy.partitions
    # the sampler was partitioned before batch 0 was drawn, and batch 0 comes from one cluster of it
    assert isinstance(parts[0], torch.Tensor) and parts[0].shape == (N,)
    cluster_of_batch(parts[0], spy.batches[0][2])
    # epoch 0 runs on the initial partition, epoch 1 on the refitted one; every batch is single-cluster
    assert all(torch.equal(p, parts[0]) for p in parts[:S])
    assert all(torch.equal(p, parts[S]) for p in parts[S:])
    assert not torch.equal(parts[0], parts[S]), "the refit did not change the labels"
    for (_, _, idx), labels in zip(spy.batches, parts):
        cluster_of_batch(labels, idx)
    # the refit after epoch 1 (the last one) is handed to the sampler too
    assert refit.refits == 3 and refit.failures == 0
    assert torch.equal(dm.sampler.labels, torch.as_tensor(refit.labels))
    assert not torch.equal(dm.sampler.labels, parts[S])
    # sizes, counters and timings are logged at every partition
    assert logger.values("c4/refits") == [1.0, 2.0, 3.0]
    assert logger.values("c4/refit_failures") == [0.0, 0.0, 0.0]
    assert len(logger.values("c4/refit_seconds")) == 3
    sizes = np.array([logger.values(f"c4/cluster_size_{k}") for k in range(K)])  # [K, 3 partitions]
    assert (sizes.sum(0) == N).all()
    np.testing.assert_array_equal(sizes[:, 0], np.bincount(parts[0].numpy(), minlength=K))
    np.testing.assert_array_equal(sizes[:, 1], np.bincount(parts[S].numpy(), minlength=K))
    np.testing.assert_array_equal(sizes[:, 2], np.bincount(refit.labels, minlength=K))


def test_refit_every_n_epochs(toy_env, tmp_path):
    *_, logger, refit, _ = run(tmp_path, max_steps=3 * S, c4_kwargs=dict(refit_every_n_epochs=2))
    assert refit.refits == 2 and logger.values("c4/refits") == [1.0, 2.0]  # initial + after epoch 1
    *_, refit0, _ = run(tmp_path / "never", max_steps=2 * S, c4_kwargs=dict(refit_every_n_epochs=0))
    assert refit0.refits == 1


def test_refit_with_gradient_features(toy_env, tmp_path):
    _, dm, spy, _, refit, _ = run(tmp_path, max_steps=2 * S, c4_kwargs=dict(feature="gradient"))
    assert refit.refits == 3 and refit.failures == 0
    assert not torch.equal(spy.partitions[0], spy.partitions[S])
    for (_, _, idx), labels in zip(spy.batches, spy.partitions):
        cluster_of_batch(labels, idx)


def test_failed_refit_keeps_previous_partition(toy_env, tmp_path, monkeypatch):
    real_fit = callback_mod.fit_partition
    calls = []

    def flaky_fit(*args, **kwargs):
        calls.append(1)
        if len(calls) > 1:
            raise ClusterFitError("forced failure")
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(callback_mod, "fit_partition", flaky_fit)
    with pytest.warns(UserWarning, match="refit at epoch .* failed .*forced failure.*keeping the previous"):
        module, dm, spy, logger, refit, trainer = run(tmp_path, max_steps=2 * S, expect_warning=True)
    assert len(calls) == 3 and trainer.global_step == 2 * S  # training went on
    first = spy.partitions[0]
    assert all(torch.equal(p, first) for p in spy.partitions)
    assert torch.equal(dm.sampler.labels, first) and np.array_equal(refit.labels, first.numpy())
    assert refit.failures == 2 and refit.refits == 1
    assert logger.values("c4/refit_failures") == [0.0, 1.0, 2.0]
    assert logger.values("c4/refits") == [1.0, 1.0, 1.0]
    for (_, _, idx), labels in zip(spy.batches, spy.partitions):
        cluster_of_batch(labels, idx)


def test_failed_first_partition_samples_uniformly(toy_env, tmp_path, monkeypatch):
    def broken_fit(*args, **kwargs):
        raise ClusterFitError("forced failure")

    monkeypatch.setattr(callback_mod, "fit_partition", broken_fit)
    with pytest.warns(UserWarning, match="keeping the previous partition"):
        _, dm, spy, logger, refit, trainer = run(tmp_path, max_steps=S + 1, expect_warning=True)
    assert trainer.global_step == S + 1
    assert all(p is None for p in spy.partitions) and dm.sampler.uniform
    assert logger.values("c4/refit_failures") == [1.0, 2.0, 3.0]


# ------------------------------------------------------------------ trajectory tail


def test_trajectory_tail_members_by_hand():
    episode_ids = np.array([0, 0, 0, 0, 1, 1, 1])
    labels = np.array([1, 0, 1, 2, 2, 2, 0])
    members = trajectory_tail_members(labels, episode_ids, 3)
    # the authors' rule: members, plus every step after a trajectory's *last* member (cluster 1 in episode 0 has
    # members 0 and 2: step 1 is not added, step 3 is)
    assert [m.tolist() for m in members] == [[1, 2, 3, 6], [0, 2, 3], [3, 4, 5, 6]]


def test_trajectory_tail_flag_gives_overlapping_member_lists(toy_env, tmp_path):
    _, dm, spy, logger, refit, _ = run(tmp_path, max_steps=2 * S, c4_kwargs=dict(extend_with_trajectory_tail=True))
    episode_ids = dm.transitions.episode_ids.numpy()
    steps = dm.transitions.steps.numpy()
    members = dm.sampler.members
    assert members is not None and dm.sampler.labels is None
    labels = refit.labels
    assert sum(len(m) for m in members) > N  # overlapping
    for k, m in enumerate(members):
        m = m.numpy()
        assert set(np.flatnonzero(labels == k)) <= set(m)  # every member of cluster k stays in it
        for ep in np.unique(episode_ids[m]):  # ... plus every step after the trajectory's last member (authors' rule)
            in_ep = np.sort(m[episode_ids[m] == ep])
            first = np.flatnonzero(episode_ids == ep)[0]
            own = first + np.flatnonzero(labels[episode_ids == ep] == k)
            tail = np.arange(own[-1], first + steps[episode_ids == ep].max() + 1)
            np.testing.assert_array_equal(in_ep, np.union1d(own, tail))
    # every batch came from one member list of the partition in force
    for (_, _, idx), part in zip(spy.batches, spy.partitions):
        assert isinstance(part, list)
        assert any(set(idx.tolist()) <= set(m.tolist()) for m in part)
    # off by default: plain labels
    _, dm_off, *_ = run(tmp_path / "off", max_steps=S)
    assert dm_off.sampler.members is None and dm_off.sampler.labels is not None


# ------------------------------------------------------------------ average critics


def _members_equal(critic) -> bool:
    return all(torch.equal(p[0], p[1]) for p in critic.parameters())


def test_average_critics_helper_sets_both_members_to_the_mean():
    torch.manual_seed(0)
    module = TD3BC(obs_dim=4, act_dim=2, hidden_dims=(8, 8))
    before = [p.detach().clone() for p in module.critic.parameters()]
    ClusterRefitCallback._average_critics(module)
    for b, p in zip(before, module.critic.parameters()):
        torch.testing.assert_close(p[0], b.mean(0))
        torch.testing.assert_close(p[1], b.mean(0))


def test_average_critics_flag_at_refit_only(toy_env, tmp_path):
    # one epoch ending in a refit: averaged
    module, *_, refit, _ = run(tmp_path, max_steps=S, c4_kwargs=dict(average_critics_at_refit=True))
    assert refit.refits == 2 and _members_equal(module.critic)
    assert not _members_equal(module.critic_target)  # only the online critics
    # the initial partition does not average (refit only after epoch 2 here): the twins stay distinct
    module, *_, refit, _ = run(
        tmp_path / "b", max_steps=S, c4_kwargs=dict(average_critics_at_refit=True, refit_every_n_epochs=2)
    )
    assert refit.refits == 1 and not _members_equal(module.critic)
    # flag off: never averaged
    module, *_, refit, _ = run(tmp_path / "c", max_steps=S)
    assert refit.refits == 2 and not _members_equal(module.critic)


def test_callback_cadence_uses_the_dataset_size_and_global_batch(caplog):
    """The callback asks the config for the interval with this run's N and global batch (batch x ranks) and says so
    once when the default is longer than 10,000 updates; its own override is used as given."""
    from types import SimpleNamespace

    from c4_lightning.c4.config import C4Config

    dm = SimpleNamespace(num_transitions=4_000_000, batch_size=256)
    trainer = SimpleNamespace(datamodule=dm, world_size=2)
    module = SimpleNamespace(c4=SimpleNamespace(config=C4Config(enabled=True)))
    cb = ClusterRefitCallback()
    assert cb.cadence(trainer, module) == ("updates", 39_063)  # 5 x 4M / 512
    with caplog.at_level("INFO"):
        cb._announce_default(trainer, module)
    assert "C4 refits every 39,063 updates" in caplog.text and "model.c4.refit_every_n_updates" in caplog.text
    assert ClusterRefitCallback(every_n_updates=50).cadence(trainer, module) == ("updates", 50)
    small = SimpleNamespace(datamodule=SimpleNamespace(num_transitions=10_000, batch_size=256), world_size=1)
    assert cb.cadence(small, module) == ("updates", 10_000)


def test_a_resume_at_another_refit_interval_warns_and_the_interval_is_saved():
    """The checkpoint records the cadence the run refitted at; resuming at another one (another default, dataset size
    or number of ranks) warns, and so does resuming a checkpoint from before the cadence was recorded while relying
    on the default, which changed from 1,000 to 10,000 updates on 2026-12-02."""
    from types import SimpleNamespace

    from c4_lightning.c4.config import C4Config

    trainer = SimpleNamespace(datamodule=SimpleNamespace(num_transitions=10_000, batch_size=256), world_size=1)
    module = SimpleNamespace(c4=SimpleNamespace(config=C4Config(enabled=True)))
    base = {"labels": None, "model": None, "refits": 3, "failures": 0, "next_refit_at": 3000}

    first = ClusterRefitCallback()
    first.check_resumed_cadence(trainer, module)  # a fresh run: nothing restored, nothing to say
    assert first.state_dict()["cadence"] == ["updates", 10_000]

    for saved, warns in (
        ({"cadence": ["updates", 10_000]}, None),
        ({"cadence": ["updates", 1000]}, "cadence changed on resume"),
        ({}, "predates the recorded refit cadence"),
    ):
        cb = ClusterRefitCallback()
        cb.load_state_dict({**base, **saved})
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            cb.check_resumed_cadence(trainer, module)
        messages = " ".join(str(w.message) for w in caught)
        assert (warns in messages) if warns else not messages, (saved, messages)
    explicit = SimpleNamespace(c4=SimpleNamespace(config=C4Config(enabled=True, refit_every_n_updates=500)))
    cb = ClusterRefitCallback()
    cb.load_state_dict(base)  # an old checkpoint, but the interval is set explicitly: nothing changed
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cb.check_resumed_cadence(trainer, explicit)
    assert not caught
