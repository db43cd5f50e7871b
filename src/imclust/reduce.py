"""Reducers: features → embedding. scikit-learn estimators with array-only fitted state."""

from __future__ import annotations

import numpy as np

from .base import Component, register
from .errors import UserError


def _top_eigvecs(Xc: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k right singular vectors of centred Xc and their squared singular values.

    Uses the eigen-decomposition of the smaller of the covariance (d×d) and Gram (n×n) matrices: one
    BLAS matrix product plus a small symmetric eigensolve, several times faster than an SVD of Xc.
    """
    n, d = Xc.shape

    def eigh(M, subset_by_index):
        lo, hi = subset_by_index
        if hi - lo + 1 < len(M) // 4:  # few components: LAPACK's subset solver
            from scipy.linalg import eigh as sp_eigh

            return sp_eigh(M, subset_by_index=subset_by_index)
        w, V = np.linalg.eigh(M)  # many: the full divide-and-conquer solver is faster
        return w[lo:], V[:, lo:]

    Xf = np.ascontiguousarray(Xc, dtype=np.float32)  # float32 product (fast BLAS), float64 eigensolve
    if d <= n:
        C = (Xf.T @ Xf).astype(np.float64)
        w, V = eigh(C, subset_by_index=(d - k, d - 1))
        order = np.argsort(w)[::-1]
        return V[:, order].T, np.maximum(w[order], 0)
    G = (Xf @ Xf.T).astype(np.float64)
    w, U = eigh(G, subset_by_index=(n - k, n - 1))
    order = np.argsort(w)[::-1]
    w, U = np.maximum(w[order], 0), U[:, order]
    V = (Xf.T.astype(np.float64) @ U) / np.sqrt(np.maximum(w, 1e-30))
    return V.T, w


@register("pca")
class PCA(Component):
    """Principal component analysis with optional whitening.

    ``n_components`` is a count, a variance fraction in (0, 1), or None for all. It is clipped to
    min(n_samples, n_features) with a note. Uses a randomized SVD when few components are asked of many
    features (much faster than a full SVD, same result to float precision on the leading components).
    """

    def __init__(self, n_components=50, whiten: bool = False, random_state: int | None = 0, eps: float = 1e-8):
        self.n_components = n_components
        self.whiten = whiten
        self.random_state = random_state
        self.eps = eps

    def fit(self, X, y=None):
        X = np.asarray(X, dtype=np.float32).reshape(len(X), -1)
        n, d = X.shape
        if n < 2:
            raise UserError("PCA needs at least 2 samples")
        self.mean_ = X.mean(axis=0)
        Xc = X - self.mean_
        nc = self.n_components
        full = min(n, d)
        if nc is None or (isinstance(nc, float) and 0 < nc < 1):
            k = full
        else:
            k = min(int(nc), full)
            if k < 1:
                raise UserError(f"PCA n_components must be at least 1, got {nc}")
        Vt, var = _top_eigvecs(Xc, k)
        # sign convention: largest |loading| positive, so results do not flip between solvers
        signs = np.sign(Vt[np.arange(len(Vt)), np.abs(Vt).argmax(axis=1)])
        signs[signs == 0] = 1
        Vt = Vt * signs[:, None]
        var = var / max(n - 1, 1)
        total = float((Xc.astype(np.float64) ** 2).sum() / max(n - 1, 1))
        if isinstance(nc, float) and 0 < nc < 1:
            k = int(np.searchsorted(np.cumsum(var) / total, nc) + 1)
        self.components_ = Vt[:k].astype(np.float32)
        self.explained_variance_ = var[:k].astype(np.float32)
        self.explained_variance_ratio_ = (var[:k] / max(total, 1e-30)).astype(np.float32)
        self.n_components_ = int(k)
        return self

    def transform(self, X):
        X = np.asarray(X, dtype=np.float32).reshape(len(X), -1)
        Z = (X - self.mean_) @ self.components_.T
        if self.whiten:
            Z = Z / np.sqrt(self.explained_variance_ + self.eps)
        return Z.astype(np.float32)

    def fit_transform(self, X, y=None):
        return self.fit(X).transform(X)

    def inverse_transform(self, Z):
        Z = np.asarray(Z, dtype=np.float32)
        if self.whiten:
            Z = Z * np.sqrt(self.explained_variance_ + self.eps)
        return Z @ self.components_ + self.mean_


@register("l2norm")
class L2Normalize(Component):
    """Scale each row to unit length (stateless)."""

    def __init__(self, eps: float = 1e-12):
        self.eps = eps

    def fit(self, X, y=None):
        self.n_features_in_ = int(np.asarray(X).reshape(len(X), -1).shape[1])
        return self

    def transform(self, X):
        X = np.asarray(X, dtype=np.float32).reshape(len(X), -1)
        return X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), self.eps)

    def fit_transform(self, X, y=None):
        return self.fit(X).transform(X)
