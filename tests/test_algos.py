"""TD3BC / CQL through the Lightning Trainer: step counting, the sampler stream, logged metrics, C4 penalty
wiring, and CQL's conservative term and sample order (against CORL / Kumar et al.)."""

from __future__ import annotations

import math
import warnings

import lightning as L
import pytest
import torch
from lightning.pytorch import Callback

from helpers_lightning import (
    BatchSpy,
    MemoryLogger,
    make_datamodule,
    make_trainer,
    params_of,
)
from helpers_lightning import toy_env  # noqa: F401  (a pytest fixture the tests name as an argument)

from c4_lightning.algos import CQL, TD3BC
from c4_lightning.algos.cql import cql_conservative_gap
from c4_lightning.c4.config import C4Config
from c4_lightning.c4.penalty import PENALTIES as REGISTRY
from c4_lightning.data.sampler import index_seed

CHAIN = "toy/chain-v0"  # N = 480, obs 4, act 2 (helpers_lightning.write_chain_dataset)
OBS, ACT = 4, 2
B = 32
PENALTIES = sorted(REGISTRY)


def fit(module, tmp_path, max_steps, steps_per_epoch=3, callbacks=(), logger=None, dm=None):
    dm = dm or make_datamodule(CHAIN, batch_size=B, steps_per_epoch=steps_per_epoch)
    trainer = make_trainer(tmp_path, max_steps=max_steps, callbacks=callbacks, logger=logger)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, datamodule=dm)
    return trainer, dm


def td3bc(**kw):
    kw.setdefault("hidden_dims", (16, 16))
    return TD3BC(obs_dim=OBS, act_dim=ACT, log_every_n_steps=1, **kw)


def cql(**kw):
    kw.setdefault("hidden_dims", (16, 16))
    return CQL(obs_dim=OBS, act_dim=ACT, log_every_n_steps=1, cql_n_actions=3, **kw)


def adam_steps(opt) -> int:
    """How many times a (Lightning-wrapped) Adam has stepped."""
    raw = getattr(opt, "optimizer", opt)
    steps = {int(st["step"]) for st in raw.state.values()}
    assert len(steps) <= 1
    return steps.pop() if steps else 0


# ------------------------------------------------------------------ step counting, stream, logging


@pytest.mark.parametrize("algo", ["td3bc", "cql", "cql-variants"])
def test_global_step_is_one_per_batch_and_max_steps_stops_there(toy_env, tmp_path, algo):
    L.seed_everything(0, verbose=False)
    if algo == "td3bc":
        module = td3bc()
    elif algo == "cql":
        module = cql()
    else:  # every optional branch: Lagrange, max-backup, entropy in the backup, clipping, BC warm-up + weight
        module = cql(
            cql_lagrange=True,
            cql_max_target_backup=True,
            backup_entropy=True,
            cql_clip_diff_min=-5.0,
            cql_clip_diff_max=5.0,
            bc_steps=3,
            bc_weight=0.1,
            cql_importance_sample=False,
        )
    spy, logger = BatchSpy(), MemoryLogger()
    trainer, dm = fit(module, tmp_path, max_steps=7, steps_per_epoch=3, callbacks=[spy], logger=logger)

    assert trainer.global_step == 7 == int(module.updates_done) == len(spy.batches)
    assert [e for e, _, _ in spy.batches] == [0, 0, 0, 1, 1, 1, 2]
    # C4 off: batch g is the sampler's documented uniform stream
    for g, (_, _, idx) in enumerate(spy.batches):
        gen = torch.Generator().manual_seed(index_seed(dm.resolved_sampler_seed(), 0, g))
        assert torch.equal(idx, torch.randint(dm.num_transitions, (B,), generator=gen))
    # every optimiser really stepped the expected number of times; only the critic's counts as global_step
    opts = module.optimizers()
    assert adam_steps(opts[0]) == 7
    if algo == "td3bc":
        assert adam_steps(opts[1]) == 3  # policy delay 2: updates 2, 4, 6
    else:
        assert adam_steps(opts[1]) == 7 and adam_steps(opts[2]) == 7
        assert adam_steps(opts[3]) == (7 if algo == "cql-variants" else 0)
    # logged metrics: on the progress bar and in the logger at every step (log_every_n_steps=1), all finite
    assert set(trainer.progress_bar_metrics) >= {"critic_loss"}
    expected = {"train/critic_loss", "train/q_mean"} | (
        {"train/actor_loss"} if algo == "td3bc" else {"train/actor_loss", "train/alpha", "train/cql_gap"}
    )
    assert expected <= set(trainer.callback_metrics)
    assert logger.steps("train/critic_loss") == list(range(7))
    for name in expected | {"c4/cross_cov_fro"}:
        assert all(math.isfinite(v) for v in logger.values(name)) and logger.values(name), name
    assert len(logger.values("c4/cross_cov_fro")) == 3  # once per epoch, the partial last one included
    if algo == "cql-variants":
        assert "train/alpha_prime" in trainer.callback_metrics


def test_training_metrics_follow_log_every_n_steps(toy_env, tmp_path):
    logger = MemoryLogger()
    module = TD3BC(obs_dim=OBS, act_dim=ACT, hidden_dims=(16, 16), log_every_n_steps=4)
    dm = make_datamodule(CHAIN, batch_size=B, steps_per_epoch=100)
    trainer = make_trainer(tmp_path, max_steps=12, logger=logger, log_every_n_steps=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, datamodule=dm)
    assert len(logger.values("train/critic_loss")) == 3  # updates 4, 8, 12
    assert len(logger.values("train/actor_loss")) == 3  # even updates carry an actor update


# ------------------------------------------------------------------ C4 penalty wiring


@pytest.mark.parametrize("penalty", PENALTIES)
def test_penalty_gradient_reaches_only_the_online_critic(penalty):
    torch.manual_seed(0)
    module = td3bc(c4=C4Config(enabled=True, penalty=penalty, penalty_weight=1.0))
    obs, act = torch.randn(B, OBS), torch.rand(B, ACT) * 2 - 1
    next_obs, next_act = torch.randn(B, OBS), torch.rand(B, ACT) * 2 - 1
    batch = {"observations": obs, "actions": act, "next_observations": next_obs, "next_actions": next_act}
    _, feats = module.critic(obs, act, return_features=True)
    pen = module.c4.penalty(module, batch, feats, None, torch.ones(()), {})
    assert pen.dim() == 0 and float(pen.detach()) > 0
    actor_p, critic_p = list(module.actor.parameters()), list(module.critic.parameters())
    grads = torch.autograd.grad(pen, actor_p + critic_p, allow_unused=True)
    assert all(g is None for g in grads[: len(actor_p)]), "the penalty must not reach the actor"
    assert any(g is not None and g.abs().sum() > 0 for g in grads[len(actor_p) :])
    pen2 = module.c4.penalty(module, batch, module.critic(obs, act, return_features=True)[1], None, torch.ones(()), {})
    pen2.backward()
    for net in (module.critic_target, module.actor_target):
        assert all(not p.requires_grad and p.grad is None for p in net.parameters())


@pytest.mark.parametrize("algo", ["td3bc", "cql"])
def test_penalty_changes_only_the_critics(toy_env, tmp_path, algo):
    """Same seed, same partition and batch; penalty weight 0 vs 1 for one update."""
    runs = []
    for weight in (0.0, 1.0):
        L.seed_everything(0, verbose=False)
        c4 = C4Config(enabled=True, n_clusters=2, penalty_weight=weight, pca_dim=4, refit_every_n_epochs=0)
        module = td3bc(c4=c4) if algo == "td3bc" else cql(c4=c4)
        init_actor = params_of(module.actor)
        fit(module, tmp_path / str(weight), max_steps=1)
        runs.append(module)
        for net in [module.critic_target] + ([module.actor_target] if algo == "td3bc" else []):
            assert all(p.grad is None for p in net.parameters()), "a target network received gradients"
    base, pen = runs
    # the actor is the same with and without the penalty (TD3BC: no actor step yet, policy delay 2;
    # CQL: the actor step comes before the critic step and does not see the penalty)
    for a, b in zip(params_of(base.actor), params_of(pen.actor)):
        assert torch.equal(a, b)
    if algo == "td3bc":
        assert all(torch.equal(a, b) for a, b in zip(params_of(pen.actor), init_actor))
    else:
        assert torch.equal(base.log_alpha, pen.log_alpha)
    assert any(not torch.equal(a, b) for a, b in zip(params_of(base.critic), params_of(pen.critic)))


@pytest.mark.parametrize("penalty", PENALTIES)
def test_each_penalty_variant_trains_and_logs(toy_env, tmp_path, penalty):
    L.seed_everything(0, verbose=False)
    feature = "gradient" if penalty == "grad_cross_cov" else "penultimate"
    module = td3bc(
        c4=C4Config(
            enabled=True,
            penalty=penalty,
            penalty_weight=0.5,
            n_clusters=2,
            pca_dim=4,
            refit_every_n_epochs=1,
            feature=feature,
        )
    )
    logger = MemoryLogger()
    before = params_of(module.critic)
    trainer, _ = fit(module, tmp_path, max_steps=4, steps_per_epoch=2, logger=logger)
    values = logger.values("c4/penalty")
    assert len(values) == 4 and all(math.isfinite(v) and v > 0 for v in values), values
    assert "c4/penalty" in trainer.callback_metrics
    assert any(not torch.equal(a, b) for a, b in zip(before, params_of(module.critic)))
    assert logger.values("c4/refits") == [1.0, 2.0, 3.0]  # initial + after each of the 2 epochs
    for net in (module.critic_target, module.actor_target):
        assert all(p.grad is None for p in net.parameters())


def test_no_penalty_logged_when_c4_off(toy_env, tmp_path):
    logger = MemoryLogger()
    fit(td3bc(), tmp_path, max_steps=2, logger=logger)
    assert logger.values("c4/penalty") == [] and logger.values("train/critic_loss")


# ------------------------------------------------------------------ CQL details


def test_cql_gap_is_a_logsumexp_over_all_3n_importance_weighted_samples():
    torch.manual_seed(0)
    E, Bq, n, A = 2, 5, 4, 3
    q_pred = torch.randn(E, Bq)
    q_rand, q_curr, q_next = torch.randn(E, Bq, n), torch.randn(E, Bq, n), torch.randn(E, Bq, n)
    lp_curr, lp_next = torch.randn(Bq, n), torch.randn(Bq, n)
    temp = 0.7
    got = cql_conservative_gap(q_pred, q_rand, q_curr, q_next, lp_curr, lp_next, A, 1.0, temp, True)
    log_u = math.log(0.5**A)
    for e in range(E):
        for b in range(Bq):
            vals = torch.cat([q_rand[e, b] - log_u, q_next[e, b] - lp_next[b], q_curr[e, b] - lp_curr[b]])
            assert vals.numel() == 3 * n
    want = torch.stack(
        [
            torch.stack(
                [
                    temp
                    * torch.logsumexp(
                        torch.cat([q_rand[e, b] - log_u, q_next[e, b] - lp_next[b], q_curr[e, b] - lp_curr[b]]) / temp,
                        0,
                    )
                    - q_pred[e, b]
                    for b in range(Bq)
                ]
            ).mean()
            for e in range(E)
        ]
    )
    torch.testing.assert_close(got, want)
    # max_action scales the uniform density: log(1 / (2 m)) per dimension
    got2 = cql_conservative_gap(q_pred, q_rand, q_curr, q_next, lp_curr, lp_next, A, 2.0, 1.0, True)
    want2 = (
        torch.logsumexp(torch.cat([q_rand - A * math.log(0.25), q_next - lp_next, q_curr - lp_curr], -1), -1) - q_pred
    ).mean(1)
    torch.testing.assert_close(got2, want2)


def test_cql_gap_clips_each_sample_before_the_mean():
    """CORL clamps ``ood - Q(s, a)`` per sample, then averages."""
    # one critic, two samples, n = 1, act_dim 1: all sampled Q are 0 and all log-densities 0, so
    # ood = logsumexp([-log 0.5, 0, 0]) = log 4 and the per-sample gaps are log 4 - q_pred = [-5, +1]
    q_pred = torch.tensor([[math.log(4) + 5.0, math.log(4) - 1.0]])
    zeros, lp = torch.zeros(1, 2, 1), torch.zeros(2, 1)
    unclipped = cql_conservative_gap(q_pred, zeros, zeros, zeros, lp, lp, 1, 1.0, 1.0, True)
    torch.testing.assert_close(unclipped, torch.tensor([-2.0]))
    got = cql_conservative_gap(q_pred, zeros, zeros, zeros, lp, lp, 1, 1.0, 1.0, True, clip_min=-1.0, clip_max=10.0)
    torch.testing.assert_close(got, torch.tensor([0.0]))  # mean(-1, 1); clamping the mean would give -1


class _OrderSpy(Callback):
    """Records, for the first update, every actor forward (which input) and every optimiser step (which one)."""

    def __init__(self, n: int):
        self.n, self.events, self.batch, self.active = n, [], None, False

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.batch, self.active = batch, batch_idx == 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.active = False

    def watch_sample_n(self, actor):
        """Also record ``actor.sample_n(obs, n)`` calls (n actions per state from one forward pass)."""
        real = actor.sample_n

        def sample_n(obs, n):
            self.actor_hook(actor, (obs,), kind="sample_n")
            return real(obs, n)

        actor.sample_n = sample_n

    def actor_hook(self, module, args, kind="actor"):
        if not self.active:
            return
        x = args[0]
        names = {"obs": self.batch["observations"], "next_obs": self.batch["next_observations"]}
        tag = "other"
        for name, v in names.items():
            if x.shape == v.shape and torch.equal(x, v):
                tag = name
            elif x.shape[0] == v.shape[0] * self.n and torch.equal(x, v.repeat_interleave(self.n, 0)):
                tag = name + "_rep"
        self.events.append((kind, tag))

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if not self.active:
            return
        raws = [getattr(o, "optimizer", o) for o in pl_module.optimizers()]
        self.events.append(("step", ["critic", "actor", "alpha", "alpha_prime"][raws.index(optimizer)]))


def test_cql_samples_every_action_from_the_pre_update_policy(toy_env, tmp_path):
    """As CORL and the CQL authors' code: the backup a' ~ pi(.|s') and the 2n conservative samples all come
    from the policy *before* this step's actor update; the critic steps after the actor."""
    L.seed_everything(0, verbose=False)
    module = cql()
    spy = _OrderSpy(n=3)
    module.actor.register_forward_pre_hook(spy.actor_hook)
    spy.watch_sample_n(module.actor)
    fit(module, tmp_path, max_steps=1, callbacks=[spy])
    ev = spy.events
    actor_step = ev.index(("step", "actor"))
    # the backup's a' ~ pi(.|s') and n samples per state at s and at s' (one actor pass per state each)
    for event in (("actor", "next_obs"), ("sample_n", "obs"), ("sample_n", "next_obs")):
        assert event in ev[:actor_step], (event, ev)
        assert event not in ev[actor_step:], (event, ev)
    assert not any(tag.endswith("_rep") for _, tag in ev), ev  # the actor never runs on repeated states
    assert ev.index(("step", "alpha")) < actor_step < ev.index(("step", "critic"))


@pytest.mark.parametrize("algo", [TD3BC, CQL])
def test_fused_adam_by_default_and_for_loop_adam_on_request(algo):
    fused = algo(obs_dim=4, act_dim=2).configure_optimizers()
    assert fused and all(o.defaults["fused"] for o in fused)
    plain = algo(obs_dim=4, act_dim=2, fused_adam=False).configure_optimizers()
    assert not any(o.defaults["fused"] for o in plain)


def test_batch_transfer_moves_each_tensor_and_falls_back_for_other_batches():
    from c4_lightning.data.datamodule import OfflineRLDataModule

    dm = OfflineRLDataModule()
    batch = {"observations": torch.randn(3, 4), "indices": torch.arange(3)}
    moved = dm.transfer_batch_to_device(batch, torch.device("cpu"), 0)
    assert set(moved) == set(batch) and all(moved[k] is batch[k] for k in batch)  # already there: no copies
    moved = dm.transfer_batch_to_device(batch, torch.device("meta"), 0)
    assert all(v.device.type == "meta" for v in moved.values())
    nested = dm.transfer_batch_to_device([batch, "tag"], torch.device("meta"), 0)  # Lightning's generic path
    assert nested[1] == "tag" and nested[0]["observations"].device.type == "meta"
    # the modules keep Lightning's hook: overriding it there made Lightning warn on every run with a datamodule
    assert TD3BC.transfer_batch_to_device is L.LightningModule.transfer_batch_to_device


@pytest.mark.parametrize("algo", ["td3bc", "cql"])
def test_the_update_step_raises_no_torch_warnings(toy_env, tmp_path, algo):
    """E.g. reading a loss that requires grad as a Python float warns in a user's run (torch warns once per
    process, so this catches it when run alone or first)."""
    L.seed_everything(0, verbose=False)
    module = td3bc() if algo == "td3bc" else cql()
    dm = make_datamodule(CHAIN, batch_size=B, steps_per_epoch=3)
    trainer = make_trainer(tmp_path, max_steps=3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(module, datamodule=dm)
    messages = [str(w.message) for w in caught if "requires_grad" in str(w.message)]
    assert not messages, messages
