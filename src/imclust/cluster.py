"""Clusterers: embedding → cluster ids. scikit-learn estimators with array-only fitted state.

k-means uses faiss when it is installed (k-means++ seeding, then faiss's Lloyd iterations on *all* points:
``max_points_per_centroid`` is raised so faiss does not silently subsample to 256·k), and scikit-learn
otherwise. Both give the same interface and the same saved state (``cluster_centers_``).
"""

from __future__ import annotations

import numpy as np

from .base import Component, register
from .errors import UserError
from .progress import log, progress


def faiss_available() -> bool:
    try:
        import faiss  # noqa: F401

        return True
    except ImportError:
        return False


def _check_k(k, n):
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise UserError(f"k must be a whole number of at least 1, got {k!r}")
    if k > n:
        raise UserError(f"k={k} is larger than the number of images ({n}); choose k between 1 and {n}")


def nearest_centre(X: np.ndarray, centres: np.ndarray, batch: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """Index of the nearest centre for each row, and its squared distance (blocked to bound memory)."""
    X = np.ascontiguousarray(X, dtype=np.float32)
    C = np.ascontiguousarray(centres, dtype=np.float32)
    cc = (C * C).sum(1)
    labels = np.empty(len(X), dtype=np.int64)
    dist = np.empty(len(X), dtype=np.float32)
    for s in range(0, len(X), batch):
        xb = X[s : s + batch]
        d = cc[None, :] - 2.0 * xb @ C.T
        j = d.argmin(1)
        labels[s : s + batch] = j
        dist[s : s + batch] = np.maximum(d[np.arange(len(xb)), j] + (xb * xb).sum(1), 0)
    return labels, dist


class CentroidClusterer(Component):
    """A clusterer whose model is a set of centres: predict = nearest centre."""

    def predict(self, X):
        X = np.asarray(X, dtype=np.float32).reshape(len(X), -1)
        if X.shape[1] != self.cluster_centers_.shape[1]:
            raise UserError(f"embedding has {X.shape[1]} dimensions but the model was fitted on {self.cluster_centers_.shape[1]}")
        return nearest_centre(X, self.cluster_centers_)[0]

    def fit_predict(self, X, y=None):
        return self.fit(X).labels_

    def transform(self, X):
        """Distances to each centre (as scikit-learn's KMeans.transform)."""
        X = np.asarray(X, dtype=np.float32).reshape(len(X), -1)
        C = self.cluster_centers_
        d2 = (X * X).sum(1)[:, None] - 2 * X @ C.T + (C * C).sum(1)[None]
        return np.sqrt(np.maximum(d2, 0))


@register("kmeans")
class KMeans(CentroidClusterer):
    """k-means with k-means++ seeding and ``n_init`` restarts (the best inertia wins).

    backend: ``"auto"`` (faiss when installed, else scikit-learn), ``"faiss"`` or ``"sklearn"``.
    """

    def __init__(self, n_clusters: int = 8, n_init: int = 10, max_iter: int = 100, random_state: int | None = 0,
                 backend: str = "auto"):
        self.n_clusters = n_clusters
        self.n_init = n_init
        self.max_iter = max_iter
        self.random_state = random_state
        self.backend = backend

    def _backend(self) -> str:
        if self.backend == "auto":
            return "faiss" if faiss_available() else "sklearn"
        if self.backend == "faiss" and not faiss_available():
            from .errors import NotInstalledError

            raise NotInstalledError("faiss-cpu", "k-means with backend='faiss'")
        if self.backend not in ("faiss", "sklearn"):
            raise UserError(f"unknown k-means backend {self.backend!r}; use auto, faiss or sklearn")
        return self.backend

    def fit(self, X, y=None):
        X = np.ascontiguousarray(np.asarray(X, dtype=np.float32).reshape(len(X), -1))
        _check_k(self.n_clusters, len(X))
        if not np.all(np.isfinite(X)):
            raise UserError("the embedding holds NaN or inf values; k-means cannot run on them")
        be = self._backend()
        self.backend_ = be
        if be == "sklearn":
            from sklearn.cluster import KMeans as SKKMeans

            km = SKKMeans(self.n_clusters, n_init=self.n_init, max_iter=max(self.max_iter, 300),
                          random_state=self.random_state).fit(X)
            self.cluster_centers_ = km.cluster_centers_.astype(np.float32)
            self.inertia_ = float(km.inertia_)
        else:
            self._fit_faiss(X)
        self.labels_, _ = nearest_centre(X, self.cluster_centers_)
        return self

    def _fit_faiss(self, X):
        import faiss
        from sklearn.cluster import kmeans_plusplus

        n, d = X.shape
        k = int(self.n_clusters)
        rs = np.random.RandomState(self.random_state)
        best = None
        runs = range(max(1, self.n_init))
        for _ in progress(runs, desc="k-means", unit="init") if n * k > 5e6 else runs:
            seed = int(rs.randint(0, 2**31 - 1))
            init, _ = kmeans_plusplus(X, k, random_state=seed)
            km = faiss.Kmeans(d, k, niter=self.max_iter, nredo=1, seed=seed, verbose=False,
                              max_points_per_centroid=int(np.ceil(n / k)) + 1, min_points_per_centroid=1)
            km.train(X, init_centroids=np.ascontiguousarray(init, dtype=np.float32))
            _, dist = nearest_centre(X, km.centroids)
            inertia = float(dist.sum())
            if best is None or inertia < best[0]:
                best = (inertia, km.centroids.copy())
        self.inertia_, self.cluster_centers_ = best[0], best[1].astype(np.float32)


@register("minibatch_kmeans")
class MiniBatchKMeans(CentroidClusterer):
    """scikit-learn's MiniBatchKMeans behind the same array-only state."""

    def __init__(self, n_clusters: int = 8, batch_size: int = 1024, n_init: int = 3, max_iter: int = 100,
                 random_state: int | None = 0):
        self.n_clusters = n_clusters
        self.batch_size = batch_size
        self.n_init = n_init
        self.max_iter = max_iter
        self.random_state = random_state

    def fit(self, X, y=None):
        from sklearn.cluster import MiniBatchKMeans as SKMB

        X = np.asarray(X, dtype=np.float32).reshape(len(X), -1)
        _check_k(self.n_clusters, len(X))
        km = SKMB(self.n_clusters, batch_size=self.batch_size, n_init=self.n_init, max_iter=self.max_iter,
                  random_state=self.random_state).fit(X)
        self.cluster_centers_ = km.cluster_centers_.astype(np.float32)
        self.inertia_ = float(km.inertia_)
        self.labels_ = np.asarray(km.labels_, dtype=np.int64)
        return self


def _as_2d(X) -> np.ndarray:
    X = np.asarray(X, dtype=np.float32)
    X = X.reshape(len(X), -1)
    if not np.all(np.isfinite(X)):
        raise UserError("the embedding holds NaN or inf values; clustering cannot run on them")
    return X


class _NoPredict:
    """For clusterers that have no rule for new points: say so clearly instead of guessing."""

    def predict(self, X):
        raise UserError(
            f"the {self.component_name} clusterer cannot assign new points (it has no model of the clusters "
            "beyond the fitted set); refit on all images, or use a recipe with kmeans or gmm for 'imclust predict'")

    def fit_predict(self, X, y=None):
        return self.fit(X).labels_


@register("gmm")
class GaussianMixture(Component):
    """Gaussian mixture (scikit-learn EM, k-means initialisation); new points go to the most probable component.

    The fitted state is arrays only (weights, means, covariances, precision Cholesky factors).
    """

    def __init__(self, n_clusters: int = 8, covariance_type: str = "full", n_init: int = 1, max_iter: int = 200,
                 reg_covar: float = 1e-6, tol: float = 1e-3, random_state: int | None = 0):
        self.n_clusters = n_clusters
        self.covariance_type = covariance_type
        self.n_init = n_init
        self.max_iter = max_iter
        self.reg_covar = reg_covar
        self.tol = tol
        self.random_state = random_state

    def _sk(self):
        from sklearn.mixture import GaussianMixture as SKGMM

        if self.covariance_type not in ("full", "tied", "diag", "spherical"):
            raise UserError(f"gmm covariance_type {self.covariance_type!r}: use full, tied, diag or spherical")
        return SKGMM(n_components=int(self.n_clusters), covariance_type=self.covariance_type, n_init=int(self.n_init),
                     max_iter=int(self.max_iter), reg_covar=float(self.reg_covar), tol=float(self.tol),
                     random_state=self.random_state)

    def fit(self, X, y=None):
        X = _as_2d(X)
        _check_k(self.n_clusters, len(X))
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            g = self._sk().fit(X.astype(np.float64))
        self.weights_ = g.weights_.astype(np.float64)
        self.means_ = g.means_.astype(np.float64)
        self.covariances_ = g.covariances_.astype(np.float64)
        self.precisions_cholesky_ = g.precisions_cholesky_.astype(np.float64)
        self.converged_ = bool(g.converged_)
        self.n_iter_ = int(g.n_iter_)
        self.lower_bound_ = float(g.lower_bound_)
        self.labels_ = self.predict(X)
        return self

    def _fitted(self):
        g = self._sk()
        for a in ("weights_", "means_", "covariances_", "precisions_cholesky_"):
            setattr(g, a, np.asarray(getattr(self, a), dtype=np.float64))
        if self.covariance_type == "full":
            g.precisions_ = np.einsum("kij,klj->kil", g.precisions_cholesky_, g.precisions_cholesky_)
        elif self.covariance_type == "tied":
            g.precisions_ = g.precisions_cholesky_ @ g.precisions_cholesky_.T
        else:
            g.precisions_ = g.precisions_cholesky_ ** 2
        g.converged_, g.n_iter_, g.lower_bound_ = self.converged_, self.n_iter_, self.lower_bound_
        g.n_features_in_ = g.means_.shape[1]
        return g

    def predict(self, X):
        X = _as_2d(X)
        if X.shape[1] != self.means_.shape[1]:
            raise UserError(f"embedding has {X.shape[1]} dimensions but the model was fitted on {self.means_.shape[1]}")
        return np.asarray(self._fitted().predict(X.astype(np.float64)), dtype=np.int64)

    def predict_proba(self, X):
        return self._fitted().predict_proba(_as_2d(X).astype(np.float64))

    def fit_predict(self, X, y=None):
        return self.fit(X).labels_


@register("agglomerative")
class Agglomerative(_NoPredict, Component):
    """Agglomerative clustering (scikit-learn; ``linkage`` ward, complete, average or single).

    Memory grows as n²; cannot assign new points (``predict`` says so).
    """

    def __init__(self, n_clusters: int = 8, linkage: str = "ward", metric: str = "euclidean"):
        self.n_clusters = n_clusters
        self.linkage = linkage
        self.metric = metric

    def fit(self, X, y=None):
        from sklearn.cluster import AgglomerativeClustering

        X = _as_2d(X)
        _check_k(self.n_clusters, len(X))
        if self.linkage not in ("ward", "complete", "average", "single"):
            raise UserError(f"agglomerative linkage {self.linkage!r}: use ward, complete, average or single")
        if self.linkage == "ward" and self.metric != "euclidean":
            raise UserError("agglomerative ward linkage needs metric = 'euclidean'")
        m = AgglomerativeClustering(n_clusters=int(self.n_clusters), linkage=self.linkage, metric=self.metric).fit(X)
        self.labels_ = np.asarray(m.labels_, dtype=np.int64)
        return self


@register("hdbscan")
class HDBSCAN(_NoPredict, Component):
    """HDBSCAN (scikit-learn ≥ 1.3): finds the number of clusters itself; noise points get label -1.

    ``n_clusters`` is not an option (k is chosen by density). Cannot assign new points.
    """

    def __init__(self, min_cluster_size: int = 20, min_samples: int | None = None, cluster_selection_epsilon: float = 0.0):
        self.min_cluster_size = min_cluster_size
        self.min_samples = min_samples
        self.cluster_selection_epsilon = cluster_selection_epsilon

    def fit(self, X, y=None):
        try:
            from sklearn.cluster import HDBSCAN as SKH
        except ImportError:  # pragma: no cover - scikit-learn < 1.3
            from .errors import NotInstalledError

            raise NotInstalledError("scikit-learn>=1.3", "the hdbscan clusterer") from None
        X = _as_2d(X)
        if not isinstance(self.min_cluster_size, (int, np.integer)) or not 2 <= self.min_cluster_size <= len(X):
            raise UserError(f"hdbscan min_cluster_size must be between 2 and the number of images ({len(X)})")
        m = SKH(min_cluster_size=int(self.min_cluster_size), min_samples=self.min_samples,
                cluster_selection_epsilon=float(self.cluster_selection_epsilon), copy=True).fit(X)  # never edit X
        self.labels_ = np.asarray(m.labels_, dtype=np.int64)
        self.n_clusters_ = int(len(set(self.labels_.tolist()) - {-1}))
        self.n_noise_ = int((self.labels_ == -1).sum())
        log(f"hdbscan found {self.n_clusters_} clusters and {self.n_noise_} noise points (label -1)")
        return self


@register("spectral")
class Spectral(_NoPredict, Component):
    """Spectral clustering on a k-nearest-neighbour graph (scikit-learn). Cannot assign new points."""

    def __init__(self, n_clusters: int = 8, n_neighbors: int = 10, affinity: str = "nearest_neighbors",
                 assign_labels: str = "kmeans", random_state: int | None = 0):
        self.n_clusters = n_clusters
        self.n_neighbors = n_neighbors
        self.affinity = affinity
        self.assign_labels = assign_labels
        self.random_state = random_state

    def fit(self, X, y=None):
        from sklearn.cluster import SpectralClustering

        X = _as_2d(X)
        _check_k(self.n_clusters, len(X))
        if self.affinity not in ("nearest_neighbors", "rbf"):
            raise UserError(f"spectral affinity {self.affinity!r}: use nearest_neighbors or rbf")
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m = SpectralClustering(n_clusters=int(self.n_clusters), affinity=self.affinity,
                                   n_neighbors=int(min(self.n_neighbors, len(X) - 1)), assign_labels=self.assign_labels,
                                   random_state=self.random_state).fit(X)
        self.labels_ = np.asarray(m.labels_, dtype=np.int64)
        return self
