"""Property tests for the C4 penalty and covariance functions over random shapes."""

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from c4_lightning.c4.penalty import cross_cov_penalty, cross_covariance, feature_dot_penalty, grad_cross_cov_penalty

SETTINGS = settings(max_examples=40, deadline=None)


@st.composite
def pairs(draw, square=False):
    lead = tuple(draw(st.lists(st.integers(1, 3), min_size=0, max_size=2)))
    b = draw(st.integers(2, 12))
    dx = draw(st.integers(1, 8))
    dy = dx if square else draw(st.integers(1, 8))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*lead, b, dx, generator=g, dtype=torch.float64)
    y = torch.randn(*lead, b, dy, generator=g, dtype=torch.float64)
    return x, y


scales = st.floats(0.1, 10.0) | st.floats(-10.0, -0.1)


@SETTINGS
@given(pairs())
def test_cross_covariance_shape_matches_np_cov_and_transposes(xy):
    x, y = xy
    c = cross_covariance(x, y)
    assert c.shape == (*x.shape[:-2], y.shape[-1], x.shape[-1])
    torch.testing.assert_close(cross_covariance(y, x), c.transpose(-1, -2))
    xf, yf = x.reshape(-1, *x.shape[-2:]), y.reshape(-1, *y.shape[-2:])
    cf = c.reshape(-1, *c.shape[-2:])
    for i in range(xf.shape[0]):
        full = np.cov(np.concatenate([yf[i].numpy(), xf[i].numpy()], 1).T)
        np.testing.assert_allclose(
            cf[i].numpy(), np.atleast_2d(full)[: y.shape[-1], y.shape[-1] :], rtol=1e-9, atol=1e-12
        )


@SETTINGS
@given(pairs(), scales, scales)
def test_cross_cov_penalty_scale_law_and_symmetry(xy, a, b):
    x, y = xy
    p = cross_cov_penalty(x, y)
    assert (p >= 0).all()
    torch.testing.assert_close(cross_cov_penalty(a * x, b * y), a**2 * b**2 * p, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(cross_cov_penalty(y, x), p)  # ||C^T||_F = ||C||_F


@SETTINGS
@given(pairs(), st.floats(-100, 100), st.floats(-100, 100))
def test_penalties_invariant_to_constant_shifts(xy, cx, cy):
    x, y = xy
    torch.testing.assert_close(cross_cov_penalty(x + cx, y + cy), cross_cov_penalty(x, y), rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(cross_covariance(x + cx, y + cy), cross_covariance(x, y), rtol=1e-7, atol=1e-9)


@SETTINGS
@given(pairs(square=True), st.floats(0.0, 5.0), st.floats(0.01, 1e3), st.floats(-50, 50))
def test_grad_cross_cov_bounded_nonnegative_shift_invariant(xy, beta, cap, shift):
    x, y = xy
    v = grad_cross_cov_penalty(x, y, beta=beta, cap=cap)
    assert (v >= 0).all() and (v <= cap).all()
    torch.testing.assert_close(
        grad_cross_cov_penalty(x + shift, y - shift, beta=beta, cap=cap), v, rtol=1e-6, atol=1e-9
    )
    # with beta = 0 and a huge cap it is the plain cross-cov penalty
    torch.testing.assert_close(
        grad_cross_cov_penalty(x, y, beta=0.0, cap=1e12), cross_cov_penalty(x, y), rtol=1e-6, atol=1e-12
    )
    # monotone in beta
    assert (grad_cross_cov_penalty(x, y, beta=beta + 1.0, cap=cap) >= v - 1e-12).all()


@SETTINGS
@given(pairs(square=True), scales, scales)
def test_feature_dot_bilinear_and_symmetric(xy, a, b):
    x, y = xy
    p = feature_dot_penalty(x, y)
    torch.testing.assert_close(feature_dot_penalty(a * x, b * y), a * b * p, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(feature_dot_penalty(y, x), p)
    assert (feature_dot_penalty(x, x) >= 0).all()


@SETTINGS
@given(pairs())
def test_batch_permutation_invariance(xy):
    x, y = xy
    perm = torch.randperm(x.shape[-2])
    torch.testing.assert_close(cross_cov_penalty(x[..., perm, :], y[..., perm, :]), cross_cov_penalty(x, y))
