"""C4 penalties as pure functions on tensors.

Every function takes the *online* side first (``phi`` = features or input gradients of the critic being
trained, at ``(s, a)``) and the *target* side second (``phi_next`` = the target critic's features at
``(s', a')``). The target side is detached inside each function, so gradients reach only the online side.

Shapes: ``[..., B, D]`` -> ``[...]``. Any leading dims (typically the critic ensemble dim ``E``) are kept,
so one call gives one penalty per ensemble member; the caller sums or averages them.

Covariance convention: the cross-covariance over the batch is centred and uses ``ddof = 1``
(``/ (B - 1)``, like ``numpy.cov``), so the covariance functions need ``B >= 2``.

Precision: half-precision inputs (``float16``/``bfloat16``) are promoted to ``float32`` and autocast is
disabled inside the covariance, because a covariance summed over a batch of 256 in bf16 loses most of its
digits. No function here synchronises with the host (no ``.item()``, no data-dependent checks), so they are
safe in the training hot path; only shapes and arguments are validated.
"""
from __future__ import annotations

import inspect
import math
from typing import Callable

import torch

__all__ = [
    "cross_covariance",
    "cross_cov_penalty",
    "feature_dot_penalty",
    "grad_cross_cov_penalty",
    "PENALTIES",
    "penalty_value",
    "validate_penalty_name",
]


def _as_float(t: torch.Tensor) -> torch.Tensor:
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def _check_pair(x: torch.Tensor, y: torch.Tensor, xname: str, yname: str, min_batch: int) -> None:
    for t, name in ((x, xname), (y, yname)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor of shape [..., B, D], got {type(t).__name__}")
        if t.dim() < 2:
            raise ValueError(f"{name} must have shape [..., B, D] (at least 2 dims), got shape {tuple(t.shape)}")
        if not t.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got dtype {t.dtype}; cast it with .float()")
    if x.shape[:-1] != y.shape[:-1]:
        raise ValueError(
            f"{xname} and {yname} must share all dims but the last ([..., B, D]); got {tuple(x.shape)} and "
            f"{tuple(y.shape)}: pair each row of {xname} with the matching row of {yname}"
        )
    if x.shape[-2] < min_batch:
        raise ValueError(
            f"batch dim (dim -2) of {xname} has size {x.shape[-2]}; a centred covariance with ddof=1 needs "
            f"B >= {min_batch}: pass a batch of at least {min_batch} rows"
        )


def cross_covariance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Centred cross-covariance over the batch dim, ``C = (y - ȳ)^T (x - x̄) / (B - 1)``.

    Args:
        x: ``[..., B, Dx]``.
        y: ``[..., B, Dy]`` (same leading dims and batch size as ``x``).

    Returns:
        ``[..., Dy, Dx]`` with ``C[..., i, j] = Cov(y_i, x_j)`` (unbiased, ``ddof = 1``, matching
        ``np.cov(np.concatenate([y, x], 1).T)[:Dy, Dy:]``). Gradients flow to both arguments; the penalties
        below detach the target side themselves.
    """
    _check_pair(x, y, "x", "y", min_batch=2)
    x, y = _as_float(x), _as_float(y)
    with torch.autocast(device_type=x.device.type, enabled=False):
        xc = x - x.mean(dim=-2, keepdim=True)
        yc = y - y.mean(dim=-2, keepdim=True)
        return yc.transpose(-1, -2) @ xc / (x.shape[-2] - 1)


class _CrossCovSquaredNorm(torch.autograd.Function):
    """``||phi^T xc||_F^2 * scale`` with ``xc`` centred and constant: value and gradient from two batched products.

    Because ``xc`` is centred over the batch, ``phi^T xc = phi_c^T xc``: ``phi`` needs no centring, and the
    gradient ``2 * scale * xc (phi^T xc)^T`` is already centred. Autograd of the explicit formula would also
    centre ``phi``, square, sum and run their backward ops; this does one product each way."""

    @staticmethod
    def forward(ctx, phi: torch.Tensor, xc: torch.Tensor, scale: float) -> torch.Tensor:
        c = phi.transpose(-1, -2) @ xc  # [..., H, H'] = (B - 1) Cov(phi, x)
        ctx.save_for_backward(xc, c)
        ctx.scale = scale
        return c.square().sum(dim=(-2, -1)) * scale

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: torch.Tensor):
        xc, c = ctx.saved_tensors
        return (xc @ c.transpose(-1, -2)) * (2.0 * ctx.scale * grad_out)[..., None, None], None, None


def cross_cov_penalty(phi: torch.Tensor, phi_next: torch.Tensor) -> torch.Tensor:
    """C4's default penalty ``||Cov_B(phi_next.detach(), phi)||_F^2``.

    Args:
        phi: online-critic features at ``(s, a)``, ``[..., B, H]`` (receives gradients).
        phi_next: target-critic features at ``(s', a')``, ``[..., B, H']`` (detached here).

    Returns:
        ``[...]``: the squared Frobenius norm per leading index. Zero when either side is constant over the batch.
        Equal to ``cross_covariance(phi, phi_next).square().sum((-2, -1))`` up to rounding, at about half the cost
        (a custom backward; it supports first-order gradients, which training needs, not double backprop).
    """
    _check_pair(phi, phi_next, "phi", "phi_next", min_batch=2)
    phi, phi_next = _as_float(phi), _as_float(phi_next.detach())
    with torch.autocast(device_type=phi.device.type, enabled=False):
        xc = phi_next - phi_next.mean(dim=-2, keepdim=True)
        return _CrossCovSquaredNorm.apply(phi, xc, 1.0 / (phi.shape[-2] - 1) ** 2)


def feature_dot_penalty(phi: torch.Tensor, phi_next: torch.Tensor) -> torch.Tensor:
    """``mean_B <phi, phi_next.detach()>``: the C4 authors' released default (the DR3 regulariser).

    Not a covariance, so it is defined for any ``B >= 1``; ``phi`` and ``phi_next`` must have the same width.

    Returns:
        ``[...]``: batch mean of the per-row dot products.
    """
    _check_pair(phi, phi_next, "phi", "phi_next", min_batch=1)
    if phi.shape[-1] != phi_next.shape[-1]:
        raise ValueError(
            f"feature_dot needs phi and phi_next of the same width, got {phi.shape[-1]} and {phi_next.shape[-1]}: "
            "use features from critics with the same architecture"
        )
    phi, phi_next = _as_float(phi), _as_float(phi_next)
    return (phi * phi_next.detach()).sum(dim=-1).mean(dim=-1)


def grad_cross_cov_penalty(
    grad: torch.Tensor, grad_next: torch.Tensor, beta: float = 1.0, cap: float = 100.0
) -> torch.Tensor:
    """Gradient-feature variant: ``cap * tanh((||C||_F^2 + beta * tr(C)^2) / cap)`` with
    ``C = Cov_B(grad_next.detach(), grad)``.

    Args:
        grad: ``dQ/d(s, a)`` of the online critic, ``[..., B, D]`` with ``D = obs_dim + act_dim``; make it with
            ``input_gradients(..., create_graph=True)`` so the penalty backpropagates into the critic (double
            backprop).
        grad_next: ``dQ_target/d(s', a')``, ``[..., B, D]`` (detached here).
        beta: weight of the squared trace term, ``>= 0``.
        cap: the bound ``m``: the value lies in ``[0, cap)`` and is ``~ ||C||_F^2 + beta tr(C)^2`` when that is
            small against ``cap``. Must be ``> 0``.

    Returns:
        ``[...]``.
    """
    if isinstance(cap, bool) or not isinstance(cap, (int, float)) or not math.isfinite(cap) or cap <= 0:
        raise ValueError(f"cap must be a finite number > 0 (the bound of the tanh-capped penalty), got {cap!r}")
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not math.isfinite(beta) or beta < 0:
        raise ValueError(f"beta must be a finite number >= 0 (weight of tr(C)^2), got {beta!r}")
    _check_pair(grad, grad_next, "grad", "grad_next", min_batch=2)
    if grad.shape[-1] != grad_next.shape[-1]:
        raise ValueError(
            f"grad_cross_cov needs a square covariance: grad has width {grad.shape[-1]} and grad_next "
            f"{grad_next.shape[-1]}; both must be gradients w.r.t. (s, a) of the same dimension"
        )
    c = cross_covariance(grad, grad_next.detach())
    raw = c.square().sum(dim=(-2, -1)) + beta * torch.diagonal(c, dim1=-2, dim2=-1).sum(-1).square()
    return cap * torch.tanh(raw / cap)


PENALTIES: dict[str, Callable[..., torch.Tensor]] = {
    "cross_cov": cross_cov_penalty,
    "feature_dot": feature_dot_penalty,
    "grad_cross_cov": grad_cross_cov_penalty,
}
"""Name -> penalty function ``f(online, target, **options) -> [...]``."""


def validate_penalty_name(name: str) -> str:
    """Return ``name`` if it is a registered penalty, else raise ``ValueError`` listing the valid names."""
    if not isinstance(name, str) or name not in PENALTIES:
        raise ValueError(f"penalty must be one of {sorted(PENALTIES)}, got {name!r}")
    return name


def _options(fn: Callable[..., torch.Tensor]) -> list[str]:
    return list(inspect.signature(fn).parameters)[2:]


def penalty_value(name: str, online: torch.Tensor, target: torch.Tensor, **options) -> torch.Tensor:
    """Evaluate the penalty ``name`` (a key of :data:`PENALTIES`) on ``online`` / ``target`` (``[..., B, D]``).

    ``options`` go to the penalty (``beta``, ``cap`` for ``grad_cross_cov``); an option the penalty does not take
    raises ``ValueError`` naming the ones it does.
    """
    fn = PENALTIES[validate_penalty_name(name)]
    allowed = _options(fn)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"penalty {name!r} takes options {allowed}, got unknown {unknown}: remove them")
    return fn(online, target, **options)
