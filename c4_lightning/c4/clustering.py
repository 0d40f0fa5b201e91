"""C4's partition of the dataset: standardise -> project (PCA) -> Gaussian mixture.

:func:`fit_partition` fits a :class:`ClusterModel` on at most ``fit_subsample`` rows and labels every row in
chunks, so memory stays bounded for millions of transitions with 512-d features. The fitted model is a plain
dataclass of numpy arrays (no pickled sklearn object) that predicts on its own, so it goes into a checkpoint
as ``state_dict()`` and comes back with ``ClusterModel.from_state_dict``.

Features are an ``[N, F]`` array or tensor, or a *row source*: any object with ``shape`` ``(N, F)`` and
``rows(idx) -> [len(idx), F]`` array (e.g. :class:`c4_lightning.c4.features.CriticFeatureRows`, which computes
critic features on demand). With a row source the ``[N, F]`` matrix is never held: the fit subsample is asked
for once and every other row is computed, projected and labelled a block at a time.

Warm start: given the previous partition's labels, the mixture starts from the previous clusters' weights,
means and covariances measured on the *new* projected features of the fit subsample (an M-step from the old
labels), so cluster ``k`` of the new fit is the continuation of the old cluster ``k`` and label ids stay stable.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, fields

import numpy as np
import torch
from sklearn.decomposition import PCA
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture
from sklearn.preprocessing import StandardScaler

__all__ = ["ClusterFitError", "ClusterModel", "raw_features", "fit_partition", "project_2d"]


class ClusterFitError(RuntimeError):
    """The partition could not be fitted (non-finite features, degenerate data, GMM failure, empty cluster)."""


def _to_numpy_2d(x, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        x = (x.float() if x.dtype in (torch.float16, torch.bfloat16) else x).numpy()
    elif not isinstance(x, np.ndarray):
        raise ValueError(f"{name} must be a numpy array or torch tensor of shape [N, F], got {type(x).__name__}")
    if x.ndim != 2:
        raise ValueError(f"{name} must have shape [N, F], got shape {x.shape}")
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise ValueError(f"{name} must be numeric, got dtype {x.dtype}")
    return x


def _is_row_source(x) -> bool:
    return not isinstance(x, (np.ndarray, torch.Tensor)) and callable(getattr(x, "rows", None)) and hasattr(x, "shape")


def _source_shape(src) -> tuple[int, int]:
    shape = tuple(src.shape)
    if len(shape) != 2 or not all(isinstance(v, (int, np.integer)) and v >= 0 for v in shape):
        raise ValueError(f"a row source's shape must be (N, F), got {src.shape!r}")
    return int(shape[0]), int(shape[1])


def _source_rows(src, idx: np.ndarray, f: int) -> np.ndarray:
    out = _to_numpy_2d(src.rows(idx), "rows(idx) of the feature source")
    if out.shape != (len(idx), f):
        raise ValueError(
            f"the feature source returned rows of shape {out.shape} for {len(idx)} indices, expected ({len(idx)}, {f})"
        )
    return out


def _check_pos_int(v, name: str, what: str) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise ValueError(f"{name} must be a positive int ({what}), got {v!r}")
    return int(v)


def raw_features(obs, act) -> np.ndarray:
    """``[obs, act]`` as one float32 array ``[N, obs_dim + act_dim]``: the features of the first partition, made
    before any critic exists. :func:`fit_partition` standardises them."""
    o, a = _to_numpy_2d(obs, "obs"), _to_numpy_2d(act, "act")
    if o.shape[0] != a.shape[0]:
        raise ValueError(f"obs and act must have the same number of rows, got {o.shape[0]} and {a.shape[0]}")
    return np.concatenate([o, a], axis=1).astype(np.float32, copy=False)


_CHUNK = 4096  # rows per projection chunk: [4096, 512] float32 = 8 MiB, stays in cache between the two passes
_NON_FINITE = "features contain NaN or inf; check the critic for divergence before refitting"

_ARRAYS = (
    "scaler_mean",
    "scaler_scale",
    "proj_components",
    "proj_mean",
    "weights",
    "means",
    "covariances",
    "precisions_cholesky",
)


@dataclass(eq=False)
class ClusterModel:
    """A fitted partition: ``z = ((x - scaler_mean) / scaler_scale - proj_mean) @ proj_components.T`` then the
    full-covariance Gaussian mixture on ``z``.

    Shapes (``F`` input features, ``P`` projected dims, ``K`` clusters): ``scaler_mean``/``scaler_scale`` [F],
    ``proj_components`` [P, F] (rows sorted by explained variance when ``pca`` is true; the identity when the
    features were not projected because ``pca_dim >= F``), ``proj_mean`` [F], ``weights`` [K], ``means`` [K, P],
    ``covariances`` / ``precisions_cholesky`` [K, P, P] (sklearn's conventions: ``precision = L @ L.T``).
    """

    n_clusters: int
    scaler_mean: np.ndarray
    scaler_scale: np.ndarray
    proj_components: np.ndarray
    proj_mean: np.ndarray
    weights: np.ndarray
    means: np.ndarray
    covariances: np.ndarray
    precisions_cholesky: np.ndarray
    pca: bool = False
    warm_started: bool = False
    converged: bool = True
    n_iter: int = 0
    seed: int = 0
    n_fit_rows: int = 0

    @property
    def feature_dim(self) -> int:
        return int(self.scaler_mean.shape[0])

    @property
    def projected_dim(self) -> int:
        return int(self.proj_components.shape[0])

    def __post_init__(self) -> None:
        self._folded = None  # cache of _projection(); the arrays of a fitted model are not changed in place

    def _projection(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Standardisation folded into the projection: ``(W float32 [F, P], c float32 [F], bias float64 [P])``
        with ``z = (x - c) @ W - bias``.

        ``((x - m) / s - pm) @ C.T == (x - c) @ (C.T / s[:, None]) - ((m - c) / s + pm) @ C.T`` for any ``c``.
        ``c`` is the scaler mean rounded to float32, so the subtraction happens before the float32 product (no
        cancellation error however large ``|mean| / scale``); ``W`` and ``bias`` are computed in float64 and only
        the big ``[n, F] @ [F, P]`` product runs in float32."""
        if self._folded is None:
            comp_t = self.proj_components.T  # [F, P]
            c = self.scaler_mean.astype(np.float32)
            w = np.ascontiguousarray(comp_t / self.scaler_scale[:, None], dtype=np.float32)
            bias = ((self.scaler_mean - c.astype(np.float64)) / self.scaler_scale + self.proj_mean) @ comp_t
            self._folded = (w, c, np.asarray(bias, dtype=np.float64))
        return self._folded

    def _project_chunk(self, x: np.ndarray) -> np.ndarray:
        w, c, bias = self._projection()
        # float32 rows: one float32 subtraction (cheap: a chunk stays in cache); other dtypes subtract in float64
        xc = x - c if x.dtype == np.float32 else (x - c.astype(np.float64)).astype(np.float32)
        return (xc @ w) - bias  # float32 [n, P] - float64 [P] -> float64 [n, P]

    def transform(self, x, chunk_size: int = _CHUNK) -> np.ndarray:
        """Standardise and project ``x`` [N, F] -> ``[N, P]`` float64, ``chunk_size`` rows at a time.

        Computes ``((x - scaler_mean) / scaler_scale - proj_mean) @ proj_components.T`` as one float32 matrix
        product per chunk with the standardisation folded into the weights (see :meth:`_projection`); no
        float64 copy of ``x`` is made. Agrees with the float64 formula to ~1e-5 standard deviations."""
        chunk_size = _check_pos_int(chunk_size, "chunk_size", "rows per chunk")
        x = _to_numpy_2d(x, "x")
        if x.shape[1] != self.feature_dim:
            raise ValueError(f"x has {x.shape[1]} features but the model was fitted on {self.feature_dim}")
        out = np.empty((x.shape[0], self.projected_dim))
        for s in range(0, x.shape[0], chunk_size):
            out[s : s + chunk_size] = self._project_chunk(x[s : s + chunk_size])
        return out

    def _log_resp_unnorm(self, z: np.ndarray) -> np.ndarray:
        # sklearn's _estimate_log_gaussian_prob ('full') + log weights
        n, p = z.shape
        out = np.empty((n, self.n_clusters))
        for k in range(self.n_clusters):
            lk = self.precisions_cholesky[k]
            y = z @ lk - self.means[k] @ lk
            log_det = np.log(np.diagonal(lk)).sum()
            out[:, k] = -0.5 * (p * math.log(2 * math.pi) + np.einsum("ij,ij->i", y, y)) + log_det
        return out + np.log(self.weights)

    def predict(self, x, chunk_size: int = _CHUNK, check_finite: bool = False) -> np.ndarray:
        """Cluster labels ``int64 [N]`` of the rows of ``x`` [N, F], ``chunk_size`` rows at a time.

        With ``check_finite``, raises :class:`ClusterFitError` if any row has a NaN or inf: a non-finite input
        makes every projected coordinate of its row non-finite (``inf * 0`` is NaN), so the check costs a scan of
        ``[N, P]`` instead of ``[N, F]``."""
        chunk_size = _check_pos_int(chunk_size, "chunk_size", "rows per prediction chunk")
        x = _to_numpy_2d(x, "x")
        if x.shape[1] != self.feature_dim:
            raise ValueError(f"x has {x.shape[1]} features but the model was fitted on {self.feature_dim}")
        labels = np.empty(x.shape[0], dtype=np.int64)
        for s in range(0, x.shape[0], chunk_size):
            z = self._project_chunk(x[s : s + chunk_size])
            if check_finite and not np.isfinite(z).all():
                raise ClusterFitError(_NON_FINITE)
            labels[s : s + chunk_size] = self._log_resp_unnorm(z).argmax(axis=1)
        return labels

    def state_dict(self) -> dict:
        """Plain numpy arrays and python scalars (safe for ``torch.save``/``weights_only`` loading of numpy)."""
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = np.array(v, copy=True) if f.name in _ARRAYS else v
        return out

    @classmethod
    def from_state_dict(cls, state: dict) -> "ClusterModel":
        if not isinstance(state, dict):
            raise ValueError(f"state must be a dict from ClusterModel.state_dict(), got {type(state).__name__}")
        names = {f.name for f in fields(cls)}
        required = {f.name for f in fields(cls) if f.name in _ARRAYS or f.name == "n_clusters"}
        missing, unknown = sorted(required - set(state)), sorted(set(state) - names)
        if missing or unknown:
            raise ValueError(
                f"ClusterModel state has missing keys {missing} and unknown keys {unknown}; "
                "pass the dict produced by ClusterModel.state_dict()"
            )
        kw = {k: (np.asarray(v, dtype=np.float64) if k in _ARRAYS else v) for k, v in state.items()}
        kw["n_clusters"] = int(kw["n_clusters"])
        model = cls(**kw)
        k, p, f = model.n_clusters, model.projected_dim, model.feature_dim
        expected = {
            "scaler_mean": (f,),
            "scaler_scale": (f,),
            "proj_components": (p, f),
            "proj_mean": (f,),
            "weights": (k,),
            "means": (k, p),
            "covariances": (k, p, p),
            "precisions_cholesky": (k, p, p),
        }
        for name, shape in expected.items():
            if getattr(model, name).shape != shape:
                raise ValueError(f"ClusterModel state: {name} has shape {getattr(model, name).shape}, expected {shape}")
        return model


def _scaler_stats(x: np.ndarray, chunk: int) -> tuple[np.ndarray, np.ndarray]:
    """``StandardScaler().fit(x)``'s ``mean_`` and ``scale_`` (float64) without a float64 copy of ``x``: the same
    two-pass variance with its correction term, and the same rule for (near-)constant features (scale 1)."""
    m = x.shape[0]
    mean = x.sum(axis=0, dtype=np.float64) / m
    s1, s2 = np.zeros(x.shape[1]), np.zeros(x.shape[1])
    for s in range(0, m, chunk):
        d = x[s : s + chunk] - mean  # float64 [chunk, F]
        s1 += d.sum(axis=0)
        s2 += np.einsum("ij,ij->j", d, d)
    var = (s2 - s1**2 / m) / m
    eps = np.finfo(np.float64).eps
    constant = var <= m * eps * var + (m * mean * eps) ** 2  # sklearn's _is_constant_feature
    scale = np.sqrt(var)
    scale[constant] = 1.0
    return mean, scale


def _subsample_index(n: int, size: int, seed: int) -> np.ndarray:
    if n <= size:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))


def _warm_start_init(
    model_tf: ClusterModel,
    take_rows,
    idx: np.ndarray,
    z_fit: np.ndarray,
    previous_labels: np.ndarray,
    k: int,
    reg_covar: float,
):
    """Weights, means and precisions of the previous clusters on the new projected features, or None when the
    previous partition does not have exactly ``k`` clusters ``0..k-1`` with at least 2 members each.

    The weights are the previous clusters' shares of all ``N`` rows; means and covariances are measured on the
    fit subsample (rows ``idx``, already projected as ``z_fit``), which is what the mixture is fitted on. A
    cluster with fewer than ``2 * P + 2`` rows in the subsample (a rare one: under ~0.1 % of the data with the
    defaults) is measured on all of its rows instead (``take_rows(indices)`` gives their features), so small
    clusters keep a usable covariance."""
    counts = np.bincount(previous_labels, minlength=k) if previous_labels.min() >= 0 else None
    if counts is None or counts.shape[0] != k or (counts < 2).any():
        return None
    p = model_tf.projected_dim
    lab_fit = previous_labels[idx]
    means, cov = np.zeros((k, p)), np.zeros((k, p, p))
    for c in range(k):
        zc = z_fit[lab_fit == c]
        if zc.shape[0] < min(counts[c], 2 * p + 2):
            zc = model_tf.transform(take_rows(np.flatnonzero(previous_labels == c)))
            if not np.isfinite(zc).all():
                raise ClusterFitError(_NON_FINITE)
        means[c] = zc.mean(0)
        d = zc - means[c]
        cov[c] = d.T @ d / zc.shape[0] + reg_covar * np.eye(p)
    try:
        precisions = np.linalg.inv(cov)
        precisions = 0.5 * (precisions + np.swapaxes(precisions, -1, -2))
        np.linalg.cholesky(precisions)
    except np.linalg.LinAlgError:
        return None
    return counts / counts.sum(), means, precisions


def fit_partition(
    features,
    n_clusters: int = 3,
    pca_dim: int = 32,
    fit_subsample: int = 50_000,
    seed: int = 0,
    previous_labels=None,
    predict_chunk: int = _CHUNK,
    reg_covar: float = 1e-4,
    max_iter: int = 100,
) -> tuple[np.ndarray, ClusterModel]:
    """Partition the rows of ``features`` into ``n_clusters`` clusters.

    Steps: (1) draw at most ``fit_subsample`` rows with ``seed``; (2) standardise them with ``StandardScaler``'s
    statistics (computed without a float64 copy of the rows; (near-)constant features get scale 1); (3) fit
    ``PCA(min(pca_dim, F, n_fit))`` on them (``svd_solver='auto'``: covariance eigendecomposition or randomized
    SVD, whichever sklearn judges cheaper) — skipped (identity projection) when ``pca_dim >= F``; (4) fit
    ``GaussianMixture(n_clusters, covariance_type='full', random_state=seed)`` on the projected subsample; (5)
    label all ``N`` rows, ``predict_chunk`` at a time (float32 projection with the standardisation folded in; a
    NaN/inf anywhere raises :class:`ClusterFitError`).

    ``features``: ``[N, F]`` numpy array or tensor, or a row source (``shape`` ``(N, F)`` and ``rows(idx)``; see
    the module docstring). A row source is asked for the subsample once, and for every other row once, in
    blocks of ``max(predict_chunk, source.block_rows)`` rows (``block_rows`` optional).

    Warm start: if ``previous_labels`` (int [N]) is given and uses exactly the labels ``0..n_clusters-1`` with at
    least 2 rows each, the mixture is initialised from those clusters (weights: their shares of all rows; means
    and covariances on the new projected features of the fit subsample) so label ids persist across refits;
    otherwise the fit is cold (``model.warm_started`` tells which).

    Returns:
        ``(labels int64 [N], ClusterModel)``.

    Raises:
        ValueError: bad arguments (shapes, ``n_clusters < 1``, ``pca_dim < 1``, ...).
        ClusterFitError: non-finite features, fewer distinct points than clusters, a failed GMM fit, or a
            cluster that no row is assigned to.
    """
    k = _check_pos_int(n_clusters, "n_clusters", "number of clusters")
    pca_dim = _check_pos_int(pca_dim, "pca_dim", "projected dimension")
    fit_subsample = _check_pos_int(fit_subsample, "fit_subsample", "rows used to fit")
    predict_chunk = _check_pos_int(predict_chunk, "predict_chunk", "rows per prediction chunk")
    max_iter = _check_pos_int(max_iter, "max_iter", "EM iterations")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    seed = int(seed)
    if isinstance(reg_covar, bool) or not isinstance(reg_covar, (int, float)) or not reg_covar >= 0:
        raise ValueError(f"reg_covar must be a number >= 0 (added to covariance diagonals), got {reg_covar!r}")
    if _is_row_source(features):
        source, x = features, None
        n, f = _source_shape(source)
    else:
        source, x = None, _to_numpy_2d(features, "features")
        n, f = x.shape
    if f < 1:
        raise ValueError("features must have at least one column")
    prev = None
    if previous_labels is not None:
        prev = (
            previous_labels.detach().cpu().numpy()
            if isinstance(previous_labels, torch.Tensor)
            else np.asarray(previous_labels)
        )
        if prev.shape != (n,) or not np.issubdtype(prev.dtype, np.integer):
            raise ValueError(
                f"previous_labels must be an int array of shape ({n},) (one label per feature row), "
                f"got dtype {prev.dtype} shape {prev.shape}"
            )
        prev = prev.astype(np.int64)

    if n < max(k, 2):
        if n and not np.isfinite(x if x is not None else _source_rows(source, np.arange(n), f)).all():
            raise ClusterFitError(_NON_FINITE)
        raise ClusterFitError(f"{n} rows cannot be split into {k} clusters (need at least max(n_clusters, 2) rows)")

    idx = _subsample_index(n, fit_subsample, seed)
    x_sub = x[idx] if x is not None else _source_rows(source, idx, f)
    if x is None and idx.shape[0] == n:  # the subsample is every row (in order): no need to ask again
        source, x = None, x_sub
    take_rows = (lambda rows: x[rows]) if x is not None else (lambda rows: _source_rows(source, rows, f))
    if not np.isfinite(x_sub).all():  # the other rows are checked while they are labelled (predict)
        raise ClusterFitError(_NON_FINITE)
    n_fit = int(x_sub.shape[0])
    mean, scale = _scaler_stats(x_sub, _CHUNK)  # fixed chunks: the fit does not depend on predict_chunk
    z_std = np.empty((n_fit, f))  # the one float64 copy: the standardised fit subsample, written chunk by chunk
    for s in range(0, n_fit, _CHUNK):
        np.subtract(x_sub[s : s + _CHUNK], mean, out=z_std[s : s + _CHUNK])
        z_std[s : s + _CHUNK] /= scale
    use_pca = pca_dim < f
    if use_pca:
        n_comp = min(pca_dim, f, n_fit)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # explained-variance ratio of constant data
            pca = PCA(n_components=n_comp, svd_solver="auto", random_state=seed).fit(z_std)
        components, proj_mean = pca.components_.astype(np.float64), pca.mean_.astype(np.float64)
    else:
        components, proj_mean = np.eye(f), np.zeros(f)
    p = components.shape[0]
    tf = ClusterModel(
        k,
        mean,
        scale,
        components,
        proj_mean,
        np.ones(k) / k,
        np.zeros((k, p)),
        np.tile(np.eye(p), (k, 1, 1)),
        np.tile(np.eye(p), (k, 1, 1)),
        pca=use_pca,
        seed=seed,
        n_fit_rows=n_fit,
    )
    z_fit = z_std @ components.T - proj_mean @ components.T  # no [n_fit, F] temporary
    del z_std

    n_distinct = np.unique(z_fit, axis=0).shape[0]
    if n_distinct < k:
        raise ClusterFitError(
            f"only {n_distinct} distinct feature vectors among the {n_fit} fitted rows, fewer than n_clusters={k}"
        )

    init = _warm_start_init(tf, take_rows, idx, z_fit, prev, k, float(reg_covar)) if prev is not None else None
    kwargs = {}
    if init is not None:
        w0, m0, p0 = init
        kwargs = dict(weights_init=w0, means_init=m0, precisions_init=p0, init_params="random_from_data")
    gmm = GaussianMixture(
        n_components=k,
        covariance_type="full",
        random_state=seed,
        reg_covar=float(reg_covar),
        max_iter=max_iter,
        **kwargs,
    )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            gmm.fit(z_fit)
    except (ValueError, np.linalg.LinAlgError, FloatingPointError) as e:
        raise ClusterFitError(f"GaussianMixture fit failed: {e}") from e
    params = (gmm.weights_, gmm.means_, gmm.covariances_, gmm.precisions_cholesky_)
    if not all(np.isfinite(a).all() for a in params):
        raise ClusterFitError("GaussianMixture fit produced non-finite parameters")

    model = ClusterModel(
        k,
        tf.scaler_mean,
        tf.scaler_scale,
        components,
        proj_mean,
        *(np.asarray(a, dtype=np.float64) for a in params),
        pca=use_pca,
        warm_started=init is not None,
        converged=bool(gmm.converged_),
        n_iter=int(gmm.n_iter_),
        seed=seed,
        n_fit_rows=n_fit,
    )
    if x is not None:
        labels = model.predict(x, chunk_size=predict_chunk, check_finite=True)
    else:  # the subsample's rows are at hand; every other row is computed once, a block at a time
        labels = np.empty(n, dtype=np.int64)
        labels[idx] = model.predict(x_sub, chunk_size=predict_chunk, check_finite=True)
        del x_sub, z_fit
        rest = np.setdiff1d(np.arange(n), idx, assume_unique=True)
        block = max(predict_chunk, int(getattr(source, "block_rows", 0) or 0))
        for s in range(0, rest.shape[0], block):
            rows = rest[s : s + block]
            labels[rows] = model.predict(_source_rows(source, rows, f), chunk_size=predict_chunk, check_finite=True)
    sizes = np.bincount(labels, minlength=k)
    if (sizes == 0).any():
        raise ClusterFitError(
            f"cluster(s) {np.flatnonzero(sizes == 0).tolist()} received no rows "
            f"(sizes {sizes.tolist()}); the data do not support n_clusters clusters"
        )
    return labels, model


def project_2d(
    features,
    model: ClusterModel | None = None,
    fit_subsample: int = 50_000,
    seed: int = 0,
    chunk_size: int = _CHUNK,
    rows=None,
) -> np.ndarray:
    """2-D coordinates for plotting, ``[N, 2]`` float64 (``[len(rows), 2]`` with ``rows``).

    With a ``model`` that applied PCA, these are the first two principal components of its projection (the same
    space the mixture lives in); otherwise the features are standardised (by the model's scaler when given) and
    projected with a 2-component PCA fitted on at most ``fit_subsample`` rows of all ``N``. One-dimensional data
    get a zero second coordinate.

    ``rows`` (int indices into ``features``) returns the coordinates of those rows only, e.g. just the points a
    scatter plot draws: the values of ``project_2d(features, ...)[rows]`` (up to float32 rounding) without
    projecting the other rows. ``features`` may be a row source (see :func:`fit_partition`); then only the rows
    needed are computed (``rows``, plus the 2-D PCA's subsample when the model has no PCA).
    """
    chunk_size = _check_pos_int(chunk_size, "chunk_size", "rows per chunk")
    fit_subsample = _check_pos_int(fit_subsample, "fit_subsample", "rows used to fit the 2-D PCA")
    is_source = _is_row_source(features)
    if is_source:
        x = None
        n, f = _source_shape(features)
        take = lambda r: _source_rows(features, r, f)  # noqa: E731
    else:
        x = _to_numpy_2d(features, "features")
        n, f = x.shape
        take = lambda r: x[r]  # noqa: E731
    if model is not None and not isinstance(model, ClusterModel):
        raise ValueError(f"model must be a ClusterModel or None, got {type(model).__name__}")
    if model is not None and model.feature_dim != f:
        raise ValueError(f"features have {f} columns but the model was fitted on {model.feature_dim}")
    if rows is not None:
        rows = np.asarray(rows)
        in_range = rows.size == 0 or (rows.ndim == 1 and rows.min() >= 0 and rows.max() < n)
        if rows.ndim != 1 or not np.issubdtype(rows.dtype, np.integer) or not in_range:
            raise ValueError(
                f"rows must be a 1-D int array of row indices in [0, {n}), got dtype {rows.dtype} shape {rows.shape}"
            )
    n_out = n if rows is None else rows.shape[0]

    def out_rows(s: int) -> np.ndarray:  # the chunk of the rows to project that starts at s
        if rows is not None:
            return take(rows[s : s + chunk_size])
        return take(np.arange(s, min(s + chunk_size, n))) if is_source else x[s : s + chunk_size]

    out = np.zeros((n_out, 2))
    if model is not None and model.pca and model.projected_dim >= 2:
        for s in range(0, n_out, chunk_size):
            out[s : s + chunk_size] = model.transform(out_rows(s))[:, :2]
        return out
    if n < 2:
        return out
    sub = take(_subsample_index(n, fit_subsample, seed)).astype(np.float64)
    if model is not None:
        mean, scale = model.scaler_mean, model.scaler_scale
    else:
        sc = StandardScaler().fit(sub)
        mean, scale = sc.mean_, sc.scale_
    n_comp = min(2, f, sub.shape[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # explained-variance ratio of constant data
        pca = PCA(n_components=n_comp, random_state=seed).fit((sub - mean) / scale)
    for s in range(0, n_out, chunk_size):
        out[s : s + chunk_size, :n_comp] = pca.transform((out_rows(s).astype(np.float64) - mean) / scale)
    return out
