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
