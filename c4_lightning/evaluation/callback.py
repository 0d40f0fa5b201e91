"""``EvalCallback``: periodic deterministic rollouts, normalised scores and the run's final score."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from lightning.pytorch import Callback
from lightning.pytorch.utilities import rank_zero_warn

from c4_lightning.data.scores import normalized_score
from c4_lightning.evaluation.rollout import evaluate_episodes

log = logging.getLogger(__name__)


def check_env_matches(env_id: str, obs_dim: int, act_dim: int) -> None:
    """Raise before training when the dataset's shapes do not fit the evaluation env."""
    try:
        env = gym.make(env_id)
    except Exception as err:  # gymnasium raises several error types for unknown/broken envs
        raise ValueError(
            f"evaluation env {env_id!r} (from the dataset metadata) cannot be made: {err}. "
            "Install its dependencies or set the EvalCallback's env_id"
        ) from err
    o, a = env.observation_space.shape, env.action_space.shape
    env.close()
    if o != (obs_dim,) or a != (act_dim,):
        raise ValueError(
            f"dataset shapes (obs {obs_dim}, action {act_dim}) do not match env {env_id!r} "
            f"(obs {o}, action {a}): the dataset was made for another env; pick the matching "
            "data.dataset_id or EvalCallback env_id"
        )


class EvalCallback(Callback):
    """Evaluates the policy every ``every_n_epochs`` epochs on ``episodes`` vectorised episodes.

    Logs ``eval/return`` (mean over the episodes), ``eval/return_std``, ``eval/episode_length`` and
    ``eval/normalized_score`` (progress bar shows the latter). The final score is the mean normalised score of the
    last ``final_window`` evaluations; it is logged as ``eval/final_normalized_score`` and written with the best
    evaluation and the history to ``<log_dir>/summary.json`` at the end of training (``on_train_end``), or at
    ``on_fit_end`` when a resumed run was already finished and Lightning skipped training and ``on_train_end``.
    From the command line: ``--eval.episodes``, ``--eval.every_n_epochs``, ``--eval.final_window``, ``--eval.seed``
    set the options of the run's one ``EvalCallback`` (added when the config has none).
    An env that raises during an evaluation is reported (``eval/failures``) and training continues.
    """

    OPTIONS = ("every_n_epochs", "episodes", "final_window", "seed")
    """What ``--eval.<option>`` sets."""

    def __init__(
        self,
        every_n_epochs: int = 1,
        episodes: int = 10,
        seed: int = 10_000,
        final_window: int = 10,
        env_id: str | None = None,
        max_envs: int = 10,
    ):
        self.env_id, self.max_envs = env_id, max_envs
        self.configure(every_n_epochs=every_n_epochs, episodes=episodes, seed=seed, final_window=final_window)
        self.history: list[dict] = []
        self.failures = 0
        self._ref: tuple[float, float] | None = None
        self._log_dir: str | None = None
        self._summary_written = False

    def configure(self, **options) -> None:
        """Set any of :attr:`OPTIONS` (checked: counts >= 1)."""
        unknown = set(options) - set(self.OPTIONS)
        if unknown:
            raise ValueError(
                f"EvalCallback has no option {', '.join(sorted(unknown))} (options: {', '.join(self.OPTIONS)})"
            )
        for name, value in options.items():
            if name != "seed" and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"eval.{name}={value!r} must be an integer >= 1")
            setattr(self, name, int(value))

    # ------------------------------------------------------------------ setup
    def setup(self, trainer, pl_module, stage: str) -> None:
        dm = trainer.datamodule
        self.env_id = self.env_id or getattr(dm, "env_id", None)
        self._ref = getattr(dm, "ref_scores", None)
        if self.env_id is None:
            rank_zero_warn("EvalCallback: the dataset names no env (env_spec missing); evaluation is off")
            return
        check_env_matches(self.env_id, dm.obs_dim, dm.act_dim)

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, pl_module) -> tuple[np.ndarray, np.ndarray]:
        """``(returns, lengths)`` of ``episodes`` deterministic episodes."""

        def policy(obs: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                act = pl_module.act(torch.as_tensor(obs, dtype=torch.float32, device=pl_module.device))
            return act.float().cpu().numpy()

        was_training = pl_module.training
        pl_module.eval()
        try:
            return evaluate_episodes(policy, self.env_id, self.episodes, self.seed, self.max_envs)
        finally:
            pl_module.train(was_training)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self.env_id is None or (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        result = None
        if trainer.is_global_zero:
            t0 = time.perf_counter()
            try:
                rets, lengths = self.evaluate(pl_module)
                result = {
                    "epoch": trainer.current_epoch,
                    "step": trainer.global_step,
                    "return": float(rets.mean()),
                    "return_std": float(rets.std()),
                    "episode_length": float(lengths.mean()),
                    "episodes": int(len(rets)),
                    "seconds": time.perf_counter() - t0,
                }
                if self._ref is not None:
                    result["normalized_score"] = float(normalized_score(rets.mean(), *self._ref))
            except Exception as err:  # an env that breaks must not kill a long run
                self.failures += 1
                rank_zero_warn(
                    f"EvalCallback: evaluation at epoch {trainer.current_epoch} failed "
                    f"({type(err).__name__}: {err}); training continues"
                )
        result = trainer.strategy.broadcast(result, src=0)
        pl_module.log("eval/failures", float(self.failures), rank_zero_only=True)
        if result is None:
            return
        self.history.append(result)
        pl_module.log("eval/return", result["return"], rank_zero_only=True)
        pl_module.log("eval/return_std", result["return_std"], rank_zero_only=True)
        if "episode_length" in result:
            pl_module.log("eval/episode_length", result["episode_length"], rank_zero_only=True)
        if "normalized_score" in result:
            pl_module.log("eval/normalized_score", result["normalized_score"], prog_bar=True, rank_zero_only=True)

    # ------------------------------------------------------------------ summary
    def final_score(self) -> float | None:
        scores = [h["normalized_score"] for h in self.history if "normalized_score" in h]
        return float(np.mean(scores[-self.final_window :])) if scores else None

    def final_return(self) -> float | None:
        rets = [h["return"] for h in self.history]
        return float(np.mean(rets[-self.final_window :])) if rets else None

    def best(self) -> dict | None:
        """The evaluation with the highest normalised score (highest return without reference scores)."""
        key = "normalized_score" if any("normalized_score" in h for h in self.history) else "return"
        scored = [h for h in self.history if key in h]
        return max(scored, key=lambda h: h[key]) if scored else None

    def summary(self) -> dict:
        best = self.best() or {}
        return {
            "env_id": self.env_id,
            "final_normalized_score": self.final_score(),
            "final_return": self.final_return(),
            "final_window": self.final_window,
            "best_normalized_score": best.get("normalized_score"),
            "best_return": best.get("return"),
            "best_step": best.get("step"),
            "evaluations": self.history,
            "eval_failures": self.failures,
        }

    def on_fit_start(self, trainer, pl_module) -> None:
        self._summary_written = False
        # a collective under DDP (broadcast), so asked here on every rank: on_fit_end runs after the strategy's
        # teardown and must not need one
        self._log_dir = trainer.log_dir

    def on_train_end(self, trainer, pl_module) -> None:
        log_dir = trainer.log_dir  # a collective under DDP (broadcast): every rank must ask, not rank 0 alone
        self._write_summary(trainer, log_dir)

    def on_fit_end(self, trainer, pl_module) -> None:
        """Resuming from the checkpoint of a finished run skips training and with it ``on_train_end``: write the
        summary (of the restored evaluation history) here when ``on_train_end`` did not."""
        if not getattr(self, "_summary_written", False):
            self._write_summary(trainer, getattr(self, "_log_dir", None))

    def _write_summary(self, trainer, log_dir) -> None:
        self._summary_written = True
        if not trainer.is_global_zero or not self.history:
            return
        summary = self.summary()
        final = summary["final_normalized_score"]
        final = float("nan") if final is None else final
        for logger in trainer.loggers:
            # hp_metric: TensorBoard's HParams tab ranks runs by the final score
            logger.log_metrics(
                {
                    "eval/final_normalized_score": final,
                    "eval/final_return": summary["final_return"],
                    "hp_metric": final,
                },
                step=trainer.global_step,
            )
        if log_dir:
            path = Path(log_dir) / "summary.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(summary, indent=2))
        score = summary["final_normalized_score"]
        # debug level: the CLI prints the final score once, after the progress bar; summary() has it for Python use
        log.debug(
            f"final score (mean of last {min(len(self.history), self.final_window)} evaluations): "
            f"return {summary['final_return']:.1f}" + (f", normalized {score:.1f}" if score is not None else "")
        )

    def state_dict(self) -> dict:
        return {"history": self.history, "failures": self.failures}

    def load_state_dict(self, state_dict: dict) -> None:
        self.history = list(state_dict.get("history", []))
        self.failures = int(state_dict.get("failures", 0))
