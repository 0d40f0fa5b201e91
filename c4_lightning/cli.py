"""``python train.py fit --config configs/td3bc_c4.yaml`` — LightningCLI for TD3BC / CQL with C4."""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from lightning.pytorch.callbacks import ModelCheckpoint
from jsonargparse import ActionConfigFile
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from c4_lightning.algos.base import NonFiniteLossError, OfflineRLModule
from c4_lightning.data.datamodule import OfflineRLDataModule
from c4_lightning.evaluation.callback import EvalCallback
from c4_lightning.reliability import GracefulShutdown, TrainingInterrupted


class OneLineErrorParser(LightningArgumentParser):
    """Argument errors as one line naming the option (no usage wall)."""

    def error(self, message: str, ex: Exception | None = None):  # jsonargparse signature
        lines = [ln.strip() for ln in str(message).splitlines() if ln.strip()]
        text = lines[0] if lines else "invalid arguments"
        # jsonargparse explains nested failures below the first line; keep the most specific one
        detail = next((ln for ln in reversed(lines[1:]) if "key" in ln.lower() or "expected" in ln.lower()), None)
        if detail and detail not in text:
            text = f"{text} ({detail})"
        sys.stderr.write(f"error: {text}\n")
        sys.exit(2)


class C4LightningCLI(LightningCLI):
    """LightningCLI with the package's defaults: TensorBoard, evaluation, ``last.ckpt`` every epoch and
    graceful SIGTERM/SIGINT handling are always on, and the run ends by printing where its logs are."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("model_class", OfflineRLModule)
        kwargs.setdefault("subclass_mode_model", True)
        kwargs.setdefault("datamodule_class", OfflineRLDataModule)
        kwargs.setdefault("seed_everything_default", 0)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("parser_kwargs", {"parser_mode": "omegaconf"} if _has_omegaconf() else {})
        super().__init__(*args, **kwargs)

    def init_parser(self, **kwargs) -> LightningArgumentParser:
        kwargs.setdefault("dump_header", ["c4_lightning config: python train.py fit --config this.yaml"])
        parser = OneLineErrorParser(**kwargs)
        parser.add_argument("-c", "--config", action=ActionConfigFile,
                            help="Path to a configuration file in json or yaml format.")
        return parser

    def instantiate_trainer(self, **kwargs):
        trainer = super().instantiate_trainer(**kwargs)
        _CURRENT["cli"] = self
        callbacks = trainer.callbacks
        if not any(isinstance(c, ModelCheckpoint) for c in callbacks):
            callbacks.append(ModelCheckpoint(save_last=True, every_n_epochs=1))
        for c in callbacks:
            if isinstance(c, ModelCheckpoint) and not c.save_last:
                c.save_last = True
        if not any(isinstance(c, GracefulShutdown) for c in callbacks):
            callbacks.append(GracefulShutdown())
        return trainer

    def before_fit(self) -> None:
        self._log_dir_existed = self._log_dir() is not None and self._log_dir().exists()

    def _log_dir(self) -> Path | None:
        return Path(self.trainer.log_dir) if self.trainer.log_dir else None

    def after_fit(self) -> None:
        if not self.trainer.is_global_zero:
            return
        log_dir = self._log_dir()
        evals = [c for c in self.trainer.callbacks if isinstance(c, EvalCallback)]
        score = evals[0].final_score() if evals else None
        ckpt = next((c.last_model_path for c in self.trainer.callbacks if isinstance(c, ModelCheckpoint)), None)
        print(f"\nTensorBoard logs: {log_dir}  (tensorboard --logdir {log_dir.parent if log_dir else '.'})")
        if ckpt:
            print(f"last checkpoint: {ckpt}")
        if score is not None:
            print(f"final normalized score (mean of last {min(len(evals[0].history), evals[0].final_window)} "
                  f"evaluations): {score:.2f}")


def _has_omegaconf() -> bool:
    try:
        import omegaconf  # noqa: F401

        return True
    except ImportError:
        return False


def _remove_empty_run_dir(cli: C4LightningCLI | None) -> None:
    """A run that failed before its first update leaves no directory that looks like a real run."""
    trainer = getattr(cli, "trainer", None)
    if trainer is None or not trainer.log_dir or getattr(cli, "_log_dir_existed", True):
        return
    log_dir = Path(trainer.log_dir)
    if log_dir.exists() and trainer.global_step == 0 and not any(log_dir.rglob("*.ckpt")):
        shutil.rmtree(log_dir, ignore_errors=True)


def main(args: list[str] | None = None) -> None:
    """Entry point of ``train.py`` and ``c4-train``: clear one-line errors instead of tracebacks."""
    os.environ.setdefault("PYTHONWARNINGS", "ignore::DeprecationWarning")
    cli = None
    try:
        cli = C4LightningCLI(args=args)
    except TrainingInterrupted as err:
        print(f"{err}", file=sys.stderr)
        sys.exit(err.exit_code)
    except NonFiniteLossError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(3)
    except (ValueError, FileNotFoundError) as err:
        _remove_empty_run_dir(cli or _CURRENT.get("cli"))
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


_CURRENT: dict = {}
