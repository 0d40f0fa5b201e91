"""Writing datasets: ids and names, Minari's writer, the compact HDF5 rewrite and the reload check."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np

from c4_lightning.collect._progress import progress_bar
from c4_lightning.data.errors import DatasetError

MAX_DATASET_MB = 10.0
DATASET_VERSION = 0
# how the files are written (part of every dataset's plan: changing it invalidates old datasets)
STORAGE_LAYOUT = "hdf5-v110 contiguous, gzip4+shuffle from 1KiB, float32 observations/rewards"
_GZIP_MIN_BYTES = 1024


def package_version(name: str) -> str | None:
    """The installed version of distribution ``name``, None when it is not installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def size_tag(n: int) -> str:
    """10_000 -> '10k', 1_000_000 -> '1m', 2500 -> '2500'."""
    if n % 1_000_000 == 0:
        return f"{n // 1_000_000}m"
    if n % 1000 == 0:
        return f"{n // 1000}k"
    return str(n)


def mixture_name(n: int) -> str:
    """The name of the random/medium/expert mixture of ``n`` transitions, e.g. ``random-medium-expert-10k``."""
    return f"random-medium-expert-{size_tag(n)}"


def dataset_id(namespace: str, name: str) -> str:
    return f"{namespace}/{name}-v{DATASET_VERSION}"


def dir_bytes(path: Path) -> int:
    """Bytes on disk of every file under ``path``."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def compact_hdf5(path: str | Path, progress: bool = True) -> None:
    """Rewrite a Minari HDF5 file compactly, readable by plain ``minari.MinariDataset``.

    Minari writes every per-episode array chunked and resizable (one chunk index each, ~15 KB per
    episode). The copy keeps every group, array and attribute but writes HDF5 1.10-format objects
    without modification times, stores small arrays contiguously and compresses arrays of at least
    1 KiB (gzip level 4 with byte shuffling, one chunk per array).
    """
    import h5py

    path = Path(path)
    tmp = path.with_name(path.name + ".compact")

    def copy(src, dst):
        for key, value in src.attrs.items():
            dst.attrs[key] = value
        for key, item in src.items():
            if isinstance(item, h5py.Group):
                copy(item, dst.create_group(key))
                continue
            data = item[()]
            kwargs = {"track_times": False}
            if isinstance(data, np.ndarray) and data.ndim >= 1 and data.nbytes >= _GZIP_MIN_BYTES:
                kwargs.update(chunks=data.shape, compression="gzip", compression_opts=4, shuffle=True)
            dst.create_dataset(key, data=data, dtype=item.dtype, **kwargs)

    with h5py.File(path, "r") as src, h5py.File(tmp, "w", libver=("v110", "v110")) as dst:
        for key, value in src.attrs.items():
            dst.attrs[key] = value
        for name in progress_bar(
            list(src.keys()),
            desc=f"compact {path.parent.parent.name}",
            unit="ep",
            disable=not progress,
            mininterval=1.0,
        ):
            copy(src[name], dst.create_group(name))
    os.replace(tmp, path)


class _MinariRoot:
    """Temporarily point ``MINARI_DATASETS_PATH`` at ``root``."""

    def __init__(self, root: Path):
        self.root, self.old = str(root), None

    def __enter__(self):
        self.old = os.environ.get("MINARI_DATASETS_PATH")
        os.environ["MINARI_DATASETS_PATH"] = self.root

    def __exit__(self, *exc):
        if self.old is None:
            os.environ.pop("MINARI_DATASETS_PATH", None)
        else:
            os.environ["MINARI_DATASETS_PATH"] = self.old


def check_dataset(
    data_dir: str | Path,
    expected_steps: int | None = None,
    expected_episodes: int | None = None,
    max_mb: float | None = None,
    progress: bool = False,
) -> dict:
    """Reload a dataset with ``minari.MinariDataset`` and check it; raises ``DatasetError``.

    Checks: the metadata keys c4_lightning relies on (round-tripped through Minari's storage), episode
    and step counts, array shapes (observations T+1, actions/rewards T), finite values, episode ends
    (only the last step may terminate or truncate, and it does one of them), per-step source labels
    for multi-source datasets, and the size on disk.
    """
    import minari

    data_dir = Path(data_dir)
    try:
        ds = minari.MinariDataset(data_dir)
        meta = ds.storage.metadata
    except Exception as err:  # any reader failure means the dataset is unusable
        raise DatasetError(f"{data_dir} does not load with minari.MinariDataset: {err!r}") from err
    for key in ("ref_min_score", "ref_max_score", "source_names", "provenance", "eval_env_spec", "algorithm_name"):
        if key not in meta:
            raise DatasetError(f"{data_dir}: metadata lacks {key!r}")
    try:
        provenance, sources = json.loads(meta["provenance"]), json.loads(meta["source_names"])
    except (TypeError, json.JSONDecodeError) as err:
        raise DatasetError(f"{data_dir}: provenance/source_names are not JSON: {err}") from err
    steps, episodes, seen_sources = 0, 0, set()
    for ep in progress_bar(
        ds.iterate_episodes(),
        total=ds.total_episodes,
        desc=f"check {data_dir.parent.name}",
        unit="ep",
        disable=not progress,
        mininterval=1.0,
    ):
        t = len(ep.rewards)
        obs, act = np.asarray(ep.observations), np.asarray(ep.actions)
        where = f"{data_dir} episode {ep.id}"
        if (
            t == 0
            or obs.shape[0] != t + 1
            or act.shape[0] != t
            or len(ep.terminations) != t
            or len(ep.truncations) != t
        ):
            raise DatasetError(f"{where}: shapes obs {obs.shape}, actions {act.shape}, rewards ({t},)")
        if not (np.isfinite(obs).all() and np.isfinite(act).all() and np.isfinite(ep.rewards).all()):
            raise DatasetError(f"{where}: non-finite values")
        ends = np.asarray(ep.terminations, bool) | np.asarray(ep.truncations, bool)
        if ends[:-1].any() or not ends[-1]:
            raise DatasetError(f"{where}: the episode must end (terminate or truncate) at its last step only")
        if len(sources) > 1:
            labels = np.asarray((ep.infos or {}).get("source", []))
            if labels.shape != (t + 1,) or labels.min() < 0 or labels.max() >= len(sources):
                raise DatasetError(f"{where}: infos['source'] must hold T+1 labels in [0, {len(sources)})")
            seen_sources.update(int(v) for v in np.unique(labels))
        steps += t
        episodes += 1
    if steps != ds.total_steps or episodes != ds.total_episodes:
        raise DatasetError(
            f"{data_dir}: metadata says {ds.total_steps} steps / {ds.total_episodes} episodes, "
            f"read {steps} / {episodes}"
        )
    if expected_steps is not None and steps != expected_steps:
        raise DatasetError(f"{data_dir}: {steps} steps, expected {expected_steps}")
    if expected_episodes is not None and episodes != expected_episodes:
        raise DatasetError(f"{data_dir}: {episodes} episodes, expected {expected_episodes}")
    if len(sources) > 1 and len(seen_sources) != len(sources):
        raise DatasetError(f"{data_dir}: sources {sorted(seen_sources)} present, expected all of {sources}")
    size = dir_bytes(data_dir.parent)
    if max_mb is not None and size >= max_mb * 1e6:
        raise DatasetError(f"{data_dir.parent} is {size / 1e6:.2f} MB on disk, over the {max_mb:g} MB limit")
    return {"steps": steps, "episodes": episodes, "bytes": size, "provenance": provenance, "source_names": sources}


def write_dataset(
    datasets_dir: str | Path,
    ds_id: str,
    episodes: list,
    *,
    env_id: str,
    ref_min: float,
    ref_max: float,
    algorithm_name: str,
    description: str,
    provenance: dict,
    source_names: list[str],
    max_mb: float = MAX_DATASET_MB,
    size_flag: str = "",
    progress: bool = True,
) -> dict:
    """Write ``episodes`` as Minari dataset ``ds_id`` under ``datasets_dir`` (Minari's own layout).

    The dataset is made in a temporary Minari root inside ``datasets_dir``, compacted, given its
    metadata, reloaded and checked, and only then moved to ``<datasets_dir>/<namespace>/<name>-vN``
    (replacing an existing one). Fails loudly (``SystemExit``) when the files exceed ``max_mb``.
    """
    import gymnasium as gym
    from minari.dataset.minari_storage import MinariStorage
    from minari.utils import create_dataset_from_buffers

    datasets_dir = Path(datasets_dir).resolve()  # Minari's size accounting breaks on relative paths
    datasets_dir.mkdir(parents=True, exist_ok=True)
    final = datasets_dir / ds_id
    env = gym.make(env_id)
    space = env.observation_space
    if not isinstance(space, gym.spaces.Box):
        raise SystemExit(f"c4-collect writes Box observation spaces only, {env_id} has {space}")
    obs_space = gym.spaces.Box(space.low.astype(np.float32), space.high.astype(np.float32), space.shape, np.float32)
    tmp_root = Path(tempfile.mkdtemp(prefix=".c4-collect-", dir=datasets_dir))
    try:
        with _MinariRoot(tmp_root), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*author_email.*")
            create_dataset_from_buffers(
                ds_id,
                progress_bar(episodes, desc=f"write {ds_id}", unit="ep", disable=not progress, mininterval=1.0),
                env=env_id,
                eval_env=env_id,
                algorithm_name=algorithm_name,
                author="c4_lightning c4-collect",
                code_permalink=f"c4_lightning/collect/ (c4_lightning {package_version('c4_lightning')})",
                observation_space=obs_space,
                action_space=env.action_space,
                ref_min_score=float(ref_min),
                ref_max_score=float(ref_max),
                description=description,
                data_format="hdf5",
            )
        env.close()
        data_dir = tmp_root / ds_id / "data"
        compact_hdf5(data_dir / "main_data.hdf5", progress=progress)
        storage = MinariStorage.read(data_dir)
        storage.update_metadata({"source_names": json.dumps(source_names), "provenance": json.dumps(provenance)})
        storage.update_metadata({"dataset_size": storage.get_size()})
        expected = sum(len(e.rewards) for e in episodes)
        summary = check_dataset(data_dir, expected_steps=expected, expected_episodes=len(episodes), progress=progress)
        if summary["bytes"] >= max_mb * 1e6:
            raise SystemExit(
                f"{ds_id} is {summary['bytes'] / 1e6:.2f} MB on disk "
                f"({expected} transitions, {len(episodes)} episodes), over the {max_mb:g} MB limit for embedded "
                f"datasets: lower {size_flag or 'its transition count'}"
            )
        final.parent.mkdir(parents=True, exist_ok=True)
        ns_meta = final.parent / "namespace_metadata.json"
        if not ns_meta.exists():
            ns_meta.write_text(json.dumps({"description": f"Datasets made by c4-collect for {env_id}"}))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp_root / ds_id, final)
        return summary
    except DatasetError as err:
        raise SystemExit(f"writing {ds_id} failed its reload check: {err}") from err
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)
