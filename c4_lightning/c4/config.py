"""The ``c4`` option group shared by every algorithm (``--model.c4.<name>`` on the command line)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Literal

from c4_lightning.c4.penalty import PENALTIES, validate_penalty_name

FeatureName = Literal["penultimate", "gradient"]
NextAction = Literal["data", "policy"]

DEFAULT_REFIT_EVERY_N_UPDATES = 10_000
"""Refit cadence when neither ``refit_every_n_updates`` nor ``refit_every_n_epochs`` is set (the authors refit
every 200 updates). 10,000 is the interval of the only C4 arm that helped TD3+BC in the evidence sweep (BENCHMARKS.md
"Does C4 help?": refits every 10 epochs of 1000 updates); the arms refitting every 1000 or 200 updates did not help."""

DEFAULT_REFIT_MIN_PASSES = 5
"""The default interval is at least this many passes over the dataset, ``ceil(5 * N / batch_size)`` updates. A refit
costs time linear in N (critic features and labels for every transition) while the training between two refits at a
fixed interval does not grow with N; the floor keeps a refit a bounded share of training (BENCHMARKS.md "Refit
scaling": 4.5% of a TD3+BC run on one CPU core at 1M transitions). Up to 512,000 transitions at batch 256 the default
stays 10,000 updates. An interval set explicitly is used as given."""


@dataclass
class C4Config:
    """C4 switches and knobs. ``enabled=False`` gives the exact baseline algorithm.

    Attributes:
        enabled: turn C4 (single-cluster batches + penalty) on.
        penalty: a name registered in ``c4_lightning.c4.penalty.PENALTIES``: ``cross_cov`` (feature
            cross-covariance, not reparametrisation-invariant), ``weighted_cross_cov`` (normalised cross-covariance of
            head-weighted features, invariant), ``feature_dot`` (the authors' released default, DR3-like) or
            ``grad_cross_cov`` (the paper's input-gradient form, invariant, double backprop).
        penalty_weight: the paper's lambda; 0 keeps the clustered sampling without the penalty.
        n_clusters: GMM components K.
        refit_every_n_updates: refit the partition every N gradient updates (0 = never refit after the first
            partition). ``None`` with ``refit_every_n_epochs`` also ``None``: the default, every
            ``max(10000, ceil(5 * N / batch_size))`` updates (10,000 up to 512,000 transitions at batch 256; 19,532
            at 1M), so a refit stays a small share of training at any dataset size.
        refit_every_n_epochs: the older epoch cadence (refit at the end of every N-th epoch; 0 = never). Set at most
            one of the two.
        pca_dim: dimensions kept by the projection before the GMM.
        fit_subsample: at most this many transitions fit the GMM (all are predicted).
        feature: clustering features, ``penultimate`` critic features or input ``gradient`` features.
        grad_beta: weight of tr(C)^2 in ``grad_cross_cov``.
        grad_cap: cap m in ``m * tanh(x / m)`` of ``grad_cross_cov`` (the raw value is logged; a warning when above).
        extend_with_trajectory_tail: authors' behaviour: a cluster also holds every step of a trajectory after its
            last member step (clusters then overlap).
        average_critics_at_refit: authors' behaviour: at each refit both online critics are set to their average.
        min_cluster_size: clusters smaller than this are not sampled (default ``max(batch, N // max(K, 10))``).
        penalty_rows: compute the penalty (and its target-feature pass) on the first this-many rows of each batch
            only (``None``: all rows, the exact batch penalty). A batch's rows are i.i.d. draws, so they are a random
            subset; the plug-in estimate of a squared norm is biased upwards on fewer rows (see BENCHMARKS.md,
            "C4 penalty on a sub-batch").
        penalty_sketch: estimate the squared Frobenius norm of ``cross_cov`` and ``weighted_cross_cov`` (its
            numerator) from this many random directions, ``||C R||_F^2 / k`` with ``R`` an ``[H, k]`` matrix of
            Rademacher (+-1) entries drawn afresh at every update from torch's global generator (checkpointed, so a
            resume stays exact); ``None``: the exact value. Value and gradient are unbiased given the batch, with a
            relative spread up to ``sqrt(2 / k)``; the two ``H x B x H`` products per critic become three thin
            ``B x H x k`` ones (see BENCHMARKS.md, "Cheaper C4 penalty estimators"). Refused for ``feature_dot`` and
            ``grad_cross_cov``, which compute no such norm.
        penalty_next_action: the target side of the feature penalties. ``data`` (default, the C4 authors' code): the
            target critic's features at the dataset's ``(s', a'_data)``, an extra ``m`` rows in the backup's target
            pass. ``policy``: the features of the backup's own rows at ``(s', a~')``, the action the TD target uses
            (TD3+BC: target actor + clipped noise; CQL: its sampled next action, or the max-backup's argmax), so no
            extra rows. Theorem 1 bounds ``Var[delta]`` through ``Cov(Q(s, a), Q_target(s', a~'))``: the TD error's
            target is evaluated at the backup action, so the covariance that enters it is the one at ``a~'``; the
            authors' code uses ``a'_data`` (equal only when the policy is the behaviour policy). IQL's backup is
            ``V(s')`` with no action, so both values give the same penalty there. Refused for ``grad_cross_cov``: its
            target side is an input-gradient pass of its own, which the backup's pass cannot supply (nothing saved).
            The probe diagnostics (``c4/cross_cov_*``) and the clustering features keep the dataset's next actions.
    """

    enabled: bool = False
    penalty: str = "cross_cov"
    penalty_weight: float = 0.1
    n_clusters: int = 3
    refit_every_n_updates: int | None = None
    refit_every_n_epochs: int | None = None
    pca_dim: int = 32
    fit_subsample: int = 50_000
    feature: FeatureName = "penultimate"
    grad_beta: float = 1.0
    grad_cap: float = 100.0
    extend_with_trajectory_tail: bool = False
    average_critics_at_refit: bool = False
    min_cluster_size: int | None = None
    penalty_rows: int | None = None
    penalty_sketch: int | None = None
    penalty_next_action: NextAction = "data"

    def __post_init__(self) -> None:
        validate_penalty_name(self.penalty)
        checks = [
            (self.penalty_weight >= 0, f"model.c4.penalty_weight={self.penalty_weight} must be >= 0"),
            (self.n_clusters >= 1, f"model.c4.n_clusters={self.n_clusters} must be >= 1"),
            (
                self.refit_every_n_updates is None or self.refit_every_n_updates >= 0,
                f"model.c4.refit_every_n_updates={self.refit_every_n_updates} must be >= 0",
            ),
            (
                self.refit_every_n_epochs is None or self.refit_every_n_epochs >= 0,
                f"model.c4.refit_every_n_epochs={self.refit_every_n_epochs} must be >= 0",
            ),
            (
                self.refit_every_n_updates is None or self.refit_every_n_epochs is None,
                f"model.c4.refit_every_n_updates={self.refit_every_n_updates} and model.c4.refit_every_n_epochs="
                f"{self.refit_every_n_epochs} are both set; keep one (set the other to null)",
            ),
            (self.pca_dim >= 1, f"model.c4.pca_dim={self.pca_dim} must be >= 1"),
            (
                self.fit_subsample >= self.n_clusters,
                f"model.c4.fit_subsample={self.fit_subsample} must be >= n_clusters={self.n_clusters}",
            ),
            (
                self.feature in ("penultimate", "gradient"),
                f"model.c4.feature={self.feature!r} is unknown; use penultimate or gradient",
            ),
            (self.grad_cap > 0, f"model.c4.grad_cap={self.grad_cap} must be > 0"),
            (self.grad_beta >= 0, f"model.c4.grad_beta={self.grad_beta} must be >= 0"),
            (
                self.min_cluster_size is None or self.min_cluster_size >= 1,
                f"model.c4.min_cluster_size={self.min_cluster_size} must be >= 1",
            ),
            (
                self.penalty_rows is None or self.penalty_rows >= 2,
                f"model.c4.penalty_rows={self.penalty_rows} must be >= 2 (a covariance needs two rows) or null",
            ),
            (
                self.penalty_sketch is None
                or (
                    isinstance(self.penalty_sketch, int)
                    and not isinstance(self.penalty_sketch, bool)
                    and self.penalty_sketch >= 1
                ),
                f"model.c4.penalty_sketch={self.penalty_sketch!r} must be an integer >= 1 (random directions of the "
                "sketch) or null (the exact penalty)",
            ),
            (
                self.penalty_sketch is None or "penalty_sketch" in PENALTIES[self.penalty].options.values(),
                f"model.c4.penalty_sketch={self.penalty_sketch} sketches a squared Frobenius norm, which "
                f"model.c4.penalty={self.penalty} does not compute; it applies to "
                f"{', '.join(n for n, s in PENALTIES.items() if 'penalty_sketch' in s.options.values())}: set "
                "model.c4.penalty_sketch=null or choose one of those penalties",
            ),
            (
                self.penalty_next_action in ("data", "policy"),
                f"model.c4.penalty_next_action={self.penalty_next_action!r} is unknown; use data or policy",
            ),
            (
                self.penalty_next_action == "data" or PENALTIES[self.penalty].inputs != "input_gradients",
                f"model.c4.penalty_next_action=policy reuses the backup's forward pass for the target features, but "
                f"model.c4.penalty={self.penalty} needs the target's input gradients, a pass of its own: use "
                "penalty_next_action=data or a feature penalty (cross_cov, weighted_cross_cov, feature_dot)",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    def refit_cadence(self, num_transitions: int | None = None, batch_size: int | None = None) -> tuple[str, int]:
        """``("updates", N)`` or ``("epochs", N)``; ``N == 0`` means the first partition is kept.

        An interval set explicitly is returned as given. The default is 10,000 updates, raised with the dataset size
        (``num_transitions`` and the global ``batch_size``) to ``DEFAULT_REFIT_MIN_PASSES`` passes over the data."""
        if self.refit_every_n_epochs is not None:
            return "epochs", int(self.refit_every_n_epochs)
        if self.refit_every_n_updates is not None:
            return "updates", int(self.refit_every_n_updates)
        if num_transitions is None or batch_size is None:
            return "updates", DEFAULT_REFIT_EVERY_N_UPDATES
        passes = math.ceil(DEFAULT_REFIT_MIN_PASSES * int(num_transitions) / int(batch_size))
        return "updates", max(DEFAULT_REFIT_EVERY_N_UPDATES, passes)

    def refit_interval_updates(
        self, steps_per_epoch: int, num_transitions: int | None = None, batch_size: int | None = None
    ) -> int:
        """Updates between two refits at this cadence (0: never refitted); the default one for this dataset size
        when ``num_transitions`` and ``batch_size`` are given."""
        kind, n = self.refit_cadence(num_transitions, batch_size)
        return n * int(steps_per_epoch) if kind == "epochs" else n

    def to_dict(self) -> dict:
        return asdict(self)
