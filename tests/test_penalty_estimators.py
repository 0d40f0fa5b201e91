"""The opt-in cheaper C4 penalty estimators: ``model.c4.penalty_sketch`` (an unbiased Rademacher sketch of the
squared Frobenius norm) and ``model.c4.penalty_next_action=policy`` (the backup's own target features, no extra
rows). Both off (the default) is the exact penalty, computed exactly as before the options existed; C4 off draws no
random numbers."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from helpers_lightning import HOPPERLIKE, C4ModuleStub, MemoryLogger, make_datamodule, make_trainer, params_of
from helpers_lightning import toy_env  # noqa: F401  (a pytest fixture the tests name as an argument)

from c4_lightning.algos import CQL, IQL, TD3BC
from c4_lightning.algos.networks import CriticEnsemble
from c4_lightning.c4.config import C4Config
from c4_lightning.c4.penalty import (
    PenaltySpec,
    _CrossCovSquaredNorm,
    cross_cov_penalty,
    penalty_value,
    weighted_cross_cov_penalty,
)
from c4_lightning.c4.plugin import C4

OBS, ACT, B, H = 5, 2, 64, 16
PENALTY_FNS = {"cross_cov": cross_cov_penalty, "weighted_cross_cov": weighted_cross_cov_penalty}


def _batch(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "observations": torch.randn(B, OBS, generator=g, dtype=torch.float64),
        "actions": torch.rand(B, ACT, generator=g, dtype=torch.float64) * 2 - 1,
        "next_observations": torch.randn(B, OBS, generator=g, dtype=torch.float64),
        "next_actions": torch.rand(B, ACT, generator=g, dtype=torch.float64) * 2 - 1,
    }


def _critics(seed: int = 0):
    torch.manual_seed(seed)
    critic = CriticEnsemble(OBS, ACT, (32, H), ensemble_size=2).double()
    target = CriticEnsemble(OBS, ACT, (32, H), ensemble_size=2).double()
    return critic, target


def _features(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed pair ``[1, B, H]`` with a cross-covariance that is neither zero nor diagonal."""
    g = torch.Generator().manual_seed(seed)
    phi = torch.randn(1, B, H, generator=g, dtype=torch.float64)
    mix = torch.randn(H, H, generator=g, dtype=torch.float64) / math.sqrt(H)
    phi_next = phi @ mix + 0.5 * torch.randn(1, B, H, generator=g, dtype=torch.float64)
    return phi, phi_next


# ---------------------------------------------------------------------------------------------- sketch: statistics
@pytest.mark.parametrize("k", [4, H])
@pytest.mark.parametrize("name", ["cross_cov", "weighted_cross_cov"])
def test_sketch_value_is_unbiased(name, k):
    """Mean over many draws = exact value within 5 standard errors; the spread matches Rademacher theory; k = H'
    directions are still random (the exact path is sketch=None)."""
    fn, draws = PENALTY_FNS[name], 4000
    phi, phi_next = _features()
    exact = fn(phi, phi_next)[0]
    torch.manual_seed(0)
    values = fn(phi.expand(draws, B, H), phi_next.expand(draws, B, H), sketch=k)  # independent R per leading index
    se = values.std() / math.sqrt(draws)
    assert abs(values.mean() - exact) < 5 * se, (float(values.mean()), float(exact), float(se))
    assert values.std() > 1e-3 * exact  # random, also at k = H'
    if name == "cross_cov":  # Var ||C R||^2 / k = 2 (||M||_F^2 - sum_j M_jj^2) / k, M = C^T C
        xc = phi_next[0] - phi_next[0].mean(0)
        c = phi[0].T @ xc / (B - 1)
        m = c.T @ c
        var = 2 * (m.square().sum() - torch.diagonal(m).square().sum()) / k
        assert 0.85 < float(values.var() / var) < 1.15, float(values.var() / var)


@pytest.mark.parametrize("name", ["cross_cov", "weighted_cross_cov"])
def test_sketch_gradient_is_unbiased(name):
    fn, draws, k = PENALTY_FNS[name], 4000, 4
    phi, phi_next = _features(1)
    phi.requires_grad_(True)
    (exact,) = torch.autograd.grad(fn(phi, phi_next).sum(), phi)
    torch.manual_seed(1)
    (mean,) = torch.autograd.grad(fn(phi.expand(draws, B, H), phi_next.expand(draws, B, H), sketch=k).mean(), phi)
    cos = torch.nn.functional.cosine_similarity(mean.flatten(), exact.flatten(), dim=0)
    assert cos > 0.99, float(cos)
    assert float(mean.norm() / exact.norm()) == pytest.approx(1.0, abs=0.05)
    # one draw's gradient is still a gradient of that draw's value (first-order check against autograd)
    one = phi.detach().clone().requires_grad_(True)
    torch.manual_seed(2)
    (g_custom,) = torch.autograd.grad(fn(one, phi_next, sketch=k).sum(), one)
    torch.manual_seed(2)
    r = torch.randint(0, 2, (1, H, k), dtype=torch.float64) * 2 - 1
    xc = phi_next - phi_next.mean(-2, keepdim=True)
    c = one.transpose(-1, -2) @ (xc @ r)
    num = c.square().sum() / k / (B - 1) ** 2
    if name == "weighted_cross_cov":
        var_next = xc.square().sum() / (B - 1)
        var = (one - one.mean(-2, keepdim=True)).square().sum() / (B - 1)
        num = num / (var_next * var + 1e-8)
    (g_explicit,) = torch.autograd.grad(num, one)
    torch.testing.assert_close(g_custom, g_explicit)


def test_sketch_draws_differ_and_follow_the_global_seed():
    phi, phi_next = _features(2)
    torch.manual_seed(5)
    a = cross_cov_penalty(phi, phi_next, sketch=8)
    b = cross_cov_penalty(phi, phi_next, sketch=8)
    torch.manual_seed(5)
    a_again = cross_cov_penalty(phi, phi_next, sketch=8)
    assert not torch.equal(a, b)
    assert torch.equal(a, a_again)  # the training RNG (checkpointed) decides the draws: a resume stays exact
    state = torch.get_rng_state()
    exact = cross_cov_penalty(phi, phi_next)
    assert torch.equal(torch.get_rng_state(), state)  # the exact path draws nothing
    assert torch.equal(exact, penalty_value("cross_cov", phi, phi_next, sketch=None))
    with pytest.raises(ValueError, match="sketch must be an int >= 1"):
        cross_cov_penalty(phi, phi_next, sketch=0)


def test_sketched_weighted_penalty_is_invariant_per_draw():
    """``psi = w * phi`` does not move when the critics rescale their last hidden layer, so one draw of R gives the
    same sketched value before and after (invariance holds draw by draw, not only in expectation)."""
    batch = _batch()
    critic, target = _critics()
    c4 = C4(C4Config(enabled=True, penalty="weighted_cross_cov", penalty_weight=1.0, penalty_sketch=4))

    def value():
        torch.manual_seed(3)
        _, feats = critic(batch["observations"], batch["actions"], return_features=True)
        return c4.penalty(C4ModuleStub(critic, target), batch, feats, None, torch.ones((), dtype=torch.float64), {})

    before = value()
    with torch.no_grad():
        for net in (critic, target):
            net.hidden[-1].weight.mul_(7.0)
            net.hidden[-1].bias.mul_(7.0)
            net.head.weight.div_(7.0)
    torch.testing.assert_close(value(), before, rtol=1e-9, atol=0)


# ---------------------------------------------------------------------------------------------- off by default
def _legacy_cross_cov(phi, phi_next):
    """``cross_cov_penalty`` as it was before the estimator options (fp32 inputs)."""
    xc = phi_next.detach() - phi_next.detach().mean(dim=-2, keepdim=True)
    return _CrossCovSquaredNorm.apply(phi, xc, 1.0 / (phi.shape[-2] - 1) ** 2)


class _LegacyC4(C4):
    """The plug-in's target pass and default penalty as they were before the estimator options."""

    def __init__(self, config):
        super().__init__(config)
        self.spec = PenaltySpec(_legacy_cross_cov, "features")

    @torch.no_grad()
    def target_q(self, critic_target, next_obs, next_act, data_next_act):
        if not self.needs_target_features():
            return critic_target(next_obs, next_act), None
        b, m = next_obs.shape[0], self._rows(next_obs.shape[0])
        q, feats = critic_target(
            torch.cat([next_obs, next_obs[:m]]), torch.cat([next_act, data_next_act[:m]]), return_features=True
        )
        return q[:, :b], feats[:, b:]


def _fit(module, tmp_path, steps: int = 6, logger=None):
    dm = make_datamodule(HOPPERLIKE, batch_size=64, steps_per_epoch=steps)
    trainer = make_trainer(tmp_path, max_steps=steps, logger=logger)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, datamodule=dm)
    assert trainer.global_step == steps
    return module


C4_SMALL = dict(enabled=True, penalty_weight=0.5, pca_dim=4, fit_subsample=400, refit_every_n_updates=0)


def test_default_td3bc_update_is_the_pre_option_code(toy_env, tmp_path):
    """C4 on with neither option set: bit-identical parameters to the pre-option target pass and penalty."""
    runs = []
    for c4 in (C4Config(**C4_SMALL), _LegacyC4(C4Config(**C4_SMALL))):
        torch.manual_seed(0)
        module = TD3BC(hidden_dims=(32, 32), obs_dim=11, act_dim=3, c4=c4)
        runs.append(params_of(_fit(module, tmp_path).critic, module.actor))
    for new, old in zip(*runs):
        assert torch.equal(new, old)


def test_c4_off_draws_no_random_numbers():
    batch = _batch()
    critic, target = _critics()
    module = C4ModuleStub(critic, target)
    for config in (
        None,
        C4Config(enabled=False, penalty_sketch=8, penalty_next_action="policy"),
        C4Config(enabled=True, penalty_weight=0.0, penalty_sketch=8, penalty_next_action="policy"),
    ):
        c4 = C4(config)
        state = torch.get_rng_state()
        q, next_feats = c4.target_q(target, batch["next_observations"], batch["next_actions"], batch["next_actions"])
        _, feats = critic(batch["observations"], batch["actions"], return_features=True)
        assert c4.penalty(module, batch, feats, next_feats, torch.ones(()), {}) == 0.0
        assert next_feats is None
        assert torch.equal(torch.get_rng_state(), state)
        torch.testing.assert_close(q, target(batch["next_observations"], batch["next_actions"]), rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------- next action: policy
@pytest.mark.parametrize("rows", [None, 16])
@pytest.mark.parametrize("name", ["cross_cov", "weighted_cross_cov", "feature_dot"])
def test_policy_next_action_reuses_the_backup_rows(name, rows):
    batch = _batch()
    critic, target = _critics()
    backup_act = torch.rand(B, ACT, dtype=torch.float64) * 2 - 1  # a~' (differs from the dataset's a')
    seen = []
    hook = target.register_forward_hook(lambda mod, args, kwargs_out: seen.append(args[0].shape[0]))
    try:
        for action, expected_rows in (("data", B + (rows or B)), ("policy", B)):
            seen.clear()
            c4 = C4(
                C4Config(enabled=True, penalty=name, penalty_weight=1.0, penalty_rows=rows, penalty_next_action=action)
            )
            q, next_feats = c4.target_q(target, batch["next_observations"], backup_act, batch["next_actions"])
            assert seen == [expected_rows], (action, seen)
            want_q, backup_feats = target(batch["next_observations"], backup_act, return_features=True)
            torch.testing.assert_close(q, want_q)
            m = rows or B
            if action == "policy":
                torch.testing.assert_close(next_feats, backup_feats[:, :m], rtol=0, atol=0)
                _, feats = critic(batch["observations"], batch["actions"], return_features=True)
                value = c4.penalty(C4ModuleStub(critic, target), batch, feats, next_feats, torch.ones(()), {})
                if name == "weighted_cross_cov":
                    w, w_next = critic.head.weight.transpose(-1, -2), target.head.weight.transpose(-1, -2)
                    want = weighted_cross_cov_penalty(feats[:, :m] * w, backup_feats[:, :m] * w_next)
                elif name == "cross_cov":
                    want = cross_cov_penalty(feats[:, :m], backup_feats[:, :m])
                else:
                    want = penalty_value(name, feats[:, :m], backup_feats[:, :m])
                torch.testing.assert_close(value, want.sum())
            else:
                _, data_feats = target(batch["next_observations"], batch["next_actions"], return_features=True)
                torch.testing.assert_close(next_feats, data_feats[:, :m])
    finally:
        hook.remove()


def test_policy_next_action_needs_the_backup_features():
    batch = _batch()
    critic, target = _critics()
    c4 = C4(C4Config(enabled=True, penalty_weight=1.0, penalty_next_action="policy"))
    _, feats = critic(batch["observations"], batch["actions"], return_features=True)
    with pytest.raises(ValueError, match="penalty_next_action=policy .* passed none"):
        c4.penalty(C4ModuleStub(critic, target), batch, feats, None, torch.ones(()), {})


# ---------------------------------------------------------------------------------------------- config
@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(penalty_sketch=0), r"model.c4.penalty_sketch=0 must be an integer >= 1"),
        (dict(penalty_sketch=2.5), r"model.c4.penalty_sketch=2.5 must be an integer >= 1"),
        (
            dict(penalty="feature_dot", penalty_sketch=8),
            r"penalty=feature_dot does not compute; it applies to cross_cov, weighted_cross_cov: set "
            r"model.c4.penalty_sketch=null",
        ),
        (dict(penalty="grad_cross_cov", penalty_sketch=8), r"penalty=grad_cross_cov does not compute"),
        (dict(penalty_next_action="next"), r"model.c4.penalty_next_action='next' is unknown; use data or policy"),
        (
            dict(penalty="grad_cross_cov", penalty_next_action="policy"),
            r"penalty_next_action=policy .*penalty=grad_cross_cov needs the target's input gradients",
        ),
    ],
)
def test_config_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        C4Config(**kwargs)


def test_config_defaults_and_accepted_values():
    config = C4Config()
    assert config.penalty_sketch is None and config.penalty_next_action == "data"
    for penalty in ("cross_cov", "weighted_cross_cov"):
        C4Config(penalty=penalty, penalty_sketch=1, penalty_next_action="policy")
    C4Config(penalty="feature_dot", penalty_next_action="policy")


# ---------------------------------------------------------------------------------------------- short fits
def _finite_losses(logger: MemoryLogger) -> set[str]:
    names = set()
    for _, metrics in logger.records:
        for name, value in metrics.items():
            assert math.isfinite(value), (name, value)
            names.add(name)
    return names


@pytest.mark.parametrize(
    "algo, kwargs",
    [
        ("td3bc", {}),
        ("cql", {}),
        ("cql", {"cql_max_target_backup": True}),
    ],
    ids=["td3bc", "cql", "cql-max-backup"],
)
def test_short_fit_with_both_options(toy_env, tmp_path, algo, kwargs):
    c4 = C4Config(**C4_SMALL, penalty="weighted_cross_cov", penalty_sketch=4, penalty_next_action="policy")
    torch.manual_seed(0)
    if algo == "td3bc":
        module = TD3BC(hidden_dims=(32, 32), c4=c4)
    else:
        module = CQL(hidden_dims=(32, 32), cql_n_actions=3, c4=c4, **kwargs)
    logger = MemoryLogger()
    _fit(module, tmp_path, steps=4, logger=logger)
    names = _finite_losses(logger)
    assert any(n.endswith("c4/penalty") for n in names), sorted(names)
    assert any(n.endswith("critic_loss") for n in names), sorted(names)


def test_iql_policy_next_action_changes_nothing(toy_env, tmp_path):
    """IQL's backup is V(s') (no action): its own pass already supplies the target features."""
    runs = []
    for action in ("data", "policy"):
        torch.manual_seed(0)
        module = IQL(hidden_dims=(32, 32), obs_dim=11, act_dim=3, c4=C4Config(**C4_SMALL, penalty_next_action=action))
        runs.append(params_of(_fit(module, tmp_path, steps=4).critic))
    for a, b in zip(*runs):
        assert torch.equal(a, b)


def test_cql_max_backup_pairs_each_state_with_the_features_of_its_maximising_action(toy_env, tmp_path):
    """CQL's max-backup with ``penalty_next_action=policy``: the penalty's target features for state b are the target
    critic's features at the sampled action the backup maximised over (row ``b * n + j*`` of the repeated pass),
    checked here row by row against the target critic's own pass."""
    n = 3
    c4 = C4Config(**C4_SMALL, penalty_next_action="policy")
    torch.manual_seed(0)
    module = CQL(hidden_dims=(32, 32), cql_n_actions=n, cql_max_target_backup=True, c4=c4)
    seen = {"last_target": None, "pairs": []}
    build = module.build_networks

    def build_and_spy(*args, **kwargs):
        build(*args, **kwargs)
        target_forward = module.critic_target.forward

        def spy(obs, act, return_features=False, **kw):
            out = target_forward(obs, act, return_features=return_features, **kw)
            if return_features:  # the refit's and the probe's passes too: pair the update's by order
                seen["last_target"] = tuple(t.detach().clone() for t in out)
            return out

        module.critic_target.forward = spy

    module.build_networks = build_and_spy
    penalty = module.c4.penalty

    def penalty_spy(mod, batch, feats, next_feats, td_loss, logs):
        seen["pairs"].append((seen["last_target"], next_feats.detach().clone()))
        return penalty(mod, batch, feats, next_feats, td_loss, logs)

    module.c4.penalty = penalty_spy
    _fit(module, tmp_path, steps=3)
    assert len(seen["pairs"]) == 3
    for (q_all, feats_all), next_feats in seen["pairs"]:
        batch = next_feats.shape[1]
        assert q_all.shape == (2, batch * n)
        for b in range(batch):
            rows = range(b * n, (b + 1) * n)
            best = max(rows, key=lambda r: float(q_all[:, r].min()))
            assert torch.equal(next_feats[:, b], feats_all[:, best])
