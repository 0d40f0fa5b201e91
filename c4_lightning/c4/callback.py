"""``ClusterRefitCallback``: C4's dataset partition, made before training and refitted every N epochs."""

from __future__ import annotations

import time

import numpy as np
import torch
from lightning.pytorch import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from c4_lightning.c4.clustering import (
    ClusterFitError,
    ClusterModel,
    _subsample_index,
    fit_partition,
    project_2d,
    raw_features,
)
from c4_lightning.c4.config import DEFAULT_REFIT_EVERY_N_UPDATES, DEFAULT_REFIT_MIN_PASSES
from c4_lightning.c4.features import CriticFeatureRows
from c4_lightning.c4.metrics import within_cluster_summary
from c4_lightning.c4.plugin import trajectory_tail_members  # noqa: F401  (re-exported: older imports)
from c4_lightning.c4.plots import cluster_scatter_figure, figure_to_image
from c4_lightning.training.images import log_image
from c4_lightning.data.sampler import check_cluster_sampling


def cluster_scatter_image(
    features,
    model: ClusterModel,
    labels: np.ndarray,
    sources: np.ndarray,
    source_names: list[str],
    max_points: int = 5000,
    seed: int = 0,
    title: str | None = None,
) -> np.ndarray:
    """The ``c4/clusters`` TensorBoard image (HWC uint8): PCA scatter of at most ``max_points`` rows, by cluster
    and by source.

    Only the drawn rows are projected: they are the uniform subsample that ``cluster_scatter_figure`` would draw
    from all ``N`` points with ``seed`` (the same indices), so the picture is the one of projecting every row and
    letting the figure subsample, at ``max_points / N`` of the projection cost."""
    if isinstance(max_points, bool) or not isinstance(max_points, int) or max_points < 1:
        raise ValueError(f"max_points must be a positive int, got {max_points!r}")
    labels, sources = np.asarray(labels), np.asarray(sources)
    idx = _subsample_index(labels.shape[0], max_points, seed)
    n_clusters = int(labels.max()) + 1 if labels.size else 0
    fig = cluster_scatter_figure(
        project_2d(features, model, rows=idx),
        labels[idx],
        sources[idx],
        source_names,
        max_points=max_points,
        seed=seed,
        title=title,
        cluster_sizes=np.bincount(labels, minlength=n_clusters).tolist(),  # all N rows
        source_sizes=np.bincount(sources, minlength=len(source_names)).tolist(),
    )
    return figure_to_image(fig)


class ClusterRefitCallback(Callback):
    """Partitions the dataset for C4's single-cluster batches.

    Before the first step (when no partition was restored from a checkpoint) it clusters standardised raw (s, a);
    then at the module's C4 refit cadence (``model.c4.refit_every_n_updates``, default every 10,000 updates,
    growing to 5 passes over the data above 512k transitions; or ``refit_every_n_epochs``) it recomputes critic features
    ``[phi(s,a), phi_bar(s',a')]``, refits the GMM on rank 0 (warm-started from the previous partition), broadcasts
    the labels to all ranks and hands them to the sampler through the module's C4 plug-in. A refit on the update
    cadence happens at the start of the batch after the N-th update; the next due step is part of the checkpoint, so
    a resumed run refits at the same updates. A failed fit keeps the previous partition, warns and counts
    ``c4/refit_failures``. Logs cluster sizes, the sampleable share of the data, refit seconds and a PCA scatter
    image of the clusters.

    The critic features are never held as one ``[N, 2H]`` matrix: the fit asks for the rows it needs
    (:meth:`feature_source`), and the scatter projects only the points it draws.

    Args:
        every_n_epochs / every_n_updates: override the module's cadence (at most one; default: the module's).
    """

    def __init__(
        self,
        every_n_epochs: int | None = None,
        log_scatter: bool = True,
        scatter_points: int = 5000,
        seed: int = 0,
        every_n_updates: int | None = None,
    ):
        for name, v in (("every_n_epochs", every_n_epochs), ("every_n_updates", every_n_updates)):
            if v is not None and v < 0:
                raise ValueError(f"{name}={v} must be >= 0")
        if every_n_epochs is not None and every_n_updates is not None:
            raise ValueError("set at most one of every_n_epochs and every_n_updates")
        self.every_n_epochs, self.every_n_updates = every_n_epochs, every_n_updates
        self.log_scatter, self.scatter_points, self.seed = log_scatter, scatter_points, seed
        self.model: ClusterModel | None = None
        self.labels: np.ndarray | None = None
        self.refits = 0
        self.failures = 0
        self.last_seconds = 0.0
        self.next_refit_at: int | None = None  # update cadence: the global step of the next refit
        self.saved_cadence: tuple[str, int] | None = None  # the cadence a restored checkpoint was trained with
        self.run_cadence: tuple[str, int] | None = None  # this fit's cadence, fixed at its start (checkpointed)

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _cfg(pl_module):
        return pl_module.c4.config

    def cadence(self, trainer, pl_module) -> tuple[str, int]:
        """``("updates" | "epochs", N)``: this callback's own setting, else the module's C4 config (its default
        interval grows with the dataset: ``C4Config.refit_cadence``; the batch is the global one over all ranks)."""
        if self.every_n_updates is not None:
            return "updates", self.every_n_updates
        if self.every_n_epochs is not None:
            return "epochs", self.every_n_epochs
        dm = trainer.datamodule
        return self._cfg(pl_module).refit_cadence(dm.num_transitions, dm.batch_size * max(1, trainer.world_size))

    def _uses_default_cadence(self, pl_module) -> bool:
        """No interval set, neither on this callback nor in ``model.c4``: the default (which depends on N) applies."""
        cfg = self._cfg(pl_module)
        explicit = (self.every_n_updates, self.every_n_epochs, cfg.refit_every_n_updates, cfg.refit_every_n_epochs)
        return all(v is None for v in explicit)

    def _announce_default(self, trainer, pl_module) -> None:
        """Say once when the default interval is longer than 10,000 updates because the dataset is large."""
        every = self.cadence(trainer, pl_module)[1]
        if self._uses_default_cadence(pl_module) and every != DEFAULT_REFIT_EVERY_N_UPDATES:
            rank_zero_info(
                f"C4 refits every {every:,} updates ({DEFAULT_REFIT_MIN_PASSES} passes over "
                f"{trainer.datamodule.num_transitions:,} transitions, the default for this dataset size); set "
                "model.c4.refit_every_n_updates to choose the interval"
            )

    def feature_source(self, trainer, pl_module) -> CriticFeatureRows:
        """The critic features as a row source: computed by the fit as it needs them (the subsample, then every
        other row once, block by block) instead of materialising ``[N, 2H]``. Use it while the critics are
        unchanged and the module is in eval mode (:meth:`partition` does both)."""
        obs, act, next_obs, next_act = trainer.datamodule.features_input()
        return CriticFeatureRows(
            pl_module.critic,
            pl_module.backup_network(),
            obs,
            act,
            *pl_module.backup_input(next_obs, next_act),
            kind=self._cfg(pl_module).feature,
        )

    def _fit(self, features, pl_module) -> tuple[np.ndarray, ClusterModel]:
        cfg = self._cfg(pl_module)
        return fit_partition(
            features,
            n_clusters=cfg.n_clusters,
            pca_dim=cfg.pca_dim,
            fit_subsample=cfg.fit_subsample,
            seed=self.seed + self.refits,
            previous_labels=self.labels,
        )

    def partition(self, trainer, pl_module, initial: bool) -> None:
        """Fit on rank 0, broadcast, apply. Keeps the previous partition when the fit fails."""
        result, image = None, None
        if trainer.is_global_zero:
            t0 = time.perf_counter()
            was_training = pl_module.training
            try:
                if initial:
                    obs, act, _, _ = trainer.datamodule.features_input()
                    features = raw_features(obs, act)
                else:
                    if self._cfg(pl_module).average_critics_at_refit:
                        self._average_critics(pl_module)
                    features = self.feature_source(trainer, pl_module)
                    pl_module.eval()  # the features are computed during the fit (and for the scatter)
                labels, model = self._fit(features, pl_module)
                result = (labels, model)
                self.last_seconds = time.perf_counter() - t0
                if self.log_scatter and trainer.loggers:
                    dm = trainer.datamodule
                    space = (
                        "standardised raw (s, a)"
                        if initial
                        else f"critic features ({self._cfg(pl_module).feature}) [phi(s,a), phi_bar(s',a')]"
                    )
                    title = (
                        f"C4 partition {self.refits + 1} at update {trainer.global_step} (epoch "
                        f"{trainer.current_epoch}), {len(labels):,} transitions; features: {space}"
                    )
                    image = cluster_scatter_image(
                        features,
                        model,
                        labels,
                        dm.sources.cpu().numpy(),
                        dm.source_names,
                        max_points=self.scatter_points,
                        title=title,
                    )
            except ClusterFitError as err:
                self.failures += 1
                rank_zero_warn(
                    f"C4 refit at epoch {trainer.current_epoch} failed ({err}); keeping the previous partition"
                )
                self.last_seconds = time.perf_counter() - t0
            finally:
                pl_module.train(was_training)
        if trainer.world_size > 1 and self._cfg(pl_module).average_critics_at_refit and not initial:
            for p in pl_module.critic.parameters():  # keep ranks identical after the rank-0 averaging
                p.data.copy_(trainer.strategy.broadcast(p.data, src=0))
        labels = trainer.strategy.broadcast(result[0] if result is not None else None, src=0)
        self.failures = trainer.strategy.broadcast(self.failures, src=0)
        if labels is not None:
            if result is not None:
                self.model = result[1]
            self.labels = np.asarray(labels)
            self.refits += 1
            self.apply(trainer, pl_module)
        self._log(trainer, pl_module, image)

    def apply(self, trainer, pl_module) -> None:
        pl_module.c4.hand_off(trainer.datamodule, self.labels)

    @staticmethod
    def _average_critics(pl_module) -> None:
        with torch.no_grad():
            for p in pl_module.critic.parameters():
                p.copy_(p.mean(dim=0, keepdim=True).expand_as(p))

    def _log(self, trainer, pl_module, image) -> None:
        if not trainer.is_global_zero:
            return
        sizes = np.bincount(self.labels, minlength=self._cfg(pl_module).n_clusters) if self.labels is not None else []
        metrics = {f"c4/cluster_size_{k}": float(s) for k, s in enumerate(sizes)}
        metrics.update(
            {
                "c4/refit_seconds": self.last_seconds,
                "c4/refit_failures": float(self.failures),
                "c4/refits": float(self.refits),
            }
        )
        sampler = getattr(trainer.datamodule, "sampler", None)
        if sampler is not None and sampler.partitioned:  # share of the data in clusters big enough to be drawn
            sizes = sampler.cluster_sizes.double()
            active = sampler.active_clusters
            metrics["c4/sampleable_share"] = float(sizes[active].sum() / sizes.sum()) if sizes.sum() > 0 else 0.0
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
        if image is not None:
            log_image(trainer.loggers, "c4/clusters", image, trainer.global_step)

    # ------------------------------------------------------------------ hooks
    def setup(self, trainer, pl_module, stage: str) -> None:
        """At the door: apply ``model.c4.min_cluster_size`` and refuse settings whose clusters cannot be sampled."""
        dm = trainer.datamodule
        if stage != "fit" or getattr(dm, "sampler", None) is None:
            return
        cfg = self._cfg(pl_module)
        if cfg.min_cluster_size is not None:
            if dm.min_cluster_size is not None and int(dm.min_cluster_size) != int(cfg.min_cluster_size):
                raise ValueError(
                    f"model.c4.min_cluster_size={cfg.min_cluster_size} and data.min_cluster_size="
                    f"{dm.min_cluster_size} disagree; set only one of them"
                )
            dm.sampler.min_cluster_size = cfg.min_cluster_size
        check_cluster_sampling(
            dm.num_transitions,
            dm.batch_size,
            1 if cfg.extend_with_trajectory_tail else cfg.n_clusters,  # overlapping clusters
            dm.sampler._min_cluster_size_arg,
        )

    def check_resumed_cadence(self, trainer, pl_module) -> None:
        """Warn when a resumed run refits at another interval than its checkpoint did (another default, dataset size
        or number of ranks), or when the checkpoint predates the recorded cadence and the default changed since."""
        now = self.run_cadence = self.cadence(trainer, pl_module)
        if self.saved_cadence == ("unrecorded", 0) and self._uses_default_cadence(pl_module):
            rank_zero_warn(
                f"C4: this checkpoint predates the recorded refit cadence (2026-12-02); its run refitted every 1,000 "
                f"updates by default, this one refits every {now[1]:,} {now[0]}: set model.c4.refit_every_n_updates "
                "1000 to keep the old interval"
            )
        elif self.saved_cadence not in (None, ("unrecorded", 0)) and tuple(self.saved_cadence) != now:
            rank_zero_warn(
                f"C4 refit cadence changed on resume: the checkpoint trained with every {self.saved_cadence[1]:,} "
                f"{self.saved_cadence[0]}, this run refits every {now[1]:,} {now[0]} (a different default, dataset "
                "size or number of ranks); set model.c4.refit_every_n_updates to keep the old interval"
            )

    def on_train_start(self, trainer, pl_module) -> None:
        self.check_resumed_cadence(trainer, pl_module)  # also fixes this fit's cadence (N, batch, ranks are fixed)
        self._announce_default(trainer, pl_module)
        if self.labels is None:
            self.partition(trainer, pl_module, initial=True)
        else:  # restored from a checkpoint: the datamodule restored the sampler; keep both in step
            self.apply(trainer, pl_module)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        kind, every = self.run_cadence
        if kind != "updates" or not every:
            return
        if self.next_refit_at is None:
            self.next_refit_at = every
        if trainer.global_step >= self.next_refit_at:
            self.partition(trainer, pl_module, initial=False)
            self.next_refit_at = (trainer.global_step // every + 1) * every

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        kind, every = self.run_cadence
        if kind == "epochs" and every and (trainer.current_epoch + 1) % every == 0:
            self.partition(trainer, pl_module, initial=False)
        self.log_within_cluster(pl_module)

    def log_within_cluster(self, pl_module) -> None:
        """``c4/cross_cov_fro_within`` and ``c4/cross_corr_rms_within``: the probe set's cross-covariance inside the
        clusters of the current partition (what one single-cluster batch sees), raw and scale-free."""
        index = getattr(pl_module, "probe_index", None)
        if self.labels is None or index is None:
            return
        with torch.no_grad():
            feats, next_feats = pl_module.probe_features()
            stats = within_cluster_summary(feats, next_feats, torch.as_tensor(self.labels)[index].to(feats.device))
        if stats:
            pl_module.log("c4/cross_cov_fro_within", stats["fro"].float(), on_epoch=True, sync_dist=False)
            pl_module.log("c4/cross_corr_rms_within", stats["corr_rms"].float(), on_epoch=True, sync_dist=False)

    # ------------------------------------------------------------------ checkpoint state
    def state_dict(self) -> dict:  # tensors, not numpy arrays: checkpoints stay loadable with weights_only=True
        model = self.model.state_dict() if self.model is not None else None
        if model is not None:
            model = {k: torch.from_numpy(np.array(v)) if isinstance(v, np.ndarray) else v for k, v in model.items()}
        return {
            "labels": torch.from_numpy(np.array(self.labels)) if self.labels is not None else None,
            "model": model,
            "refits": self.refits,
            "failures": self.failures,
            "next_refit_at": self.next_refit_at,
            "cadence": list(self.run_cadence) if self.run_cadence is not None else None,
        }

    def load_state_dict(self, state_dict: dict) -> None:
        labels = state_dict.get("labels")
        if isinstance(labels, torch.Tensor):
            labels = labels.numpy()
        self.labels = np.asarray(labels) if labels is not None else None
        model = state_dict.get("model")
        self.model = ClusterModel.from_state_dict(model) if model is not None else None
        self.refits = int(state_dict.get("refits", 0))
        self.failures = int(state_dict.get("failures", 0))
        nxt = state_dict.get("next_refit_at")
        self.next_refit_at = None if nxt is None else int(nxt)
        cadence = state_dict.get("cadence", ("unrecorded", 0))  # absent in checkpoints written before 2026-12-02
        self.saved_cadence = None if cadence is None else (str(cadence[0]), int(cadence[1]))
