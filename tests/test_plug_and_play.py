"""Plug-and-play: C4 off (and C4 with one cluster and no penalty) through the real Lightning Trainer gives
bit-identical parameters to the plain PyTorch reference loops of ``benchmarks/plain_loop.py``, with the same
data and the sampler's uniform index stream, with either Adam implementation (the modules' default fused Adam, or
``fused_adam=False`` against the plain loops' default for-loop Adam)."""

from __future__ import annotations

import sys
import warnings

import lightning as L
import pytest
import torch

from helpers_lightning import (
    HOPPERLIKE,
    REPO,
    assert_same_tensors,
    make_datamodule,
    make_trainer,
    params_of,
)
from helpers_lightning import toy_env  # noqa: F401  (a pytest fixture the tests name as an argument)

sys.path.insert(0, str(REPO / "benchmarks"))
from plain_loop import PlainCQL, PlainTD3BC  # noqa: E402

from c4_lightning.algos import CQL, TD3BC  # noqa: E402
from c4_lightning.c4.callback import ClusterRefitCallback  # noqa: E402
from c4_lightning.c4.config import C4Config  # noqa: E402
from c4_lightning.data.sampler import index_seed  # noqa: E402

SEED = 3
STEPS = 50
BATCH = 64
STEPS_PER_EPOCH = 20  # 50 steps cross two epoch boundaries (a fresh loader iterator each epoch)
TD3_HIDDEN = (64, 64)
CQL_HIDDEN = (64, 64, 64)


@pytest.fixture
def dm(toy_env):
    # Hopper-shaped random episodes (N=480, obs 11, act 3, terminations and truncations, 3 sources)
    d = make_datamodule(HOPPERLIKE, batch_size=BATCH, steps_per_epoch=STEPS_PER_EPOCH)
    d.setup("fit")
    return d


def plain_batch(dm, g: int):
    """Batch ``g`` of the uniform stream, gathered from the raw transitions and normalised here."""
    gen = torch.Generator().manual_seed(index_seed(dm.resolved_sampler_seed(), 0, g))
    idx = torch.randint(dm.num_transitions, (BATCH,), generator=gen)
    t, mean, std = dm.transitions, dm.obs_mean, dm.obs_std
    return (
        (t.observations[idx] - mean) / std,
        t.actions[idx],
        t.rewards[idx],
        (t.next_observations[idx] - mean) / std,
        t.terminals[idx],
    )


FUSED = {True: {"fused": True}, False: None}  # module's fused_adam -> the plain loop's Adam options


def run_plain(plain_cls, dm, fused: bool = True, **kwargs):
    torch.manual_seed(SEED)
    plain = plain_cls(dm.obs_dim, dm.act_dim, adam_kwargs=FUSED[fused], **kwargs)
    init = params_of(plain.actor, plain.critic)
    for g in range(STEPS):
        plain.update(*plain_batch(dm, g))
    return plain, init


def run_lightning(module_cls, dm, tmp_path, explicit_dims: bool = True, **kwargs):
    L.seed_everything(SEED, verbose=False)
    dims = dict(obs_dim=dm.obs_dim, act_dim=dm.act_dim) if explicit_dims else {}
    module = module_cls(**dims, **kwargs)
    init = params_of(module.actor, module.critic) if explicit_dims else None
    trainer = make_trainer(tmp_path, max_steps=STEPS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, datamodule=dm)
    assert trainer.global_step == STEPS and int(module.updates_done) == STEPS
    return module, init, trainer


def _cql_params(m):
    return params_of(m.actor, m.critic, m.critic_target) + [m.log_alpha.detach().clone()]


@pytest.mark.parametrize(
    "explicit_dims,fused",
    [(True, True), (False, True), (True, False)],
    ids=["dims-given", "dims-from-datamodule", "for-loop-adam"],
)
def test_td3bc_c4_off_equals_plain_loop(dm, tmp_path, explicit_dims, fused):
    module, init, _ = run_lightning(TD3BC, dm, tmp_path, explicit_dims, hidden_dims=TD3_HIDDEN, fused_adam=fused)
    plain, plain_init = run_plain(PlainTD3BC, dm, fused, hidden=TD3_HIDDEN)
    if init is not None:
        assert_same_tensors(init, plain_init, "initial parameters")
    assert_same_tensors(
        params_of(module.actor, module.critic, module.actor_target, module.critic_target),
        params_of(plain.actor, plain.critic, plain.actor_target, plain.critic_target),
    )
    assert not torch.equal(params_of(module.critic)[0], plain_init[len(params_of(module.actor))]), "nothing trained"


@pytest.mark.parametrize("fused", [True, False], ids=["fused-adam", "for-loop-adam"])
def test_cql_c4_off_equals_plain_loop(dm, tmp_path, fused):
    module, init, _ = run_lightning(CQL, dm, tmp_path, hidden_dims=CQL_HIDDEN, fused_adam=fused)
    plain, plain_init = run_plain(PlainCQL, dm, fused, hidden=CQL_HIDDEN)
    assert_same_tensors(init, plain_init, "initial parameters")
    assert_same_tensors(
        _cql_params(module),
        params_of(plain.actor, plain.critic, plain.critic_target) + [plain.log_alpha.detach().clone()],
    )


def _refit_callback(trainer) -> ClusterRefitCallback:
    cbs = [c for c in trainer.callbacks if isinstance(c, ClusterRefitCallback)]
    assert len(cbs) == 1
    return cbs[0]


@pytest.mark.parametrize("algo", ["td3bc", "cql"])
def test_single_cluster_zero_penalty_equals_c4_off(dm, tmp_path, algo):
    """One cluster holds every transition, so its stream (pos = randint(N) from the same index generator,
    order = identity) is the uniform stream; with penalty_weight 0 nothing else changes, refits included."""
    c4 = C4Config(enabled=True, n_clusters=1, penalty_weight=0.0, refit_every_n_epochs=1, pca_dim=8)
    if algo == "td3bc":
        module, _, trainer = run_lightning(TD3BC, dm, tmp_path, hidden_dims=TD3_HIDDEN, c4=c4)
        plain, _ = run_plain(PlainTD3BC, dm, hidden=TD3_HIDDEN)
        got, want = params_of(module.actor, module.critic), params_of(plain.actor, plain.critic)
    else:
        module, _, trainer = run_lightning(CQL, dm, tmp_path, hidden_dims=CQL_HIDDEN, c4=c4)
        plain, _ = run_plain(PlainCQL, dm, hidden=CQL_HIDDEN)
        got = _cql_params(module)
        want = params_of(plain.actor, plain.critic, plain.critic_target) + [plain.log_alpha.detach().clone()]
    refit = _refit_callback(trainer)
    # C4 really ran: the initial partition and one refit per finished epoch (2 full epochs + the partial one)
    assert refit.refits == 1 + 3 and refit.failures == 0
    assert dm.sampler.partitioned and not dm.sampler.uniform
    assert torch.equal(dm.sampler.labels, torch.zeros(dm.num_transitions, dtype=torch.long))
    assert_same_tensors(got, want)


def test_three_clusters_differ_from_c4_off(dm, tmp_path):
    """Control: with several clusters the batches (and so the parameters) are not the uniform stream's."""
    c4 = C4Config(enabled=True, n_clusters=3, penalty_weight=0.0, refit_every_n_epochs=0, pca_dim=8)
    module, _, _ = run_lightning(TD3BC, dm, tmp_path, hidden_dims=TD3_HIDDEN, c4=c4)
    plain, _ = run_plain(PlainTD3BC, dm, hidden=TD3_HIDDEN)
    with pytest.raises(AssertionError):
        assert_same_tensors(params_of(module.critic), params_of(plain.critic))
