"""``python train.py fit --config configs/td3bc_c4.yaml`` — LightningCLI for TD3BC / CQL with C4.

Every option of the algorithm (``--model.*``, including the ``--model.c4.*`` group), the data
(``--data.*``) and the Trainer (``--trainer.*``) can be set in the YAML config or overridden on the
command line; ``--print_config`` writes the complete, re-loadable configuration. Examples::

    python train.py fit --config configs/td3bc_c4.yaml --model.c4.penalty_weight 0.5 --data.max_transitions 10000
    python train.py fit --config configs/cql_c4.yaml --trainer.devices 2 --trainer.strategy ddp
    python train.py fit --config configs/td3bc_c4.yaml --trainer.precision bf16-mixed
    python train.py fit --config runs/td3bc_c4/lightning_logs/version_0/config.yaml \\
        --ckpt_path runs/td3bc_c4/lightning_logs/version_0/checkpoints/last.ckpt   # exact resume

``--model.c4.X`` and ``--model.init_args.c4.X`` are the same option (jsonargparse accepts both spellings for
the subclass-typed ``model``); ``--model.c4.lambda`` is accepted as an alias of ``--model.c4.penalty_weight``.
The algorithm is the config's ``model.class_path`` (``c4_lightning.algos.TD3BC`` or ``c4_lightning.algos.CQL``;
``--model TD3BC`` / ``--model CQL`` on the command line).

Defaults the CLI adds: TensorBoard logging (Lightning's default logger; hyper-parameters of the model and
the data are recorded), ``last.ckpt`` every epoch, graceful SIGTERM/SIGINT stop with a resumable checkpoint,
and a progress bar showing the update count, the latest losses and the latest normalised score.
``trainer.log_every_n_steps`` also sets the module's logging interval (one knob, so logged steps always match).

Distributed training: ``--trainer.strategy ddp`` trains with ``find_unused_parameters=True`` (set by the module's
``setup``: the manual optimisation runs several backward passes per step that each touch only part of the
parameters); for
several machines add ``--trainer.num_nodes N`` and launch the same command on each node (torchrun or
SLURM, see Lightning's multi-node docs). Each rank draws its own batch of the same cluster.
Precision: where neither the config nor the command line sets one, ``bf16-mixed`` on a CPU with native bf16 and no
visible GPU, else ``32-true`` (``c4_lightning/training/precision.py``); ``bf16-mixed`` (CPU and GPU) and
``16-mixed`` (CUDA only: fp16 autocast with Lightning's GradScaler, loss scaling inside ``manual_backward``; on a
CPU Lightning substitutes ``bf16-mixed``).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import sys
import warnings
from pathlib import Path
from contextvars import ContextVar
from typing import Any, Optional

from jsonargparse import ActionConfigFile
from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar, TQDMProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from c4_lightning.algos.base import NonFiniteLossError, OfflineRLModule
from c4_lightning.data.datamodule import OfflineRLDataModule
from c4_lightning.evaluation.callback import EvalCallback
from c4_lightning.training.precision import default_precision
from c4_lightning.training.checkpoint_io import CheckpointWriteError
from c4_lightning.training.shutdown import GracefulShutdown, TrainingInterrupted
from c4_lightning.training import resume
from c4_lightning.training.checkpoint import load_checkpoint
from c4_lightning.training.loop_state import PeriodicCheckpoint

# ---------------------------------------------------------------------------------------------- errors

_WRAPPER_MESSAGES = ("Does not validate against any of the Union subtypes", "Problem with given class_path")


def error_line(err: BaseException) -> str:
    """One line for the CLI: the innermost meaningful message of ``err`` (jsonargparse wraps the error of
    a class's ``__init__`` in several layers) with its lines folded (indented list items joined by ', ')."""
    seen = set()
    while id(err) not in seen and any(w in str(err) for w in _WRAPPER_MESSAGES) and err.__cause__ is not None:
        seen.add(id(err))
        err = err.__cause__
    parts: list[str] = []
    for raw in str(err).splitlines():
        line = raw.strip()
        if not line:
            continue
        if raw[:1].isspace() and parts:  # an indented item continues the line above
            sep = " " if parts[-1].endswith(":") else ", "
            parts[-1] = f"{parts[-1]}{sep}{line}"
        else:
            parts.append(line)
    if not parts:
        return type(err).__name__
    return " ".join([p if p[-1] in ".:;,!?)" else f"{p};" for p in parts[:-1]] + parts[-1:])


_OWN_MESSAGE = re.compile(r"^(model|data|trainer)\.[\w.]+\b")
_PARSER_KEY = re.compile(r'^Parser key "([^"]+)":\s*(.*)$')
_NOT_ACCEPTED = re.compile(r"^Option '([^']+)' is not accepted")
_LITERAL = re.compile(r"typing\.Literal\[(.*?)\]")
_EXPECTED = re.compile(r"^\(?Expected a <class '([^']+)'>\.? ?(?:Got value: (.*?))?\)?$")
_GIVEN = re.compile(r"^Given value: (.*)$")
_GOT = re.compile(r"Got value: (.*?)\)?$")
_NOISE = (
    "Does not validate against any of the Union subtypes",
    "Subtypes:",
    "Errors:",
    "Given value",
    "Expected a <class 'NoneType'>",
)


def _full_option(key: str, argv: list[str] | None) -> str:
    """``penalty`` -> ``--model.c4.penalty`` when the command line ``argv`` names it that way (jsonargparse reports
    only the last component of keys inside nested dataclass groups)."""
    if "." in key:
        return f"--{key}"
    for arg in argv or []:
        m = re.match(r"^--([\w.]*\.)?" + re.escape(key) + r"(=|$)", str(arg))
        if m:
            name = f"{m.group(1) or ''}{key}".replace(".init_args.", ".")
            return f"--{name}"
    return f"--{key}"


def looks_like_parser_error(message: str) -> bool:
    text = str(message)
    return text.startswith("Parser key") or "Does not validate against any of the Union subtypes" in text


def one_line_error(message: str, argv: list[str] | None = None) -> str:
    """Turn a (possibly nested, multi-line) jsonargparse error into one line that names the option (its full name
    as ``argv``, the command line, spells it)."""
    lines = [ln.strip().lstrip("-").strip() for ln in str(message).splitlines() if ln.strip()]
    lines = [ln for ln in lines if ln] or ["invalid arguments"]
    # 1. our own validation messages ("model.c4.penalty_weight=-1.0 must be >= 0") say it best
    for ln in lines:
        if _OWN_MESSAGE.match(ln):
            return ln
    m = _NOT_ACCEPTED.match(lines[0])
    if m:
        return f"{_full_option(m.group(1), argv)} is not an option (see --help)"
    m = _PARSER_KEY.match(lines[0])
    prefix = f"{_full_option(m.group(1), argv)}: " if m else ""
    body = ([m.group(2)] if m and m.group(2) else []) + lines[1:] if m else lines
    given = None
    for ln in body:
        g = _GIVEN.match(ln) or _GOT.search(ln)
        if g:
            given = g.group(1).strip()
    # 2. a value outside a set of literals: list the choices
    choices: list[str] = []
    for ln in body:
        for lit in _LITERAL.findall(ln):
            for c in lit.split(","):
                c = c.strip().strip("'\"")
                if c and c not in choices:
                    choices.append(c)
    if choices and given is not None:
        return f"{prefix}{given!r} is not one of: {', '.join(choices)}"
    # 3. a single type mismatch: "expected int, got 'abc'"
    for ln in body:
        e = _EXPECTED.match(ln)
        if e and e.group(1) != "NoneType":
            got = e.group(2) if e.group(2) is not None else given
            return f"{prefix}expected {e.group(1)}" + (f", got {got.strip()!r}" if got is not None else "")
    # 4. otherwise the first informative line (joined with its continuation when it ends with a colon)
    useful = [ln for ln in body if not ln.startswith(_NOISE)]
    if useful:
        text = useful[0]
        if text.endswith(":") and len(useful) > 1:
            text = f"{text} {useful[1]}"
        return f"{prefix}{text}"
    return f"{prefix}{lines[0]}" if prefix else lines[0]


_PARSING: ContextVar[list[str] | None] = ContextVar("c4_cli_command_line", default=None)
"""The command line of the CLI being constructed, for parsers jsonargparse creates internally (e.g. for the model's
subclass), which the CLI never sees; set and reset around one construction (no state outlives it)."""


class OneLineErrorParser(LightningArgumentParser):
    """Argument errors as one line naming the option (no usage wall, no traceback). ``argv`` (set by the CLI) is
    the command line, to spell options in full."""

    argv: list[str] | None = None

    def error(self, message: str, ex: Exception | None = None):  # jsonargparse signature
        sys.stderr.write(f"error: {one_line_error(message, self.argv or _PARSING.get())}\n")
        sys.exit(2)


# ---------------------------------------------------------------------------------------------- progress bar


def _scalar(value: Any) -> Any:
    try:
        return float(value)
    except (TypeError, ValueError):
        return value


class C4ProgressBar(TQDMProgressBar):
    """TQDM bar with ``step`` (gradient updates so far), the latest critic/actor losses and the latest
    normalised evaluation score (``score``) instead of the logger version number.

    It redraws every ``refresh_rate`` updates (default 10: several times a second at CPU speeds). Lightning's
    default of 1 collects and formats the metrics after every update, which costs a few percent of a TD3+BC
    update on a CPU."""

    def __init__(self, refresh_rate: int = 10, **kwargs: Any) -> None:
        super().__init__(refresh_rate=refresh_rate, **kwargs)

    SHOWN = (
        ("critic_loss", "critic_loss"),
        ("train/critic_loss", "critic_loss"),
        ("train/actor_loss", "actor_loss"),
        ("eval/normalized_score", "score"),
    )
    HIDDEN = ("v_num", "critic_loss", "eval/normalized_score")

    def get_metrics(self, trainer, pl_module) -> dict:
        items = super().get_metrics(trainer, pl_module)
        shown: dict[str, Any] = {"step": trainer.global_step}
        metrics = trainer.callback_metrics
        for key, name in self.SHOWN:
            if name not in shown and key in metrics:
                shown[name] = _scalar(metrics[key])
        shown.update({k: v for k, v in items.items() if k not in self.HIDDEN})
        return shown


# ---------------------------------------------------------------------------------------------- CLI


class C4LightningCLI(LightningCLI):
    """LightningCLI with the package's defaults: TensorBoard, evaluation, ``last.ckpt`` every epoch,
    graceful SIGTERM/SIGINT handling and the C4 progress bar are always on, DDP works with manual
    optimisation, and the run ends by printing where its logs are."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("model_class", OfflineRLModule)
        kwargs.setdefault("subclass_mode_model", True)
        kwargs.setdefault("datamodule_class", OfflineRLDataModule)
        kwargs.setdefault("seed_everything_default", 0)
        # overwrite: a run resumed into its own folder (a fixed logger version, as c4-sweep's trials) writes its
        # config again; runs never share a folder (claim_run_dir), so no other run's config is overwritten
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("auto_configure_optimizers", False)  # the algorithms build their own optimisers
        defaults = dict(kwargs.get("trainer_defaults") or {})
        defaults.setdefault("use_distributed_sampler", False)  # ClusterBatchSampler is distribution-aware
        defaults.setdefault("precision", default_precision())  # bf16-mixed on a CPU with native bf16, else 32-true
        kwargs["trainer_defaults"] = defaults
        kwargs.setdefault("parser_kwargs", {"parser_mode": "omegaconf"} if _has_omegaconf() else {})
        given = kwargs.get("args")
        self.argv = [str(a) for a in given] if given is not None and not isinstance(given, dict) else sys.argv[1:]
        token = _PARSING.set(self.argv)
        try:
            with warnings.catch_warnings():
                # args=[...] from Python (notebooks, tests) while sys.argv holds the host's own arguments is intended
                warnings.filterwarnings("ignore", message=r".*LightningCLI's args parameter is intended.*")
                super().__init__(*args, **kwargs)
        except BaseException as err:  # main() needs this CLI (its run folder) to clean up after a failed start
            err.c4_cli = self  # type: ignore[attr-defined]
            raise
        finally:
            _PARSING.reset(token)

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        """``fit`` only: offline RL has no validation/test/predict data loaders, and a command that is listed must
        work. Evaluate a checkpoint with ``c4-evaluate --ckpt PATH`` (rollouts in the dataset's env)."""
        return {"fit": {"model", "train_dataloaders", "val_dataloaders", "datamodule"}}

    def _parse_ckpt_path(self) -> None:
        """Lightning reads ``--ckpt_path``'s hyperparameters here, before any trainer exists: check the file first
        (restricted unpickler; a crafted, corrupt or missing file or a folder is refused in one line)."""
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if not ckpt_path or ckpt_path in ("last", "best", "hpc", "registry"):  # Lightning's own lookups
            return super()._parse_ckpt_path()
        checkpoint = load_checkpoint(ckpt_path, map_location="cpu")
        model = self.config[subcommand].get("model")
        model = model.as_dict() if hasattr(model, "as_dict") else dict(model or {})
        requested = dict(model.get("init_args") or {})
        changed = resume.compare(
            model.get("class_path"), requested, checkpoint.get("hyper_parameters") or {}, str(ckpt_path)
        )
        super()._parse_ckpt_path()  # Lightning: the model configuration becomes the checkpoint's ...
        for key, (_, value) in changed.items():  # ... except what the resume applies as requested
            self.config[f"{subcommand}.model.init_args.{key}"] = value
        if changed:
            print(
                "resuming with changed settings: "
                + ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in sorted(changed.items())),
                file=sys.stderr,
            )

    def init_parser(self, **kwargs) -> LightningArgumentParser:
        kwargs.setdefault("dump_header", ["c4_lightning config: python train.py fit --config this.yaml"])
        parser = OneLineErrorParser(**kwargs)
        parser.argv = self.argv
        parser.add_argument(
            "-c", "--config", action=ActionConfigFile, help="Path to a configuration file in json or yaml format."
        )
        return parser

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # one logging interval: the module logs exactly on the steps the Trainer writes to the logger
        parser.link_arguments("trainer.log_every_n_steps", "model.init_args.log_every_n_steps")
        # evaluation settings as options of the run's one EvalCallback (not a second one added to the list)
        parser.add_argument(
            "--eval.episodes", type=Optional[int], default=None, help="episodes per evaluation (EvalCallback.episodes)"
        )
        parser.add_argument(
            "--eval.every_n_epochs",
            type=Optional[int],
            default=None,
            help="evaluate every N epochs (EvalCallback.every_n_epochs)",
        )
        parser.add_argument(
            "--eval.final_window",
            type=Optional[int],
            default=None,
            help="the final score averages the last N evaluations (EvalCallback.final_window)",
        )
        parser.add_argument(
            "--eval.seed",
            type=Optional[int],
            default=None,
            help="seed of the first evaluation episode (EvalCallback.seed)",
        )

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list) -> Any:
        check_cpu_devices(config.get("accelerator"), config.get("devices"))
        check_accelerator(config.get("accelerator"))
        check_budget(config.get("max_steps"), config.get("max_epochs"))
        root = config.get("default_root_dir")
        if root and "://" not in str(root) and Path(root).exists() and not Path(root).is_dir():
            raise ValueError(f"trainer.default_root_dir={root} is a file, not a folder: pass a folder for the runs")
        configured = list(config.get("callbacks") or []) + list(callbacks)
        check_one_evaluator(configured)
        extra = []
        if config.get("enable_progress_bar") is not False and not any(isinstance(c, ProgressBar) for c in configured):
            extra.append(C4ProgressBar())
        if not any(isinstance(c, GracefulShutdown) for c in configured):
            extra.append(GracefulShutdown())
        if not any(isinstance(c, PeriodicCheckpoint) for c in configured):
            extra.append(PeriodicCheckpoint())
        return super()._instantiate_trainer(config, list(callbacks) + extra)

    def instantiate_trainer(self, **kwargs):
        trainer = super().instantiate_trainer(**kwargs)
        self._created_log_dir = claim_run_dir(trainer)
        callbacks = trainer.callbacks
        if trainer.checkpoint_callback is None and not any(isinstance(c, ModelCheckpoint) for c in callbacks):
            callbacks.append(ModelCheckpoint(save_last=True, every_n_epochs=1))
        for c in callbacks:
            if isinstance(c, ModelCheckpoint) and not c.save_last:
                c.save_last = True
        configure_evaluation(
            trainer,
            (self.config.get(self.subcommand) or {}).get("eval") if self.subcommand else self.config.get("eval"),
        )
        return trainer

    def _log_dir(self) -> Path | None:
        return Path(self.trainer.log_dir) if self.trainer.log_dir else None

    def before_fit(self) -> None:
        seed = (self.config.get(self.subcommand) or {}).get("seed_everything") if self.subcommand else None
        if seed is not None and hasattr(self.model, "record_run_facts"):
            self.model.record_run_facts(seed=seed)  # the HParams tab shows algorithm, dataset, seed and C4 settings

    def after_fit(self) -> None:
        log_dir = self._log_dir()  # trainer.log_dir is a collective under DDP: all ranks ask
        if not self.trainer.is_global_zero:
            return
        evals = [c for c in self.trainer.callbacks if isinstance(c, EvalCallback)]
        score = evals[0].final_score() if evals else None
        ckpt = next((c.last_model_path for c in self.trainer.callbacks if isinstance(c, ModelCheckpoint)), None)
        trainer = self.trainer
        print(f"\ntraining finished after {trainer.global_step} updates ({trainer.current_epoch} epochs)")
        print(logs_line(trainer.loggers, log_dir))
        if ckpt:
            print(f"last checkpoint: {ckpt}")
        if score is not None:
            print(
                f"final normalized score (mean of last {min(len(evals[0].history), evals[0].final_window)} "
                f"evaluations): {score:.2f}"
            )


def logs_line(loggers, log_dir: Path | None) -> str:
    """Where the run's logs are, in the words of its logger (TensorBoard, CSV, or any other)."""
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    logger = loggers[0] if loggers else None
    if logger is None:
        return "no logger (--trainer.logger false)"
    if isinstance(logger, TensorBoardLogger):
        return f"TensorBoard logs: {log_dir}  (tensorboard --logdir {log_dir.parent if log_dir else '.'})"
    if isinstance(logger, CSVLogger):
        return f"CSV logs: {Path(logger.log_dir) / 'metrics.csv'} (images in {Path(logger.log_dir) / 'images'})"
    where = getattr(logger, "log_dir", None) or getattr(logger, "save_dir", None) or log_dir
    return f"{type(logger).__name__} logs: {where}"


def _has_omegaconf() -> bool:
    try:
        import omegaconf  # noqa: F401

        return True
    except ImportError:
        return False


def claim_run_dir(trainer) -> Path | None:
    """Give the run a ``version_N`` folder of its own: created with an exclusive ``mkdir`` (the next free N), so two
    runs started at the same moment in one ``default_root_dir`` never share a folder (Lightning's logger picks
    ``max(existing) + 1`` by listing, which both would read alike). Only for a TensorBoard/CSV logger whose version
    is automatic, on global rank 0 (the other DDP ranks follow rank 0's ``trainer.log_dir``). Returns the folder this
    process created, the only one its clean-up may remove."""
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    if int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", 0)) or 0) != 0 or int(
        os.environ.get("NODE_RANK", 0) or 0
    ):
        return None
    logger = trainer.loggers[0] if trainer.loggers else None
    if not isinstance(logger, (TensorBoardLogger, CSVLogger)) or logger._version is not None:
        return None
    root = Path(logger.root_dir)
    if "://" in str(root):
        return None
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(
            f"cannot create the run folder {root} ({err.strerror or err}): pass a writable --trainer.default_root_dir"
        ) from err
    version = logger._get_next_version()
    while True:
        path = root / f"version_{version}"
        try:
            path.mkdir()
        except FileExistsError:
            version += 1
            continue
        logger._version = version
        return path


def _remove_empty_run_dir(cli: C4LightningCLI | None) -> None:
    """A run that failed before its first update leaves no directory that looks like a real run. Only a folder
    this process created (:func:`claim_run_dir`) is ever removed: never another run's."""
    trainer = getattr(cli, "trainer", None)
    created = getattr(cli, "_created_log_dir", None)
    if trainer is None or created is None or not trainer.log_dir:
        return
    log_dir = Path(trainer.log_dir)
    if log_dir.resolve() != Path(created).resolve():
        return
    if log_dir.exists() and trainer.global_step == 0 and not any(log_dir.rglob("*.ckpt")):
        shutil.rmtree(log_dir, ignore_errors=True)
    if not log_dir.exists():  # and the logger's folder (lightning_logs/) when it is left empty
        try:
            log_dir.parent.rmdir()
        except OSError:
            pass


# ---------------------------------------------------------------------------------------------- console


class _Below(logging.Filter):
    def __init__(self, level: int):
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < self.level


class _DropAdverts(logging.Filter):
    """Lightning's adverts, and its "`Trainer.fit` stopped" line (printed into the running progress bar; the CLI
    prints where training finished on a line of its own)."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = str(record.msg)
        return "litlogger" not in text.lower() and not text.startswith("`Trainer.fit` stopped")


def configure_console() -> None:
    """Command-line hygiene: Lightning's info messages go to stdout, warnings and errors to stderr (so a
    failed run's stderr is just its error), without Lightning's adverts or library deprecation noise."""
    for name in ("lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        if getattr(logger, "_c4_configured", False):
            continue
        for handler in logger.handlers:
            if isinstance(handler, logging.StreamHandler) and getattr(handler, "stream", None) is sys.stderr:
                handler.setLevel(logging.WARNING)
        out = logging.StreamHandler(sys.stdout)
        out.addFilter(_Below(logging.WARNING))
        out.addFilter(_DropAdverts())
        logger.addHandler(out)
        logger._c4_configured = True  # type: ignore[attr-defined]
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=r".*LeafSpec.*is deprecated")  # torch>=2.10 vs lightning's pytree
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")  # in-memory data: no workers
    # epoch-level diagnostics are computed identically on every rank (same parameters, same probe set) and
    # evaluation runs on rank 0 and is broadcast: nothing to reduce
    warnings.filterwarnings("ignore", message=r".*when logging on epoch level in distributed setting.*")
    os.environ.setdefault("PYTHONWARNINGS", "ignore::DeprecationWarning")  # DDP child processes


_ALIASES = {"lambda": "penalty_weight"}


def _apply_aliases(argv: list[str]) -> list[str]:
    """``--model.c4.lambda X`` (the paper's name) -> ``--model.c4.penalty_weight X``."""
    out = []
    for arg in argv:
        m = re.match(r"^(--model\.(?:init_args\.)?c4\.)(\w+)(=.*)?$", arg)
        if m and m.group(2) in _ALIASES:
            arg = f"{m.group(1)}{_ALIASES[m.group(2)]}{m.group(3) or ''}"
        out.append(arg)
    return out


def main(args: list[str] | None = None) -> None:
    """Entry point of ``train.py`` and ``c4-train``: clear one-line errors instead of tracebacks."""
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    configure_console()
    if args is None:  # keep sys.argv authoritative (DDP re-launches the script with it)
        debug = "--debug" in sys.argv[1:]
        sys.argv[1:] = _apply_aliases([a for a in sys.argv[1:] if a != "--debug"])
        argv = list(sys.argv[1:])
    else:
        debug = "--debug" in args
        args = argv = _apply_aliases([a for a in args if a != "--debug"])
    if debug:  # DDP children re-read sys.argv (without --debug): the environment carries it to them
        os.environ["C4_DEBUG"] = "1"
    cli = None
    try:
        check_config_files(argv)
        cli = C4LightningCLI(args=args)
    except TrainingInterrupted as err:
        print(f"{err}", file=sys.stderr)
        sys.exit(err.exit_code)
    except CheckpointWriteError as err:
        _print_cause(err)
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
    except NonFiniteLossError as err:
        _print_cause(err)
        print(f"error: {err}", file=sys.stderr)
        sys.exit(3)
    except (ValueError, TypeError, FileNotFoundError, MisconfigurationException) as err:
        if isinstance(err, TypeError) and not looks_like_parser_error(str(err)):
            raise
        _remove_empty_run_dir(cli or getattr(err, "c4_cli", None))
        text = one_line_error(str(err), argv) if looks_like_parser_error(str(err)) else error_line(err)
        _print_cause(err)
        print(f"error: {text}", file=sys.stderr)
        sys.exit(2)


def _print_cause(err: BaseException) -> None:
    """With ``--debug`` or ``C4_DEBUG=1``: the full traceback (and its causes) above the one-line message."""
    if os.environ.get("C4_DEBUG", "") not in ("", "0"):
        import traceback

        traceback.print_exception(err, file=sys.stderr)


def check_cpu_devices(accelerator, devices) -> None:
    """Refuse, before any process starts, a CPU run with more processes than cores (each DDP process on a CPU
    is one full training replica: ``--trainer.devices 99`` would start 99 of them and hang the machine)."""
    import torch

    on_cpu = accelerator == "cpu" or (accelerator in (None, "auto") and not torch.cuda.is_available())
    if not on_cpu or devices in (None, "auto", -1, "-1"):
        return
    try:
        n = len(devices) if isinstance(devices, (list, tuple)) else int(devices)
    except (TypeError, ValueError):
        return  # Lightning's own parser reports malformed values
    cores = os.cpu_count() or 1
    if n < 1:
        raise ValueError(f"trainer.devices={devices!r} must be >= 1 (on a CPU: the number of training processes)")
    if n > cores:
        raise ValueError(
            f"trainer.devices={n} on a CPU would start {n} training processes on this machine's {cores} "
            f"cores; use --trainer.devices 1 (or at most {cores} with --trainer.strategy ddp)"
        )


def check_one_evaluator(callbacks) -> list:
    """Two evaluators are refused: each would run its own rollouts (e.g. a second one added with ``callbacks+=``)."""
    evaluators = [c for c in callbacks if isinstance(c, EvalCallback)]
    if len(evaluators) > 1:
        raise ValueError(
            f"{len(evaluators)} EvalCallbacks are configured, and each runs its own evaluation episodes: "
            "keep one in trainer.callbacks and set its options with --eval.episodes, "
            "--eval.every_n_epochs, ..."
        )
    return evaluators


def configure_evaluation(trainer, options) -> None:
    """Apply ``--eval.*`` to the run's EvalCallback (one is added when the config has none and an option is given)."""
    if hasattr(options, "as_dict"):
        options = options.as_dict()
    given = {k: v for k, v in dict(options or {}).items() if v is not None}
    evaluators = check_one_evaluator(trainer.callbacks)
    if not given:
        return
    if evaluators:
        evaluators[0].configure(**given)
    else:
        trainer.callbacks.append(EvalCallback(**given))


def check_accelerator(accelerator) -> None:
    """Refuse a GPU accelerator that PyTorch cannot see, naming why (a CPU-only build, or no visible device)."""
    import torch

    if str(accelerator).lower() not in ("gpu", "cuda") or torch.cuda.is_available():
        return
    why = (
        f"this PyTorch {torch.__version__} is a CPU-only build"
        if not torch.version.cuda
        else f"PyTorch {torch.__version__} (CUDA {torch.version.cuda}) sees no GPU (driver, CUDA_VISIBLE_DEVICES?)"
    )
    raise ValueError(
        f"trainer.accelerator={accelerator} but {why}: use --trainer.accelerator cpu (or auto), or "
        "install a CUDA build of PyTorch on a machine with a GPU"
    )


def check_budget(max_steps, max_epochs) -> None:
    """A budget of zero updates trains nothing (and would leave an empty run folder behind)."""
    for name, value in (("max_steps", max_steps), ("max_epochs", max_epochs)):
        if value == 0:
            raise ValueError(
                f"trainer.{name}=0 trains nothing: give a budget >= 1 (or -1 for no limit on "
                f"{name.split('_')[1]} when the other limit is set)"
            )


def check_config_files(argv: list[str]) -> None:
    """Parse each ``--config`` YAML file before the CLI does, so a syntax error names the file, line and column
    (jsonargparse reports only the parser's first words)."""
    import yaml

    paths = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a in ("--config", "-c")]
    paths += [a.split("=", 1)[1] for a in argv if a.startswith("--config=")]
    for path in paths:
        try:
            text = Path(path).read_text()
        except OSError:
            continue  # a missing file: the CLI's own message names it
        try:
            yaml.safe_load(text)
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
            where = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            problem = " ".join(str(getattr(err, "problem", None) or err).split())
            context, started = getattr(err, "context", None), getattr(err, "context_mark", None)
            if context and started is not None and started is not mark:
                context = f"{' '.join(context.split())} that starts at line {started.line + 1}"
            raise ValueError(
                f"config {path}{where}: {problem}" + (f" ({context})" if context else "") + "; fix the YAML there"
            ) from err


if __name__ == "__main__":  # python -m c4_lightning.cli fit ... (what c4-sweep runs for each trial)
    main()
