"""Offline-RL algorithms as LightningModules (every one registered in :mod:`c4_lightning.algos.registry`)."""

from c4_lightning.algos.base import OfflineRLModule
from c4_lightning.algos.registry import ALGORITHMS, algorithm_class, algorithm_classes

globals().update(algorithm_classes())  # c4_lightning.algos.TD3BC, .CQL, ... (and --model NAME in the CLI)

__all__ = ["OfflineRLModule", "ALGORITHMS", "algorithm_class", "algorithm_classes", *ALGORITHMS]
