"""What TD3BC and CQL share: network building from the data, normalisation buffers, optimiser stepping,
diagnostics, the non-finite-loss guard and acting on raw observations. C4 lives in its plug-in
(:class:`c4_lightning.c4.plugin.C4`, ``self.c4``); nothing here depends on which penalty it runs."""

from __future__ import annotations

import copy
import math

import lightning as L
from lightning.pytorch.strategies import DDPStrategy
import torch
from torch import nn

from c4_lightning.c4.config import C4Config
from c4_lightning.c4.metrics import CrossCovarianceMetric
from c4_lightning.c4.plugin import C4
from c4_lightning.training.rng import rng_state, set_rng_state
from c4_lightning.training.agreement import agree_max
from c4_lightning.training.loop_state import resume_epoch_end_as_finished


class NonFiniteLossError(RuntimeError):
    """A loss became NaN/Inf; the last good state was checkpointed before stopping."""


def _noop_closure() -> None:
    return None


class OfflineRLModule(L.LightningModule):
    """Base LightningModule: subclasses define ``build_networks``, ``configure_optimizers`` and ``update`` (the
    contract: CONTRIBUTING.md). They list only their own hyperparameters and pass ``**kwargs`` here: these options are
    every algorithm's (the CLI shows them under ``--model.*`` for each).

    Networks are built from ``obs_dim``/``act_dim``; left ``None`` they are read from the attached
    ``OfflineRLDataModule`` in ``setup`` and recorded in ``hparams`` so a checkpoint rebuilds them alone.

    Args:
        obs_dim, act_dim: network sizes; None: from the datamodule.
        max_action: actions are ``max_action * tanh(.)``; the dataset's actions must lie within it.
        c4: the C4 option group (``C4Config``); off (the default) is the exact baseline algorithm.
        probe_size: transitions of the fixed probe set of the cross-covariance diagnostics.
        log_every_n_steps: logging interval (the CLI links it to the Trainer's).
        nan_check: stop before a non-finite loss reaches the weights (checkpointing the last good state).
        compile: ``torch.compile`` the networks (``dynamic=True``).
        fused_adam: PyTorch's fused Adam kernel (``False``: the for-loop Adam).
    """

    def __init__(
        self,
        obs_dim: int | None = None,
        act_dim: int | None = None,
        max_action: float = 1.0,
        c4: C4Config | C4 | None = None,
        probe_size: int = 2048,
        log_every_n_steps: int = 50,
        nan_check: bool = True,
        compile: bool = False,
        fused_adam: bool = True,
    ):
        super().__init__()
        # called here, under the subclass's __init__: Lightning collects the subclass's arguments as well
        self.save_hyperparameters(ignore=["c4"])
        self.automatic_optimization = False
        if not max_action > 0:
            raise ValueError(f"model.max_action={max_action} must be > 0")
        self.c4 = c4 if isinstance(c4, C4) else C4(c4)
        if probe_size < 2:
            raise ValueError(f"model.probe_size={probe_size} must be >= 2")
        if log_every_n_steps < 1:
            raise ValueError(f"model.log_every_n_steps={log_every_n_steps} must be >= 1")
        self.register_buffer("obs_mean", torch.zeros(0))
        self.register_buffer("obs_std", torch.ones(0))
        self.register_buffer("updates_done", torch.zeros((), dtype=torch.long))
        self.n_updates = 0  # host-side mirror of ``updates_done``: read in the hot path without a device sync
        self._built = False
        self._probe: dict[str, torch.Tensor] | None = None
        self.probe_index: torch.Tensor | None = None
        self._configured_lrs: list[float] = []  # in optimiser order (set again on a resumed run's optimisers)
        self.cross_cov = CrossCovarianceMetric()

    # Plain Python state set in the hot path. Lightning sets ``_current_fx_name`` before and after every hook call
    # (~40 times per update); ``nn.Module.__setattr__`` spends ~2 us on each checking parameters, buffers and
    # submodules, a plain attribute set ~0.2 us. None of these names is ever a parameter, buffer or module.
    _PLAIN_ATTRIBUTES = frozenset({"_current_fx_name", "n_updates"})

    def __setattr__(self, name: str, value) -> None:
        if name in OfflineRLModule._PLAIN_ATTRIBUTES:
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    def finish_init(self) -> None:
        """Subclasses call this last in ``__init__`` (after their own checks and buffers)."""
        self.hparams["c4"] = self.c4.to_dict()
        self._hparams_initial = copy.deepcopy(self._hparams)  # loggers record hparams_initial: include the c4 group
        self.record_run_facts(algorithm=type(self).__name__)
        if self.hparams.get("obs_dim") is not None and self.hparams.get("act_dim") is not None:
            self._build(self.hparams["obs_dim"], self.hparams["act_dim"])

    def record_run_facts(self, **facts) -> None:
        """Add facts about the run (algorithm, seed, ...) to the hyperparameters the loggers record (TensorBoard's
        HParams tab), not to the checkpoint's ``hyper_parameters`` (which are the constructor's arguments)."""
        self._hparams_initial.update(facts)

    # ------------------------------------------------------------------ building
    def build_networks(self, obs_dim: int, act_dim: int) -> None:
        """Create ``actor``, ``critic`` (a ``CriticEnsemble``) and ``critic_target``; defined by each algorithm."""
        raise TypeError(
            f"{type(self).__name__} is the abstract base: train c4_lightning.algos.TD3BC or CQL, "
            "or subclass it and define build_networks/update/configure_optimizers"
        )

    def _build(self, obs_dim: int, act_dim: int) -> None:
        self.hparams["obs_dim"], self.hparams["act_dim"] = int(obs_dim), int(act_dim)
        self.obs_mean = torch.zeros(obs_dim)
        self.obs_std = torch.ones(obs_dim)
        self.build_networks(int(obs_dim), int(act_dim))
        self._built = True
        if self.hparams.get("compile", False):
            for net in self.compiled_networks():
                net.compile(dynamic=True)  # one graph for every batch shape (TD batch, CQL repeats, probe, refit)

    # ------------------------------------------------------------------ the backup (C4's target side)
    def backup_network(self) -> nn.Module:
        """The network whose value at the next state enters the TD target: C4 pairs its features there with the online
        critic's at ``(s, a)``. The target critic here (TD3+BC, CQL: ``Q_target(s', a')``); IQL: ``V(s')``."""
        return self.critic_target

    def backup_input(self, next_obs: torch.Tensor, next_actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``(obs, act)`` inputs of :meth:`backup_network` at the dataset's next step (``act`` may have width 0
        for a state-value network)."""
        return next_obs, next_actions

    def compiled_networks(self) -> list[nn.Module]:
        return [self.actor, self.critic]

    @staticmethod
    def make_target(net: nn.Module) -> nn.Module:
        target = copy.deepcopy(net)
        target.requires_grad_(False)
        return target

    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is None or not hasattr(dm, "obs_dim"):
            if not self._built:
                raise ValueError(
                    f"{type(self).__name__} needs an OfflineRLDataModule passed to the Trainer "
                    "(trainer.fit(model, datamodule=dm)) or obs_dim/act_dim given explicitly"
                )
            return
        strategy = self.trainer.strategy
        if isinstance(strategy, DDPStrategy) and "find_unused_parameters" not in strategy._ddp_kwargs:
            # several backward passes per step, each touching part of the parameters (actor loss, critic loss)
            strategy._ddp_kwargs["find_unused_parameters"] = True
        if not self._built:
            self._build(dm.obs_dim, dm.act_dim)
        elif (self.hparams["obs_dim"], self.hparams["act_dim"]) != (dm.obs_dim, dm.act_dim):
            raise ValueError(
                f"the model was built for obs_dim={self.hparams['obs_dim']}, act_dim={self.hparams['act_dim']} "
                f"but data.dataset_id gives obs_dim={dm.obs_dim}, act_dim={dm.act_dim}: use a matching dataset"
            )
        self.obs_mean.copy_(dm.obs_mean.to(self.obs_mean))
        self.obs_std.copy_(dm.obs_std.to(self.obs_std))
        obs, act, next_obs, next_act = dm.features_input()
        check_action_range(act, self.hparams.max_action)
        g = torch.Generator().manual_seed(12345)
        idx = torch.randperm(obs.shape[0], generator=g)[: self.hparams.probe_size].to(obs.device)
        self._probe = {"obs": obs[idx], "act": act[idx], "next_obs": next_obs[idx], "next_act": next_act[idx]}
        self.probe_index = idx.cpu()  # rows of the dataset in the probe set (within-cluster diagnostics)

    # ------------------------------------------------------------------ acting
    def normalize(self, raw_obs: torch.Tensor) -> torch.Tensor:
        return (raw_obs - self.obs_mean) / self.obs_std

    @torch.no_grad()
    def act(self, raw_obs: torch.Tensor) -> torch.Tensor:
        """Deterministic action for raw (unnormalised) observations ``[..., obs_dim]``."""
        return self.actor.act(self.normalize(raw_obs.to(self.obs_mean)))

    # ------------------------------------------------------------------ optimisation helpers
    def adam(self, params, lr: float) -> torch.optim.Adam:
        """Adam over ``params``; with ``fused_adam`` (default) PyTorch's fused kernel (one kernel per parameter
        instead of a dozen element-wise ops: ~3x faster steps on a CPU, also used on CUDA), which rounds differently
        from the for-loop Adam in the last bits. ``fused_adam=False`` gives the for-loop Adam of a plain
        ``torch.optim.Adam(params, lr)``; so does a device whose PyTorch has no fused Adam."""
        params = list(params)
        self._configured_lrs.append(float(lr))
        if self.hparams.get("fused_adam", True):
            try:
                return torch.optim.Adam(params, lr=lr, fused=True)
            except RuntimeError:  # a device or dtype without the fused kernel
                pass
        return torch.optim.Adam(params, lr=lr)

    def step_optimizer(self, opt, loss: torch.Tensor, counted: bool = False) -> None:
        """zero_grad -> manual_backward -> step. Only the ``counted`` optimiser advances ``global_step``,
        so ``trainer.global_step`` (and ``max_steps``) counts gradient *updates*, one per batch."""
        opt.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        if counted:
            opt.step()
        else:
            raw = getattr(opt, "optimizer", opt)
            self.trainer.strategy.optimizer_step(raw, closure=_noop_closure, model=self)

    def check_finite(self, **losses: torch.Tensor) -> None:
        """Stop before a non-finite loss reaches the parameters: checkpoint the last good state, then raise."""
        if not self.hparams.nan_check:
            return
        finite = all(math.isfinite(float(v.detach())) for v in losses.values())  # scalar losses: one host read each
        # under DDP every rank must stop here together (a rank stopping alone leaves the others hanging)
        if not agree_max(not finite, self._trainer):
            return
        bad = [k for k, v in losses.items() if not torch.isfinite(v.detach()).all()] or ["loss on another rank"]
        path, resume_from = None, None
        if self._trainer is not None and self.trainer.log_dir is not None:
            from c4_lightning.training.checkpoint_io import checkpoint_dir, save_training_state

            folder = checkpoint_dir(self.trainer)
            last = folder / "last.ckpt"
            resume_from = last if last.is_file() else None  # the last epoch's state: before the blow-up began
            path = folder / "nonfinite-state.ckpt"
            save_training_state(self.trainer, path)
        lrs = " ".join(f"--model.init_args.{k} ..." for k in self.hparams if k.endswith("_lr"))
        advice = (
            f"resume from {resume_from} (the last checkpoint before it) with lower learning rates or penalty "
            f"weight: --ckpt_path {resume_from} {lrs}"
            if resume_from
            else "lower the learning rates or penalty weight and start again"
        )
        raise NonFiniteLossError(
            f"non-finite {', '.join(bad)} at update {self.n_updates} (epoch {self.current_epoch}); "
            + (f"the state that produced it is saved to {path} for inspection; " if path else "")
            + advice
            + ", or check the data for extreme values"
        )

    def should_log(self) -> bool:
        """True at the updates whose metrics reach the loggers (asked after the update is counted). Under a Trainer
        that is every ``trainer.log_every_n_steps`` updates: Lightning writes the latest ``self.log`` value at each
        of its logging steps, so logging on another cadence would repeat stale values (or drop points). Without a
        Trainer (or with its logging off) ``log_every_n_steps`` decides; the CLI links the two."""
        return self._logs_at(self.n_updates)

    def will_log(self) -> bool:
        """:meth:`should_log` asked during an update, before it is counted: will this update's metrics be logged?"""
        return self._logs_at(self.n_updates + 1)

    def _logs_at(self, update: int) -> bool:
        every = self.hparams.log_every_n_steps
        if self._trainer is not None and getattr(self._trainer, "log_every_n_steps", 0):
            every = self._trainer.log_every_n_steps
        return update % every == 0

    # ------------------------------------------------------------------ training loop
    def update(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """One gradient update on ``batch``; returns the tensors to log. Defined by each algorithm."""
        raise TypeError(
            f"{type(self).__name__} is the abstract base: train c4_lightning.algos.TD3BC or CQL, "
            "or subclass it and define build_networks/update/configure_optimizers"
        )

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        logs = self.update(batch)
        self.updates_done.add_(1)
        self.n_updates += 1
        if logs and self.should_log():
            self.log_dict({(k if "/" in k else f"train/{k}"): v for k, v in logs.items()}, on_step=True, on_epoch=False)
            self.log("critic_loss", logs["critic_loss"], prog_bar=True, logger=False, on_step=True, on_epoch=False)

    def on_train_end(self) -> None:
        """With ``nan_check`` off nothing stops a run whose weights went NaN/Inf: end it with an error (exit code 3)
        rather than a success and a useless policy."""
        if self.hparams.nan_check:
            return
        bad = [name for name, p in self.named_parameters() if not bool(torch.isfinite(p).all())]
        if bad:
            raise NonFiniteLossError(
                f"training ended with non-finite weights ({len(bad)} tensors, first {bad[0]}): the run's checkpoints "
                "hold them too; train again with model.nan_check true, which stops before the first non-finite "
                "update and saves the last good state"
            )

    def on_train_start(self) -> None:
        """A resumed run's optimisers come back with the checkpoint's learning rates: set the configured ones (a
        resume with lower learning rates -- the advice after a non-finite loss -- must train with them)."""
        opts = self.optimizers()
        opts = opts if isinstance(opts, list) else [opts]
        lrs = self._configured_lrs[-len(opts) :]
        for opt, lr in zip(opts, lrs):
            for group in getattr(opt, "optimizer", opt).param_groups:
                group["lr"] = lr

    @torch.no_grad()
    def probe_features(self) -> tuple[torch.Tensor, torch.Tensor]:
        """phi(s,a) of the online critic and phi_bar of the backup network (:meth:`backup_network`) at the next step on
        the fixed probe set, float32 ``[E, P, H]`` each (dataset next actions; a one-member backup is repeated)."""
        # setup() runs before Lightning moves the module to its device: follow the module (no-op on CPU)
        p = self._probe = {k: v.to(self.device, non_blocking=True) for k, v in self._probe.items()}
        feats, next_feats = [], []
        for start in range(0, p["obs"].shape[0], 1024):
            sl = slice(start, start + 1024)
            feats.append(self.critic(p["obs"][sl], p["act"][sl], return_features=True)[1].float())
            next_feats.append(
                self.backup_network()(*self.backup_input(p["next_obs"][sl], p["next_act"][sl]), return_features=True)[
                    1
                ].float()
            )
        feats, next_feats = torch.cat(feats, dim=1), torch.cat(next_feats, dim=1)
        return feats, next_feats.expand(feats.shape[0], -1, -1) if next_feats.shape[0] == 1 else next_feats

    @torch.no_grad()
    def probe_cross_covariance(self) -> dict[str, torch.Tensor]:
        """Cross-covariance between phi(s,a) (online) and phi_bar(s',a') (target) on the fixed probe set."""
        self.cross_cov.reset()
        f, f_next = self.probe_features()
        self.cross_cov.update(f, f_next)
        return self.cross_cov.compute()

    def on_train_epoch_end(self) -> None:
        if self._probe is None:
            return
        stats = self.probe_cross_covariance()
        self.log("c4/cross_cov_fro", stats["fro"].float(), on_epoch=True, sync_dist=False)
        self.log("c4/cross_corr_rms", stats["corr_rms"].float(), on_epoch=True, sync_dist=False)
        if "trace" in stats:
            self.log("c4/cross_cov_trace", stats["trace"].float(), on_epoch=True, sync_dist=False)

    # ------------------------------------------------------------------ callbacks and checkpoints
    def configure_callbacks(self):
        return self.c4.callbacks()

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        dm = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        checkpoint["c4_lightning"] = {
            "algo": type(self).__name__,
            "env_id": getattr(dm, "env_id", None),
            "ref_scores": getattr(dm, "ref_scores", None),
            "rng": rng_state(),
        }  # so a resumed run draws the same noise

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        hp = checkpoint.get("hyper_parameters", {})
        if not self._built and hp.get("obs_dim") is not None:
            self._build(hp["obs_dim"], hp["act_dim"])
        done = checkpoint.get("state_dict", {}).get("updates_done")
        self.n_updates = int(done) if done is not None else 0
        if self._trainer is not None:  # resuming with a Trainer (not load_from_checkpoint): continue the RNG streams
            set_rng_state(checkpoint.get("c4_lightning", {}).get("rng"))
            # runs before Lightning restores its loops: an end-of-epoch checkpoint resumes exactly under max_steps too
            resume_epoch_end_as_finished(checkpoint, self._trainer.max_steps)


def check_action_range(actions: torch.Tensor, max_action: float) -> None:
    """Refuse dataset actions the policy cannot produce: its actions are ``max_action * tanh(.)``, so a target
    outside ``[-max_action, max_action]`` biases behaviour cloning and the critic's view of the data alike."""
    bound = float(max_action) * (1 + 1e-5)
    outside = actions.abs() > bound
    if bool(outside.any()):
        share = float(outside.float().mean())
        raise ValueError(
            f"{share:.2%} of the dataset's action entries lie outside the policy's range [-{max_action}, {max_action}] "
            f"(largest |action| {float(actions.abs().max()):.4g}): set data.clip_actions {max_action} to clip them "
            "into range, or model.max_action to the environment's action bound"
        )


def check_hyperparameters(gamma: float, tau: float, hidden_dims=None, **positive: float) -> None:
    """The checks every algorithm shares: gamma in [0, 1], tau in (0, 1], hidden layer widths >= 1, and each of
    ``positive`` > 0."""
    if hidden_dims is not None:
        dims = list(hidden_dims)
        if not dims or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in dims):
            raise ValueError(f"model.hidden_dims={dims} must be a non-empty list of layer widths >= 1, e.g. [256, 256]")
    for name, value in positive.items():
        if not value > 0:
            raise ValueError(f"model.{name}={value} must be > 0")
    if not 0 <= gamma <= 1:
        raise ValueError(f"model.gamma={gamma} must be in [0, 1]")
    if not (0 < tau <= 1) or math.isnan(tau):
        raise ValueError(f"model.tau={tau} must be in (0, 1]")
