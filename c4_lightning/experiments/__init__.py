"""``c4-sweep``: grids of variants x datasets x seeds run as ordinary ``train.py fit`` trials (locally or on Ray),
aggregated with rliable's statistics. See :mod:`c4_lightning.experiments.cli`."""

from c4_lightning.experiments.spec import Budget, Dataset, Sweep, SweepError, Trial, Variant, load_sweep, trial_config

__all__ = ["Budget", "Dataset", "Sweep", "SweepError", "Trial", "Variant", "load_sweep", "trial_config"]
