"""Small shared helpers for Lightning-level tests (CPU only, tiny sizes).

* tiny Minari datasets written to a temporary folder used as the Minari cache
  (``MINARI_DATASETS_PATH``), so the embedded ``datasets/`` (e.g. ``hopper/random-medium-expert-10k``)
  stays visible next to them: :func:`write_episodes_dataset`, :func:`write_bandit_dataset`,
  :func:`bandit_a_star`;
* :func:`make_datamodule` (an ``OfflineRLDataModule`` with small defaults), :func:`make_trainer` (a quiet CPU
  ``Trainer``), :class:`MemoryLogger` (records every ``log_metrics`` call) and :class:`BatchSpy`
  (records the indices of every training batch).

Other test files may import these; the signatures are kept stable.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Sequence

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch import Callback
from lightning.pytorch.loggers import Logger

sys.path.insert(0, str(Path(__file__).resolve().parent))

from minari_fixtures import build_minari_dataset  # noqa: E402

from c4_lightning.data.datamodule import OfflineRLDataModule  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
HOPPER_10K = "hopper/random-medium-expert-10k"
HOPPERLIKE = "toy/hopperlike"

# ---------------------------------------------------------------------------------------------- datasets

BANDIT_OBS_DIM, BANDIT_ACT_DIM = 3, 2
# a*(s) = 0.6 * tanh(s @ W): smooth, well inside [-1, 1]^2, different per state
BANDIT_W = np.array([[0.9, -0.6], [-0.5, 0.8], [0.7, 0.7]], dtype=np.float64)


def bandit_a_star(obs: np.ndarray | torch.Tensor) -> np.ndarray:
    """The reward-maximising action of the bandit dataset for raw observations ``[..., 3]``."""
    obs = obs.detach().cpu().numpy() if isinstance(obs, torch.Tensor) else np.asarray(obs)
    return (0.6 * np.tanh(obs.astype(np.float64) @ BANDIT_W)).astype(np.float32)


def write_episodes_dataset(
    root: Path | str,
    dataset_id: str,
    episodes: Sequence[dict[str, np.ndarray]],
    env_id: str | None = None,
    ref_scores: tuple[float, float] | None = None,
    sources: Sequence[int] | None = None,
    source_names: Sequence[str] | None = None,
) -> str:
    """Write a Minari dataset under ``root`` from explicit episodes and return its id (``dataset_id``).

    Each episode is a dict with ``observations [T+1, d]``, ``actions [T, a]``, ``rewards [T]`` and optional
    boolean ``terminations``/``truncations [T]`` (default: terminated at the last step).
    ``sources`` gives one source label per episode (needs ``source_names``)."""
    from minari.data_collector import EpisodeBuffer

    buffers = []
    for e, ep in enumerate(episodes):
        obs = np.asarray(ep["observations"], dtype=np.float32)
        act = np.asarray(ep["actions"], dtype=np.float32)
        T = act.shape[0]
        term = np.asarray(ep.get("terminations", np.r_[np.zeros(T - 1, bool), True]), dtype=bool)
        trunc = np.asarray(ep.get("truncations", np.zeros(T, bool)), dtype=bool)
        infos = None if sources is None else {"source": np.full(T + 1, int(sources[e]), dtype=np.int64)}
        buffers.append(
            EpisodeBuffer(
                id=e,
                observations=obs,
                actions=act,
                rewards=np.asarray(ep["rewards"], dtype=np.float64),
                terminations=term,
                truncations=trunc,
                infos=infos,
            )
        )
    obs_dim, act_dim = buffers[0].observations.shape[1], buffers[0].actions.shape[1]
    build_minari_dataset(
        Path(root),
        dataset_id,
        obs_dim=obs_dim,
        act_dim=act_dim,
        env_id=env_id,
        source_names=source_names,
        ref_scores=ref_scores,
        buffers=buffers,
    )
    return dataset_id


def write_bandit_dataset(
    root: Path | str, dataset_id: str = "toy/bandit-v0", n: int = 1000, seed: int = 0, obs_scale: float = 1.0
) -> str:
    """A one-step problem with a known answer: ``n`` one-step episodes, ``s ~ N(0, obs_scale^2 I_3)``,
    ``a ~ U[-1, 1]^2``, ``r = -||a - a*(s)||^2`` (:func:`bandit_a_star`), every step terminal."""
    rng = np.random.default_rng(seed)
    obs = (rng.normal(size=(n, BANDIT_OBS_DIM)) * obs_scale).astype(np.float32)
    nxt = (rng.normal(size=(n, BANDIT_OBS_DIM)) * obs_scale).astype(np.float32)
    act = rng.uniform(-1, 1, size=(n, BANDIT_ACT_DIM)).astype(np.float32)
    rew = -((act - bandit_a_star(obs)) ** 2).sum(-1)
    episodes = [
        {"observations": np.stack([obs[i], nxt[i]]), "actions": act[i : i + 1], "rewards": rew[i : i + 1]}
        for i in range(n)
    ]
    return write_episodes_dataset(root, dataset_id, episodes)


def write_chain_dataset(
    root: Path | str,
    dataset_id: str = "toy/chain-v0",
    n_episodes: int = 40,
    length: int = 12,
    obs_dim: int = 4,
    act_dim: int = 2,
    seed: int = 0,
    env_id: str | None = None,
    ref_scores: tuple[float, float] | None = None,
) -> str:
    """Random multi-step episodes (half terminated, half truncated) with 3 source labels, for wiring tests.
    ``env_id``/``ref_scores`` make it evaluable (shapes must then match the env)."""
    rng = np.random.default_rng(seed)
    episodes = []
    for e in range(n_episodes):
        centre = rng.normal(size=obs_dim) * 3
        T = length
        episodes.append(
            {
                "observations": centre + rng.normal(size=(T + 1, obs_dim)),
                "actions": rng.uniform(-1, 1, size=(T, act_dim)),
                "rewards": rng.normal(size=T),
                "terminations": np.r_[np.zeros(T - 1, bool), e % 2 == 0],
                "truncations": np.r_[np.zeros(T - 1, bool), e % 2 == 1],
            }
        )
    return write_episodes_dataset(
        root,
        dataset_id,
        episodes,
        env_id=env_id,
        ref_scores=ref_scores,
        sources=[e % 3 for e in range(n_episodes)],
        source_names=["a", "b", "c"],
    )


_TOY_ROOTS: dict[str, Path] = {}


def toy_datasets(tmp_path_factory) -> Path:
    """Write once per test session, into one Minari cache folder (returned):

    * ``toy/bandit-v0``: :func:`write_bandit_dataset`, N=1000, obs 3, act 2;
    * ``toy/chain-v0``: :func:`write_chain_dataset`, N=480, obs 4, act 2, no env;
    * ``toy/hopperlike-v0``: :func:`write_chain_dataset` with Hopper-v5's shapes (obs 11, act 3), env id and
      reference scores, N=480: evaluable without the embedded datasets."""
    key = str(tmp_path_factory.getbasetemp())
    if key not in _TOY_ROOTS:
        root = tmp_path_factory.mktemp("lightning_toy_minari")
        write_bandit_dataset(root)
        write_chain_dataset(root)
        write_chain_dataset(
            root, HOPPERLIKE + "-v0", obs_dim=11, act_dim=3, seed=1, env_id="Hopper-v5", ref_scores=(-20.0, 3234.3)
        )
        _TOY_ROOTS[key] = root
    return _TOY_ROOTS[key]


@pytest.fixture
def toy_env(tmp_path_factory, monkeypatch) -> Path:
    """Points the Minari cache at :func:`toy_datasets` (the embedded ``datasets/`` stay visible). Import it
    into a test module to use it."""
    root = toy_datasets(tmp_path_factory)
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))
    return root


# ---------------------------------------------------------------------------------------------- lightning


def make_datamodule(
    dataset_id: str = HOPPER_10K, batch_size: int = 64, steps_per_epoch: int = 1000, **kwargs: Any
) -> OfflineRLDataModule:
    """An ``OfflineRLDataModule`` with small defaults (data stays on the CPU)."""
    kwargs.setdefault("data_on_device", False)
    return OfflineRLDataModule(dataset_id=dataset_id, batch_size=batch_size, steps_per_epoch=steps_per_epoch, **kwargs)


def make_trainer(
    root: Path | str,
    max_steps: int = -1,
    max_epochs: int | None = None,
    callbacks=(),
    logger: Logger | bool | None = None,
    log_every_n_steps: int = 1,
    **kwargs: Any,
) -> L.Trainer:
    """A quiet single-process CPU ``Trainer`` (no checkpoints, no progress bar, no sanity check)."""
    return L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=max_steps,
        max_epochs=max_epochs if max_epochs is not None else (-1 if max_steps > 0 else 1),
        callbacks=list(callbacks),
        logger=logger if logger is not None else False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=str(root),
        log_every_n_steps=log_every_n_steps,
        **kwargs,
    )


class MemoryLogger(Logger):
    """Keeps every ``log_metrics`` call as ``(step, {name: float})`` in ``self.records``."""

    def __init__(self):
        super().__init__()
        self.records: list[tuple[int | None, dict[str, float]]] = []

    @property
    def name(self) -> str:
        return "memory"

    @property
    def version(self) -> int:
        return 0

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.records.append((step, {k: float(v) for k, v in metrics.items()}))

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass

    def values(self, name: str) -> list[float]:
        """Every logged value of ``name``, in order."""
        return [m[name] for _, m in self.records if name in m]

    def steps(self, name: str) -> list[int | None]:
        return [s for s, m in self.records if name in m]


class BatchSpy(Callback):
    """Records ``(epoch, batch_idx, indices)`` of every training batch, the sampler's partition seen at each
    batch start (``labels`` tensor, ``members`` list or None) and the number of ``training_step`` calls."""

    def __init__(self):
        self.batches: list[tuple[int, int, torch.Tensor]] = []
        self.partitions: list[Any] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.batches.append((trainer.current_epoch, batch_idx, batch["indices"].detach().cpu().clone()))
        sampler = trainer.datamodule.sampler
        if sampler.members is not None:
            part = [m.clone() for m in sampler.members]
        elif sampler.labels is not None:
            part = sampler.labels.clone()
        else:
            part = None
        self.partitions.append(part)


def params_of(*modules: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for m in modules for p in m.parameters()]


def assert_same_tensors(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor], what: str = "parameters") -> None:
    assert len(a) == len(b), f"{what}: {len(a)} vs {len(b)} tensors"
    for i, (x, y) in enumerate(zip(a, b)):
        assert x.shape == y.shape, f"{what}[{i}]: shapes {tuple(x.shape)} vs {tuple(y.shape)}"
        if not torch.equal(x, y):
            diff = (x - y).abs().max().item()
            raise AssertionError(f"{what}[{i}] differ (max abs diff {diff:.3e})")


class C4ModuleStub:
    """What C4's penalty needs from an algorithm (``C4Module``): the critics, the backup pair and the logging
    question, without a LightningModule."""

    def __init__(self, critic, critic_target):
        self.critic, self.critic_target = critic, critic_target

    def will_log(self) -> bool:
        return True

    def backup_network(self):
        return self.critic_target

    def backup_input(self, next_obs, next_actions):
        return next_obs, next_actions
