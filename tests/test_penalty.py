import numpy as np
import pytest
import torch

from c4_lightning.c4.penalty import (
    PENALTIES,
    cross_cov_penalty,
    cross_covariance,
    feature_dot_penalty,
    grad_cross_cov_penalty,
    penalty_value,
    validate_penalty_name,
)


def _np_cross_cov(x, y):
    """Cov(y, x) via np.cov of the stacked variables: rows of np.cov input are variables."""
    dy = y.shape[1]
    full = np.cov(np.concatenate([y, x], axis=1).T)  # ddof=1
    return full[:dy, dy:]


@pytest.fixture
def xy():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 17, 5, generator=g, dtype=torch.float64)
    y = 0.5 * x[..., :4] + torch.randn(3, 17, 4, generator=g, dtype=torch.float64)  # correlated
    return x, y


def test_cross_covariance_matches_np_cov(xy):
    x, y = xy
    c = cross_covariance(x, y)
    assert c.shape == (3, 4, 5)
    for e in range(3):
        np.testing.assert_allclose(c[e].numpy(), _np_cross_cov(x[e].numpy(), y[e].numpy()), rtol=1e-10, atol=1e-12)


def test_cross_cov_penalty_matches_numpy(xy):
    x, y = xy
    p = cross_cov_penalty(x, y)
    assert p.shape == (3,)
    for e in range(3):
        expected = (_np_cross_cov(x[e].numpy(), y[e].numpy()) ** 2).sum()
        assert p[e].item() == pytest.approx(expected, rel=1e-10)
    assert (p > 0).all()


def test_feature_dot_penalty_matches_numpy():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(2, 9, 6, generator=g), torch.randn(2, 9, 6, generator=g)
    p = feature_dot_penalty(x, y)
    expected = np.einsum("ebd,ebd->eb", x.numpy(), y.numpy()).mean(1)
    np.testing.assert_allclose(p.numpy(), expected, rtol=1e-5)
    # defined for B = 1 (not a covariance)
    assert feature_dot_penalty(x[:, :1], y[:, :1]).shape == (2,)


def test_grad_cross_cov_matches_numpy_and_cap(xy):
    x, _ = xy
    y = x + 0.1 * torch.randn_like(x)  # square, strongly correlated
    beta, cap = 0.7, 3.0
    val = grad_cross_cov_penalty(x, y, beta=beta, cap=cap)
    for e in range(3):
        c = _np_cross_cov(x[e].numpy(), y[e].numpy())
        raw = (c**2).sum() + beta * np.trace(c) ** 2
        assert val[e].item() == pytest.approx(cap * np.tanh(raw / cap), rel=1e-10)
        assert raw > cap  # the cap is active here ...
    assert (val < cap).all() and (val > 0.9 * cap).all()  # ... and bounds the value
    # huge inputs stay below the cap
    assert (grad_cross_cov_penalty(1e3 * x, 1e3 * y, cap=5.0) <= 5.0).all()
    # small raw values are ~ uncapped
    small = grad_cross_cov_penalty(1e-3 * x, 1e-3 * y, beta=beta, cap=100.0)
    c0 = _np_cross_cov(1e-3 * x[0].numpy(), 1e-3 * y[0].numpy())
    assert small[0].item() == pytest.approx((c0**2).sum() + beta * np.trace(c0) ** 2, rel=1e-6)


def test_constant_target_side_gives_zero():
    x = torch.randn(4, 32, 8)
    const = torch.full((4, 32, 8), 3.7)
    assert torch.allclose(cross_cov_penalty(x, const), torch.zeros(4), atol=1e-10)
    assert torch.allclose(cross_cov_penalty(const, x), torch.zeros(4), atol=1e-10)
    assert torch.allclose(grad_cross_cov_penalty(x, const), torch.zeros(4), atol=1e-10)


@pytest.mark.parametrize("name", ["cross_cov", "feature_dot", "grad_cross_cov"])
def test_gradients_reach_online_side_only(name):
    phi = torch.randn(2, 16, 6, requires_grad=True)
    phi_next = (phi.detach() + 0.3 * torch.randn(2, 16, 6)).requires_grad_(True)
    penalty_value(name, phi, phi_next).sum().backward()
    assert phi.grad is not None and phi.grad.abs().sum() > 0
    assert phi_next.grad is None


def test_cross_cov_gradient_matches_autograd_of_explicit_formula():
    phi = torch.randn(12, 4, dtype=torch.float64, requires_grad=True)
    y = torch.randn(12, 3, dtype=torch.float64)
    cross_cov_penalty(phi, y).backward()
    phi2 = phi.detach().clone().requires_grad_(True)
    c = (y - y.mean(0)).T @ (phi2 - phi2.mean(0)) / 11
    (c**2).sum().backward()
    torch.testing.assert_close(phi.grad, phi2.grad)


def test_leading_dims_are_independent():
    x, y = torch.randn(2, 3, 10, 4), torch.randn(2, 3, 10, 4)
    full = cross_cov_penalty(x, y)
    assert full.shape == (2, 3)
    torch.testing.assert_close(full[1, 2], cross_cov_penalty(x[1, 2], y[1, 2]))
    assert cross_cov_penalty(x[0, 0], y[0, 0]).shape == ()


def test_half_precision_is_promoted():
    x, y = torch.randn(2, 64, 8), torch.randn(2, 64, 8)
    p = cross_cov_penalty(x.bfloat16(), y.bfloat16())
    assert p.dtype == torch.float32
    torch.testing.assert_close(p, cross_cov_penalty(x.bfloat16().float(), y.bfloat16().float()))


def test_bad_inputs():
    with pytest.raises(ValueError, match="B >= 2"):
        cross_cov_penalty(torch.randn(1, 4), torch.randn(1, 4))
    with pytest.raises(ValueError, match="B >= 2"):
        cross_covariance(torch.randn(3, 1, 4), torch.randn(3, 1, 4))
    with pytest.raises(ValueError, match="share all dims"):
        cross_cov_penalty(torch.randn(5, 4), torch.randn(6, 4))
    with pytest.raises(ValueError, match="at least 2 dims"):
        cross_cov_penalty(torch.randn(5), torch.randn(5))
    with pytest.raises(ValueError, match="floating-point"):
        cross_cov_penalty(torch.ones(5, 2, dtype=torch.long), torch.randn(5, 2))
    with pytest.raises(ValueError, match="cap"):
        grad_cross_cov_penalty(torch.randn(5, 2), torch.randn(5, 2), cap=0.0)
    with pytest.raises(ValueError, match="beta"):
        grad_cross_cov_penalty(torch.randn(5, 2), torch.randn(5, 2), beta=-1.0)
    with pytest.raises(ValueError, match="square"):
        grad_cross_cov_penalty(torch.randn(5, 2), torch.randn(5, 3))
    with pytest.raises(ValueError, match="same width"):
        feature_dot_penalty(torch.randn(5, 2), torch.randn(5, 3))


def test_registry_and_validation():
    assert {"cross_cov", "feature_dot", "grad_cross_cov", "weighted_cross_cov"} <= set(PENALTIES)
    assert validate_penalty_name("feature_dot") == "feature_dot"
    with pytest.raises(ValueError, match=r"crosscov.*cross_cov.*feature_dot.*grad_cross_cov.*weighted_cross_cov"):
        validate_penalty_name("crosscov")
    x, y = torch.randn(8, 3), torch.randn(8, 3)
    torch.testing.assert_close(penalty_value("cross_cov", x, y), cross_cov_penalty(x, y))
    torch.testing.assert_close(
        penalty_value("grad_cross_cov", x, y, beta=0.0, cap=2.0), grad_cross_cov_penalty(x, y, beta=0.0, cap=2.0)
    )
    with pytest.raises(ValueError, match="beta"):
        penalty_value("cross_cov", x, y, beta=1.0)
