"""Reducers: features → embedding. scikit-learn estimators with array-only fitted state.

Every reducer passes scikit-learn's estimator checks (``tests/test_sklearn_contract.py``): input goes through
:func:`imclust.base.check_input` (bad arrays raise an error that is both a UserError and a ValueError; a 1-D
array is refused, never reshaped), ``n_features_in_`` is recorded, and ``transform`` before ``fit`` raises
scikit-learn's NotFittedError. Outputs are float32.
"""

from __future__ import annotations

import sys

import numpy as np

from sklearn.utils.validation import check_is_fitted

from .base import Reducer, check_input, register
from .errors import InvalidInputError, UserError


#: rows per block when PCA reads its input (a memory-mapped feature file is never read whole)
PCA_BLOCK_ROWS = 8192


class _Scatter:
    """The scatter matrix of the centred rows of X: Xcᵀ·Xc (d×d) when d ≤ n, else the Gram matrix Xc·Xcᵀ (n×n).

    The d×d case is accumulated over row blocks in float64 (BLAS float32 products), so ``X`` may be a
    memory-mapped array that never sits in memory whole; small problems run on one BLAS thread
    (:func:`imclust.threads.blas_for`). :meth:`top` then takes the leading eigenvectors, several times
    faster than an SVD of Xc.
    """

    def __init__(self, X: np.ndarray, mean: np.ndarray):
        from .threads import blas_for

        n, d = X.shape
        self.n, self.d, self.Xc = n, d, None
        self._blas = lambda: blas_for(float(n) * d * min(n, d))
        with self._blas():
            if d <= n:
                M = np.zeros((d, d))
                for s in range(0, n, PCA_BLOCK_ROWS):
                    B = np.asarray(X[s : s + PCA_BLOCK_ROWS], dtype=np.float32) - mean
                    M += B.T @ B
            else:  # fewer samples than features: a small set, held in memory
                self.Xc = np.ascontiguousarray(X - mean, dtype=np.float32)
                M = (self.Xc @ self.Xc.T).astype(np.float64)
        self.M = M
        self.total = float(np.trace(M))  # the sum of squares of Xc

    def top(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k right singular vectors of Xc (rows) and their squared singular values."""
        m = len(self.M)
        with self._blas():
            if k < m // 4:  # few components: LAPACK's subset solver
                from scipy.linalg import eigh

                w, V = eigh(self.M, subset_by_index=(m - k, m - 1))
            else:  # many: the full divide-and-conquer solver is faster
                w, V = np.linalg.eigh(self.M)
                w, V = w[m - k:], V[:, m - k:]
            order = np.argsort(w)[::-1]
            w, V = np.maximum(w[order], 0), V[:, order]
            if self.Xc is None:
                return V.T, w
            return ((self.Xc.T.astype(np.float64) @ V) / np.sqrt(np.maximum(w, 1e-30))).T, w


@register("pca")
class PCA(Reducer):
    """Principal component analysis with optional whitening.

    ``n_components`` is a count, a variance fraction in (0, 1), or None for all. It is clipped, with a note in
    the log, to min(n_samples - 1, n_features): the rank of the centred data, beyond which a component holds
    rounding noise only (a clusterer that models variances, a GMM say, would fit that noise). The components
    are the leading eigenvectors of the scatter matrix, read from the input in row blocks (:class:`_Scatter`),
    so the input may be a memory-mapped feature file larger than memory.
    """

    def __init__(self, n_components=50, whiten: bool = False, random_state: int | None = 0, eps: float = 1e-8):
        self.n_components = n_components
        self.whiten = whiten
        self.random_state = random_state
        self.eps = eps

    def fit(self, X, y=None):
        X = check_input(self, X, reset=True, min_samples=2)
        n, d = X.shape
        self.mean_ = (sum(np.asarray(X[s : s + PCA_BLOCK_ROWS], dtype=np.float64).sum(0)
                          for s in range(0, n, PCA_BLOCK_ROWS)) / n).astype(np.float32)
        scatter = _Scatter(X, self.mean_)
        nc = self.n_components
        full = min(n - 1, d)  # the centred data's rank at most
        if nc is None or (isinstance(nc, float) and 0 < nc < 1):
            k = full
        else:
            if int(nc) < 1:
                raise InvalidInputError(f"PCA n_components must be at least 1, got {nc}")
            k = min(int(nc), full)
            if k < int(nc):
                from .progress import log

                log(f"PCA: {k} components instead of {int(nc)}: {n} samples of {d} features span at most {full} "
                    "directions around their mean")
        total = scatter.total / max(n - 1, 1)
        if isinstance(nc, float) and 0 < nc < 1 and full > 1024:
            # A variance fraction rarely needs the whole spectrum: try the leading eighth first.
            Vt, var = scatter.top(max(256, full // 8))
            if var.sum() / max(n - 1, 1) < nc * total:
                Vt, var = scatter.top(k)
        else:
            Vt, var = scatter.top(k)
        # sign convention: largest |loading| positive, so results do not flip between solvers
        signs = np.sign(Vt[np.arange(len(Vt)), np.abs(Vt).argmax(axis=1)])
        signs[signs == 0] = 1
        Vt = Vt * signs[:, None]
        var = var / max(n - 1, 1)
        if isinstance(nc, float) and 0 < nc < 1:
            # identical images leave no variance to explain: one direction says all there is
            k = int(np.searchsorted(np.cumsum(var) / total, nc) + 1) if total > 0 else 1
        self.components_ = Vt[:k].astype(np.float32)
        self.explained_variance_ = var[:k].astype(np.float32)
        self.explained_variance_ratio_ = (var[:k] / max(total, 1e-30)).astype(np.float32)
        self.n_components_ = int(k)
        return self

    def transform(self, X):
        check_is_fitted(self)
        X = check_input(self, X, reset=False)
        from .threads import blas_for

        Z = np.empty((len(X), len(self.components_)), np.float32)
        with blas_for(2.0 * X.size * len(self.components_)):  # the project's rule for small products
            for s in range(0, len(X), PCA_BLOCK_ROWS):  # in blocks: X may be a memory-mapped feature file
                Z[s : s + PCA_BLOCK_ROWS] = (X[s : s + PCA_BLOCK_ROWS] - self.mean_) @ self.components_.T
        if self.whiten:
            Z /= np.sqrt(self.explained_variance_ + self.eps)
        return Z

    def fit_transform(self, X, y=None):
        return self.fit(X).transform(X)

    def inverse_transform(self, Z):
        check_is_fitted(self)
        Z = np.asarray(Z, dtype=np.float32)
        if self.whiten:
            Z = Z * np.sqrt(self.explained_variance_ + self.eps)
        return Z @ self.components_ + self.mean_


@register("l2norm")
class L2Normalize(Reducer):
    """Scale each row to unit length (nothing is learned but the number of features)."""

    def __init__(self, eps: float = 1e-12):
        self.eps = eps

    def fit(self, X, y=None):
        check_input(self, X, reset=True)
        return self

    def transform(self, X):
        check_is_fitted(self)
        X = check_input(self, X, reset=False)
        return (X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), self.eps)).astype(np.float32)

    def fit_transform(self, X, y=None):
        return self.fit(X).transform(X)


def _rbf_kernel(A: np.ndarray, B: np.ndarray, gamma: float, block: int = 4096) -> np.ndarray:
    """exp(-gamma·|a-b|²) in float32, computed in row blocks (BLAS matrix products)."""
    A = np.ascontiguousarray(A, dtype=np.float32)
    B = np.ascontiguousarray(B, dtype=np.float32)
    bb = (B * B).sum(1)
    out = np.empty((len(A), len(B)), dtype=np.float32)
    for s in range(0, len(A), block):
        a = A[s : s + block]
        d = (a * a).sum(1)[:, None] + bb[None, :] - 2.0 * (a @ B.T)
        np.maximum(d, 0, out=d)
        d *= -gamma
        np.exp(d, out=d)
        out[s : s + block] = d
    return out


def _top_eigh(K: np.ndarray, k: int, solver: str, random_state, n_oversamples: int = 20, n_iter: int = 7):
    """The k largest eigenpairs of a symmetric PSD matrix: exact (LAPACK subset) or randomized subspace iteration."""
    n = len(K)
    if solver == "dense":
        from scipy.linalg import eigh

        w, V = eigh(K, subset_by_index=[n - k, n - 1], driver="evr", overwrite_a=False)
        return w[::-1], V[:, ::-1]
    rs = np.random.RandomState(random_state)
    p = min(n, k + n_oversamples)
    Q = rs.standard_normal((n, p)).astype(K.dtype)
    Q, _ = np.linalg.qr(K @ Q)
    for _ in range(n_iter):
        Q, _ = np.linalg.qr(K @ Q)
    B = Q.T @ (K @ Q)
    w, U = np.linalg.eigh((B + B.T) / 2)
    order = np.argsort(w)[::-1][:k]
    return w[order], Q @ U[:, order]


@register("kernel_pca")
class KernelPCA(Reducer):
    """Kernel PCA with an RBF kernel (the tutorial-1 reducer), exact or Nyström.

    ``method``: ``"exact"`` builds the full n×n kernel (n² memory, as scikit-learn does); ``"nystroem"``
    uses ``n_landmarks`` random landmarks (memory n·m, so 50k samples fit) and is PCA on the Nyström
    feature map; ``"auto"`` is exact up to ``exact_max`` samples and Nyström above. ``gamma`` defaults to
    1/n_features (scikit-learn's default). ``eigen_solver``: ``"dense"`` (LAPACK, exact),
    ``"randomized"`` (subspace iteration: the same leading components to float precision on RBF kernels,
    whose spectrum decays fast, at a fraction of the time), or ``"auto"`` (randomized when fewer than n/4
    components are asked). The kernel is computed in float32.

    New points are placed with the fitted kernel expansion; in exact mode that needs the training features,
    which are saved with the model unless ``store_training_data = false`` (then ``transform`` of new
    points is refused with a clear message).
    """

    def __init__(self, n_components: int = 200, kernel: str = "rbf", gamma: float | None = None, method: str = "auto",
                 n_landmarks: int = 2000, exact_max: int = 20000, eigen_solver: str = "auto",
                 store_training_data: bool = True, random_state: int | None = 0):
        self.n_components = n_components
        self.kernel = kernel
        self.gamma = gamma
        self.method = method
        self.n_landmarks = n_landmarks
        self.exact_max = exact_max
        self.eigen_solver = eigen_solver
        self.store_training_data = store_training_data
        self.random_state = random_state

    def _check(self):
        if self.kernel != "rbf":
            raise InvalidInputError(f"kernel_pca supports kernel='rbf' only, got {self.kernel!r}")
        if self.method not in ("auto", "exact", "nystroem"):
            raise InvalidInputError(f"kernel_pca method {self.method!r}: use auto, exact or nystroem")
        if self.eigen_solver not in ("auto", "dense", "randomized"):
            raise InvalidInputError(f"kernel_pca eigen_solver {self.eigen_solver!r}: use auto, dense or randomized")
        if not isinstance(self.n_components, (int, np.integer)) or self.n_components < 1:
            raise InvalidInputError(f"kernel_pca n_components must be a whole number of at least 1, got {self.n_components!r}")

    def fit(self, X, y=None):
        self.fit_transform(X)
        return self

    def fit_transform(self, X, y=None):
        X = check_input(self, X, reset=True, min_samples=2)
        self._check()
        n, d = X.shape
        self.gamma_ = float(self.gamma if self.gamma is not None else 1.0 / d)
        method = self.method if self.method != "auto" else ("exact" if n <= self.exact_max else "nystroem")
        self.method_ = method
        if method == "exact":
            k = min(int(self.n_components), n)
            K = _rbf_kernel(X, X, self.gamma_)
            col_mean = K.mean(0)
            all_mean = float(col_mean.mean())
            K -= col_mean[None, :]
            K -= col_mean[:, None]
            K += all_mean
            solver = self.eigen_solver
            if solver == "auto":
                solver = "randomized" if k < n / 4 else "dense"
            w, V = _top_eigh(K, k, solver, self.random_state)
            del K
            w = np.maximum(w, 0)
            keep = w > 1e-12 * max(float(w[0]) if len(w) else 0.0, 1e-30)
            self.eigenvalues_ = w.astype(np.float32)
            self.k_col_mean_ = col_mean.astype(np.float32)
            self.k_all_mean_ = all_mean
            scale = np.where(keep, 1.0 / np.sqrt(np.where(keep, w, 1.0)), 0.0)
            self.dual_coef_ = (V * scale[None, :]).astype(np.float32)  # maps centred kernel rows to components
            self.n_components_ = int(k)
            if self.store_training_data:
                self.X_fit_ = X
            return (V * np.sqrt(w)[None, :]).astype(np.float32)
        # Nyström: landmarks L, features phi(x) = k(x, L) · K_LL^{-1/2}, then linear PCA on phi
        m = min(int(self.n_landmarks), n)
        rs = np.random.RandomState(self.random_state)
        L = X[np.sort(rs.choice(n, m, replace=False))]
        Kll = _rbf_kernel(L, L, self.gamma_).astype(np.float64)
        w, U = np.linalg.eigh(Kll)
        w = np.maximum(w, 1e-12 * w.max())
        self.landmarks_ = L
        self.nys_map_ = (U / np.sqrt(w)[None, :]).astype(np.float32)
        Phi = _rbf_kernel(X, L, self.gamma_) @ self.nys_map_
        k = min(int(self.n_components), m, n)
        self.pca_ = PCA(k, random_state=self.random_state).fit(Phi)
        self.n_components_ = int(k)
        return self.pca_.transform(Phi)

    def transform(self, X):
        check_is_fitted(self)
        X = check_input(self, X, reset=False)
        if getattr(self, "method_", None) == "nystroem":
            return self.pca_.transform(_rbf_kernel(X, self.landmarks_, self.gamma_) @ self.nys_map_)
        if getattr(self, "X_fit_", None) is None:
            raise UserError("this kernel_pca was fitted with store_training_data = false, so it cannot place new "
                            "points; refit with store_training_data = true or method = 'nystroem'")
        Kt = _rbf_kernel(X, self.X_fit_, self.gamma_)
        Kt -= Kt.mean(1, keepdims=True)
        Kt -= self.k_col_mean_[None, :]
        Kt += self.k_all_mean_
        return (Kt @ self.dual_coef_).astype(np.float32)

    # the Nyström PCA is a nested component: flatten its arrays into ours
    def get_state(self):
        arrays, extra = super().get_state()
        if getattr(self, "pca_", None) is not None:
            a, e = self.pca_.get_state()
            arrays.update({f"pca.{k}": v for k, v in a.items()})
            extra["pca"] = {"params": self.pca_.get_params(), "state": e}
        return arrays, extra

    def set_state(self, arrays, extra):
        extra = dict(extra)
        p = extra.pop("pca", None)
        super().set_state({k: v for k, v in arrays.items() if not k.startswith("pca.")}, extra)
        if p is not None:
            self.pca_ = PCA(**p["params"])
            self.pca_.set_state({k[4:]: v for k, v in arrays.items() if k.startswith("pca.")}, p["state"])


class _KNNPlacement:
    """Out-of-sample placement for embeddings that have no transform of their own (t-SNE, UMAP).

    A new point is placed at the inverse-distance-weighted mean of the embeddings of its ``k`` nearest
    training points (in the reducer's input space). This is the same initial placement UMAP's own
    ``transform`` starts from; it keeps the saved state to two arrays. With ``out_of_sample = "none"``
    the training data are not stored and ``transform`` of new points is refused with a clear message.
    """

    def _placement_features(self, X):
        """The columns of the input that place new points (all of them here)."""
        return X

    def _place(self, F):
        from .manifold import place_by_neighbours

        return place_by_neighbours(self.train_X_, self.train_embedding_, F, int(self.placement_neighbors))

    def _store_for_placement(self, X, emb):
        if self.out_of_sample == "knn":
            self.train_X_ = np.ascontiguousarray(self._placement_features(X), dtype=np.float32)
            self.train_embedding_ = np.ascontiguousarray(emb, dtype=np.float32)
        elif self.out_of_sample != "none":
            raise UserError(f"{self.component_name} out_of_sample {self.out_of_sample!r}: use knn or none")

    def transform(self, X):
        check_is_fitted(self)
        X = check_input(self, X, reset=False)
        if getattr(self, "train_X_", None) is None:
            raise UserError(f"{self.component_name} cannot place new points: it was fitted with out_of_sample = 'none'; "
                            "refit with out_of_sample = 'knn'")
        return self._place(self._placement_features(X))


def opentsne_available() -> bool:
    try:
        import openTSNE  # noqa: F401

        return True
    except ImportError:
        return False


@register("tsne")
class TSNE(_KNNPlacement, Reducer):
    """t-SNE: openTSNE (FFT-accelerated) when installed, scikit-learn otherwise (``backend`` = auto,
    opentsne or sklearn; asking for opentsne when it is missing is an error, not a fallback).

    ``n_iter`` counts all iterations, the 250 of early exaggeration included (scikit-learn's
    ``max_iter`` convention; default 1000 as there). New points: see the k-nearest-neighbour placement
    (``out_of_sample``, ``placement_neighbors``).

    openTSNE settings: ``neighbors`` finds each point's 3·perplexity nearest neighbours for the affinities:
    ``exact`` (brute force, O(n²)), ``approx`` (openTSNE's approximate search) or ``auto`` (exact up to
    10,000 points, where it is the faster one). The repulsive forces use Barnes-Hut below 5,000 points in 2-D
    and FFT interpolation from there on; ``fft_ints_in_interval`` sets the FFT grid's interval length in
    embedding units (openTSNE's default is 1). With both changes the t-SNE step of the tutorial-1 chain on
    9,000 images went from 63 s to 16 s at the same 2-means ACC (``benchmarks/hw9_chain.py``, RESULTS.md).
    """

    def __init__(self, n_components: int = 2, perplexity: float = 30.0, n_iter: int = 1000, backend: str = "auto",
                 n_jobs: int = -1, neighbors: str = "auto", fft_ints_in_interval: float = 2.0,
                 out_of_sample: str = "knn", placement_neighbors: int = 10, random_state: int | None = 0):
        self.n_components = n_components
        self.perplexity = perplexity
        self.n_iter = n_iter
        self.backend = backend
        self.n_jobs = n_jobs
        self.neighbors = neighbors
        self.fft_ints_in_interval = fft_ints_in_interval
        self.out_of_sample = out_of_sample
        self.placement_neighbors = placement_neighbors
        self.random_state = random_state

    def _backend(self) -> str:
        if self.backend == "auto":
            return "opentsne" if opentsne_available() else "sklearn"
        if self.backend == "opentsne" and not opentsne_available():
            from .errors import NotInstalledError

            raise NotInstalledError("openTSNE", "t-SNE with backend='opentsne'")
        if self.backend not in ("opentsne", "sklearn"):
            raise UserError(f"unknown t-SNE backend {self.backend!r}; use auto, opentsne or sklearn")
        return self.backend

    def fit(self, X, y=None):
        self.fit_transform(X)
        return self

    def fit_transform(self, X, y=None):
        X = check_input(self, X, reset=True, min_samples=4)
        n = len(X)
        perplexity = float(min(self.perplexity, (n - 1) / 3))
        be = self._backend()
        self.backend_ = be
        if self.neighbors not in ("auto", "exact", "approx"):
            raise UserError(f"t-SNE neighbors={self.neighbors!r}: use auto, exact or approx")
        if not float(self.fft_ints_in_interval) > 0:
            raise UserError(f"t-SNE fft_ints_in_interval={self.fft_ints_in_interval}: give a positive number, e.g. 2")
        from .progress import log

        log(f"t-SNE ({be}) on {n} points, perplexity {perplexity:g}")
        if be == "opentsne":
            from openTSNE import TSNE as OTSNE

            # FFT interpolation pays off on large sets; on small ones its grid costs more than Barnes-Hut
            method = "fft" if self.n_components <= 2 and n >= 5000 else "bh"
            exact = self.neighbors == "exact" or (self.neighbors == "auto" and n <= 10_000)
            emb = OTSNE(n_components=int(self.n_components), perplexity=perplexity,
                        early_exaggeration_iter=min(250, int(self.n_iter)), n_iter=max(0, int(self.n_iter) - 250),
                        negative_gradient_method=method, ints_in_interval=float(self.fft_ints_in_interval),
                        neighbors="exact" if exact else "auto", n_jobs=self.n_jobs,
                        random_state=self.random_state, verbose=False).fit(X)
            emb = np.asarray(emb, dtype=np.float32)
        else:
            from sklearn.manifold import TSNE as SKTSNE

            kw = dict(n_components=int(self.n_components), perplexity=perplexity, random_state=self.random_state,
                      n_jobs=self.n_jobs, init="pca",
                      method="barnes_hut" if self.n_components <= 3 else "exact")
            try:
                est = SKTSNE(max_iter=int(self.n_iter), **kw)
            except TypeError:  # scikit-learn < 1.5
                est = SKTSNE(n_iter=int(self.n_iter), **kw)
            emb = est.fit_transform(X).astype(np.float32)
        self._store_for_placement(X, emb)
        return emb


def umap_available() -> bool:
    try:
        import umap  # noqa: F401

        return True
    except ImportError:
        return False


UMAP_BACKENDS = ("imclust", "umap-learn")


@register("umap")
class UMAP(_KNNPlacement, Reducer):
    """UMAP: our own fast implementation (``backend = "imclust"``, the default) or umap-learn's.

    ``backend = "imclust"`` (:mod:`imclust.manifold`): faiss neighbour graph, UMAP's fuzzy simplicial set,
    spectral start and a vectorised numpy layout; nothing is compiled at run time, and a seed gives the
    same embedding every time. ``backend = "umap-learn"``: the umap-learn package (the optional ``umap``
    extra; missing → NotInstalledError, never a fallback), with numba's on-disk cache switched on where
    numba allows it (:func:`imclust.numba_cache.enable_umap_cache`).

    ``n_components``, ``n_neighbors``, ``min_dist``, ``metric`` (euclidean or cosine with our backend; any
    umap-learn metric with its backend) and ``n_epochs`` (None: 500 up to 10,000 points, 200 above, as in
    umap-learn) mean the same for both. With a ``random_state`` umap-learn runs single-threaded and is
    reproducible; ``random_state = -1`` lets it run in parallel (faster, not reproducible); our backend is
    reproducible either way. New points: k-nearest-neighbour placement (see the base).

    ``views = "intersect"`` (our backend, first reducer after a ``views`` encoder): one neighbour graph per
    view of the encoder, fused by fuzzy intersection (:func:`imclust.manifold.intersect_graphs`), so the
    layout keeps the neighbours the views agree on. ``views = "joint"``: one graph of all the columns.

    ``subspace = "NAME"`` (with ``views = "intersect"``): the encoder's view NAME (raw pixels, say) takes no
    part in the neighbour graph; instead its self-expressive graph (:func:`imclust.manifold.self_expressive_graph`,
    ``subspace_ridge``) competes with the other views' shared-neighbour graph. Both are laid out and cut
    into k groups by k-means; the layout whose groups are cut more cleanly from their own graph (the lower
    :func:`imclust.manifold.mean_conductance`) is kept, and ``graph_choice_`` records both scores. k is the
    run's number of clusters (the pipeline passes it); when k is chosen automatically, the geometric middle
    of its range; the pipeline then compares the layouts again at the k it chooses on the kept one and keeps
    the cleanest there, so that the run gives the clusters of a run with that k given
    (``graph_choice_["compared_at"]`` lists the comparisons). Labels are never read. Only the columns of the
    kept graph's views are stored, and new points are placed by them alone (by self-expression where the
    subspace graph was kept).

    ``optional_view = "NAME"`` (with ``views = "intersect"``): the view NAME joins the shared-neighbour graph
    only where that helps, and may stand alone. The graph of the other views without it, and NAME's own graph
    alone, compete too, by the same rule (the lower mean conductance of each layout's k groups on its own
    graph): a view whose neighbours agree with the other views' leaves their intersection cleanly cut and is
    kept; one that disagrees fragments it and is left out; one whose own groups are cut more cleanly than
    any intersection's is laid out by itself (a pretrained view that already separates the images, where the
    other views only blur its groups' edges). With ``subspace`` as well, four graphs compete.
    """

    VIEW_MODES = ("joint", "intersect")
    #: the graphs that compete (``subspace``, ``optional_view``), as the log and ``graph_choice_`` name them
    SHARED, SUBSPACE = "shared neighbours", "subspace"
    WITHOUT = "shared neighbours without {view}"
    ALONE = "{view} alone"

    def __init__(self, n_components: int = 10, n_neighbors: int = 15, min_dist: float = 0.0, metric: str = "euclidean",
                 n_epochs: int | None = None, backend: str = "imclust", out_of_sample: str = "knn",
                 placement_neighbors: int = 10, views: str = "joint", subspace: str | None = None,
                 subspace_ridge: float = 1.0, optional_view: str | None = None, random_state: int | None = 0):
        self.n_components = n_components
        self.n_neighbors = n_neighbors
        self.min_dist = min_dist
        self.metric = metric
        self.n_epochs = n_epochs
        self.backend = backend
        self.out_of_sample = out_of_sample
        self.placement_neighbors = placement_neighbors
        self.views = views
        self.subspace = subspace
        self.subspace_ridge = subspace_ridge
        self.optional_view = optional_view
        self.random_state = random_state

    def set_views(self, dims: list[int] | None, names: list[str] | None = None) -> None:
        """The widths (and names) of the encoder's views in the columns to come (the pipeline calls this for
        its first reducer; None when the encoder has no views)."""
        self._view_dims = None if dims is None else [int(d) for d in dims]
        self._view_names = None if names is None else [str(v) for v in names]

    def set_n_clusters(self, k) -> None:
        """The run's number of clusters (a whole number, or ``"auto"``/``"auto:MIN-MAX"``): the k at which the
        competing graphs (``subspace``, ``optional_view``) are compared."""
        self._n_clusters = k

    def fit(self, X, y=None):
        self.fit_transform(X)
        return self

    def fit_transform(self, X, y=None):
        if self.backend not in UMAP_BACKENDS:
            raise UserError(f"umap backend {self.backend!r}: use {' or '.join(UMAP_BACKENDS)}")
        if self.backend == "umap-learn" and not umap_available():
            from .errors import NotInstalledError

            raise NotInstalledError("umap-learn", "the umap reducer with backend 'umap-learn'", extra="umap")
        X = check_input(self, X, reset=True, min_samples=3)
        if not isinstance(self.n_components, (int, np.integer)) or self.n_components < 1:
            raise UserError(f"umap n_components must be a whole number of at least 1, got {self.n_components!r}")
        if not isinstance(self.n_neighbors, (int, np.integer)) or self.n_neighbors < 2:
            raise UserError(f"umap n_neighbors must be a whole number of at least 2, got {self.n_neighbors!r}")
        if self.n_epochs is not None and (not isinstance(self.n_epochs, (int, np.integer)) or self.n_epochs < 1):
            raise UserError(f"umap n_epochs must be a whole number of at least 1 (or None), got {self.n_epochs!r}")
        if self.views not in self.VIEW_MODES:
            raise UserError(f"umap views {self.views!r}: use {' or '.join(self.VIEW_MODES)}")
        if self.views == "intersect" and self.backend != "imclust":
            raise UserError("umap views = 'intersect' needs backend = 'imclust' (umap-learn builds one graph)")
        if self.views == "intersect" and getattr(self, "_view_dims", None) is None:
            raise UserError("umap views = 'intersect' needs a 'views' encoder right before it (no reducer in "
                            "between); with another encoder use views = 'joint'")
        if self.subspace is not None:
            names = getattr(self, "_view_names", None) or []
            if self.views != "intersect":
                raise UserError(f"umap subspace = {self.subspace!r} needs views = 'intersect'")
            if self.subspace not in names:
                raise UserError(f"umap subspace = {self.subspace!r}: the encoder has no view of that name "
                                f"(its views: {', '.join(names) or 'none'})")
            if len(names) < 2:
                raise UserError(f"umap subspace = {self.subspace!r}: the encoder needs at least one other view "
                                "for the neighbour graph it competes with")
            if isinstance(self.subspace_ridge, bool) or not isinstance(self.subspace_ridge, (int, float)) \
                    or not self.subspace_ridge > 0:
                raise UserError(f"umap subspace_ridge must be a number above 0, got {self.subspace_ridge!r}")
        if self.optional_view is not None:
            names = getattr(self, "_view_names", None) or []
            if self.views != "intersect":
                raise UserError(f"umap optional_view = {self.optional_view!r} needs views = 'intersect'")
            if self.optional_view not in names or self.optional_view == self.subspace:
                neighbour_views = [v for v in names if v != self.subspace]
                raise UserError(f"umap optional_view = {self.optional_view!r}: name one of the views in the "
                                f"neighbour graph ({', '.join(neighbour_views) or 'none'})")
            if len([v for v in names if v != self.subspace]) < 2:
                raise UserError(f"umap optional_view = {self.optional_view!r}: the neighbour graph needs at least "
                                "one other view to fall back on")
        self._competition = None  # the layouts of an earlier fit's graphs
        if self.backend == "imclust":
            emb = self._fit_imclust(X)
        else:
            emb = self._fit_umap_learn(X)
        if not self._compares_graphs:  # keep_graph has stored what the kept layout places new points by
            self._store_for_placement(X, emb)
        return emb

    @property
    def _compares_graphs(self) -> bool:
        return self.subspace is not None or self.optional_view is not None

    def _fit_imclust(self, X):
        from .manifold import umap_embedding

        if self.metric not in ("euclidean", "cosine"):
            raise UserError(f"umap metric {self.metric!r}: the imclust backend takes euclidean or cosine; "
                            "other metrics need backend = 'umap-learn'")
        seed = None if self.random_state in (None, -1) else int(self.random_state)
        if self._compares_graphs:
            return self._fit_choosing_graph(X, seed)
        return umap_embedding(X, n_components=int(self.n_components), n_neighbors=int(self.n_neighbors),
                              min_dist=float(self.min_dist), n_epochs=self.n_epochs, metric=self.metric, seed=seed,
                              views=self._view_dims if self.views == "intersect" else None)

    # New points are placed in the columns of the views whose graph was laid out (only those are kept in the
    # model): by their nearest training points, or, where the subspace graph won, by the training points that
    # express them best (:func:`imclust.manifold.place_by_self_expression`).
    def _placement_features(self, X):
        choice = getattr(self, "graph_choice_", None)
        if choice is None:
            return X
        return np.hstack([X[:, a:b] for a, b in choice["columns"]])

    def _place(self, F):
        choice = getattr(self, "graph_choice_", None)
        if choice is None or choice["chosen"] != self.SUBSPACE:
            return super()._place(F)
        from .manifold import place_by_self_expression

        return place_by_self_expression(self.train_X_, self.train_embedding_, F, int(self.placement_neighbors),
                                        float(self.subspace_ridge))

    def _comparison_k(self, n: int) -> int:
        from .kselect import is_auto, parse_auto

        k = getattr(self, "_n_clusters", None)
        if k is None or is_auto(k):
            lo, hi = parse_auto(k or "auto", n)
            return int(round(np.sqrt(lo * hi)))
        return int(min(int(k), n - 1))  # k-means needs fewer groups than points

    def _competing_graphs(self, X, seed) -> dict:
        """Name -> (graph, input columns of its views): the shared-neighbour graph of the views other than
        ``subspace``; the same without ``optional_view``; ``optional_view``'s own graph; the ``subspace`` view's
        self-expressive graph."""
        from .manifold import intersect_graphs, per_view_graphs, self_expressive_graph

        bounds = np.cumsum([0] + self._view_dims)
        blocks = dict(zip(self._view_names, zip(bounds[:-1], bounds[1:])))
        neighbour_views = [v for v in self._view_names if v != self.subspace]
        # each view's own graph is built once; the competing shared graphs intersect different sets of them
        cols = [blocks[v] for v in neighbour_views]
        own = dict(zip(neighbour_views, per_view_graphs(np.hstack([X[:, lo:hi] for lo, hi in cols]),
                                                        int(self.n_neighbors), self.metric, seed,
                                                        views=[hi - lo for lo, hi in cols])))

        def shared(names):
            columns = [[int(lo), int(hi)] for lo, hi in (blocks[v] for v in names)]
            return intersect_graphs([own[v] for v in names]), columns

        graphs = {self.SHARED: shared(neighbour_views)}
        if self.optional_view is not None:
            graphs[self.WITHOUT.format(view=self.optional_view)] = shared(
                [v for v in neighbour_views if v != self.optional_view])
            graphs[self.ALONE.format(view=self.optional_view)] = shared([self.optional_view])
        if self.subspace is not None:
            a, b = blocks[self.subspace]
            graphs[self.SUBSPACE] = (self_expressive_graph(X[:, a:b], int(self.n_neighbors), float(self.subspace_ridge)),
                                     [[int(a), int(b)]])
        return graphs

    def _fit_choosing_graph(self, X, seed):
        """Lay out each competing graph (:meth:`_competing_graphs`) and keep the layout whose k-means groups are
        cut most cleanly from their own graph."""
        from .kselect import is_auto
        from .manifold import graph_layout

        graphs = self._competing_graphs(X, seed)
        layouts = {name: graph_layout(G, X, int(self.n_components), float(self.min_dist), n_epochs=self.n_epochs,
                                      seed=seed, desc=f"UMAP layout ({name})") for name, (G, _) in graphs.items()}
        # unless k was given, every layout stays in memory (not in the saved model) until the run has settled on
        # a graph: under --k auto the pipeline compares them again at the k it chooses (:meth:`keep_graph`)
        self._competition = {"X": X, "graphs": graphs, "layouts": layouts, "seed": seed}
        self.graph_choice_ = None
        k = self._comparison_k(len(X))
        scores = self.graph_scores(k)
        emb = self.keep_graph(min(scores, key=scores.get), k, scores)  # a tie keeps the first: every view's graph
        asked = getattr(self, "_n_clusters", None)
        if asked is not None and not is_auto(asked):
            self.release_graphs()  # k was given: this comparison is the last, nothing needs the other layouts
        return emb

    def graph_scores(self, k: int) -> dict:
        """Graph name -> mean conductance of ``k`` k-means groups of its layout on the graph itself (lower is
        cleaner), for each graph laid out by the last fit (empty where the fit compared no graphs)."""
        from sklearn.cluster import KMeans

        from .manifold import mean_conductance

        competition = getattr(self, "_competition", None)
        if competition is None:
            return {}
        seed = competition["seed"]
        k = int(min(int(k), len(competition["X"]) - 1))  # k-means needs fewer groups than points
        scores = {}
        for name, (G, _) in competition["graphs"].items():
            groups = KMeans(k, n_init=3, random_state=0 if seed is None else seed).fit_predict(
                competition["layouts"][name])
            scores[name] = round(mean_conductance(G, groups), 4)
        return scores

    def keep_graph(self, name: str, k: int, scores: dict) -> np.ndarray:
        """Keep the layout of graph ``name`` (one laid out by the last fit), as compared at ``k`` with ``scores``
        (:meth:`graph_scores`): it becomes the embedding, and new points are placed by its views' columns.
        ``graph_choice_["compared_at"]`` lists every comparison made, as [k, the cleanest graph]."""
        from .progress import log

        competition = self._competition
        earlier = (self.graph_choice_ or {}).get("compared_at", [])
        self.graph_choice_ = {"k": int(k), "mean_conductance": scores, "chosen": name, "subspace_view": self.subspace,
                              "optional_view": self.optional_view, "columns": competition["graphs"][name][1],
                              "compared_at": [*earlier, [int(k), min(scores, key=scores.get)]]}
        log(f"UMAP: laid out the {name} graph (mean conductance of {k} k-means groups on their own graph: " +
            ", ".join(f"{g} {v:.3f}" for g, v in scores.items()) + "; lower is cleaner)")
        emb = competition["layouts"][name]
        self._store_for_placement(competition["X"], emb)
        return emb

    def release_graphs(self) -> None:
        """Drop the layouts and graphs kept for :meth:`keep_graph` (the run has settled on one)."""
        self._competition = None

    def _fit_umap_learn(self, X):
        import warnings

        from .numba_cache import enable_umap_cache

        enable_umap_cache()
        import umap

        n = len(X)
        rs = None if self.random_state in (None, -1) else int(self.random_state)
        # numba's parallel layer shares torch's OpenMP runtime and leaves torch's intra-op thread count at the
        # core count; keep the caller's choice (e.g. `imclust run --threads 1`) for the torch work after UMAP
        torch = sys.modules.get("torch")
        torch_threads = torch.get_num_threads() if torch is not None else None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # the spectral start needs more points than dimensions; below that the layout starts at random
            est = umap.UMAP(n_components=int(self.n_components), n_neighbors=int(min(self.n_neighbors, n - 1)),
                            min_dist=float(self.min_dist), metric=self.metric, n_epochs=self.n_epochs,
                            init="spectral" if n > int(self.n_components) + 1 else "random",
                            random_state=rs, verbose=False)
            try:
                return np.asarray(est.fit_transform(X), dtype=np.float32)
            finally:
                if torch_threads is not None and torch.get_num_threads() != torch_threads:
                    torch.set_num_threads(torch_threads)
