"""C4 penalties as pure functions on tensors.

Every function takes the *online* side first (``phi`` = features or input gradients of the critic being
trained, at ``(s, a)``) and the *target* side second (``phi_next`` = the target critic's features at
``(s', a')``). The target side is detached inside each function, so gradients reach only the online side.

Shapes: ``[..., B, D]`` -> ``[...]``. Any leading dims (typically the critic ensemble dim ``E``) are kept,
so one call gives one penalty per ensemble member; the caller sums or averages them.

Covariance convention: the cross-covariance over the batch is centred and uses ``ddof = 1``
(``/ (B - 1)``, like ``numpy.cov``), so the covariance functions need ``B >= 2``.

Sketch: ``cross_cov`` and ``weighted_cross_cov`` take ``sketch=k`` (``model.c4.penalty_sketch``), an unbiased
random estimate of their squared Frobenius norm from ``k`` Rademacher directions (:func:`_sketch`); ``None`` (the
default) is the exact value, computed exactly as before the option existed.

Precision: half-precision inputs (``float16``/``bfloat16``) are promoted to ``float32`` and autocast is
disabled inside the covariance, because a covariance summed over a batch of 256 in bf16 loses most of its
digits. No function here synchronises with the host (no ``.item()``, no data-dependent checks), so they are
safe in the training hot path; only shapes and arguments are validated.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import Callable

import torch

__all__ = [
    "cross_covariance",
    "cross_cov_penalty",
    "feature_dot_penalty",
    "grad_cross_cov_penalty",
    "grad_cross_cov_raw",
    "weighted_cross_cov_penalty",
    "PenaltySpec",
    "PENALTIES",
    "register_penalty",
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


def _check_sketch(sketch) -> None:
    if sketch is not None and (isinstance(sketch, bool) or not isinstance(sketch, int) or sketch < 1):
        raise ValueError(
            f"sketch must be an int >= 1 (random directions of the Frobenius-norm sketch) or None (exact), "
            f"got {sketch!r}"
        )


def _sketch(xc: torch.Tensor, scale: float, sketch: int | None) -> tuple[torch.Tensor, float]:
    """The one home of the sketch rule: ``(xc, scale)`` for :class:`_CrossCovSquaredNorm`, exact or sketched.

    ``sketch=None``: returned unchanged (the exact ``||phi^T xc||_F^2``, nothing drawn). ``sketch=k``: ``(xc R,
    scale / k)`` with ``R`` an ``[..., H', k]`` matrix of i.i.d. Rademacher (``+-1``) entries, drawn fresh on every call
    and independently for every leading index (ensemble member). Then ``||phi^T xc R||_F^2 / k = ||C R||_F^2 / k`` with
    ``C = phi^T xc``, and since ``E[R R^T] = k I``:

    * value: ``E_R ||C R||_F^2 / k = tr(C E[R R^T] C^T) / k = ||C||_F^2`` (unbiased given the batch);
    * gradient: ``d/dphi = 2 xc R R^T xc^T phi / k`` is linear in ``R R^T``, so its expectation is the exact gradient
      ``2 xc xc^T phi`` (unbiased given the batch). ``xc R`` is still centred over the batch (a right product keeps
      column means at zero), so :class:`_CrossCovSquaredNorm`'s shortcut holds unchanged.
    * spread: with ``M = C^T C``, ``Var = 2 (||M||_F^2 - sum_j M_jj^2) / k`` (Rademacher quadratic forms): a relative
      standard deviation up to ``sqrt(2 / k)`` when ``C`` is nearly rank one, smaller when its spectrum is flat. It is
      zero only for diagonal ``M``, so ``k = H'`` is still random (the exact path is ``None``).

    Cost: ``xc R`` (``B H' k``), ``phi^T (xc R)`` (``H B k``) and the backward ``(xc R) (C R)^T`` (``B k H``) instead of
    two ``B H H'`` products: cheaper than exact for ``k < 2 H H' / (H' + 2 H)`` (``2 H / 3`` for ``H = H'``).

    Random numbers: ``torch.randint`` on ``xc``'s device, from torch's global generator of that device. The training
    checkpoint stores the torch CPU and CUDA generator states (``c4_lightning/training/rng.py``), so a resumed run draws
    the same ``R`` as an uninterrupted one, and ``seed_everything`` makes runs reproducible; nothing is drawn when
    ``sketch`` is ``None`` or the penalty is off.
    """
    if sketch is None:
        return xc, scale
    r = torch.randint(0, 2, (*xc.shape[:-2], xc.shape[-1], sketch), device=xc.device, dtype=xc.dtype)
    return xc @ (r * 2 - 1), scale / sketch


def cross_cov_penalty(phi: torch.Tensor, phi_next: torch.Tensor, sketch: int | None = None) -> torch.Tensor:
    """``||Cov_B(phi_next.detach(), phi)||_F^2`` on penultimate features (the package's default until 2026-12).

    Scale: grows with the squared feature scale. **Not invariant** to how the critic is parametrised: ReLU is
    positively homogeneous, so scaling the last hidden layer by ``c`` and the head by ``1/c`` leaves Q unchanged but
    multiplies this penalty by ``c^2`` (``c^4`` once the target follows) -- the critic can lower it by shrinking its
    features instead of decorrelating them. Kept unchanged so experiments can compare it with the invariant forms.

    Args:
        phi: online-critic features at ``(s, a)``, ``[..., B, H]`` (receives gradients).
        phi_next: target-critic features at ``(s', a')``, ``[..., B, H']`` (detached here).
        sketch: ``None`` (exact) or ``k >= 1``: the unbiased Rademacher sketch ``||C R||_F^2 / k`` of the squared
            norm, drawn afresh on every call (:func:`_sketch`; ``model.c4.penalty_sketch``).

    Returns:
        ``[...]``: the squared Frobenius norm per leading index. Zero when either side is constant over the batch.
        Equal to ``cross_covariance(phi, phi_next).square().sum((-2, -1))`` up to rounding, at about half the cost
        (a custom backward; it supports first-order gradients, which training needs, not double backprop).
    """
    _check_sketch(sketch)
    _check_pair(phi, phi_next, "phi", "phi_next", min_batch=2)
    phi, phi_next = _as_float(phi), _as_float(phi_next.detach())
    with torch.autocast(device_type=phi.device.type, enabled=False):
        xc = phi_next - phi_next.mean(dim=-2, keepdim=True)
        return _CrossCovSquaredNorm.apply(phi, *_sketch(xc, 1.0 / (phi.shape[-2] - 1) ** 2, sketch))


def feature_dot_penalty(phi: torch.Tensor, phi_next: torch.Tensor) -> torch.Tensor:
    """``mean_B <phi, phi_next.detach()>``: the C4 authors' released default (the DR3 regulariser; the authors run it
    with weight 0.3 on LayerNorm features).

    Not a covariance, so it is defined for any ``B >= 1``; ``phi`` and ``phi_next`` must have the same width.
    Scale: the product of the feature scales. **Not invariant** to the rescaling of the last hidden layer
    (``c^2``, like ``cross_cov``); LayerNorm critics bound the features it acts on, which limits that way out.

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
    """The paper's form on input gradients: ``cap * tanh((||C||_F^2 + beta * tr(C)^2) / cap)`` with
    ``C = Cov_B(grad_next.detach(), grad)``, ``grad = dQ/d(s, a)``, ``grad_next = dQ_target/d(s', a')``.

    **Invariant** to the rescaling of the last hidden layer (input gradients do not change when Q does not).
    Scale: the fourth power of the scale of dQ/d(s,a) (the squared norm of a covariance of gradients). The cap bounds
    the value smoothly; above it the gradient fades (``sech^2``), so the C4 plug-in logs the raw value
    (:func:`grad_cross_cov_raw`, ``c4/penalty_raw``) and warns once when it exceeds the cap.

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
    return cap * torch.tanh(grad_cross_cov_raw(grad, grad_next, beta) / cap)


def grad_cross_cov_raw(
    grad: torch.Tensor, grad_next: torch.Tensor, beta: float = 1.0, cap: float = 100.0
) -> torch.Tensor:
    """``||C||_F^2 + beta * tr(C)^2`` before the cap (``cap`` is accepted and ignored, so the same options apply)."""
    c = cross_covariance(grad, grad_next.detach())
    return c.square().sum(dim=(-2, -1)) + beta * torch.diagonal(c, dim1=-2, dim2=-1).sum(-1).square()


def weighted_cross_cov_penalty(
    psi: torch.Tensor, psi_next: torch.Tensor, eps: float = 1e-8, sketch: int | None = None
) -> torch.Tensor:
    """Normalised cross-covariance of the head-weighted features ``psi = w * phi`` (per unit ``j``:
    ``psi_j = w_j phi_j``, so ``sum_j psi_j = Q - b``):

        ``||Cov_B(psi_next, psi)||_F^2 / (tr Cov_B(psi_next) * tr Cov_B(psi) + eps)``

    ``psi_next`` (the target critic's, at ``(s', a')``) is detached. The entries of ``Cov_B(psi_next, psi)`` are the
    covariances between the units' contributions to ``Q_target(s', a')`` and to ``Q(s, a)``; they sum to
    ``Cov_B(Q_target(s', a'), Q(s, a))``.

    **Invariant** to any positive per-unit rescaling of the last hidden layer (``phi_j -> c_j phi_j``,
    ``w_j -> w_j / c_j`` leaves every ``psi_j``, hence Q and this value, unchanged), and to the scale of Q itself
    (rewards): by Cauchy-Schwarz the value lies in ``[0, 1]``. The online side's variance in the denominator is
    differentiated too, so the value is homogeneous of degree 0 in ``psi``: its gradient is orthogonal to ``psi``,
    and the critic can lower it only by decorrelating, not by shrinking the spread of Q within the batch. Cost: one
    ``[H, B] x [B, H]`` product per member, as ``cross_cov``.

    ``sketch=k`` replaces the numerator by its unbiased Rademacher sketch (:func:`_sketch`); the denominator is exact
    and depends only on the batch, so value and gradient stay unbiased given the batch, and the value stays exactly
    invariant to the rescaling for a given draw (``psi`` does not change). The ``[0, 1]`` bound holds only in
    expectation.

    Shapes ``[..., B, H]`` -> ``[...]``.
    """
    _check_sketch(sketch)
    _check_pair(psi, psi_next, "psi", "psi_next", min_batch=2)
    psi, psi_next = _as_float(psi), _as_float(psi_next.detach())
    with torch.autocast(device_type=psi.device.type, enabled=False):
        b = psi.shape[-2]
        xc = psi_next - psi_next.mean(dim=-2, keepdim=True)
        num = _CrossCovSquaredNorm.apply(psi, *_sketch(xc, 1.0 / (b - 1) ** 2, sketch))
        var_next = xc.square().sum(dim=(-2, -1)) / (b - 1)
        var = (psi - psi.mean(dim=-2, keepdim=True)).square().sum(dim=(-2, -1)) / (b - 1)
        return num / (var_next * var + eps)


@dataclass(frozen=True)
class PenaltySpec:
    """A registered penalty: ``fn(online, target, **options) -> [...]`` and what it is computed on.

    ``inputs``: ``"features"`` (penultimate features ``phi(s,a)`` and the target's ``phi_bar(s',a')``),
    ``"head_weighted"`` (the same features times each critic's head weights, ``w * phi``), or
    ``"input_gradients"`` (``dQ/d(s,a)`` with a graph for double backprop, and the target's ``dQ/d(s',a')``).
    ``options``: penalty keyword -> ``C4Config`` field that supplies it. ``raw``: the uncapped value, for a penalty
    with a cap (logged as ``c4/penalty_raw``; a warning when above ``cap``). ``invariant``: unchanged when the
    critic rescales its last hidden layer without changing Q (tested with ``pytest -k invariance``)."""

    fn: Callable[..., torch.Tensor]
    inputs: str = "features"
    options: dict = field(default_factory=dict)
    raw: Callable[..., torch.Tensor] | None = None
    invariant: bool = False

    def __post_init__(self) -> None:
        if self.inputs not in INPUT_KINDS:
            raise ValueError(f"penalty inputs {self.inputs!r} is unknown; use one of {INPUT_KINDS}")


INPUT_KINDS = ("features", "head_weighted", "input_gradients")

PENALTIES: dict[str, PenaltySpec] = {
    "cross_cov": PenaltySpec(cross_cov_penalty, "features", {"sketch": "penalty_sketch"}),
    "feature_dot": PenaltySpec(feature_dot_penalty, "features"),
    "weighted_cross_cov": PenaltySpec(
        weighted_cross_cov_penalty, "head_weighted", {"sketch": "penalty_sketch"}, invariant=True
    ),
    "grad_cross_cov": PenaltySpec(
        grad_cross_cov_penalty,
        "input_gradients",
        {"beta": "grad_beta", "cap": "grad_cap"},
        raw=grad_cross_cov_raw,
        invariant=True,
    ),
}
"""The one registry: name -> :class:`PenaltySpec`. ``model.c4.penalty`` accepts exactly these names."""


def register_penalty(
    name: str,
    fn: Callable[..., torch.Tensor],
    inputs: str = "features",
    options: dict | None = None,
    raw: Callable[..., torch.Tensor] | None = None,
    invariant: bool = False,
) -> PenaltySpec:
    """Add a penalty to the registry (a new penalty = one function + this call); returns its spec."""
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"penalty name must be an identifier, got {name!r}")
    spec = PenaltySpec(fn, inputs, dict(options or {}), raw, invariant)
    PENALTIES[name] = spec
    return spec


def validate_penalty_name(name: str) -> str:
    """Return ``name`` if it is a registered penalty, else raise ``ValueError`` listing the valid names."""
    if not isinstance(name, str) or name not in PENALTIES:
        raise ValueError(f"model.c4.penalty={name!r} is unknown; registered penalties: {', '.join(sorted(PENALTIES))}")
    return name


def _options(fn: Callable[..., torch.Tensor]) -> list[str]:
    return list(inspect.signature(fn).parameters)[2:]


def penalty_value(name: str, online: torch.Tensor, target: torch.Tensor, **options) -> torch.Tensor:
    """Evaluate the penalty ``name`` (a key of :data:`PENALTIES`) on ``online`` / ``target`` (``[..., B, D]``).

    ``options`` go to the penalty (``beta``, ``cap`` for ``grad_cross_cov``; ``sketch`` for ``cross_cov`` and
    ``weighted_cross_cov``); an option the penalty does not take raises ``ValueError`` naming the ones it does.
    """
    fn = PENALTIES[validate_penalty_name(name)].fn
    allowed = _options(fn)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"penalty {name!r} takes options {allowed}, got unknown {unknown}: remove them")
    return fn(online, target, **options)
