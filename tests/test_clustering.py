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
    singleton = y.copy(); singleton[:] = 0; singleton[0] = 1; singleton[1:3] = 2
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
    bad = dict(state); bad.pop("means")
    with pytest.raises(ValueError, match="missing"):
        ClusterModel.from_state_dict(bad)
    bad = dict(state); bad["means"] = state["means"][:2]
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
