"""Reducers (kernel PCA, t-SNE, UMAP) and clusterers (GMM, agglomerative, HDBSCAN, spectral) on small synthetic data."""

import numpy as np
import pytest

from imclust import components  # noqa: F401
from imclust.base import build
from imclust.cluster import HDBSCAN, Agglomerative, GaussianMixture, Spectral
from imclust.errors import NotInstalledError, UserError
from imclust.metrics import evaluate
from imclust.reduce import TSNE, UMAP, KernelPCA, umap_available


def _blobs(n_per=40, k=3, d=6, sep=6.0, seed=0):
    rs = np.random.RandomState(seed)
    centres = rs.randn(k, d) * sep
    X = np.concatenate([c + rs.randn(n_per, d) for c in centres]).astype(np.float32)
    return X, np.repeat(np.arange(k), n_per)


def test_kernel_pca_matches_sklearn_exact():
    from sklearn.decomposition import KernelPCA as SK

    X, _ = _blobs(n_per=30, d=5)
    ours = KernelPCA(n_components=5, method="exact", eigen_solver="dense").fit_transform(X)
    ref = SK(n_components=5, kernel="rbf").fit_transform(X)
    for j in range(5):  # equal up to the sign of each component
        s = np.sign(ours[:, j] @ ref[:, j])
        np.testing.assert_allclose(ours[:, j] * s, ref[:, j], atol=2e-4)


def test_kernel_pca_randomized_equals_dense_and_transform_reproduces_training():
    X, _ = _blobs(n_per=60, d=5)
    dense = KernelPCA(n_components=3, method="exact", eigen_solver="dense").fit(X)
    rnd = KernelPCA(n_components=3, method="exact", eigen_solver="randomized")  # a clear spectral gap after 3
    Z = rnd.fit_transform(X)
    Zd = dense.transform(X)
    # the same subspace (the two leading eigenvalues nearly tie, so compare spans, not single columns)
    coef, *_ = np.linalg.lstsq(Z, Zd, rcond=None)
    assert np.abs(Z @ coef - Zd).max() < 1e-3 * np.abs(Zd).max() * 10
    np.testing.assert_allclose(np.sort(rnd.eigenvalues_), np.sort(dense.eigenvalues_), rtol=1e-4)
    np.testing.assert_allclose(rnd.transform(X), Z, atol=1e-3)


def test_kernel_pca_nystroem_close_to_exact():
    X, _ = _blobs(n_per=100, d=5)
    exact = KernelPCA(n_components=3, method="exact").fit_transform(X)
    ny = KernelPCA(n_components=3, method="nystroem", n_landmarks=150).fit(X)
    Z = ny.transform(X)
    assert not hasattr(ny, "X_fit_")  # Nyström keeps only landmarks
    assert ny.landmarks_.shape == (150, 5)
    for j in range(3):
        assert abs(np.corrcoef(Z[:, j], exact[:, j])[0, 1]) > 0.95


def test_kernel_pca_without_training_data_refuses_new_points():
    X, _ = _blobs(n_per=10)
    kp = KernelPCA(n_components=2, method="exact", store_training_data=False).fit(X)
    with pytest.raises(UserError, match="cannot place new"):
        kp.transform(X)
    with pytest.raises(UserError, match="rbf"):
        KernelPCA(kernel="poly").fit(X)
    bad = X.copy()
    bad[0, 0] = np.nan
    with pytest.raises(UserError, match="NaN"):
        KernelPCA(n_components=2).fit(bad)


def test_kernel_pca_state_roundtrip():
    X, _ = _blobs(n_per=30)
    for method in ("exact", "nystroem"):
        kp = KernelPCA(n_components=3, method=method, n_landmarks=40).fit(X)
        arrays, extra = kp.get_state()
        kp2 = build(kp.to_spec())
        kp2.set_state(arrays, extra)
        np.testing.assert_allclose(kp2.transform(X[:5]), kp.transform(X[:5]), atol=1e-5)


@pytest.mark.parametrize("backend", ["opentsne", "sklearn"])
def test_tsne_separates_blobs_and_places_new_points(backend):
    X, y = _blobs(n_per=40)
    ts = TSNE(n_components=2, perplexity=10, n_iter=400, backend=backend, n_jobs=1)
    Z = ts.fit_transform(X)
    assert Z.shape == (len(X), 2)
    from imclust.cluster import KMeans

    assert evaluate(KMeans(3).fit_predict(Z), y)["acc"] > 0.95
    near = ts.transform(X[:5] + 0.01)
    assert np.linalg.norm(near - Z[:5], axis=1).max() < np.ptp(Z, axis=0).max() * 0.1


def test_tsne_out_of_sample_none_refuses():
    X, _ = _blobs(n_per=10)
    ts = TSNE(perplexity=5, n_iter=300, out_of_sample="none", n_jobs=1)
    ts.fit(X)
    with pytest.raises(UserError, match="cannot place new points"):
        ts.transform(X)


def test_umap_missing_is_not_installed_error(monkeypatch):
    import imclust.reduce as R

    monkeypatch.setattr(R, "umap_available", lambda: False)
    with pytest.raises(NotInstalledError, match="umap-learn"):
        UMAP(backend="umap-learn").fit(np.zeros((10, 3), np.float32))


def test_gmm_fit_predict_and_state():
    X, y = _blobs()
    g = GaussianMixture(3, random_state=0).fit(X)
    assert evaluate(g.labels_, y)["acc"] > 0.95
    arrays, extra = g.get_state()
    g2 = build(g.to_spec())
    g2.set_state(arrays, extra)
    np.testing.assert_array_equal(g2.predict(X), g.labels_)
    assert np.allclose(g2.predict_proba(X).sum(1), 1)
    with pytest.raises(UserError, match="X has 2 features, but GaussianMixture is expecting 6 features"):
        g2.predict(X[:, :2])
    with pytest.raises(UserError, match="larger than the number"):
        GaussianMixture(1000).fit(X)


@pytest.mark.parametrize("cls,kw", [(Agglomerative, {"n_clusters": 3}), (Spectral, {"n_clusters": 3}),
                                    (HDBSCAN, {"min_cluster_size": 10})])
def test_graph_clusterers_find_blobs_and_refuse_predict(cls, kw):
    X, y = _blobs()
    m = cls(**kw)
    lab = m.fit_predict(X)
    assert evaluate(lab, y)["acc"] > 0.95
    assert not hasattr(m, "predict")  # as scikit-learn's own: no rule for new points
    from imclust.data.sources import _array_imageset
    from imclust.pipeline import Pipeline

    pixels = (X - X.min()) / (X.max() - X.min())  # as image values in [0, 1]
    ds = _array_imageset(pixels.reshape(len(X), 1, 1, -1), y, "blobs", "array")
    pipe = Pipeline.from_spec({"encoder": {"type": "pixels"}, "clusterer": {"type": m.component_name, **kw}}).fit(ds)
    with pytest.raises(UserError, match="cannot assign new points"):
        pipe.predict(ds)


def test_bad_options_are_user_errors():
    X, _ = _blobs(n_per=10)
    with pytest.raises(UserError, match="linkage"):
        Agglomerative(3, linkage="bogus").fit(X)
    with pytest.raises(UserError, match="covariance_type"):
        GaussianMixture(3, covariance_type="bogus").fit(X)
    with pytest.raises(UserError, match="min_cluster_size"):
        HDBSCAN(min_cluster_size=1).fit(X)
    with pytest.raises(UserError, match="backend"):
        TSNE(backend="bogus").fit(X)
    with pytest.raises(UserError, match="neighbors"):
        TSNE(neighbors="bogus").fit(X)
    with pytest.raises(UserError, match="fft_ints_in_interval"):
        TSNE(fft_ints_in_interval=0).fit(X)


@pytest.mark.parametrize("name", ["kernel_pca", "tsne", "umap", "gmm", "agglomerative", "hdbscan", "spectral",
                                  "autoencoder"])
def test_components_round_trip_through_their_spec(name):
    from sklearn.base import clone

    from imclust.base import component_class

    est = component_class(name)()
    params = est.get_params()
    twin = clone(est)
    assert twin.get_params() == params and twin is not est
    assert build(est.to_spec()).get_params() == params


@pytest.mark.parametrize("backend", ["imclust", pytest.param("umap-learn", marks=pytest.mark.skipif(
    not umap_available(), reason="umap-learn not installed"))])
def test_umap_leaves_the_torch_thread_count_as_it_was(one_torch_thread, backend):
    import torch

    assert torch.get_num_threads() == 1
    X = np.random.RandomState(0).rand(60, 5).astype(np.float32)
    Z = UMAP(n_components=2, n_neighbors=5, n_epochs=20, backend=backend).fit_transform(X)
    assert Z.shape == (60, 2)
    assert torch.get_num_threads() == 1  # numba's parallel layer would leave it at the core count


def test_pca_keeps_no_more_components_than_the_centred_data_spans(capsys, monkeypatch):
    """12 images give at most 11 directions around their mean; a 12th component would be rounding noise that a
    GMM then models (three tight groups of four came out mixed before the clip)."""
    from imclust.reduce import PCA

    monkeypatch.delenv("IMCLUST_QUIET", raising=False)
    rng = np.random.RandomState(0)
    centres = rng.randn(3, 1280).astype(np.float32) * 5
    X = np.repeat(centres, 4, axis=0) + rng.randn(12, 1280).astype(np.float32) * 0.1
    Z = PCA(n_components=50).fit_transform(X)
    assert Z.shape == (12, 11)
    assert "11 components instead of 50" in capsys.readouterr().err
    labels = GaussianMixture(n_clusters=3, n_init=10).fit(Z).labels_
    assert evaluate(labels, np.repeat(np.arange(3), 4))["acc"] == 1.0
    assert PCA(n_components=5).fit_transform(X).shape == (12, 5)  # below the rank: as asked


def test_pca_variance_fraction_of_identical_images_keeps_one_direction(recwarn):
    """Identical images have no variance to explain; a fraction of nothing must not divide by zero."""
    from imclust.reduce import PCA

    X = np.ones((20, 8), dtype=np.float32)
    p = PCA(n_components=0.9).fit(X)
    assert p.n_components_ == 1
    assert p.transform(X).shape == (20, 1)
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]
