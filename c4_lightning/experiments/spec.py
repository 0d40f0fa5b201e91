"""A sweep: named variants (a config + overrides) x datasets x seeds, under one training budget.

A sweep file is YAML::

    name: c4_evidence
    out: benchmarks/results              # tables, JSON and plots go here
    runs_dir: runs/sweeps/c4_evidence    # one folder per trial (git-ignored)
    baseline: baseline                   # the variant others are compared with (paired by dataset and seed)
    rule: gain                           # the verdict: gain (default: does a variant help?) or parity (differ?)
    seeds: [0, 1, 2, 3, 4]
    budget: {updates: 50000, eval_every: 5000, eval_episodes: 10, score_window: 4, steps_per_epoch: 1000}
    datasets:
      mix10k: {dataset_id: hopper/random-medium-expert-10k}
      replay10k: {dataset_id: hopper/medium-replay, max_transitions: 10000}
    variants:
      baseline: {config: configs/td3bc.yaml, overrides: {trainer.precision: 32-true}}  # as td3bc_c4.yaml
      c4: {config: configs/td3bc_c4.yaml, overrides: {model.c4.penalty_weight: 0.1}, datasets: [mix10k]}

Paths are relative to the working directory (as ``train.py --config``). ``overrides`` are dotted keys of the
config; ``model.<name>`` also reaches ``model.init_args.<name>``. Each trial is an ordinary ``train.py fit`` run
of the variant's config with the dataset, seed and budget filled in: :func:`trial_config` writes that config.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from c4_lightning.training.precision import default_precision

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
RULE_NAMES = ("gain", "parity")  # decision rules a sweep file may name; their text and verdicts: report.py


class SweepError(ValueError):
    """A sweep file or a sweep command that cannot work; the message names the bad entry."""


@dataclass(frozen=True)
class Budget:
    updates: int = 50_000  # gradient updates per trial
    eval_every: int = 5_000  # updates between evaluations
    eval_episodes: int = 10  # episodes per evaluation
    score_window: int = 4  # score = mean normalised score of the last this-many evaluations
    steps_per_epoch: int = 1_000  # updates per Lightning epoch (checkpoints are written every epoch)

    def __post_init__(self) -> None:
        for name in ("updates", "eval_every", "eval_episodes", "score_window", "steps_per_epoch"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise SweepError(f"budget.{name}={value!r} must be an integer >= 1")
        if self.updates % self.steps_per_epoch or self.eval_every % self.steps_per_epoch:
            raise SweepError(
                f"budget.updates={self.updates} and budget.eval_every={self.eval_every} must be "
                f"multiples of budget.steps_per_epoch={self.steps_per_epoch}"
            )
        if self.eval_every > self.updates:
            raise SweepError(
                f"budget.eval_every={self.eval_every} exceeds budget.updates={self.updates}: no evaluation would run"
            )

    @property
    def epochs(self) -> int:
        return self.updates // self.steps_per_epoch

    @property
    def evaluations(self) -> int:
        return self.updates // self.eval_every


@dataclass(frozen=True)
class Dataset:
    name: str
    dataset_id: str | list[str]
    max_transitions: int | None = None
    extra: dict = field(default_factory=dict)  # any other data.* settings


@dataclass(frozen=True)
class Variant:
    name: str
    config: str
    overrides: dict = field(default_factory=dict)
    datasets: tuple[str, ...] | None = None  # None: every dataset of the sweep


@dataclass(frozen=True)
class Trial:
    variant: str
    dataset: str
    seed: int

    @property
    def key(self) -> str:
        """The trial's folder name: variant, dataset and seed."""
        return f"{self.variant}__{self.dataset}__s{self.seed}"


@dataclass
class Sweep:
    name: str
    variants: dict[str, Variant]
    datasets: dict[str, Dataset]
    seeds: list[int]
    budget: Budget = field(default_factory=Budget)
    baseline: str | None = None
    out: Path = Path("benchmarks/results")
    runs_dir: Path = Path("runs/sweeps")
    source: Path | None = None
    rule: str = "gain"  # the decision rule the report applies (c4_lightning/experiments/report.py RULES)

    def __post_init__(self) -> None:
        if not self.variants:
            raise SweepError("the sweep has no variants: add at least one under 'variants:'")
        if not self.datasets:
            raise SweepError("the sweep has no datasets: add at least one under 'datasets:'")
        if not self.seeds:
            raise SweepError("the sweep has no seeds: set 'seeds: [0, 1, 2, ...]'")
        if len(set(self.seeds)) != len(self.seeds):
            raise SweepError(f"seeds {self.seeds} repeat a seed")
        for name in [*self.variants, *self.datasets, self.name]:
            if not _NAME.match(str(name)) or "__" in str(name):
                raise SweepError(
                    f"name {name!r} must be letters, digits and _ . + - (no '__', no spaces): "
                    "it becomes part of a folder name"
                )
        for v in self.variants.values():
            for d in v.datasets or ():
                if d not in self.datasets:
                    raise SweepError(
                        f"variant {v.name!r} lists dataset {d!r}, which the sweep does not define; "
                        f"defined: {sorted(self.datasets)}"
                    )
        if self.baseline is not None and self.baseline not in self.variants:
            raise SweepError(f"baseline {self.baseline!r} is not a variant; variants: {sorted(self.variants)}")
        if self.rule not in RULE_NAMES:
            raise SweepError(
                f"rule {self.rule!r} is unknown; use one of {', '.join(RULE_NAMES)} (their text: "
                "c4_lightning/experiments/report.py RULES)"
            )

    def trials(self) -> list[Trial]:
        out = []
        for v in self.variants.values():
            for d in v.datasets or tuple(self.datasets):
                out += [Trial(v.name, d, s) for s in self.seeds]
        return out

    def trial_dir(self, trial: Trial) -> Path:
        return self.runs_dir / trial.key

    def select(
        self, variants: list[str] | None = None, datasets: list[str] | None = None, seeds: list[int] | None = None
    ) -> "Sweep":
        """The same sweep restricted to some variants, datasets or seeds (unknown names are refused)."""
        for wanted, have, what in ((variants, self.variants, "variant"), (datasets, self.datasets, "dataset")):
            for w in wanted or ():
                if w not in have:
                    raise SweepError(f"unknown {what} {w!r}; this sweep has {sorted(have)}")
        sweep = copy.copy(self)
        if variants:
            sweep.variants = {k: v for k, v in self.variants.items() if k in variants}
        if datasets:
            sweep.datasets = {k: v for k, v in self.datasets.items() if k in datasets}
            sweep.variants = {
                k: Variant(
                    v.name, v.config, v.overrides, tuple(d for d in (v.datasets or self.datasets) if d in datasets)
                )
                for k, v in sweep.variants.items()
            }
        if seeds:
            sweep.seeds = list(seeds)
        if sweep.baseline not in sweep.variants:
            sweep.baseline = None
        return sweep


def _mapping(value, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise SweepError(f"{where} must be a mapping, got {type(value).__name__}")
    return value


def load_sweep(path: str | Path) -> Sweep:
    """Read and check a sweep file (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise SweepError(f"sweep file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise SweepError(f"sweep file {path} is not valid YAML{where}: {getattr(err, 'problem', err)}") from err
    raw = _mapping(raw, f"sweep file {path}")
    known = {
        "name",
        "out",
        "runs_dir",
        "baseline",
        "seeds",
        "budget",
        "datasets",
        "variants",
        "description",
        "protocol",
        "rule",
    }
    unknown = sorted(set(raw) - known)
    if unknown:
        raise SweepError(f"sweep file {path}: unknown keys {unknown}; allowed: {sorted(known)}")
    try:
        budget = Budget(**_mapping(raw.get("budget"), "budget"))
    except TypeError as err:
        raise SweepError(
            f"sweep file {path}: budget: {err}; allowed keys: {list(Budget.__dataclass_fields__)}"
        ) from err
    datasets = {}
    for name, d in _mapping(raw.get("datasets"), "datasets").items():
        d = dict(_mapping(d, f"datasets.{name}"))
        if "dataset_id" not in d:
            raise SweepError(f"datasets.{name} needs a dataset_id")
        datasets[str(name)] = Dataset(str(name), d.pop("dataset_id"), d.pop("max_transitions", None), d)
    variants = {}
    for name, v in _mapping(raw.get("variants"), "variants").items():
        v = _mapping(v, f"variants.{name}")
        if "config" not in v:
            raise SweepError(f"variants.{name} needs a config (a train.py YAML config)")
        extra = sorted(set(v) - {"config", "overrides", "datasets"})
        if extra:
            raise SweepError(f"variants.{name}: unknown keys {extra}; allowed: config, overrides, datasets")
        ds = v.get("datasets")
        variants[str(name)] = Variant(
            str(name),
            str(v["config"]),
            dict(_mapping(v.get("overrides"), f"variants.{name}.overrides")),
            tuple(ds) if ds is not None else None,
        )
    seeds = raw.get("seeds", [0, 1, 2, 3, 4])
    if not isinstance(seeds, list) or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise SweepError(f"seeds must be a list of integers, got {seeds!r}")
    return Sweep(
        name=str(raw.get("name", path.stem)),
        variants=variants,
        datasets=datasets,
        seeds=seeds,
        budget=budget,
        baseline=raw.get("baseline"),
        out=Path(raw.get("out", "benchmarks/results")),
        runs_dir=Path(raw.get("runs_dir", f"runs/sweeps/{raw.get('name', path.stem)}")),
        source=path,
        rule=str(raw.get("rule", "gain")),
    )


# ---------------------------------------------------------------------------------------------- trial configs
def _set_dotted(cfg: dict, dotted: str, value: Any, where: str) -> None:
    keys = dotted.split(".")
    node = cfg
    for i, k in enumerate(keys[:-1]):
        nxt = node.get(k)
        if isinstance(nxt, dict) and "class_path" in nxt and keys[i + 1] not in ("class_path", "init_args"):
            nxt = nxt.setdefault("init_args", {})  # model.c4.x reaches model.init_args.c4.x
        elif nxt is None:
            nxt = node.setdefault(k, {})
        if not isinstance(nxt, dict):
            raise SweepError(f"{where}: cannot set {dotted!r}: {'.'.join(keys[: i + 1])} is not a mapping")
        node = nxt
    node[keys[-1]] = value


def trial_config(sweep: Sweep, trial: Trial) -> dict:
    """The ``train.py fit`` config of one trial: the variant's config and overrides, then the dataset, seed,
    budget and run folder. The budget is in epochs (``max_epochs``), under which a resume is exact."""
    variant, dataset, b = sweep.variants[trial.variant], sweep.datasets[trial.dataset], sweep.budget
    cfg_path = Path(variant.config)
    if not cfg_path.is_file():
        raise SweepError(
            f"variant {variant.name!r}: config {cfg_path} does not exist (paths are relative to the working directory)"
        )
    cfg = yaml.safe_load(cfg_path.read_text()) or {}
    for key, value in variant.overrides.items():
        _set_dotted(cfg, str(key), copy.deepcopy(value), f"variant {variant.name!r}")
    cfg["seed_everything"] = trial.seed
    data = cfg.setdefault("data", {})
    data.update(dataset_id=dataset.dataset_id, steps_per_epoch=b.steps_per_epoch, **dataset.extra)
    data["max_transitions"] = dataset.max_transitions
    tr = cfg.setdefault("trainer", {})
    # the precision the trial runs at, resolved here when the config leaves it to the CLI's default (bf16-mixed on
    # CPUs with native bf16): recorded in the trial's config, a resume on another host keeps it
    tr.setdefault("precision", default_precision())
    run_dir = sweep.trial_dir(trial)
    tr.update(
        max_epochs=b.epochs,
        max_steps=-1,
        default_root_dir=str(run_dir),
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    tr["logger"] = {
        "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
        "init_args": {"save_dir": str(run_dir), "name": "", "version": "logs"},
    }
    callbacks = [cb for cb in tr.get("callbacks") or [] if not str(cb.get("class_path", "")).endswith("EvalCallback")]
    callbacks.insert(
        0,
        {
            "class_path": "c4_lightning.evaluation.EvalCallback",
            "init_args": {
                "every_n_epochs": b.eval_every // b.steps_per_epoch,
                "episodes": b.eval_episodes,
                "final_window": b.score_window,
            },
        },
    )
    if not any(str(cb.get("class_path", "")).endswith("ModelCheckpoint") for cb in callbacks):
        callbacks.append(
            {
                "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                "init_args": {"save_last": True, "every_n_epochs": 1},
            }
        )
    tr["callbacks"] = callbacks
    return cfg


def config_digest(cfg: dict) -> str:
    """A short hash of a trial config, stored beside the trial so a changed variant is noticed on resume."""
    return hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()[:12]


def score_of(evaluations: list[dict], window: int) -> dict:
    """Score (mean normalised score of the last ``window`` evaluations), peak and final-vs-peak of one trial."""
    scores = [float(e["normalized_score"]) for e in evaluations if e.get("normalized_score") is not None]
    if not scores:
        return {"score": None, "peak": None, "final_vs_peak": None}
    score = float(sum(scores[-window:]) / len(scores[-window:]))
    peak = max(scores)
    ratio = score / peak if peak > 0 and math.isfinite(peak) else None
    return {"score": score, "peak": peak, "final_vs_peak": ratio}
