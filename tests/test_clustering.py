import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score
from sklearn.mixture import GaussianMixture

from c4_lightning.c4.clustering import ClusterFitError, ClusterModel, fit_partition, project_2d, raw_features


def _blobs(n_per=300, dim=10, seed=0, sep=8.0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(3, dim)) * sep
    x = np.concatenate([c + rng.normal(size=(n_per, dim)) for c in centres]).astype(np.float32)
    y = np.repeat(np.arange(3), n_per)
    perm = rng.permutation(len(y))
    return x[perm], y[perm]


def test_recovers_three_blobs_with_pca():
    x, y = _blobs()
    labels, model = fit_partition(x, n_clusters=3, pca_dim=4, seed=0)
    assert labels.dtype == np.int64 and labels.shape == (900,)
    assert adjusted_rand_score(y, labels) > 0.95
    assert model.pca and model.projected_dim == 4 and not model.warm_started
    assert np.bincount(labels).tolist() == [300, 300, 300]


def test_recovers_blobs_without_pca_and_with_subsample():
    x, y = _blobs(seed=1)
    labels, model = fit_partition(torch.from_numpy(x), n_clusters=3, pca_dim=32, fit_subsample=200, seed=3)
    assert not model.pca and model.projected_dim == 10 and model.n_fit_rows == 200
    assert adjusted_rand_score(y, labels) > 0.95


def test_own_predict_matches_sklearn():
    x, _ = _blobs(seed=2)
    _, model = fit_partition(x, n_clusters=3, pca_dim=5)
    gmm = GaussianMixture(3, covariance_type="full")
    gmm.weights_, gmm.means_, gmm.covariances_ = model.weights, model.means, model.covariances
    gmm.precisions_cholesky_ = model.precisions_cholesky
    np.testing.assert_array_equal(model.predict(x), gmm.predict(model.transform(x)))


def test_warm_start_keeps_label_ids():
    x, y = _blobs(seed=4)
    labels0, _ = fit_partition(x, n_clusters=3, pca_dim=4, seed=0)
    # permute the label ids: a warm-started refit must follow the given ids, not its own arbitrary order
    perm = np.array([2, 0, 1])
    prev = perm[labels0]
    for seed in (1, 2, 3):
        labels1, model = fit_partition(x, n_clusters=3, pca_dim=4, seed=seed, previous_labels=prev)
        assert model.warm_started
        np.testing.assert_array_equal(labels1, prev)
    # with a slightly perturbed dataset the ids still follow
    x2 = x + np.random.default_rng(9).normal(scale=0.1, size=x.shape).astype(np.float32)
    labels2, _ = fit_partition(x2, n_clusters=3, pca_dim=4, seed=5, previous_labels=torch.from_numpy(prev))
    assert (labels2 == prev).mean() > 0.99


def test_warm_start_falls_back_when_previous_partition_does_not_fit():
    x, y = _blobs(seed=5)
    # previous partition with only 2 clusters -> cold start
    _, model = fit_partition(x, n_clusters=3, pca_dim=4, previous_labels=(y > 0).astype(np.int64))
    assert not model.warm_started
    singleton = y.copy()
    singleton[:] = 0
    singleton[0] = 1
    singleton[1:3] = 2
    _, model = fit_partition(x, n_clusters=3, pca_dim=4, previous_labels=singleton)
    assert not model.warm_started
    with pytest.raises(ValueError, match="previous_labels"):
        fit_partition(x, n_clusters=3, previous_labels=y[:10])


def test_single_cluster():
    x, _ = _blobs(seed=6)
    labels, model = fit_partition(x, n_clusters=1, pca_dim=3)
    assert (labels == 0).all() and model.n_clusters == 1
    labels, _ = fit_partition(x, n_clusters=1, previous_labels=labels)
    assert (labels == 0).all()


def test_too_few_distinct_points():
    x = np.repeat(np.array([[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]), 50, axis=0)
    with pytest.raises(ClusterFitError, match="distinct"):
        fit_partition(x, n_clusters=3)
    with pytest.raises(ClusterFitError):
        fit_partition(x[:2], n_clusters=3)
    labels, _ = fit_partition(x, n_clusters=2)  # exactly as many distinct points as clusters is fine
    assert len(np.unique(labels[:50])) == 1 and labels[0] != labels[-1]


def test_non_finite_features():
    x, _ = _blobs(seed=7)
    x[17, 3] = np.nan
    with pytest.raises(ClusterFitError, match="NaN or inf"):
        fit_partition(x)
    x[17, 3] = np.inf
    with pytest.raises(ClusterFitError, match="NaN or inf"):
        fit_partition(x, predict_chunk=7)


def test_bad_arguments():
    x, _ = _blobs(seed=8)
    with pytest.raises(ValueError, match="n_clusters"):
        fit_partition(x, n_clusters=0)
    with pytest.raises(ValueError, match="pca_dim"):
        fit_partition(x, pca_dim=0)
    with pytest.raises(ValueError, match="features"):
        fit_partition(x[0])
    with pytest.raises(ValueError, match="reg_covar"):
        fit_partition(x, reg_covar=-1.0)


def test_constant_columns_are_guarded():
    x, y = _blobs(seed=9)
    x = np.concatenate([x, np.full((len(x), 3), 5.0, dtype=np.float32)], axis=1)
    labels, model = fit_partition(x, n_clusters=3, pca_dim=4)
    assert np.all(np.isfinite(model.scaler_scale)) and np.all(model.scaler_scale > 0)
    assert adjusted_rand_score(y, labels) > 0.95


def test_state_dict_round_trip(tmp_path):
    x, _ = _blobs(seed=10)
    labels, model = fit_partition(x, n_clusters=3, pca_dim=4)
    state = model.state_dict()
    assert all(isinstance(v, (np.ndarray, int, float, bool)) for v in state.values())
    torch.save(state, tmp_path / "m.pt")
    restored = ClusterModel.from_state_dict(torch.load(tmp_path / "m.pt", weights_only=False))
    np.testing.assert_array_equal(restored.predict(x), labels)
    for k, v in state.items():
        np.testing.assert_array_equal(getattr(restored, k), v)
    bad = dict(state)
    bad.pop("means")
    with pytest.raises(ValueError, match="missing"):
        ClusterModel.from_state_dict(bad)
    bad = dict(state)
    bad["means"] = state["means"][:2]
    with pytest.raises(ValueError, match="means"):
        ClusterModel.from_state_dict(bad)


def test_chunked_prediction_equals_unchunked():
    x, _ = _blobs(seed=11)
    labels_full, model = fit_partition(x, n_clusters=3, pca_dim=4, predict_chunk=10_000)
    labels_chunked, _ = fit_partition(x, n_clusters=3, pca_dim=4, predict_chunk=7)
    np.testing.assert_array_equal(labels_full, labels_chunked)
    np.testing.assert_array_equal(model.predict(x, chunk_size=1), labels_full)


def test_raw_features_and_project_2d():
    obs, act = torch.randn(50, 4), torch.randn(50, 2)
    f = raw_features(obs, act)
    assert f.shape == (50, 6) and f.dtype == np.float32
    np.testing.assert_array_equal(f[:, 4:], act.numpy())
    with pytest.raises(ValueError, match="same number of rows"):
        raw_features(obs, act[:3])
    x, _ = _blobs(seed=12)
    _, with_pca = fit_partition(x, n_clusters=3, pca_dim=4)
    _, no_pca = fit_partition(x, n_clusters=3, pca_dim=32)
    p_model = project_2d(x, with_pca)
    np.testing.assert_allclose(p_model, with_pca.transform(x)[:, :2])
    for m in (None, no_pca):
        p = project_2d(x, m, chunk_size=64)
        assert p.shape == (900, 2) and np.isfinite(p).all()
        assert p[:, 0].var() >= p[:, 1].var() > 0  # principal axes, ordered by variance
    assert project_2d(x[:, :1]).shape == (900, 2)
    assert (project_2d(x[:, :1])[:, 1] == 0).all()


# ------------------------------------------------------------------ fast paths (folded projection, subsample
# warm start, finite check in the labelling pass, projecting only the plotted rows)


def _old_transform(model: ClusterModel, x) -> np.ndarray:
    """The former float64 path: standardise element-wise, then project."""
    z = (np.asarray(x).astype(np.float64) - model.scaler_mean) / model.scaler_scale
    return (z - model.proj_mean) @ model.proj_components.T


def _old_predict(model: ClusterModel, x) -> np.ndarray:
    return model._log_resp_unnorm(_old_transform(model, x)).argmax(axis=1)


def _relu_features(n=3000, dim=64, seed=0, offset=0.0):
    """Critic-like features: three groups of ReLU activations, some always-on units with a large mean and a
    tiny spread (|mean| / std up to ~1e5 with ``offset``), some dead (constant 0) units."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(3, dim)) * 3
    g = rng.integers(0, 3, n)
    x = np.maximum(centres[g] + rng.normal(size=(n, dim)), 0)
    x[:, :4] = 0.0  # dead units
    x[:, 4:8] = offset + 1e-2 * rng.normal(size=(n, 4)) + 0.05 * g[:, None]  # always on, large mean / scale
    return x.astype(np.float32), g


@pytest.mark.parametrize("offset", [0.0, 1e3], ids=["plain", "large-mean-over-scale"])
def test_folded_float32_projection_matches_the_float64_path(offset):
    x, g = _relu_features(offset=offset)
    labels, model = fit_partition(x, n_clusters=3, pca_dim=8, seed=0)
    z_old = _old_transform(model, x)
    z_new = model.transform(x)
    assert z_new.dtype == np.float64 and z_new.shape == z_old.shape
    np.testing.assert_allclose(z_new, z_old, rtol=0, atol=1e-4 * z_old.std())
    # the labels of the fast path are the labels of the former float64 path
    np.testing.assert_array_equal(labels, _old_predict(model, x))
    np.testing.assert_array_equal(model.predict(x), _old_predict(model, x))
    assert adjusted_rand_score(g, labels) > 0.95
    # float64 and int inputs, chunking: the same labels
    np.testing.assert_array_equal(model.predict(x.astype(np.float64), chunk_size=333), labels)
    xi = np.rint(x * 4).astype(np.int64)
    np.testing.assert_array_equal(model.predict(xi), _old_predict(model, xi))


def test_folded_projection_on_blobs_and_restored_models():
    for seed in range(3):
        x, _ = _blobs(seed=20 + seed)
        x = x * np.float32(50) + np.float32(1e4)  # large offset relative to the spread
        labels, model = fit_partition(x, n_clusters=3, pca_dim=4, seed=seed)
        np.testing.assert_array_equal(labels, _old_predict(model, x))
        restored = ClusterModel.from_state_dict(model.state_dict())  # the cache is rebuilt, not stored
        assert "_folded" not in model.state_dict()
        np.testing.assert_array_equal(restored.predict(x), labels)


def test_warm_start_statistics_come_from_the_fit_subsample():
    x, y = _blobs(n_per=2000, seed=13)  # 6000 rows, fitted on 1000
    labels0, _ = fit_partition(x, n_clusters=3, pca_dim=4, seed=0)
    perm = np.array([1, 2, 0])
    prev = perm[labels0]
    labels1, model = fit_partition(x, n_clusters=3, pca_dim=4, fit_subsample=1000, seed=1, previous_labels=prev)
    assert model.warm_started and model.n_fit_rows == 1000
    np.testing.assert_array_equal(labels1, prev)


def test_warm_start_init_subsample_statistics_and_rare_cluster_fallback():
    from c4_lightning.c4.clustering import _subsample_index, _warm_start_init

    x, y = _blobs(n_per=1000, seed=14)
    _, model = fit_partition(x, n_clusters=3, pca_dim=4, seed=0)
    z_all = model.transform(x)
    prev = y.copy()
    rare = np.flatnonzero(prev == 2)[5:]
    prev[rare] = 0  # cluster 2 keeps 5 rows of 3000
    idx = _subsample_index(len(x), 600, seed=3)
    in_sub = np.isin(np.flatnonzero(prev == 2), idx).sum()
    assert in_sub < 5  # (seed chosen so that) the subsample misses some of the rare cluster
    w, means, prec = _warm_start_init(model, lambda r: x[r], idx, z_all[idx], prev, 3, 1e-4)
    counts = np.bincount(prev, minlength=3)
    np.testing.assert_allclose(w, counts / counts.sum())  # weights: shares of all N rows
    for c in (0, 1):  # well represented: statistics of the subsample
        np.testing.assert_allclose(means[c], z_all[idx][prev[idx] == c].mean(0))
    np.testing.assert_allclose(means[2], z_all[prev == 2].mean(0), atol=1e-9)  # rare: all of its rows
    np.testing.assert_allclose(prec, np.swapaxes(prec, -1, -2))
    # all rows in the subsample: the former all-row statistics
    idx_all = np.arange(len(x))
    w, means, prec = _warm_start_init(model, lambda r: x[r], idx_all, z_all, prev, 3, 1e-4)
    for c in range(3):
        zc = z_all[prev == c]
        np.testing.assert_allclose(means[c], zc.mean(0), atol=1e-12)
        cov = np.cov(zc.T, bias=True) + 1e-4 * np.eye(4)
        np.testing.assert_allclose(np.linalg.inv(prec[c]), cov, rtol=1e-6, atol=1e-9)
    # a previous partition with a cluster of fewer than 2 rows: cold start
    prev[np.flatnonzero(prev == 2)[1:]] = 1
    assert _warm_start_init(model, lambda r: x[r], idx, z_all[idx], prev, 3, 1e-4) is None


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_rows_outside_the_fit_subsample_are_caught_while_labelling(bad):
    from c4_lightning.c4.clustering import _subsample_index

    x, _ = _blobs(seed=15)
    idx = _subsample_index(len(x), 200, seed=0)
    row = np.setdiff1d(np.arange(len(x)), idx)[7]
    x[row, 2] = bad
    with pytest.raises(ClusterFitError, match="NaN or inf"):
        fit_partition(x, n_clusters=3, pca_dim=4, fit_subsample=200, seed=0, predict_chunk=64)
    _, model = fit_partition(np.delete(x, row, axis=0), n_clusters=3, pca_dim=4)
    with pytest.raises(ClusterFitError, match="NaN or inf"):
        model.predict(x, check_finite=True)
    with np.errstate(invalid="ignore"):
        assert model.predict(x).shape == (len(x),)  # unchecked by default
    with pytest.raises(ClusterFitError, match="NaN or inf"):  # also when only the rows are too few
        fit_partition(np.full((2, 3), bad), n_clusters=3)


def test_project_2d_rows_equal_the_rows_of_the_full_projection():
    x, _ = _blobs(seed=16)
    _, with_pca = fit_partition(x, n_clusters=3, pca_dim=4)
    _, no_pca = fit_partition(x, n_clusters=3, pca_dim=32)
    rows = np.array([5, 0, 899, 17, 17])
    for m in (with_pca, no_pca, None):
        full = project_2d(x, m, fit_subsample=300)
        # equal up to float32 rounding (BLAS may block a 2-row and a 900-row product differently)
        np.testing.assert_allclose(
            project_2d(x, m, fit_subsample=300, rows=rows, chunk_size=2), full[rows], rtol=1e-6, atol=1e-6
        )
    assert project_2d(x, with_pca, rows=np.array([], dtype=np.int64)).shape == (0, 2)
    for bad in (np.array([900]), np.array([-1]), np.array([0.5]), np.zeros((2, 2), dtype=np.int64)):
        with pytest.raises(ValueError, match="rows"):
            project_2d(x, with_pca, rows=bad)


@pytest.mark.parametrize("n", [900, 3000])
def test_cluster_scatter_image_equals_projecting_every_row(n):
    from c4_lightning.c4.callback import cluster_scatter_image
    from c4_lightning.c4.plots import cluster_scatter_figure, figure_to_image

    x, _ = _blobs(n_per=n // 3, seed=17)
    labels, model = fit_partition(x, n_clusters=3, pca_dim=4)
    sources = np.arange(n) % 2
    old = figure_to_image(cluster_scatter_figure(project_2d(x, model), labels, sources, ["a", "b"], max_points=1000))
    new = cluster_scatter_image(x, model, labels, sources, ["a", "b"], max_points=1000)
    assert new.shape == old.shape and new.dtype == old.dtype
    assert (new != old).any(axis=-1).mean() < 1e-3  # the same picture (float32 rounding may move a pixel)
    with pytest.raises(ValueError, match="max_points"):
        cluster_scatter_image(x, model, labels, sources, ["a", "b"], max_points=0)


def test_clustering_features_default_chunking_equals_one_chunk():
    from c4_lightning.algos.networks import CriticEnsemble
    from c4_lightning.c4.features import CPU_CHUNK, clustering_features

    torch.manual_seed(0)
    critic, target = CriticEnsemble(5, 2, (16, 16), 2), CriticEnsemble(5, 2, (16, 16), 2)
    n = 2 * CPU_CHUNK + 17
    obs, act, nobs, nact = torch.randn(n, 5), torch.rand(n, 2), torch.randn(n, 5), torch.rand(n, 2)
    packed = torch.cat([obs, act, nobs, nact], 1)  # column views, as the datamodule hands them out
    views = packed[:, :5], packed[:, 5:7], packed[:, 7:12], packed[:, 12:]
    one = clustering_features(critic, target, obs, act, nobs, nact, chunk_size=n)
    default = clustering_features(critic, target, *views)
    assert default.shape == (n, 32) and default.dtype == torch.float32
    torch.testing.assert_close(default, one)
    with torch.no_grad():
        torch.testing.assert_close(default[:, :16], critic(obs, act, return_features=True)[1].mean(0))
        torch.testing.assert_close(default[:, 16:], target(nobs, nact, return_features=True)[1].mean(0))


# ------------------------------------------------------------------ row sources (features computed on demand)


class CountingRows:
    """A row source over an array that records which rows were asked for."""

    def __init__(self, x, block_rows=0):
        self.x, self.shape, self.block_rows, self.asked = x, x.shape, block_rows, []

    def rows(self, idx):
        idx = np.asarray(idx)
        self.asked.append(idx.copy())
        return self.x[idx]


@pytest.mark.parametrize("fit_subsample", [500, 10_000], ids=["subsample", "every-row"])
def test_fit_partition_on_a_row_source_equals_the_array_and_asks_each_row_once(fit_subsample):
    x, y = _relu_features(n=3000, seed=3)
    prev, _ = fit_partition(x, n_clusters=3, pca_dim=8, seed=0)
    prev = np.array([2, 0, 1])[prev]
    for previous in (None, prev):
        src = CountingRows(x, block_rows=700)
        labels, model = fit_partition(
            src,
            n_clusters=3,
            pca_dim=8,
            fit_subsample=fit_subsample,
            seed=1,
            previous_labels=previous,
            predict_chunk=256,
        )
        ref_labels, ref = fit_partition(
            x, n_clusters=3, pca_dim=8, fit_subsample=fit_subsample, seed=1, previous_labels=previous, predict_chunk=256
        )
        np.testing.assert_array_equal(labels, ref_labels)
        for name in ("scaler_mean", "proj_components", "means", "covariances"):
            np.testing.assert_allclose(getattr(model, name), getattr(ref, name), rtol=1e-7, atol=1e-9)
        assert model.warm_started == (previous is not None)
        asked = np.concatenate(src.asked)
        np.testing.assert_array_equal(np.sort(asked), np.arange(len(x)))  # every row exactly once
        if fit_subsample < len(x):
            assert len(src.asked[0]) == fit_subsample and max(len(a) for a in src.asked[1:]) == 700
        else:
            assert len(src.asked) == 1


def test_row_source_rare_cluster_non_finite_rows_and_bad_sources():
    x, y = _blobs(n_per=1000, seed=18)
    prev = y.copy()
    prev[np.flatnonzero(prev == 2)[5:]] = 0  # a 5-row cluster: its statistics come from all of its rows
    src = CountingRows(x)
    labels, model = fit_partition(src, n_clusters=3, pca_dim=4, fit_subsample=600, seed=3, previous_labels=prev)
    ref, _ = fit_partition(x, n_clusters=3, pca_dim=4, fit_subsample=600, seed=3, previous_labels=prev)
    assert model.warm_started
    np.testing.assert_array_equal(labels, ref)
    assert any(np.array_equal(a, np.flatnonzero(prev == 2)) for a in src.asked)
    # a NaN in a row outside the subsample is found while labelling
    from c4_lightning.c4.clustering import _subsample_index

    bad = x.copy()
    bad[np.setdiff1d(np.arange(len(x)), _subsample_index(len(x), 600, 3))[0], 1] = np.nan
    with pytest.raises(ClusterFitError, match="NaN or inf"):
        fit_partition(CountingRows(bad), n_clusters=3, pca_dim=4, fit_subsample=600, seed=3)

    class Wrong(CountingRows):
        def rows(self, idx):
            return super().rows(idx)[:, :2]

    with pytest.raises(ValueError, match="feature source returned rows of shape"):
        fit_partition(Wrong(x), n_clusters=3)
    odd = CountingRows(x)
    odd.shape = (len(x),)
    with pytest.raises(ValueError, match=r"shape must be \(N, F\)"):
        fit_partition(odd, n_clusters=3)


def test_project_2d_and_scatter_image_on_a_row_source_ask_only_the_drawn_rows():
    from c4_lightning.c4.callback import cluster_scatter_image

    x, _ = _blobs(n_per=1000, seed=19)
    labels, with_pca = fit_partition(x, n_clusters=3, pca_dim=4)
    rows = np.array([3, 2999, 0])
    for m in (with_pca, None):
        src = CountingRows(x)
        np.testing.assert_array_equal(
            project_2d(src, m, rows=rows, fit_subsample=500), project_2d(x, m, rows=rows, fit_subsample=500)
        )
    src = CountingRows(x)
    np.testing.assert_array_equal(project_2d(src, with_pca, chunk_size=1000), project_2d(x, with_pca, chunk_size=1000))
    src = CountingRows(x)
    sources = np.arange(len(x)) % 3
    image = cluster_scatter_image(src, with_pca, labels, sources, ["a", "b", "c"], max_points=500)
    assert sum(len(a) for a in src.asked) == 500  # only the plotted points were computed
    np.testing.assert_array_equal(
        image, cluster_scatter_image(x, with_pca, labels, sources, ["a", "b", "c"], max_points=500)
    )


def test_critic_feature_rows_equal_clustering_features():
    from c4_lightning.algos.networks import CriticEnsemble
    from c4_lightning.c4.features import CriticFeatureRows, clustering_features

    torch.manual_seed(1)
    critic, target = CriticEnsemble(5, 2, (16, 16), 2), CriticEnsemble(5, 2, (16, 16), 2)
    n = 3000
    packed = torch.cat([torch.randn(n, 5), torch.rand(n, 2), torch.randn(n, 5), torch.rand(n, 2)], 1)
    views = packed[:, :5], packed[:, 5:7], packed[:, 7:12], packed[:, 12:]
    full = clustering_features(critic, target, *views).numpy()
    for kind in ("penultimate", "gradient"):
        src = CriticFeatureRows(critic, target, *views, kind=kind)
        ref = full if kind == "penultimate" else clustering_features(critic, target, *views, kind=kind).numpy()
        assert src.shape == ref.shape and src.block_rows >= 1
        idx = np.array([7, 0, 2999, 7])
        np.testing.assert_allclose(src.rows(idx), ref[idx], rtol=1e-5, atol=1e-6)
        assert src.rows(np.array([], dtype=np.int64)).shape == (0, ref.shape[1])
    labels, _ = fit_partition(CriticFeatureRows(critic, target, *views), n_clusters=3, pca_dim=8, fit_subsample=800)
    ref_labels, _ = fit_partition(full, n_clusters=3, pca_dim=8, fit_subsample=800)
    assert (labels == ref_labels).mean() > 0.999
    with pytest.raises(ValueError, match="next_obs"):
        CriticFeatureRows(critic, target, *views[:2], views[2][:10], views[3][:10])
    with pytest.raises(ValueError, match="kind"):
        CriticFeatureRows(critic, target, *views, kind="nope")


def test_scaler_stats_equal_standard_scaler():
    from sklearn.preprocessing import StandardScaler

    from c4_lightning.c4.clustering import _scaler_stats

    rng = np.random.default_rng(0)
    x, _ = _relu_features(n=2500, offset=1e3)  # dead (constant 0) and large-mean columns
    x = np.concatenate([x, np.full((len(x), 2), 7.25, dtype=np.float32)], axis=1)  # constant non-zero
    for arr in (x, x.astype(np.float64), rng.integers(-5, 5, size=(300, 4)), rng.normal(size=(1, 3))):
        mean, scale = _scaler_stats(arr, chunk=97)
        ref = StandardScaler().fit(np.asarray(arr, dtype=np.float64))
        np.testing.assert_allclose(mean, ref.mean_, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(scale, ref.scale_, rtol=1e-9)
        np.testing.assert_array_equal(scale == 1.0, ref.scale_ == 1.0)
