"""Shared fixtures: small Minari datasets with known values in temporary folders.

``toy_minari`` points ``MINARI_DATASETS_PATH`` (the Minari cache) and ``C4_DATASETS_PATH``
(the embedded folder) at a session-wide set of coded datasets (see tests/minari_fixtures.py);
``minari_dirs`` points them at fresh empty folders for tests that write their own.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
# No dataset hub is reachable in CI: remote Minari loads fail at once instead of retrying for ~25 s (the download
# path itself is tested with minari.load_dataset replaced). Subprocesses of the tests inherit it.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # the Ray launcher test starts a local Ray: no reporting

from minari_fixtures import DEFAULT_EPISODES, build_minari_dataset  # noqa: E402

# Episodes of the second coded dataset (codes start at episode 100 so rows are traceable).
OTHER_EPISODES = [(4, "trunc"), (9, "term"), (2, "term"), (5, "trunc")]
# Per-episode source labels of the labelled mixture dataset (names: "alpha", "beta", "gamma").
LABELLED_SOURCES = [0, 1, 0, 2, 1, 1]


@pytest.fixture(scope="session")
def toy_minari_roots(tmp_path_factory):
    """Build the coded datasets once per session; returns their two roots."""
    base = tmp_path_factory.mktemp("minari")
    cache, embedded = base / "cache", base / "embedded"
    build_minari_dataset(cache, "toy/mixed-v0", DEFAULT_EPISODES)
    build_minari_dataset(cache, "toy/other-v0", OTHER_EPISODES, ep_base=100)
    build_minari_dataset(
        embedded,
        "toy/labelled-v0",
        DEFAULT_EPISODES,
        ep_base=200,
        sources=LABELLED_SOURCES,
        source_names=["alpha", "beta", "gamma"],
        ref_scores=(-5.0, 50.0),
    )
    # a longer single dataset for datamodule/sampler tests (N = 300)
    build_minari_dataset(embedded, "toy/long-v0", [(30, "trunc")] * 6 + [(20, "term")] * 6, ep_base=300)
    return SimpleNamespace(cache=cache, embedded=embedded)


@pytest.fixture
def toy_minari(toy_minari_roots, monkeypatch):
    """Environment pointed at the session's coded datasets (cache + embedded)."""
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(toy_minari_roots.cache))
    monkeypatch.setenv("C4_DATASETS_PATH", str(toy_minari_roots.embedded))
    return toy_minari_roots


@pytest.fixture
def minari_dirs(tmp_path, monkeypatch):
    """Environment pointed at fresh, empty cache and embedded folders."""
    cache, embedded = tmp_path / "cache", tmp_path / "embedded"
    cache.mkdir()
    embedded.mkdir()
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(cache))
    monkeypatch.setenv("C4_DATASETS_PATH", str(embedded))
    return SimpleNamespace(cache=cache, embedded=embedded)


@pytest.fixture(autouse=True)
def _one_thread():
    """Tests run torch on one thread (CI machines have 2 cores; timings never matter in tests)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
