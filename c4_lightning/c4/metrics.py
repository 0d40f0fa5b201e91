"""torchmetrics diagnostics for C4: the cross-covariance between online and target critic features.

The paper's experiment 2 plots ``||Cov(phi_bar(s', a'), phi(s, a))||`` on a fixed probe set over training and
shows that C4 lowers it; :class:`CrossCovarianceMetric` is that curve for C4 and baselines alike.
"""

from __future__ import annotations

import torch
from torchmetrics import Metric

__all__ = ["CrossCovarianceMetric", "cross_covariance_from_stats", "correlation_rms", "within_cluster_summary"]


def correlation_rms(c: torch.Tensor, sd_y: torch.Tensor, sd_x: torch.Tensor) -> torch.Tensor:
    """Scale-free size of a cross-covariance ``C [..., Dy, Dx]``: the root-mean-square of the cross-correlations
    ``C_ij / (sd_y_i sd_x_j)``, in ``[0, 1]``. Units with zero spread (dead ReLUs) count as uncorrelated. Unchanged
    when the critic rescales its features (the raw ``||C||_F`` is not)."""
    denom = sd_y.unsqueeze(-1) * sd_x.unsqueeze(-2)
    corr = torch.where(denom > 0, c / denom.clamp_min(torch.finfo(c.dtype).tiny), torch.zeros_like(c))
    return corr.square().mean(dim=(-2, -1)).sqrt()


def within_cluster_summary(
    phi: torch.Tensor, phi_next: torch.Tensor, labels: torch.Tensor, min_rows: int = 8
) -> dict[str, torch.Tensor]:
    """The cross-covariance inside each cluster of a probe set (what a single-cluster batch sees), averaged over
    clusters weighted by their probe rows: ``{"fro": ..., "corr_rms": ...}`` (per-member values averaged over the
    ensemble). ``phi``/``phi_next`` are ``[E, P, D]``, ``labels`` ``[P]``; clusters with fewer than ``min_rows`` probe
    rows are left out. Empty dict when no cluster has enough rows."""
    phi, phi_next = phi.double(), phi_next.double()
    total, fro, corr = 0, 0.0, 0.0
    for k in torch.unique(labels):
        rows = labels == k
        n = int(rows.sum())
        if n < min_rows:
            continue
        x, y = phi[:, rows], phi_next[:, rows]
        xc, yc = x - x.mean(1, keepdim=True), y - y.mean(1, keepdim=True)
        c = yc.transpose(-1, -2) @ xc / (n - 1)
        sd_x, sd_y = xc.square().sum(1).div(n - 1).sqrt(), yc.square().sum(1).div(n - 1).sqrt()
        fro = fro + n * torch.linalg.matrix_norm(c, ord="fro").mean()
        corr = corr + n * correlation_rms(c, sd_y, sd_x).mean()
        total += n
    if total == 0:
        return {}
    return {"fro": fro / total, "corr_rms": corr / total}


def cross_covariance_from_stats(
    n: torch.Tensor, sum_x: torch.Tensor, sum_y: torch.Tensor, sum_yx: torch.Tensor
) -> torch.Tensor:
    """``C = (sum y x^T - n ȳ x̄^T) / (n - 1)`` (``ddof = 1``, like :func:`c4_lightning.c4.penalty.cross_covariance`)
    from sufficient statistics ``sum_x [..., Dx]``, ``sum_y [..., Dy]``, ``sum_yx [..., Dy, Dx]``."""
    mean_x, mean_y = sum_x / n, sum_y / n
    return (sum_yx - n * mean_y.unsqueeze(-1) * mean_x.unsqueeze(-2)) / (n - 1)


class CrossCovarianceMetric(Metric):
    """Accumulates ``Cov(phi_next, phi)`` over batches and reports its size.

    ``update(phi, phi_next)`` takes ``[B, Dx]`` / ``[B, Dy]`` (one critic) or ``[E, B, Dx]`` / ``[E, B, Dy]``
    (an ensemble, member ``e`` of ``phi`` paired with member ``e`` of ``phi_next``). The sufficient statistics
    (count, sums of x and y, sum of ``y x^T``, per member) are float64 states reduced by ``sum``, so the result over
    several batches and several DDP ranks equals the covariance of all rows at once (``ddof = 1``).

    ``compute()`` returns ``{"fro": mean_e ||C_e||_F, "corr_rms": mean_e RMS correlation, "trace": mean_e tr(C_e)}``:
    one covariance per ensemble member, averaged over members (not the covariance of averaged features).
    ``"corr_rms"`` (:func:`correlation_rms`) is the scale-free size: a critic that shrinks its features lowers
    ``"fro"`` but not ``"corr_rms"``. ``"trace"`` is present only when ``Dx == Dy``. Float64 states need a device
    that supports float64 (CPU, CUDA).

    Args:
        feature_dim: ``Dx``, the width of ``phi``; None (default) takes it from the first ``update``.
        ensemble_size: ``E``; None (default) takes it from the first ``update`` (``[B, D]`` inputs mean ``E = 1``).
        next_feature_dim: ``Dy``, the width of ``phi_next`` (defaults to ``feature_dim``, or to the first update's).

    Shapes left to the first ``update`` are fixed from then on (until ``reset``). Under DDP every rank must call
    ``update`` before ``compute`` so that all ranks hold states of the same shape (true for a probe set).
    """

    is_differentiable = False
    higher_is_better = False
    # True: forward() updates the global state and a fresh one instead of adding states, which would fail when
    # the global state still has its empty (shape-inferred) default
    full_state_update = True

    def __init__(
        self,
        feature_dim: int | None = None,
        ensemble_size: int | None = None,
        next_feature_dim: int | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        for v, name in (
            (feature_dim, "feature_dim"),
            (ensemble_size, "ensemble_size"),
            (next_feature_dim, "next_feature_dim"),
        ):
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f"{name} must be a positive int or None (inferred from the first update), got {v!r}")
        if next_feature_dim is None:
            next_feature_dim = feature_dim
        self.feature_dim, self.next_feature_dim, self.ensemble_size = feature_dim, next_feature_dim, ensemble_size
        f64 = torch.float64
        known = None not in (feature_dim, next_feature_dim, ensemble_size)
        e, dx, dy = (ensemble_size, feature_dim, next_feature_dim) if known else (0, 0, 0)
        # with unknown dims the states start empty and take their shape at the first update
        self.add_state("n", default=torch.zeros((), dtype=f64), dist_reduce_fx="sum")
        self.add_state("sum_x", default=torch.zeros(e, dx, dtype=f64), dist_reduce_fx="sum")
        self.add_state("sum_y", default=torch.zeros(e, dy, dtype=f64), dist_reduce_fx="sum")
        self.add_state("sum_yx", default=torch.zeros(e, dy, dx, dtype=f64), dist_reduce_fx="sum")
        self.add_state("sum_xx", default=torch.zeros(e, dx, dtype=f64), dist_reduce_fx="sum")  # for the std devs
        self.add_state("sum_yy", default=torch.zeros(e, dy, dtype=f64), dist_reduce_fx="sum")

    @staticmethod
    def _as_3d(t: torch.Tensor, name: str) -> torch.Tensor:
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            raise ValueError(f"{name} must be a floating-point torch.Tensor of shape [B, D] or [E, B, D]")
        if t.dim() == 2:
            t = t.unsqueeze(0)
        if t.dim() != 3:
            raise ValueError(f"{name} must have shape [B, D] or [E, B, D], got {tuple(t.shape)}")
        return t.detach().to(torch.float64)

    def update(self, phi: torch.Tensor, phi_next: torch.Tensor) -> None:
        x, y = self._as_3d(phi, "phi"), self._as_3d(phi_next, "phi_next")
        if x.shape[:2] != y.shape[:2]:
            raise ValueError(
                f"phi and phi_next must have the same ensemble and batch sizes ([E, B, D]), got "
                f"{tuple(phi.shape)} and {tuple(phi_next.shape)}"
            )
        e, dx, dy = x.shape[0], x.shape[-1], y.shape[-1]
        for want, got, name in (
            (self.ensemble_size, e, "ensemble size E"),
            (self.feature_dim, dx, "phi width"),
            (self.next_feature_dim, dy, "phi_next width"),
        ):
            if want is not None and want != got:
                raise ValueError(
                    f"{name} is {got} but this metric was built for {want}; pass features of the "
                    "configured shape or build the metric without fixed dims"
                )
        if self.sum_yx.numel() == 0 and self.sum_yx.shape != (e, dy, dx):  # first update with inferred dims
            self.sum_x = torch.zeros(e, dx, dtype=torch.float64, device=self.sum_x.device)
            self.sum_y = torch.zeros(e, dy, dtype=torch.float64, device=self.sum_y.device)
            self.sum_yx = torch.zeros(e, dy, dx, dtype=torch.float64, device=self.sum_yx.device)
            self.sum_xx = torch.zeros(e, dx, dtype=torch.float64, device=self.sum_xx.device)
            self.sum_yy = torch.zeros(e, dy, dtype=torch.float64, device=self.sum_yy.device)
        elif self.sum_yx.shape != (e, dy, dx):
            raise ValueError(
                f"phi/phi_next of shapes {tuple(phi.shape)}/{tuple(phi_next.shape)} do not match the "
                f"earlier updates (E, Dy, Dx) = {tuple(self.sum_yx.shape)}; call reset() to change shapes"
            )
        self.n += x.shape[1]
        self.sum_x += x.sum(dim=1)
        self.sum_y += y.sum(dim=1)
        self.sum_yx += y.transpose(-1, -2) @ x
        self.sum_xx += x.square().sum(dim=1)
        self.sum_yy += y.square().sum(dim=1)

    def covariance(self) -> torch.Tensor:
        """The per-member cross-covariance ``[E, Dy, Dx]`` from this process's states (call ``compute()`` for the
        DDP-synchronised summary)."""
        if float(self.n) < 2:
            raise ValueError(
                f"CrossCovarianceMetric needs at least 2 rows in total, got {int(self.n)}; "
                "call update() with more probe data before compute()"
            )
        return cross_covariance_from_stats(self.n, self.sum_x, self.sum_y, self.sum_yx)

    def compute(self) -> dict[str, torch.Tensor]:
        c = self.covariance()
        n = self.n
        sd_x = ((self.sum_xx - self.sum_x.square() / n) / (n - 1)).clamp_min(0).sqrt()
        sd_y = ((self.sum_yy - self.sum_y.square() / n) / (n - 1)).clamp_min(0).sqrt()
        out = {"fro": torch.linalg.matrix_norm(c, ord="fro").mean(), "corr_rms": correlation_rms(c, sd_y, sd_x).mean()}
        if c.shape[-1] == c.shape[-2]:
            out["trace"] = torch.diagonal(c, dim1=-2, dim2=-1).sum(-1).mean()
        return out
