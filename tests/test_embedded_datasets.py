"""The Hopper datasets shipped in datasets/ load through the public loader and are what their names say."""

from __future__ import annotations

import pytest
import torch

from c4_lightning.data.minari import EMBEDDED_DATASETS_DIR, list_local_datasets, load_transitions

NAMES = ["random", "medium", "medium-replay", "expert", "medium-expert", "random-medium-expert-10k"]
MAX_BYTES = 10 * 1024 * 1024


@pytest.fixture(autouse=True)
def _embedded_only(monkeypatch, tmp_path):
    monkeypatch.delenv("C4_DATASETS_PATH", raising=False)
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "empty-cache"))


def test_every_embedded_dataset_is_listed_and_small():
    local = list_local_datasets()
    for name in NAMES:
        assert f"hopper/{name}-v0" in local, f"hopper/{name}-v0 missing from {local}"
        folder = EMBEDDED_DATASETS_DIR / "hopper" / f"{name}-v0"
        size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
        assert 0 < size < MAX_BYTES, f"{folder} is {size} bytes"


@pytest.mark.parametrize("name", NAMES)
def test_embedded_dataset_loads_with_hopper_shapes(name):
    t = load_transitions(f"hopper/{name}")
    assert t.obs_dim == 11 and t.act_dim == 3
    assert t.env_id is not None and t.env_id.startswith("Hopper")
    assert t.ref_scores == pytest.approx((-20.272305, 3234.3))
    assert torch.isfinite(t.observations).all() and torch.isfinite(t.rewards).all()
    assert float(t.actions.abs().max()) <= 1.0 + 1e-6
    # within an episode the next observation is the following step's observation
    same = t.episode_ids[1:] == t.episode_ids[:-1]
    assert torch.equal(t.next_observations[:-1][same], t.observations[1:][same])
    assert torch.equal(t.next_actions[:-1][same], t.actions[1:][same])


def test_mixture_has_exactly_10k_transitions_in_thirds_from_three_sources():
    t = load_transitions("hopper/random-medium-expert-10k")
    assert len(t) == 10_000
    assert len(t.source_names) == 3
    assert [n.split("/")[-1].split("-v")[0] for n in t.source_names] == ["random", "medium", "expert"]
    counts = torch.bincount(t.sources, minlength=3).tolist()
    assert sorted(counts) == [3333, 3333, 3334]
    # every episode comes from one source
    for ep in torch.unique(t.episode_ids)[:50]:
        assert torch.unique(t.sources[t.episode_ids == ep]).numel() == 1


def test_returns_are_ordered_random_medium_expert():
    def mean_episode_return(name):
        t = load_transitions(f"hopper/{name}")
        sums = torch.zeros(int(t.episode_ids.max()) + 1).index_add_(0, t.episode_ids, t.rewards)
        return float(sums[torch.unique(t.episode_ids)].mean())

    r, m, e = (mean_episode_return(n) for n in ("random", "medium", "expert"))
    assert r < m <= e
