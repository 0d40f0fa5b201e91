"""Cluster scatter plots for TensorBoard and notebooks.

Figures are built with ``matplotlib.figure.Figure`` and drawn on an Agg canvas directly, without pyplot, so
they work headless, never touch the global backend and are freed with the object.
"""

from __future__ import annotations

import matplotlib
import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = ["cluster_scatter_figure", "figure_to_image"]


def _np(x, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    if not isinstance(x, np.ndarray):
        raise ValueError(f"{name} must be a numpy array or torch tensor, got {type(x).__name__}")
    return x


def _scatter_by(
    ax, pts: np.ndarray, codes: np.ndarray, names: list[str], title: str, palette: str, sizes: list[int] | None
) -> None:
    cmap = matplotlib.colormaps[palette]
    colours = [cmap(i % cmap.N) for i in range(len(names))]
    for i, name in enumerate(names):
        m = codes == i
        if m.any():
            count = int(sizes[i]) if sizes is not None else int(m.sum())
            ax.scatter(
                pts[m, 0],
                pts[m, 1],
                s=4,
                alpha=0.6,
                color=colours[i],
                label=f"{name} ({count:,})",
                rasterized=True,
                linewidths=0,
            )
    ax.set_title(title)
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    if len(names) <= 20:
        ax.legend(loc="best", fontsize=7, markerscale=3, frameon=False)


CLUSTER_PALETTE, SOURCE_PALETTE = "Dark2", "tab10"
"""Different palettes for the two panels, so "cluster 0" and "source 0" never share a colour by accident."""


def cluster_scatter_figure(
    points_2d,
    labels,
    sources=None,
    source_names=None,
    max_points: int = 5000,
    seed: int = 0,
    cluster_sizes=None,
    source_sizes=None,
    title: str | None = None,
) -> Figure:
    """Two panels of the same 2-D points: coloured by cluster label and coloured by source dataset.

    Args:
        points_2d: ``[N, 2]`` (e.g. from :func:`c4_lightning.c4.clustering.project_2d`).
        labels: ``[N]`` int cluster labels (>= 0).
        sources: ``[N]`` int source indices, or None (the second panel then shows every point as one source).
        source_names: names indexed by source id (default ``source 0``, ``source 1``...).
        max_points: at most this many points are drawn, a uniform subsample drawn with ``seed``.
        cluster_sizes / source_sizes: the true sizes to print in the legends (e.g. over the whole dataset when the
            points are a subsample); default: the number of points given.
        title: the figure's title (e.g. which refit, at which update, in which feature space).
    """
    pts, lab = _np(points_2d, "points_2d"), _np(labels, "labels")
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise ValueError(f"points_2d must have shape [N, 2], got {pts.shape}")
    n = pts.shape[0]
    if lab.shape != (n,) or not np.issubdtype(lab.dtype, np.integer) or (n and lab.min() < 0):
        raise ValueError(f"labels must be non-negative ints of shape ({n},), got dtype {lab.dtype} shape {lab.shape}")
    if sources is None:
        src = np.zeros(n, dtype=np.int64)
        names = list(source_names) if source_names is not None else ["all data"]
    else:
        src = _np(sources, "sources")
        if src.shape != (n,) or not np.issubdtype(src.dtype, np.integer) or (n and src.min() < 0):
            raise ValueError(
                f"sources must be non-negative ints of shape ({n},), got dtype {src.dtype} shape {src.shape}"
            )
        n_src = int(src.max()) + 1 if n else 0
        names = list(source_names) if source_names is not None else [f"source {i}" for i in range(n_src)]
        if len(names) < n_src:
            raise ValueError(
                f"source_names has {len(names)} names but sources go up to {n_src - 1}; give one name per source id"
            )
    if isinstance(max_points, bool) or not isinstance(max_points, int) or max_points < 1:
        raise ValueError(f"max_points must be a positive int, got {max_points!r}")
    n_clusters = int(lab.max()) + 1 if lab.size else 0
    if cluster_sizes is None:
        cluster_sizes = np.bincount(lab, minlength=n_clusters).tolist()
    if source_sizes is None:
        source_sizes = np.bincount(src, minlength=len(names)).tolist()
    if n > max_points:
        idx = np.sort(np.random.default_rng(seed).choice(n, size=max_points, replace=False))
        pts, lab, src = pts[idx], lab[idx], src[idx]

    fig = Figure(figsize=(10, 4.8), dpi=80)
    FigureCanvasAgg(fig)
    ax_c, ax_s = fig.subplots(1, 2, sharex=True, sharey=True)
    _scatter_by(
        ax_c, pts, lab, [f"cluster {k}" for k in range(n_clusters)], "by cluster", CLUSTER_PALETTE, list(cluster_sizes)
    )
    _scatter_by(ax_s, pts, src, names, "by source dataset", SOURCE_PALETTE, list(source_sizes))
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def figure_to_image(fig: Figure) -> np.ndarray:
    """Render ``fig`` to an RGB ``uint8`` array ``[H, W, 3]`` (``SummaryWriter.add_image(..., dataformats="HWC")``)."""
    if not isinstance(fig, Figure):
        raise ValueError(f"fig must be a matplotlib Figure, got {type(fig).__name__}")
    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()
