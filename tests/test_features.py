import pytest
import torch

from c4_lightning.algos.networks import CriticEnsemble
from c4_lightning.c4.features import clustering_features, input_gradients

OBS, ACT = 5, 3


@pytest.fixture
def critics():
    torch.manual_seed(0)
    c = CriticEnsemble(OBS, ACT, hidden=(16, 16), ensemble_size=2).double()
    t = CriticEnsemble(OBS, ACT, hidden=(16, 16), ensemble_size=2).double()
    return c, t


def _data(n, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, d, generator=g, dtype=torch.float64) for d in (OBS, ACT, OBS, ACT)]


def test_input_gradients_match_per_member_loop_and_finite_differences(critics):
    critic, _ = critics
    obs, act, _, _ = _data(6)
    g = input_gradients(critic, obs, act, create_graph=False)
    assert g.shape == (2, 6, OBS + ACT) and not g.requires_grad
    x = torch.cat([obs, act], -1)
    for e in range(2):
        for b in range(6):
            xb = x[b : b + 1].clone().requires_grad_(True)
            q = critic.from_input(xb)[e, 0]
            (ref,) = torch.autograd.grad(q, xb)
            torch.testing.assert_close(g[e, b], ref[0])
    # central finite differences on one row
    h = 1e-6
    for d in range(OBS + ACT):
        dx = torch.zeros_like(x[:1])
        dx[0, d] = h
        fd = (critic.from_input(x[:1] + dx) - critic.from_input(x[:1] - dx))[:, 0] / (2 * h)
        torch.testing.assert_close(g[:, 0, d], fd, rtol=1e-5, atol=1e-7)


def test_input_gradients_double_backprop_reaches_weights(critics):
    critic, _ = critics
    obs, act, _, _ = _data(8)
    obs.requires_grad_(True)
    g = input_gradients(critic, obs, act, create_graph=True)
    assert g.requires_grad
    g.square().sum().backward()
    w = critic.hidden[0].weight
    assert w.grad is not None and w.grad.abs().sum() > 0
    assert obs.grad is None


def test_input_gradients_work_under_no_grad(critics):
    critic, _ = critics
    obs, act, _, _ = _data(4)
    with torch.no_grad():
        g = input_gradients(critic, obs, act)
    torch.testing.assert_close(g, input_gradients(critic, obs, act))


@pytest.mark.parametrize("kind", ["penultimate", "gradient"])
def test_clustering_features_shape_values_and_chunking(critics, kind):
    critic, target = critics
    obs, act, nobs, nact = _data(23)
    full = clustering_features(critic, target, obs, act, nobs, nact, kind=kind, chunk_size=1000)
    width = 16 if kind == "penultimate" else OBS + ACT
    assert full.shape == (23, 2 * width) and full.dtype == torch.float32 and full.device.type == "cpu"
    assert not full.requires_grad and full.grad_fn is None
    for cs in (1, 5, 23):
        torch.testing.assert_close(
            clustering_features(critic, target, obs, act, nobs, nact, kind=kind, chunk_size=cs), full
        )
    # online side from the critic at (s, a), target side from the target at (s', a'), twin-averaged
    if kind == "penultimate":
        phi = critic(obs, act, return_features=True)[1].mean(0)
        phi_bar = target(nobs, nact, return_features=True)[1].mean(0)
    else:
        phi = input_gradients(critic, obs, act).mean(0)
        phi_bar = input_gradients(target, nobs, nact).mean(0)
    torch.testing.assert_close(full, torch.cat([phi, phi_bar], -1).float())


def test_clustering_features_keep_no_graph_and_no_param_grads(critics):
    critic, target = critics
    obs, act, nobs, nact = _data(10)
    out = clustering_features(critic, target, obs, act, nobs, nact, kind="gradient", chunk_size=3)
    assert out.grad_fn is None
    assert all(p.grad is None for p in critic.parameters())
    assert all(p.grad is None for p in target.parameters())


def test_clustering_features_bad_inputs(critics):
    critic, target = critics
    obs, act, nobs, nact = _data(4)
    with pytest.raises(ValueError, match="kind"):
        clustering_features(critic, target, obs, act, nobs, nact, kind="logits")
    with pytest.raises(ValueError, match="chunk_size"):
        clustering_features(critic, target, obs, act, nobs, nact, chunk_size=0)
    with pytest.raises(ValueError, match="next_obs"):
        clustering_features(critic, target, obs, act, nobs[:3], nact[:3])
    with pytest.raises(ValueError, match="same number of rows"):
        input_gradients(critic, obs, act[:2])
