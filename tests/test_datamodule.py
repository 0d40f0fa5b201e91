"""OfflineRLDataModule: packed single-gather batches, normalisation, clusters, Lightning wiring, resume."""

from __future__ import annotations

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint
import numpy as np
import pytest
import torch

from c4_lightning.data.datamodule import OfflineRLDataModule
from c4_lightning.data.errors import DatasetError, SamplerError
from c4_lightning.data.sampler import ClusterBatchSampler
from c4_lightning.data.transitions import observation_stats

BATCH_KEYS = {
    "observations",
    "actions",
    "rewards",
    "next_observations",
    "next_actions",
    "terminals",
    "indices",
}


def test_batches_are_normalised_gathers_of_the_raw_transitions(toy_minari):
    dm = OfflineRLDataModule("toy/long", batch_size=16, steps_per_epoch=4, reward_scale=0.5, reward_bias=-1.0)
    dm.setup("fit")
    t = dm.transitions
    assert dm.num_transitions == 300 and dm.obs_dim == 3 and dm.act_dim == 2
    mean, std = observation_stats(t)
    assert torch.equal(dm.obs_mean, mean) and torch.equal(dm.obs_std, std)
    assert dm.packed.dtype == torch.float32 and dm.packed.shape == (300, 3 + 2 + 1 + 3 + 2 + 1)
    batches = list(dm.train_dataloader())
    assert len(batches) == 4
    for g, batch in enumerate(batches):
        assert set(batch) == BATCH_KEYS
        idx = batch["indices"]
        assert torch.equal(idx, dm.sampler.batch(g)[0])
        assert batch["observations"].shape == (16, 3) and batch["rewards"].shape == (16,)
        torch.testing.assert_close(batch["observations"], (t.observations[idx] - mean) / std)
        torch.testing.assert_close(batch["next_observations"], (t.next_observations[idx] - mean) / std)
        assert torch.equal(batch["actions"], t.actions[idx])
        assert torch.equal(batch["next_actions"], t.next_actions[idx])
        assert torch.equal(batch["rewards"], t.rewards[idx] * 0.5 - 1.0)
        assert torch.equal(batch["terminals"], t.terminals[idx])
    # the raw transitions stay unnormalised
    assert t.observations[0, 0] == 300 * 10_000 and t.rewards[1] == 300 * 10_000 + 1


def test_facts_and_features_input(toy_minari):
    dm = OfflineRLDataModule("toy/labelled", batch_size=4, steps_per_epoch=2)
    assert dm.source_names == ["alpha", "beta", "gamma"]  # loads lazily before setup
    assert dm.ref_scores == (-5.0, 50.0) and dm.env_id is None
    assert dm.sources.shape == (26,) and dm.sources.dtype == torch.int64
    obs, act, next_obs, next_act = dm.features_input()
    t = dm.transitions
    torch.testing.assert_close(obs, (t.observations - dm.obs_mean) / dm.obs_std)
    torch.testing.assert_close(next_obs, (t.next_observations - dm.obs_mean) / dm.obs_std)
    assert torch.equal(act, t.actions) and torch.equal(next_act, t.next_actions)
    assert dm.hparams.batch_size == 4 and dm.hparams.dataset_id == "toy/labelled"


def test_normalisation_options(toy_minari):
    raw = OfflineRLDataModule("toy/long", batch_size=8, normalize_observations=False)
    raw.setup("fit")
    assert torch.equal(raw.features_input()[0], raw.transitions.observations)
    assert torch.equal(raw.obs_mean, torch.zeros(3)) and torch.equal(raw.obs_std, torch.ones(3))

    sub = OfflineRLDataModule("toy/long", batch_size=8, max_transitions=50, subsample_seed=1)
    full = OfflineRLDataModule("toy/long", batch_size=8, max_transitions=50, subsample_seed=1, obs_stats_from_full=True)
    sub.setup("fit")
    full.setup("fit")
    assert sub.num_transitions == full.num_transitions == 50
    assert torch.equal(sub.transitions.observations, full.transitions.observations)
    everything = OfflineRLDataModule("toy/long", batch_size=8)
    assert torch.equal(full.obs_mean, everything.obs_mean) and torch.equal(full.obs_std, everything.obs_std)
    assert torch.equal(sub.obs_mean, observation_stats(sub.transitions)[0])
    assert not torch.allclose(sub.obs_mean, full.obs_mean)


def test_mixture_datamodule(toy_minari):
    dm = OfflineRLDataModule(["toy/mixed", "toy/other"], shares=[1.0, 1.0], max_transitions=20, batch_size=4)
    assert dm.num_transitions == 20
    assert dm.source_names == ["toy/mixed-v0", "toy/other-v0"]
    assert torch.bincount(dm.sources).tolist() == [10, 10]


def test_cluster_labels_reach_the_sampler(toy_minari):
    dm = OfflineRLDataModule("toy/long", batch_size=8, steps_per_epoch=20, min_cluster_size=10)
    dm.setup("fit")
    labels = (dm.transitions.episode_ids % 3).long()
    dm.set_cluster_labels(labels)
    assert dm.sampler.cluster_sizes.tolist() == [100, 100, 100]
    for batch in dm.train_dataloader():
        lab = labels[batch["indices"]]
        assert torch.all(lab == lab[0])
    with pytest.raises(SamplerError, match="length 299 but the dataset has 300"):
        dm.set_cluster_labels(labels[:-1])
    dm.set_cluster_labels(None)
    assert dm.sampler.uniform
    dm.set_cluster_members([np.arange(0, 150), np.arange(100, 300)])
    assert dm.sampler.cluster_sizes.tolist() == [150, 200]
    for batch in dm.train_dataloader():
        idx = batch["indices"]
        assert bool((idx < 150).all()) or bool((idx >= 100).all())


def test_bad_arguments(toy_minari):
    dm = OfflineRLDataModule("toy/mixed", batch_size=27)
    with pytest.raises(DatasetError, match=r"data.batch_size=27 is larger than the dataset, which has N=26"):
        dm.setup("fit")
    with pytest.raises(DatasetError, match="data.batch_size must be >= 1"):
        OfflineRLDataModule("toy/mixed", batch_size=0)
    with pytest.raises(DatasetError, match="data.steps_per_epoch must be >= 1"):
        OfflineRLDataModule("toy/mixed", steps_per_epoch=0)
    with pytest.raises(DatasetError, match="c4-collect train"):
        OfflineRLDataModule("toy/absent-v0").setup("fit")
    with pytest.raises(DatasetError, match="max_transitions=30 is larger than the dataset, which has 26"):
        OfflineRLDataModule("toy/mixed", batch_size=4, max_transitions=30).setup("fit")


def test_state_dict_without_trainer_round_trip(toy_minari):
    a = OfflineRLDataModule("toy/long", batch_size=8, steps_per_epoch=6, sampler_seed=3)
    a.setup("fit")
    a.set_cluster_labels((a.transitions.steps >= 10).long())
    it = iter(a.train_dataloader())
    seen = [next(it)["indices"] for _ in range(4)]
    state = a.state_dict()
    assert state["sampler"]["resume_position"] == 4
    rest = [b["indices"] for b in it]

    b = OfflineRLDataModule("toy/long", batch_size=8, steps_per_epoch=6, sampler_seed=3)
    b.load_state_dict(state)  # before setup: kept and applied when the sampler is built
    b.setup("fit")
    resumed = [x["indices"] for x in b.train_dataloader()]
    assert len(seen) + len(resumed) == 6
    assert all(torch.equal(x, y) for x, y in zip(resumed, rest))


class _Recorder(pl.LightningModule):
    """Tiny module that records sampled indices with (epoch, batch_idx); knows nothing of the sampler (the sampler
    counts the batches the training loop consumes itself)."""

    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(3, 1)
        self.seen: list[torch.Tensor] = []
        self.where: list[tuple[int, int]] = []

    def training_step(self, batch, batch_idx):
        self.seen.append(batch["indices"].cpu())
        self.where.append((self.current_epoch, batch_idx))
        return self.layer(batch["observations"]).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def _trainer(root, max_steps, callbacks=()):
    return pl.Trainer(
        max_steps=max_steps,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=bool(callbacks),
        callbacks=list(callbacks),
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
    )


def _assert_batches_follow_lightning_position(model, dm):
    S = dm.steps_per_epoch
    for idx, (epoch, batch_idx) in zip(model.seen, model.where):
        assert torch.equal(idx, dm.sampler.batch(epoch * S + batch_idx)[0])


def test_lightning_fit_and_checkpoint_resume_continue_the_stream(toy_minari, tmp_path):
    kw = dict(dataset_id="toy/long", batch_size=8, steps_per_epoch=5, sampler_seed=2, min_cluster_size=1)

    ref_dm = OfflineRLDataModule(**kw)
    ref_model = _Recorder()
    mid_cb = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=7, save_top_k=-1)
    end_cb = ModelCheckpoint(dirpath=tmp_path / "ckpt_end", every_n_train_steps=5, save_top_k=-1)
    trainer = _trainer(tmp_path / "ref", 12, [mid_cb, end_cb])
    trainer.fit(ref_model, datamodule=ref_dm)
    assert isinstance(trainer.train_dataloader.sampler, ClusterBatchSampler)  # not wrapped by Lightning
    assert len(ref_model.seen) == 12
    for g, idx in enumerate(ref_model.seen):
        assert torch.equal(idx, ref_dm.sampler.batch(g)[0])
    (ckpt,) = (tmp_path / "ckpt").glob("*step=7*.ckpt")
    saved = torch.load(ckpt, weights_only=False)["OfflineRLDataModule"]["sampler"]
    assert (saved["epoch"], saved["resume_position"]) == (1, 2)

    (ckpt_end,) = (tmp_path / "ckpt_end").glob("*step=5*.ckpt")  # saved at the last batch of epoch 0
    saved_end = torch.load(ckpt_end, weights_only=False)["OfflineRLDataModule"]["sampler"]
    assert (saved_end["epoch"], saved_end["resume_position"]) == (1, 0)

    # resuming from either checkpoint continues the uninterrupted stream
    for path, done in ((ckpt, 7), (ckpt_end, 5)):
        dm = OfflineRLDataModule(**kw)
        model = _Recorder()
        _trainer(tmp_path / f"resume{done}", 12).fit(model, datamodule=dm, ckpt_path=path)
        assert len(model.seen) == 12 - done
        assert all(torch.equal(x, y) for x, y in zip(model.seen, ref_model.seen[done:]))
        _assert_batches_follow_lightning_position(model, dm)


def test_resume_from_end_of_fit_checkpoint_follows_lightning_position(toy_minari, tmp_path):
    kw = dict(dataset_id="toy/long", batch_size=8, steps_per_epoch=5, sampler_seed=2)
    dm = OfflineRLDataModule(**kw)
    model = _Recorder()
    trainer = _trainer(tmp_path / "a", 7)
    trainer.fit(model, datamodule=dm)
    ckpt = tmp_path / "end.ckpt"
    trainer.save_checkpoint(ckpt)
    dm2 = OfflineRLDataModule(**kw)
    model2 = _Recorder()
    _trainer(tmp_path / "b", 12).fit(model2, datamodule=dm2, ckpt_path=ckpt)
    assert len(model2.seen) == 5
    # Lightning counts the epoch cut by max_steps as processed; batches still follow its (epoch, batch_idx)
    _assert_batches_follow_lightning_position(model, dm)
    _assert_batches_follow_lightning_position(model2, dm2)


def test_sampler_seed_follows_the_global_seed_unless_given(toy_minari):
    def first_batch(**kw):
        dm = OfflineRLDataModule("toy/long", batch_size=8, steps_per_epoch=2, **kw)
        dm.setup("fit")
        return next(iter(dm.sampler)), dm.resolved_sampler_seed()

    pl.seed_everything(1, verbose=False)
    a, seed_a = first_batch()
    pl.seed_everything(2, verbose=False)
    b, seed_b = first_batch()
    c, seed_c = first_batch(sampler_seed=7)
    pl.seed_everything(1, verbose=False)
    d, _ = first_batch(sampler_seed=7)
    assert (seed_a, seed_b, seed_c) == (1, 2, 7)
    assert not torch.equal(a, b)  # different run seeds: different batch streams
    assert torch.equal(c, d)  # an explicit sampler_seed ignores the run seed
