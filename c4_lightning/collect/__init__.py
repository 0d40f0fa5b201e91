"""The dataset maker behind ``c4-collect``: D4RL-style Minari datasets for any Gymnasium env.

Modules, one concept each:

- :mod:`~c4_lightning.collect.sac`: the behaviour policy (Stable-Baselines3 SAC), trained and resumed with a
  checkpoint every ``checkpoint_every`` env steps;
- :mod:`~c4_lightning.collect.checkpoints`: the behaviour run's checkpoint table and the choice of the
  expert and medium checkpoints;
- :mod:`~c4_lightning.collect.episodes`: episodes recorded from an env or converted from the replay
  buffer, cut, tagged with their source, drawn whole at random;
- :mod:`~c4_lightning.collect.writing`: dataset ids, Minari's writer, the compact HDF5 rewrite and the
  reload check;
- :mod:`~c4_lightning.collect.builders`: one builder per dataset kind (random, medium, expert,
  medium-replay, medium-expert, mixtures) and :func:`record_datasets`, which makes them all;
- :mod:`~c4_lightning.collect.provenance`: ``PROVENANCE.md`` from the datasets' metadata;
- :mod:`~c4_lightning.collect.cli`: ``c4-collect train|record`` (also ``python -m c4_lightning.collect``).

Nothing here imports Stable-Baselines3, Minari or Gymnasium until it is used, so the package imports
without the optional extra ``collect``.
"""

from c4_lightning.collect.builders import (
    DEFAULT_EXPERT_STEPS,
    DEFAULT_MEDIUM_STEPS,
    DEFAULT_MIX_SIZES,
    DEFAULT_RANDOM_STEPS,
    DEFAULT_REPLAY_MAX_STEPS,
    record_datasets,
)
from c4_lightning.collect.checkpoints import (
    CHECKPOINT_TABLE,
    best_checkpoint,
    load_checkpoint_table,
    select_checkpoints,
)
from c4_lightning.collect.cli import build_parser, main
from c4_lightning.collect.episodes import (
    make_episode,
    replay_buffer_episodes,
    rollout_episodes,
    take_whole_episodes,
)
from c4_lightning.collect.provenance import write_provenance_md
from c4_lightning.collect.sac import train_behaviour
from c4_lightning.collect.writing import (
    DATASET_VERSION,
    MAX_DATASET_MB,
    STORAGE_LAYOUT,
    check_dataset,
    compact_hdf5,
    dataset_id,
    mixture_name,
    write_dataset,
)

__all__ = [
    "CHECKPOINT_TABLE",
    "DATASET_VERSION",
    "DEFAULT_EXPERT_STEPS",
    "DEFAULT_MEDIUM_STEPS",
    "DEFAULT_MIX_SIZES",
    "DEFAULT_RANDOM_STEPS",
    "DEFAULT_REPLAY_MAX_STEPS",
    "MAX_DATASET_MB",
    "STORAGE_LAYOUT",
    "best_checkpoint",
    "build_parser",
    "check_dataset",
    "compact_hdf5",
    "dataset_id",
    "load_checkpoint_table",
    "main",
    "make_episode",
    "mixture_name",
    "record_datasets",
    "replay_buffer_episodes",
    "rollout_episodes",
    "select_checkpoints",
    "take_whole_episodes",
    "train_behaviour",
    "write_dataset",
    "write_provenance_md",
]
