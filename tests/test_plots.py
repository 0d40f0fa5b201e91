import numpy as np
import pytest

from c4_lightning.c4.plots import cluster_scatter_figure, figure_to_image


def test_figure_two_panels_and_image():
    rng = np.random.default_rng(0)
    pts = rng.normal(size=(8000, 2))
    labels = rng.integers(0, 3, size=8000)
    sources = rng.integers(0, 2, size=8000)
    fig = cluster_scatter_figure(pts, labels, sources, ["random", "expert"], max_points=1000)
    assert len(fig.axes) == 2
    drawn = sum(len(c.get_offsets()) for c in fig.axes[0].collections)
    assert drawn == 1000  # subsampled
    img = figure_to_image(fig)
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
    w, h = fig.canvas.get_width_height()
    assert img.shape[:2] == (h, w)
    assert img.std() > 0  # something was drawn


def test_figure_without_sources_and_errors():
    fig = cluster_scatter_figure(np.zeros((10, 2)), np.arange(10) % 2)
    assert len(fig.axes) == 2
    assert figure_to_image(fig).shape[2] == 3
    with pytest.raises(ValueError, match="points_2d"):
        cluster_scatter_figure(np.zeros((10, 3)), np.zeros(10, dtype=int))
    with pytest.raises(ValueError, match="labels"):
        cluster_scatter_figure(np.zeros((10, 2)), np.zeros(9, dtype=int))
    with pytest.raises(ValueError, match="source_names"):
        cluster_scatter_figure(np.zeros((10, 2)), np.zeros(10, dtype=int), np.arange(10) % 3, ["a"])
