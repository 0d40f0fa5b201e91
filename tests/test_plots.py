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


def test_legends_count_every_row_and_the_panels_use_different_palettes():
    rng = np.random.default_rng(1)
    labels = np.repeat([0, 1, 2], [5000, 2000, 1000])
    sources = np.repeat([0, 1], [6000, 2000])
    fig = cluster_scatter_figure(
        rng.normal(size=(8000, 2)),
        labels,
        sources,
        ["random", "expert"],
        max_points=500,
        title="C4 partition 2 at update 3000",
    )
    by_cluster = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    by_source = [t.get_text() for t in fig.axes[1].get_legend().get_texts()]
    assert by_cluster == ["cluster 0 (5,000)", "cluster 1 (2,000)", "cluster 2 (1,000)"]  # true sizes, not drawn
    assert by_source == ["random (6,000)", "expert (2,000)"]
    cluster_colours = {tuple(np.round(c.get_facecolor()[0][:3], 3)) for c in fig.axes[0].collections}
    source_colours = {tuple(np.round(c.get_facecolor()[0][:3], 3)) for c in fig.axes[1].collections}
    assert not cluster_colours & source_colours
    assert fig._suptitle.get_text() == "C4 partition 2 at update 3000"


def test_images_reach_any_logger(tmp_path):
    from unittest import mock

    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    from c4_lightning.training.images import log_image

    image = np.zeros((20, 30, 3), dtype=np.uint8)
    image[5:10, 5:10] = 200
    csv = CSVLogger(tmp_path, name="csv", version=0)
    tb = TensorBoardLogger(tmp_path, name="tb", version=0)
    with mock.patch.object(type(tb.experiment), "add_image") as add_image:
        done = log_image([csv, tb], "c4/clusters", image, step=7)
    add_image.assert_called_once()
    assert add_image.call_args.args[:3] == ("c4/clusters", image, 7)
    png = tmp_path / "csv" / "version_0" / "images" / "c4_clusters_step7.png"
    assert done == [str(png), "tensorboard"] and png.is_file()
    import matplotlib.image

    assert matplotlib.image.imread(png).shape[:2] == (20, 30)
