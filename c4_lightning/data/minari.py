"""Find, load and convert Minari datasets into :class:`Transitions`.

Search order for a dataset id:

1. the project's embedded ``datasets/`` folder (``EMBEDDED_DATASETS_DIR``, or the folder
   named by the environment variable ``C4_DATASETS_PATH``),
2. the local Minari cache (``MINARI_DATASETS_PATH`` or ``~/.minari/datasets``),
3. ``minari.load_dataset(id, download=True)`` where a network exists.

Both local roots use Minari's layout ``<root>/<namespace>/<name>-v<N>/data/`` holding
``metadata.json`` and the data file (``main_data.hdf5`` for the HDF5 format). An id
without ``-vN`` means the highest version found locally.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from c4_lightning.data.errors import DatasetError
from c4_lightning.data.scores import reference_scores
from c4_lightning.data.transitions import Transitions, check_finite, mix, subsample_episodes

EMBEDDED_DATASETS_DIR = Path(__file__).resolve().parents[2] / "datasets"
DATASETS_PATH_ENV = "C4_DATASETS_PATH"

_VERSION_RE = re.compile(r"^(?P<base>.+)-v(?P<version>\d+)$")
_ENV_FOR_FAMILY = {
    "hopper": "Hopper-v5",
    "halfcheetah": "HalfCheetah-v5",
    "walker2d": "Walker2d-v5",
    "ant": "Ant-v5",
}


def embedded_datasets_dir() -> Path:
    """The embedded datasets folder: ``$C4_DATASETS_PATH`` if set, else the repository's ``datasets/``."""
    override = os.environ.get(DATASETS_PATH_ENV)
    return Path(override).expanduser() if override else EMBEDDED_DATASETS_DIR


def minari_cache_dir() -> Path:
    """Root of the local Minari cache (``MINARI_DATASETS_PATH`` or ``~/.minari/datasets``)."""
    override = os.environ.get("MINARI_DATASETS_PATH")
    if override:
        return Path(override).expanduser()
    return Path.home() / ".minari" / "datasets"


def _scan_root(root: Path) -> dict[str, Path]:
    """``{dataset_id: <version folder>}`` for every ``.../<name>-vN/data/metadata.json`` under root."""
    found: dict[str, Path] = {}
    if not root.is_dir():
        return found
    for dirpath, dirnames, _ in os.walk(root):
        here = Path(dirpath)
        if "data" in dirnames and (here / "data" / "metadata.json").is_file() and here != root:
            rel = here.relative_to(root).as_posix()
            if _VERSION_RE.match(rel):
                found[rel] = here
            dirnames.clear()  # a dataset folder holds no nested datasets
            continue
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
    return found


def _split_version(dataset_id: str) -> tuple[str, int | None]:
    m = _VERSION_RE.match(dataset_id)
    if m:
        return m.group("base"), int(m.group("version"))
    return dataset_id, None


def local_dataset_paths() -> dict[str, tuple[Path, str]]:
    """``{dataset_id: (version folder, 'embedded' | 'cache')}``; embedded copies win over cached ones."""
    out: dict[str, tuple[Path, str]] = {}
    for dataset_id, path in _scan_root(minari_cache_dir()).items():
        out[dataset_id] = (path, "cache")
    for dataset_id, path in _scan_root(embedded_datasets_dir()).items():
        out[dataset_id] = (path, "embedded")
    return out


def list_local_datasets() -> list[str]:
    """Sorted ids (with ``-vN``) of the datasets available without a network (embedded and cached)."""
    return sorted(local_dataset_paths(), key=lambda d: (_split_version(d)[0], _split_version(d)[1] or 0))


def _collect_command(dataset_id: str) -> str:
    base, _ = _split_version(dataset_id)
    namespace = base.split("/")[0] if "/" in base else base
    env = _ENV_FOR_FAMILY.get(namespace.lower(), "<Env>")
    name = namespace if "/" in base else "<name>"
    return (
        f"c4-collect train --env {env} --out-dir runs/collect/{name} && "
        f"c4-collect record --env {env} --out-dir runs/collect/{name} --datasets-dir datasets"
    )


def _unknown_dataset_message(dataset_id: str, reason: str) -> str:
    local = list_local_datasets()
    listing = "\n  ".join(local) if local else "(none)"
    return (
        f"dataset '{dataset_id}' was not found: {reason}.\n"
        f"Datasets available locally (embedded folder {embedded_datasets_dir()} and Minari cache "
        f"{minari_cache_dir()}):\n  {listing}\n"
        f"Use one of these ids, or make the dataset with:\n  {_collect_command(dataset_id)}"
    )


def locate_dataset(dataset_id: str) -> tuple[str, Path] | None:
    """(full id, version folder) of the local copy of ``dataset_id``, or None when there is none.

    An id without ``-vN`` resolves to the highest version found locally.
    """
    paths = local_dataset_paths()
    base, version = _split_version(dataset_id)
    if version is not None:
        return (dataset_id, paths[dataset_id][0]) if dataset_id in paths else None
    versions = [(v, d) for d in paths for b, v in [_split_version(d)] if b == base and v is not None]
    if not versions:
        return None
    _, full_id = max(versions)
    return full_id, paths[full_id][0]


def _data_file(data_dir: Path) -> Path:
    for name in ("main_data.hdf5",):
        if (data_dir / name).exists():
            return data_dir / name
    return data_dir


def open_dataset_folder(version_dir: Path | str):
    """``minari.MinariDataset`` for a version folder (``.../<name>-vN``) or its ``data`` folder."""
    import minari

    version_dir = Path(version_dir)
    data_dir = version_dir if version_dir.name == "data" else version_dir / "data"
    meta = data_dir / "metadata.json"
    if not meta.is_file():
        raise DatasetError(
            f"no Minari dataset at {version_dir}: {meta} is missing; re-create the dataset "
            f"(c4-collect record) or point at a folder that holds data/metadata.json"
        )
    try:
        metadata = json.loads(meta.read_text())
    except (OSError, ValueError) as err:
        raise DatasetError(
            f"corrupt dataset metadata file {meta} ({err}); delete {version_dir} and re-create it "
            f"(c4-collect record) or download it again"
        ) from err
    spaces = isinstance(metadata, dict) and (
        all(isinstance(metadata.get(k), str) for k in ("observation_space", "action_space"))
        or isinstance(metadata.get("env_spec"), str)
    )
    if not spaces:  # Minari needs the spaces (or the env spec that gives them) and fails with a bare assert
        held = sorted(metadata) if isinstance(metadata, dict) else type(metadata).__name__
        raise DatasetError(
            f"dataset metadata file {meta} names neither observation_space and action_space nor env_spec (it holds "
            f"{held or 'nothing'}): the dataset's spaces are unknown; re-create it (c4-collect record) or restore "
            f"its metadata.json"
        )
    try:
        return minari.MinariDataset(data_dir)
    except Exception as err:  # minari raises ValueError/KeyError/OSError on broken folders
        raise DatasetError(
            f"cannot open the Minari dataset in {data_dir} ({type(err).__name__}: {err}); delete "
            f"{version_dir} and re-create it (c4-collect record) or download it again"
        ) from err


def resolve_dataset(dataset_id: str, download: bool | None = None):
    """Return a ``minari.MinariDataset`` for ``dataset_id``: embedded -> local cache -> download.

    ``download=None`` (default) tries ``minari.load_dataset(id, download=True)`` when no local
    copy exists and turns a failure (e.g. no network) into a :class:`DatasetError`;
    ``download=False`` never tries; ``download=True`` also tries.
    """
    if not isinstance(dataset_id, str) or not dataset_id.strip():
        raise DatasetError(f"dataset_id must be a non-empty string, got {dataset_id!r}")
    found = locate_dataset(dataset_id)
    if found is not None:
        return open_dataset_folder(found[1])
    if download is False:
        raise DatasetError(_unknown_dataset_message(dataset_id, "no local copy and download=False"))
    if _split_version(dataset_id)[1] is None:  # Minari's remote ids are versioned; its parser fails on others
        raise DatasetError(
            _unknown_dataset_message(
                dataset_id,
                "no local copy, and a remote Minari id names its version (namespace/name-vN, e.g. "
                "mujoco/hopper/medium-v0)",
            )
        )
    import minari

    try:
        return minari.load_dataset(dataset_id, download=True)
    except Exception as err:  # network, hub or import failures all mean "not available here"
        raise DatasetError(
            _unknown_dataset_message(
                dataset_id,
                f"no local copy, and downloading it failed "
                f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})",
            )
        ) from err


def _metadata(dataset) -> dict[str, Any]:
    try:
        return dict(dataset.storage.metadata)
    except Exception:
        return {}


def _decode_json_list(value: Any) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return [value]
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    return None


def _as_2d(x: Any, what: str, episode: int) -> np.ndarray:
    if isinstance(x, (dict, tuple, list)) and not isinstance(x, np.ndarray):
        raise DatasetError(
            f"episode {episode}: {what} are a {type(x).__name__} (Dict/Tuple space); only flat Box "
            f"spaces are supported; flatten the space when recording the dataset"
        )
    arr = np.asarray(x)
    if arr.ndim == 1:
        arr = arr[:, None]
    elif arr.ndim > 2:
        arr = arr.reshape(arr.shape[0], -1)
    return arr


def episodes_to_transitions(dataset, dataset_id: str | None = None) -> Transitions:
    """Convert a ``minari.MinariDataset`` into :class:`Transitions` (D4RL q-learning layout).

    Per episode of length T (observations T+1): rows t = 0..T-1 with
    ``next_observations[t] = observations[t+1]``, ``terminals = terminations``,
    ``timeouts = truncations`` (and 1 at a last step that carries neither flag, so it
    bootstraps), ``next_actions[t] = actions[t+1]`` and, at t = T-1, ``actions[T-1]``.
    Sources come from ``infos['source']`` with names from metadata ``source_names``;
    without them every row's source is the dataset id.
    """
    dataset_id = dataset_id or getattr(dataset, "id", None) or "dataset"
    meta = _metadata(dataset)
    data_dir = Path(getattr(dataset.storage, "data_path", "."))
    data_file = _data_file(data_dir)
    meta_names = _decode_json_list(meta.get("source_names"))

    chunks: dict[str, list[np.ndarray]] = {
        k: [] for k in ("obs", "next_obs", "act", "next_act", "rew", "term", "trunc", "last", "ep", "step", "src")
    }
    has_source = None
    try:
        for e, episode in enumerate(dataset.iterate_episodes()):
            obs = _as_2d(episode.observations, "observations", e)
            act = _as_2d(episode.actions, "actions", e)
            rew = np.asarray(episode.rewards, dtype=np.float64).reshape(-1)
            term = np.asarray(episode.terminations).reshape(-1).astype(bool)
            trunc = np.asarray(episode.truncations).reshape(-1).astype(bool)
            T = rew.shape[0]
            if T == 0:
                continue
            if obs.shape[0] != T + 1 or act.shape[0] != T or term.shape[0] != T or trunc.shape[0] != T:
                raise DatasetError(
                    f"episode {e} of {dataset_id} is malformed: {obs.shape[0]} observations, {act.shape[0]} "
                    f"actions, {T} rewards, {term.shape[0]} terminations, {trunc.shape[0]} truncations "
                    f"(expected T+1 observations and T of the rest); re-create the dataset"
                )
            last = np.zeros(T, dtype=bool)
            last[-1] = True
            timeouts = trunc.copy()
            if not term[-1]:
                timeouts[-1] = True
            infos = episode.infos if isinstance(episode.infos, dict) else {}
            ep_has_source = "source" in infos
            if has_source is None:
                has_source = ep_has_source
            elif has_source != ep_has_source:
                raise DatasetError(
                    f"episode {e} of {dataset_id} {'has' if ep_has_source else 'lacks'} infos['source'] "
                    f"unlike earlier episodes; re-create the dataset with source labels on every episode"
                )
            if ep_has_source:
                src = np.asarray(infos["source"]).reshape(-1)[:T].astype(np.int64)
                if src.shape[0] != T:
                    raise DatasetError(
                        f"episode {e} of {dataset_id}: infos['source'] has {src.shape[0]} entries for "
                        f"{T} steps; re-create the dataset"
                    )
            else:
                src = np.zeros(T, dtype=np.int64)
            chunks["obs"].append(obs[:-1])
            chunks["next_obs"].append(obs[1:])
            chunks["act"].append(act)
            chunks["next_act"].append(np.concatenate([act[1:], act[-1:]], axis=0))
            chunks["rew"].append(rew)
            chunks["term"].append(term)
            chunks["trunc"].append(timeouts)
            chunks["last"].append(last)
            chunks["ep"].append(np.full(T, e, dtype=np.int64))
            chunks["step"].append(np.arange(T, dtype=np.int64))
            chunks["src"].append(src)
    except DatasetError:
        raise
    except Exception as err:  # h5py OSError/KeyError on truncated or damaged files
        raise DatasetError(
            f"cannot read dataset '{dataset_id}' from {data_file} ({type(err).__name__}: {err}); the file "
            f"looks corrupt: delete {data_dir.parent} and re-create it (c4-collect record) or download it again"
        ) from err
    if not chunks["obs"]:
        raise DatasetError(f"dataset '{dataset_id}' at {data_dir} holds no steps; re-create it")

    def cat(key: str, dtype) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(np.concatenate(chunks[key]), dtype=dtype))

    sources = cat("src", np.int64)
    if has_source:
        n_names = int(sources.max()) + 1
        if meta_names is not None and len(meta_names) >= n_names:
            names = meta_names
        elif meta_names is not None:
            raise DatasetError(
                f"dataset '{dataset_id}': infos['source'] goes up to {n_names - 1} but metadata source_names "
                f"lists only {len(meta_names)} names; re-create the dataset"
            )
        else:
            names = [f"{dataset_id}#{k}" for k in range(n_names)]
        if int(sources.min()) < 0:
            raise DatasetError(f"dataset '{dataset_id}': infos['source'] holds negative labels; re-create the dataset")
    else:
        names = [dataset_id]

    env_spec = getattr(dataset, "env_spec", None)
    env_id = getattr(env_spec, "id", None) if env_spec is not None else None
    ref_min, ref_max = meta.get("ref_min_score"), meta.get("ref_max_score")
    if ref_min is None or ref_max is None:
        ref = reference_scores(env_id) if env_id else None
        ref_min, ref_max = ref if ref is not None else (None, None)

    return Transitions(
        observations=cat("obs", np.float32),
        actions=cat("act", np.float32),
        rewards=cat("rew", np.float32),
        next_observations=cat("next_obs", np.float32),
        next_actions=cat("next_act", np.float32),
        terminals=cat("term", np.float32),
        timeouts=cat("trunc", np.float32),
        last_steps=cat("last", np.float32),
        episode_ids=cat("ep", np.int64),
        steps=cat("step", np.int64),
        sources=sources,
        source_names=names,
        env_id=env_id,
        ref_min_score=None if ref_min is None else float(ref_min),
        ref_max_score=None if ref_max is None else float(ref_max),
        dataset_ids=[dataset_id],
    )


def load_dataset_transitions(dataset_id: str, download: bool | None = None) -> Transitions:
    """Resolve one id and convert it in full (no subsampling), checked for NaN/Inf."""
    dataset = resolve_dataset(dataset_id, download=download)
    full_id = getattr(dataset, "id", None) or dataset_id
    return check_finite(episodes_to_transitions(dataset, full_id), full_id)


def _as_id_list(dataset_id: str | Sequence[str]) -> list[str]:
    ids = [dataset_id] if isinstance(dataset_id, str) else list(dataset_id)
    if not ids:
        raise DatasetError("dataset_id is an empty list; give at least one dataset id")
    return ids


def combine_loaded(
    parts: Sequence[Transitions],
    shares: Sequence[float] | None = None,
    max_transitions: int | None = None,
    subsample_seed: int = 0,
) -> Transitions:
    """One loaded dataset subsampled to ``max_transitions``, or several mixed (see :func:`mix`)."""
    parts = list(parts)
    if len(parts) == 1:
        if shares is not None and len(shares) != 1:
            raise DatasetError(f"shares has {len(shares)} entries but one dataset is given; drop shares")
        t = parts[0]
        return t if max_transitions is None else subsample_episodes(t, max_transitions, subsample_seed)
    return mix(parts, shares=shares, total=max_transitions, seed=subsample_seed)


def load_transitions(
    dataset_id: str | Sequence[str],
    shares: Sequence[float] | None = None,
    max_transitions: int | None = None,
    subsample_seed: int = 0,
    download: bool | None = None,
) -> Transitions:
    """Load one dataset id (optionally subsampled to ``max_transitions`` whole episodes) or a mixture
    of several ids (equal or given ``shares``; ``max_transitions`` is the mixture's total)."""
    ids = _as_id_list(dataset_id)
    parts = [load_dataset_transitions(i, download=download) for i in ids]
    out = combine_loaded(parts, shares, max_transitions, subsample_seed)
    return check_finite(out, "+".join(ids))
