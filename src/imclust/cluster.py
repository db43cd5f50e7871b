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


def choose_k(X, k_min: int = 2, k_max: int = 15, random_state: int = 0, sample: int = 5000) -> tuple[int, dict[int, float]]:
    """Pick k by the silhouette of k-means on (a sample of) X. Returns the best k and the score per k."""
    from sklearn.metrics import silhouette_score

    X = np.asarray(X, dtype=np.float32).reshape(len(X), -1)
    n = len(X)
    if n < 3:
        raise UserError(f"cannot choose k automatically for {n} images; pass --k")
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
