"""The ``c4`` option group shared by every algorithm (``--model.c4.<name>`` on the command line)."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

PenaltyName = Literal["cross_cov", "feature_dot", "grad_cross_cov"]
FeatureName = Literal["penultimate", "gradient"]


@dataclass
class C4Config:
    """C4 switches and knobs. ``enabled=False`` gives the exact baseline algorithm.

    Attributes:
        enabled: turn C4 (single-cluster batches + penalty) on.
        penalty: ``cross_cov`` (||Cov_B(phi_bar', phi)||_F^2, default), ``feature_dot`` (the authors'
            released default, DR3-like) or ``grad_cross_cov`` (input-gradient cross-covariance, double backprop).
        penalty_weight: the paper's lambda; 0 keeps the clustered sampling without the penalty.
        n_clusters: GMM components K.
        refit_every_n_epochs: refit the partition every N epochs (0 = never refit after the first partition).
        pca_dim: dimensions kept by the projection before the GMM.
        fit_subsample: at most this many transitions fit the GMM (all are predicted).
        feature: clustering features, ``penultimate`` critic features or input ``gradient`` features.
        grad_beta: weight of tr(C)^2 in ``grad_cross_cov``.
        grad_cap: cap m in ``m * tanh(x / m)`` of ``grad_cross_cov``.
        extend_with_trajectory_tail: authors' behaviour: a cluster also holds the rest of each trajectory after
            its first member (clusters then overlap).
        average_critics_at_refit: authors' behaviour: at each refit both online critics are set to their average.
        min_cluster_size: clusters smaller than this are not sampled (default ``max(batch, N // max(K, 10))``).
    """

    enabled: bool = False
    penalty: PenaltyName = "cross_cov"
    penalty_weight: float = 0.1
    n_clusters: int = 3
    refit_every_n_epochs: int = 10
    pca_dim: int = 32
    fit_subsample: int = 50_000
    feature: FeatureName = "penultimate"
    grad_beta: float = 1.0
    grad_cap: float = 100.0
    extend_with_trajectory_tail: bool = False
    average_critics_at_refit: bool = False
    min_cluster_size: int | None = None

    def __post_init__(self) -> None:
        checks = [
            (self.penalty in ("cross_cov", "feature_dot", "grad_cross_cov"),
             f"model.c4.penalty={self.penalty!r} is unknown; use cross_cov, feature_dot or grad_cross_cov"),
            (self.penalty_weight >= 0, f"model.c4.penalty_weight={self.penalty_weight} must be >= 0"),
            (self.n_clusters >= 1, f"model.c4.n_clusters={self.n_clusters} must be >= 1"),
            (self.refit_every_n_epochs >= 0, f"model.c4.refit_every_n_epochs={self.refit_every_n_epochs} must be >= 0"),
            (self.pca_dim >= 1, f"model.c4.pca_dim={self.pca_dim} must be >= 1"),
            (self.fit_subsample >= self.n_clusters,
             f"model.c4.fit_subsample={self.fit_subsample} must be >= n_clusters={self.n_clusters}"),
            (self.feature in ("penultimate", "gradient"),
             f"model.c4.feature={self.feature!r} is unknown; use penultimate or gradient"),
            (self.grad_cap > 0, f"model.c4.grad_cap={self.grad_cap} must be > 0"),
            (self.grad_beta >= 0, f"model.c4.grad_beta={self.grad_beta} must be >= 0"),
            (self.min_cluster_size is None or self.min_cluster_size >= 1,
             f"model.c4.min_cluster_size={self.min_cluster_size} must be >= 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    def to_dict(self) -> dict:
        return asdict(self)
