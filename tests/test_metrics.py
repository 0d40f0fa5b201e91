import numpy as np
import pytest
import torch

from c4_lightning.c4.metrics import CrossCovarianceMetric
from c4_lightning.c4.penalty import cross_covariance


def _data(e=2, n=90, dx=6, dy=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(e, n, dx, generator=g) * 3 + 5  # offset means: tests the centring
    y = torch.rand(e, n, dy, generator=g) + 0.4 * x[..., :dy]
    return x, y


def _expected(x, y):
    c = cross_covariance(x.double(), y.double())
    return torch.linalg.matrix_norm(c).mean().item(), torch.diagonal(c, dim1=-2, dim2=-1).sum(-1).mean().item()


@pytest.mark.parametrize("dims", [dict(feature_dim=6, ensemble_size=2), dict()])
def test_accumulated_equals_full_data(dims):
    x, y = _data()
    m = CrossCovarianceMetric(**dims)
    for s in (slice(0, 7), slice(7, 40), slice(40, 41), slice(41, 90)):
        m.update(x[:, s], y[:, s])
    out = m.compute()
    fro, tr = _expected(x, y)
    assert out["fro"].item() == pytest.approx(fro, rel=1e-9)
    assert out["trace"].item() == pytest.approx(tr, rel=1e-9)
    for e in range(2):  # per-member C against numpy
        ref = np.cov(np.concatenate([y[e], x[e]], 1).T.astype(np.float64))[:6, 6:]
        np.testing.assert_allclose(m.covariance()[e].numpy(), ref, rtol=1e-6, atol=1e-9)


def test_forward_returns_batch_value_and_accumulates():
    x, y = _data(seed=1)
    m = CrossCovarianceMetric()
    batch = m(x[:, :30], y[:, :30])
    assert batch["fro"].item() == pytest.approx(_expected(x[:, :30], y[:, :30])[0], rel=1e-9)
    m(x[:, 30:], y[:, 30:])
    assert m.compute()["fro"].item() == pytest.approx(_expected(x, y)[0], rel=1e-9)


def test_reset_and_non_square_and_single_member():
    x, y = _data(e=1, dy=4)
    m = CrossCovarianceMetric(feature_dim=6, next_feature_dim=4)
    m.update(torch.randn(30, 6) * 100, torch.randn(30, 4) * 100)
    m.reset()
    m.update(x[0], y[0])  # [B, D] is one member
    out = m.compute()
    assert set(out) == {"fro", "corr_rms"}  # no trace for a non-square C
    expected = torch.linalg.matrix_norm(cross_covariance(x[0].double(), y[0].double())).item()
    assert out["fro"].item() == pytest.approx(expected, rel=1e-9)
    # inferred shapes are forgotten on reset
    lazy = CrossCovarianceMetric()
    lazy.update(torch.randn(3, 8, 5), torch.randn(3, 8, 5))
    lazy.reset()
    lazy.update(x, y)
    assert lazy.compute()["fro"].item() == pytest.approx(out["fro"].item(), rel=1e-9)


def test_metric_errors():
    m = CrossCovarianceMetric(feature_dim=3, ensemble_size=2)
    with pytest.raises(ValueError, match="ensemble size"):
        m.update(torch.randn(5, 3), torch.randn(5, 3))
    with pytest.raises(ValueError, match="same ensemble and batch"):
        m.update(torch.randn(2, 5, 3), torch.randn(2, 4, 3))
    m.update(torch.randn(2, 1, 3), torch.randn(2, 1, 3))
    with pytest.raises(ValueError, match="at least 2 rows"):
        m.compute()
    lazy = CrossCovarianceMetric()
    lazy.update(torch.randn(2, 4, 3), torch.randn(2, 4, 3))
    with pytest.raises(ValueError, match="reset"):
        lazy.update(torch.randn(2, 4, 5), torch.randn(2, 4, 5))
    with pytest.raises(ValueError, match="feature_dim"):
        CrossCovarianceMetric(feature_dim=0)
