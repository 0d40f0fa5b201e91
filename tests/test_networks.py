"""Network details that the losses rely on."""

import torch

from c4_lightning.algos.networks import CriticEnsemble


def test_q_head_stays_float32_under_bf16_autocast():
    torch.manual_seed(0)
    critic = CriticEnsemble(11, 3, (64, 64))
    obs, act = torch.randn(32, 11), torch.rand(32, 3) * 2 - 1
    with torch.autocast("cpu", dtype=torch.bfloat16):
        q, feats = critic(obs, act, return_features=True)
    assert feats.dtype == torch.bfloat16  # the hidden layers do run in bf16
    assert q.dtype == torch.float32  # but Q values and TD errors keep float32 resolution
    q32 = critic(obs, act)
    assert torch.allclose(q, q32, atol=0.05)


def test_ensemble_members_are_independent_networks():
    torch.manual_seed(0)
    critic = CriticEnsemble(5, 2, (16,), ensemble_size=3)
    x = torch.randn(8, 7)
    q = critic.from_input(x)
    for e in range(3):
        h = torch.relu(x @ critic.hidden[0].weight[e] + critic.hidden[0].bias[e])
        expected = (h @ critic.head.weight[e] + critic.head.bias[e]).squeeze(-1)
        assert torch.allclose(q[e], expected, atol=1e-6)


def test_the_abstract_base_module_says_what_to_use():
    import pytest

    from c4_lightning.algos.base import OfflineRLModule

    module = OfflineRLModule()
    with pytest.raises(TypeError, match="TD3BC or CQL"):
        module.build_networks(3, 2)
    with pytest.raises(TypeError, match="TD3BC or CQL"):
        module.update({})


def test_member_subset_and_detached_weights():
    """``members`` evaluates only those critics (TD3's Q1) with the same values; ``detach_weights`` passes gradients
    to the input (the actor's action) and none to the critic's weights."""
    torch.manual_seed(0)
    critic = CriticEnsemble(5, 2, (16, 16), ensemble_size=2)
    obs, act = torch.randn(8, 5), torch.randn(8, 2, requires_grad=True)
    q_all, f_all = critic(obs, act, return_features=True)
    q1, f1 = critic(obs, act, return_features=True, members=slice(0, 1))
    assert q1.shape == (1, 8) and f1.shape == (1, 8, 16)
    torch.testing.assert_close(q1[0], q_all[0])
    torch.testing.assert_close(f1[0], f_all[0])

    q_all[0].sum().backward()
    grad_full = act.grad.clone()
    act.grad = None
    critic.zero_grad(set_to_none=True)
    critic(obs, act, members=slice(0, 1), detach_weights=True)[0].sum().backward()
    torch.testing.assert_close(act.grad, grad_full)  # the same gradient reaches the action ...
    assert all(p.grad is None for p in critic.parameters())  # ... and none the critic


def test_q_head_matches_a_plain_matrix_product_and_its_gradient():
    torch.manual_seed(1)
    critic = CriticEnsemble(4, 2, (32,), ensemble_size=3)
    head = critic.head
    x = torch.randn(3, 50, 32, requires_grad=True)
    out = head(x)
    x2 = x.detach().clone().requires_grad_(True)
    w2, b2 = head.weight.detach().clone().requires_grad_(True), head.bias.detach().clone().requires_grad_(True)
    ref = torch.baddbmm(b2, x2, w2)
    torch.testing.assert_close(out, ref)
    g = torch.randn_like(ref)
    out.backward(g)
    ref.backward(g)
    torch.testing.assert_close(x.grad, x2.grad)
    torch.testing.assert_close(head.weight.grad, w2.grad)
    torch.testing.assert_close(head.bias.grad, b2.grad)


def test_sample_n_draws_like_the_actor_on_repeated_states():
    """n actions per state from one actor pass: the same distribution and random draws as running the actor on
    ``obs.repeat_interleave(n)`` (CORL's way), laid out state-major."""
    from c4_lightning.algos.networks import TanhGaussianActor

    torch.manual_seed(0)
    actor = TanhGaussianActor(6, 3, (32, 32), max_action=2.0)
    obs, n = torch.randn(7, 6), 4
    torch.manual_seed(5)
    a, logp = actor.sample_n(obs, n)
    torch.manual_seed(5)
    a_ref, logp_ref = actor(obs.repeat_interleave(n, 0))
    assert a.shape == (7 * n, 3) and logp.shape == (7 * n,)
    torch.testing.assert_close(a, a_ref)
    torch.testing.assert_close(logp, logp_ref)
    torch.testing.assert_close(actor.log_prob(obs.repeat_interleave(n, 0), a), logp, rtol=1e-4, atol=1e-4)
