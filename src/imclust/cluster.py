"""Clusterers: embedding → cluster ids. scikit-learn estimators with array-only fitted state.

k-means uses faiss when it is installed (k-means++ seeding, then faiss's Lloyd iterations on *all* points:
``max_points_per_centroid`` is raised so faiss does not silently subsample to 256·k), and scikit-learn
otherwise. Both give the same interface and the same saved state (``cluster_centers_``).

Every clusterer passes scikit-learn's estimator checks (``tests/test_sklearn_contract.py``): input is
checked by :func:`imclust.base.check_input` (bad arrays raise an error that is both a UserError and a
ValueError; nothing is reshaped), ``n_features_in_`` is recorded, and ``n_clusters = "auto"`` makes the
clusterer choose k itself (:func:`resolve_n_clusters`): the choice goes to ``n_clusters_`` and the
``n_clusters`` parameter stays "auto".
"""

from __future__ import annotations

import numpy as np

from sklearn.base import TransformerMixin
from sklearn.utils.validation import check_is_fitted

from .base import Clusterer, check_input, register
from .errors import InvalidInputError, UserError
from .progress import log, progress


def faiss_available() -> bool:
    try:
        import faiss  # noqa: F401

        return True
    except ImportError:
        return False


def _check_k(k, n):
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise InvalidInputError(f"k must be a whole number of at least 1 or 'auto', got {k!r}")
    if k > n:
        raise InvalidInputError(f"k={k} is larger than the number of images (n_samples={n}); "
                                f"choose k between 1 and {n}")


def resolve_n_clusters(n_clusters, X, random_state=0) -> int:
    """The number of clusters to fit: ``n_clusters`` itself (checked against the number of rows), or for
    ``"auto"`` the k chosen on ``X`` by :func:`choose_k`."""
    if isinstance(n_clusters, str) and n_clusters == "auto":
        return int(choose_k(X, random_state=0 if random_state is None else int(random_state))[0])
    _check_k(n_clusters, len(X))
    return int(n_clusters)


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


class CentroidClusterer(TransformerMixin, Clusterer):
    """A clusterer whose model is a set of centres: predict = nearest centre; transform = distances to the centres."""

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float32"]
        return tags

    def predict(self, X):
        check_is_fitted(self)
        X = check_input(self, X, reset=False)
        return nearest_centre(X, self.cluster_centers_)[0]

    def fit_predict(self, X, y=None):
        return self.fit(X).labels_

    def transform(self, X):
        """Distances to each centre (as scikit-learn's KMeans.transform)."""
        check_is_fitted(self)
        X = check_input(self, X, reset=False)
        C = self.cluster_centers_
        d2 = (X * X).sum(1)[:, None] - 2 * X @ C.T + (C * C).sum(1)[None]
        return np.sqrt(np.maximum(d2, 0))


@register("kmeans")
class KMeans(CentroidClusterer):
    """k-means with k-means++ seeding and ``n_init`` restarts (the best inertia wins).

    backend: ``"auto"`` (faiss when installed, else scikit-learn), ``"faiss"`` or ``"sklearn"``. Both run at
    most ``max_iter`` Lloyd iterations (faiss runs exactly that many; scikit-learn stops earlier when it
    converges); ``n_iter_`` is the number run by the restart kept.
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
            raise InvalidInputError(f"unknown k-means backend {self.backend!r}; use auto, faiss or sklearn")
        return self.backend

    def fit(self, X, y=None):
        X = check_input(self, X, reset=True)
        k = self.n_clusters_ = resolve_n_clusters(self.n_clusters, X, self.random_state)
        for what in ("n_init", "max_iter"):
            v = getattr(self, what)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise InvalidInputError(f"kmeans {what} must be a whole number of at least 1, got {v!r}")
        be = self._backend()
        self.backend_ = be
        if be == "sklearn":
            from sklearn.cluster import KMeans as SKKMeans

            km = SKKMeans(k, n_init=int(self.n_init), max_iter=int(self.max_iter), random_state=self.random_state).fit(X)
            self.cluster_centers_ = km.cluster_centers_.astype(np.float32)
            self.inertia_ = float(km.inertia_)
            self.n_iter_ = int(km.n_iter_)
        else:
            self._fit_faiss(X, k)
        self.labels_, _ = nearest_centre(X, self.cluster_centers_)
        return self

    def _fit_faiss(self, X, k: int):
        import faiss
        from sklearn.cluster import kmeans_plusplus

        n, d = X.shape
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
                best = (inertia, km.centroids.copy(), len(km.iteration_stats))
        self.inertia_, self.cluster_centers_, self.n_iter_ = best[0], best[1].astype(np.float32), int(best[2])


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

        X = check_input(self, X, reset=True)
        k = self.n_clusters_ = resolve_n_clusters(self.n_clusters, X, self.random_state)
        km = SKMB(k, batch_size=self.batch_size, n_init=self.n_init, max_iter=self.max_iter,
                  random_state=self.random_state).fit(X)
        self.cluster_centers_ = km.cluster_centers_.astype(np.float32)
        self.inertia_ = float(km.inertia_)
        self.n_iter_ = int(km.n_iter_)
        self.labels_ = np.asarray(km.labels_, dtype=np.int64)
        return self


def choose_k(X, k_min: int = 2, k_max: int = 15, random_state: int = 0, sample: int = 5000) -> tuple[int, dict[int, float]]:
    """Pick k by the silhouette of k-means on (a sample of) X. Returns the best k and the score per k."""
    from sklearn.metrics import silhouette_score

    X = np.asarray(X, dtype=np.float32)
    n = len(X)
    if n < 3:
        raise InvalidInputError(f"cannot choose k automatically for {n} images (n_samples={n}); pass --k")
    rs = np.random.RandomState(random_state)
    Xs = X[rs.choice(n, sample, replace=False)] if n > sample else X
    k_max = min(k_max, len(Xs) - 1)
    scores = {}
    for k in progress(range(k_min, k_max + 1), desc="choose k", unit="k"):
        lab = KMeans(k, n_init=3, random_state=random_state).fit_predict(Xs)
        if len(np.unique(lab)) < 2:
            continue
        scores[k] = float(silhouette_score(Xs, lab, random_state=random_state))
    best = max(scores, key=scores.get)
    log(f"chose k={best} by silhouette (scores: " + ", ".join(f"{k}:{s:.3f}" for k, s in scores.items()) + ")")
    return best, scores


@register("gmm")
class GaussianMixture(Clusterer):
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
            raise InvalidInputError(f"gmm covariance_type {self.covariance_type!r}: use full, tied, diag or spherical")
        return SKGMM(n_components=int(getattr(self, "n_clusters_", self.n_clusters)), covariance_type=self.covariance_type, n_init=int(self.n_init),
                     max_iter=int(self.max_iter), reg_covar=float(self.reg_covar), tol=float(self.tol),
                     random_state=self.random_state)

    def fit(self, X, y=None):
        X = check_input(self, X, reset=True)
        self.n_clusters_ = resolve_n_clusters(self.n_clusters, X, self.random_state)
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
        self.labels_ = np.asarray(self._fitted().predict(X.astype(np.float64)), dtype=np.int64)
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
        check_is_fitted(self)
        X = check_input(self, X, reset=False)
        return np.asarray(self._fitted().predict(X.astype(np.float64)), dtype=np.int64)

    def predict_proba(self, X):
        check_is_fitted(self)
        return self._fitted().predict_proba(check_input(self, X, reset=False).astype(np.float64))

    def fit_predict(self, X, y=None):
        return self.fit(X).labels_


@register("agglomerative")
class Agglomerative(Clusterer):
    """Agglomerative clustering (scikit-learn; ``linkage`` ward, complete, average or single).

    Memory grows as n²; has no ``predict``: it cannot assign new points (a pipeline says so).
    """

    def __init__(self, n_clusters: int = 8, linkage: str = "ward", metric: str = "euclidean"):
        self.n_clusters = n_clusters
        self.linkage = linkage
        self.metric = metric

    def fit(self, X, y=None):
        from sklearn.cluster import AgglomerativeClustering

        X = check_input(self, X, reset=True, min_samples=2)
        k = self.n_clusters_ = resolve_n_clusters(self.n_clusters, X, 0)
        if self.linkage not in ("ward", "complete", "average", "single"):
            raise InvalidInputError(f"agglomerative linkage {self.linkage!r}: use ward, complete, average or single")
        if self.linkage == "ward" and self.metric != "euclidean":
            raise InvalidInputError("agglomerative ward linkage needs metric = 'euclidean'")
        m = AgglomerativeClustering(n_clusters=k, linkage=self.linkage, metric=self.metric).fit(X)
        self.labels_ = np.asarray(m.labels_, dtype=np.int64)
        return self


@register("hdbscan")
class HDBSCAN(Clusterer):
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
        X = check_input(self, X, reset=True, min_samples=2)
        if not isinstance(self.min_cluster_size, (int, np.integer)) or not 2 <= self.min_cluster_size <= len(X):
            raise InvalidInputError(f"hdbscan min_cluster_size must be between 2 and the number of images "
                                    f"(n_samples={len(X)}), got {self.min_cluster_size!r}")
        m = SKH(min_cluster_size=int(self.min_cluster_size), min_samples=self.min_samples,
                cluster_selection_epsilon=float(self.cluster_selection_epsilon), copy=True).fit(X)  # never edit X
        self.labels_ = np.asarray(m.labels_, dtype=np.int64)
        self.n_clusters_ = int(len(set(self.labels_.tolist()) - {-1}))
        self.n_noise_ = int((self.labels_ == -1).sum())
        log(f"hdbscan found {self.n_clusters_} clusters and {self.n_noise_} noise points (label -1)")
        return self


@register("spectral")
class Spectral(Clusterer):
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

        X = check_input(self, X, reset=True, min_samples=2)
        k = self.n_clusters_ = resolve_n_clusters(self.n_clusters, X, self.random_state)
        if self.affinity not in ("nearest_neighbors", "rbf"):
            raise InvalidInputError(f"spectral affinity {self.affinity!r}: use nearest_neighbors or rbf")
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m = SpectralClustering(n_clusters=k, affinity=self.affinity,
                                   n_neighbors=int(min(self.n_neighbors, len(X) - 1)), assign_labels=self.assign_labels,
                                   random_state=self.random_state).fit(X)
        self.labels_ = np.asarray(m.labels_, dtype=np.int64)
        return self
