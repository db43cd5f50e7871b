"""The fast manifold path: UMAP's method without numba, so no process pays a JIT compile.

UMAP (McInnes, Healy & Melville, 2018) in four steps, each on a well-kept library or in plain numpy:

1. **Neighbour graph** (:func:`nearest_neighbors`): faiss, exact (``IndexFlatL2``) up to ``exact_max`` points,
   an inverted-file index (``IndexIVFFlat``) beyond.
2. **Fuzzy simplicial set** (:func:`fuzzy_simplicial_set`): UMAP's smooth-kNN calibration (per point, the
   distance ``rho`` to the nearest neighbour and a bandwidth ``sigma`` so the memberships sum to
   ``log2(k)``), then the fuzzy union ``P + Pᵀ - P∘Pᵀ``. Vectorised bisection over all points at once.
3. **Spectral start** (:func:`spectral_init`): the leading eigenvectors of the normalised adjacency (scipy's
   ARPACK); each connected component laid out on its own, components placed apart.
4. **Layout** (:func:`optimize_layout`): UMAP's cross-entropy SGD with its attractive and repulsive gradients,
   ``a``/``b`` fitted from ``min_dist`` (:func:`find_ab_params`), edges sampled in proportion to their
   membership, ``negative_sample_rate`` uniform negatives per positive sample, gradients clipped to ±4 and a
   linearly decaying learning rate. umap-learn applies each sample's update at once (Hogwild, in numba);
   here every epoch's samples are gathered, their gradients computed as arrays and summed per point
   (``np.bincount``), then applied together. The sum is taken in a fixed order, so a seed gives the same
   layout every time.

:func:`umap_embedding` runs the four steps; the ``umap`` reducer (:mod:`imclust.reduce`) uses it by default.
:func:`self_expressive_graph` builds a graph of another kind (linear subspaces) that the reducer can lay out
instead of the neighbour graph.
"""

from __future__ import annotations

import numpy as np

from .errors import UserError
from .progress import progress


# -- 1. neighbours --------------------------------------------------------------------------------------
def nearest_neighbors(X: np.ndarray, k: int, exact_max: int = 200_000, nprobe: int = 16, seed: int = 0,
                      batch: int = 16384) -> tuple[np.ndarray, np.ndarray]:
    """Each point's ``k`` nearest points (itself first, at distance 0) and their Euclidean distances.

    Exact brute force (faiss ``IndexFlatL2``) up to ``exact_max`` points; beyond, an ``IndexIVFFlat`` with
    about 4·√n lists trained on a seeded sample, searching ``nprobe`` lists per query. Returns
    ``(indices (n, k) int64, distances (n, k) float32)``.
    """
    from .threads import import_faiss

    faiss = import_faiss()
    X = np.ascontiguousarray(X, dtype=np.float32)
    n, d = X.shape
    k = int(min(k, n))
    if n <= exact_max:
        index = faiss.IndexFlatL2(d)
        what = "exact"
    else:
        nlist = int(4 * np.sqrt(n))
        quantizer = faiss.IndexFlatL2(d)
        index = faiss.IndexIVFFlat(quantizer, d, nlist)
        index.cp.seed = int(seed) if seed is not None else 1234
        rs = np.random.RandomState(seed)
        train = X[np.sort(rs.choice(n, min(n, 64 * nlist), replace=False))]
        index.train(train)
        index.nprobe = int(nprobe)
        what = f"IVF{nlist}, nprobe {nprobe}"
    index.add(X)
    idx = np.empty((n, k), np.int64)
    dist = np.empty((n, k), np.float32)
    for s in progress(range(0, n, batch), total=-(-n // batch), desc=f"neighbours ({what})", unit="batch"):
        D, I = index.search(X[s : s + batch], k)
        idx[s : s + batch], dist[s : s + batch] = I, D
    return _self_first(idx, np.sqrt(np.maximum(dist, 0)))


def _self_first(idx: np.ndarray, dist: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Put each point itself in column 0 (duplicates at distance 0 may come first; an approximate search
    may miss the point) and keep the rest in distance order."""
    n, k = idx.shape
    rows = np.arange(n)
    is_self = idx == rows[:, None]
    missing = ~is_self.any(1)
    idx[missing, -1] = rows[missing]  # an index may also return -1 for too few candidates: self replaces the last
    is_self[missing, -1] = True
    order = np.argsort(~is_self, axis=1, kind="stable")
    idx = np.take_along_axis(idx, order, 1)
    dist = np.take_along_axis(dist, order, 1)
    dist[:, 0] = 0.0
    bad = idx < 0  # IVF found fewer than k: point at self with infinite distance (membership 0)
    if bad.any():
        idx[bad] = np.broadcast_to(rows[:, None], idx.shape)[bad]
        dist[bad] = np.inf
    return idx, np.ascontiguousarray(dist, dtype=np.float32)


# -- 2. fuzzy simplicial set ----------------------------------------------------------------------------
def smooth_knn_dist(dist: np.ndarray, local_connectivity: float = 1.0, bandwidth: float = 1.0, n_iter: int = 64,
                    tol: float = 1e-5, min_scale: float = 1e-3) -> tuple[np.ndarray, np.ndarray]:
    """UMAP's per-point ``sigma`` and ``rho`` for a distance matrix whose column 0 is the point itself.

    ``rho``: the distance to the ``local_connectivity``-th nearest other point with a positive distance.
    ``sigma``: by bisection, so that Σⱼ exp(-max(0, dⱼ - rho)/sigma) = log2(k)·bandwidth over the other points.
    """
    d = np.asarray(dist[:, 1:], dtype=np.float64)
    n, m = d.shape
    target = np.log2(m + 1) * bandwidth
    pos = np.where(d > 0, d, np.inf)
    pos.sort(axis=1)  # positive distances first, ascending; inf pads the rest
    n_pos = np.isfinite(pos).sum(1)
    lc = int(np.floor(local_connectivity))
    frac = local_connectivity - lc
    rho = np.zeros(n)
    if m:
        with np.errstate(invalid="ignore"):
            if lc > 0:
                rho = pos[:, lc - 1].copy()
                if frac > 0 and lc < m:
                    rho += frac * (pos[:, lc] - pos[:, lc - 1])
            else:
                rho = frac * pos[:, 0]
        few = n_pos < local_connectivity  # fewer positive distances than asked for: the largest one
        rho[few] = np.where(n_pos[few] > 0, pos[few, np.maximum(n_pos[few] - 1, 0)], 0.0)
        rho[~np.isfinite(rho)] = 0.0
    lo = np.zeros(n)
    hi = np.full(n, np.inf)
    mid = np.ones(n)
    excess = np.maximum(d - rho[:, None], 0)
    finite = np.isfinite(d)
    done = np.zeros(n, bool)
    for _ in range(n_iter):
        with np.errstate(over="ignore", invalid="ignore"):
            psum = np.where(finite, np.exp(-excess / mid[:, None]), 0).sum(1)
        done |= np.abs(psum - target) < tol
        too_big = (psum > target) & ~done
        too_small = (psum <= target) & ~done
        hi = np.where(too_big, mid, hi)
        lo = np.where(too_small, mid, lo)
        mid = np.where(too_big, (lo + hi) / 2, mid)
        mid = np.where(too_small, np.where(np.isinf(hi), mid * 2, (lo + hi) / 2), mid)
        if done.all():
            break
    with np.errstate(invalid="ignore"):
        mean_all = float(np.mean(np.where(finite, d, np.nan)[np.isfinite(d)])) if finite.any() else 1.0
        mean_row = np.nanmean(np.where(finite, d, np.nan), axis=1) if m else np.zeros(n)
    floor = np.where(rho > 0, min_scale * np.nan_to_num(mean_row, nan=mean_all), min_scale * mean_all)
    return np.maximum(mid, floor).astype(np.float32), rho.astype(np.float32)


def fuzzy_simplicial_set(idx: np.ndarray, dist: np.ndarray, local_connectivity: float = 1.0):
    """The symmetric fuzzy graph (scipy CSR, float32) of a k-nearest-neighbour table (self in column 0)."""
    import scipy.sparse as sp

    n, k = idx.shape
    sigma, rho = smooth_knn_dist(dist, local_connectivity)
    excess = dist - rho[:, None]
    with np.errstate(over="ignore", invalid="ignore"):
        w = np.where(excess <= 0, 1.0, np.exp(-excess / sigma[:, None])).astype(np.float32)
    w[idx == np.arange(n)[:, None]] = 0  # no self-loops
    w[~np.isfinite(dist)] = 0
    P = sp.csr_matrix((w.ravel(), (np.repeat(np.arange(n), k), idx.ravel())), shape=(n, n))
    P.eliminate_zeros()
    return symmetric_union(P)


def symmetric_union(P):
    """The fuzzy union ``P + Pᵀ - P∘Pᵀ`` of a (possibly asymmetric) membership matrix, as CSR float32."""
    Pt = P.T.tocsr()
    G = (P + Pt - P.multiply(Pt)).tocsr().astype(np.float32, copy=False)
    G.eliminate_zeros()
    G.sort_indices()
    return G


def intersect_graphs(graphs: list):
    """The fuzzy intersection of several fuzzy graphs over the same points (multi-view UMAP).

    An edge's weight is the geometric mean of its memberships in every graph; a graph that lacks the edge
    counts half its own smallest membership rather than zero, so an edge one view misses is weakened, not
    cut. Each point's memberships are then rescaled so its strongest edge is 1 (every point keeps a
    neighbour of full weight, as UMAP's local connectivity asks) and the result is made symmetric again
    by the fuzzy union. So neighbours that every view agrees on dominate the layout.
    """
    import scipy.sparse as sp

    if not graphs:
        raise ValueError("intersect_graphs needs at least one graph")
    if len(graphs) == 1:
        return graphs[0]
    support = sum(graphs[1:], graphs[0]).tocsr()  # every edge some view has
    support.eliminate_zeros()
    rows, cols = support.nonzero()
    log_sum = np.zeros(len(rows))
    for G in graphs:
        G = G.tocsr()
        floor = max(float(G.data.min()) / 2 if G.nnz else 1e-8, 1e-8)
        w = np.asarray(G[rows, cols]).ravel()
        log_sum += np.log(np.where(w > 0, w, floor))
    n = support.shape[0]
    P = sp.csr_matrix((np.exp(log_sum / len(graphs)), (rows, cols)), shape=(n, n))
    top = np.asarray(P.max(axis=1).todense()).ravel()
    P = sp.diags(1.0 / np.where(top > 0, top, 1.0)) @ P
    return symmetric_union(P.tocsr())


def _unit_rows(X: np.ndarray, centre: np.ndarray) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64) - centre
    return X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)


def _expression_map(Xn: np.ndarray, ridge: float) -> np.ndarray:
    """``Xn (XnᵀXn + ridge·I)⁻¹`` (n, d) as float32: its product with a unit row ``q`` gives the ridge
    coefficients of every row of ``Xn`` in expressing ``q``. Solved in the smaller of the two dimensions."""
    n, d = Xn.shape
    if d <= n:
        return (Xn @ np.linalg.inv(Xn.T @ Xn + ridge * np.eye(d))).astype(np.float32)
    # fewer points than features: Xn (XnᵀXn + rI)⁻¹ = (XnXnᵀ + rI)⁻¹ Xn
    return np.linalg.solve(Xn @ Xn.T + ridge * np.eye(n), Xn).astype(np.float32)


def _strongest_coefficients(XM: np.ndarray, Q: np.ndarray, k: int, skip_self: bool, block_floats: int):
    """For each unit row of ``Q``, the ``k`` training rows with the largest |coefficient| and those values."""
    n = len(XM)
    Qt = np.ascontiguousarray(Q.T, dtype=np.float32)
    rows = max(1, int(block_floats // n))
    idx = np.empty((len(Q), k), dtype=np.int64)
    val = np.empty((len(Q), k), dtype=np.float32)
    for a in range(0, len(Q), rows):
        C = np.abs(XM @ Qt[:, a:a + rows]).T  # (block, n)
        if skip_self:
            C[np.arange(len(C)), np.arange(a, a + len(C))] = -1.0  # never its own neighbour
        top = np.argpartition(-C, k - 1, axis=1)[:, :k]
        idx[a:a + rows], val[a:a + rows] = top, np.take_along_axis(C, top, 1)
    return idx, val


def self_expressive_graph(X: np.ndarray, n_neighbors: int = 15, ridge: float = 1.0, block_floats: int = 32_000_000):
    """A subspace graph: each point written as a ridge-regularised linear combination of all the others
    (least-squares self-expression; Lu et al. 2012, the linear core of deep subspace clustering), its
    ``n_neighbors - 1`` largest coefficients by magnitude kept as edges.

    Points in one linear subspace (a face under every lighting, say) express each other and barely the
    points of another subspace, so such classes come out as separate parts of the graph even when they are
    not separated by Euclidean distance. The rows of ``X`` are centred and scaled to unit norm; with
    ``Xn`` those rows the coefficients are ``C = Xn (XnᵀXn + ridge·I)⁻¹ Xnᵀ`` (the same as the n×n form
    ``(G + ridge·I)⁻¹ G`` of the Gram matrix ``G``), computed in blocks of at most ``block_floats`` values,
    the diagonal ignored. Each point's strongest edge is scaled to 1 and the graph made symmetric by the
    fuzzy union, as :func:`fuzzy_simplicial_set` does for distances.
    """
    import scipy.sparse as sp

    n = len(X)
    if n < 3:
        raise UserError(f"a self-expressive graph needs at least 3 samples, got {n}")
    Xn = _unit_rows(X, np.asarray(X, dtype=np.float64).mean(0))
    k = int(min(n_neighbors - 1, n - 1))
    idx, val = _strongest_coefficients(_expression_map(Xn, ridge), Xn, k, True, block_floats)
    val /= np.maximum(val.max(1, keepdims=True), 1e-12)
    P = sp.csr_matrix((val.ravel(), (np.repeat(np.arange(n), k), idx.ravel())), shape=(n, n))
    return symmetric_union(P)


def place_by_self_expression(X_train: np.ndarray, emb_train: np.ndarray, X_new: np.ndarray, k: int = 10,
                             ridge: float = 1.0, block_floats: int = 32_000_000) -> np.ndarray:
    """Place new points where :func:`self_expressive_graph` would tie them: at the mean of the embeddings of
    the ``k`` training points with the largest |coefficient| in expressing each new point (rows centred
    with the training mean and scaled to unit norm), weighted by those coefficients."""
    centre = np.asarray(X_train, dtype=np.float64).mean(0)
    XM = _expression_map(_unit_rows(X_train, centre), ridge)
    k = int(min(k, len(X_train)))
    idx, val = _strongest_coefficients(XM, _unit_rows(X_new, centre), k, False, block_floats)
    w = val / np.maximum(val.sum(1, keepdims=True), 1e-12)
    return np.einsum("nk,nkd->nd", w, np.asarray(emb_train, dtype=np.float32)[idx]).astype(np.float32)


def mean_conductance(G, labels: np.ndarray) -> float:
    """How cleanly a partition is cut out of the graph ``G``: the mean over clusters of the share of each
    cluster's edge weight that leaves it (0: every cluster is a separate part of the graph; 1 for a graph
    without edges, which separates nothing)."""
    G = G.tocoo()
    labels = np.asarray(labels, dtype=np.int64)
    k = int(labels.max()) + 1
    volume = np.bincount(labels[G.row], weights=G.data, minlength=k)
    inside = labels[G.row] == labels[G.col]
    within = np.bincount(labels[G.row][inside], weights=G.data[inside], minlength=k)
    used = volume > 0
    return float(np.mean(1.0 - within[used] / volume[used])) if used.any() else 1.0


# -- 3. spectral start ----------------------------------------------------------------------------------
def _spectral_connected(G, dim: int, rng: np.random.Generator) -> np.ndarray | None:
    """The ``dim`` eigenvectors after the trivial one of D^-1/2 G D^-1/2 (None when ARPACK does not converge)."""
    import scipy.sparse as sp
    from scipy.sparse.linalg import ArpackNoConvergence, eigsh

    n = G.shape[0]
    deg = np.asarray(G.sum(1)).ravel()
    inv = 1.0 / np.sqrt(np.maximum(deg, 1e-12))
    M = sp.diags(inv) @ G @ sp.diags(inv)
    k = dim + 1
    if n <= max(3 * k, 64):  # tiny: a dense solve is simpler and exact
        w, V = np.linalg.eigh(M.toarray().astype(np.float64))
        return V[:, ::-1][:, 1:k] if V.shape[1] >= k else None
    try:
        w, V = eigsh(M.astype(np.float64), k=k, which="LA", tol=1e-4, v0=rng.uniform(0.5, 1.5, n),
                     ncv=min(n - 1, max(2 * k + 1, 32)), maxiter=n * 5)
    except ArpackNoConvergence:
        return None
    order = np.argsort(w)[::-1]
    return V[:, order[1:k]]


def spectral_init(G, dim: int, seed: int | None = 0, X: np.ndarray | None = None) -> np.ndarray:
    """A starting layout in ``dim`` dimensions: the spectral embedding of the fuzzy graph ``G``.

    Several connected components: each gets its own spectral layout, shrunk into a box around a centre; the
    centres come from the components' mean features ``X`` (PCA), or are random when ``X`` is not given.
    Components too small for a spectral layout, or where ARPACK does not converge, start at random
    (a note is logged). Scaled so the largest coordinate is 10, plus seeded noise of 1e-4, as UMAP does.
    """
    from scipy.sparse.csgraph import connected_components

    from .progress import log

    rng = np.random.default_rng(seed)
    n = G.shape[0]
    n_comp, comp = connected_components(G, directed=False)
    if n_comp == 1:
        Y = _spectral_connected(G, dim, rng)
        if Y is None:
            log("UMAP: the spectral start did not converge; starting from a random layout")
            Y = rng.uniform(-10, 10, (n, dim))
    else:
        centres = _component_centres(comp, n_comp, dim, rng, X)
        Y = np.empty((n, dim))
        for c in range(n_comp):
            members = np.flatnonzero(comp == c)
            sub = None
            if len(members) > 2 * dim + 1:
                sub = _spectral_connected(G[members][:, members], dim, rng)
            if sub is None:
                sub = rng.uniform(-1, 1, (len(members), dim))
            sub = sub / max(np.abs(sub).max(), 1e-12)
            Y[members] = centres[c] + sub
    Y = Y * (10.0 / max(np.abs(Y).max(), 1e-12))
    return (Y + rng.normal(scale=1e-4, size=Y.shape)).astype(np.float32)


def _component_centres(comp, n_comp, dim, rng, X):
    """Where each connected component sits: its mean feature vector in a PCA of the means, spread so that
    neighbouring components are at least about 2 apart (each component fills a unit box)."""
    if X is not None and n_comp > dim:
        means = np.stack([X[comp == c].mean(0) for c in range(n_comp)]).astype(np.float64)
        means -= means.mean(0)
        U, S, _ = np.linalg.svd(means, full_matrices=False)
        C = U[:, :dim] * S[:dim]
        if C.shape[1] < dim:
            C = np.hstack([C, np.zeros((n_comp, dim - C.shape[1]))])
    else:
        C = rng.normal(size=(n_comp, dim))
    from scipy.spatial.distance import pdist

    gap = pdist(C).min() if n_comp > 1 else 1.0
    return C * (3.0 / max(gap, 1e-12))


# -- 4. layout ------------------------------------------------------------------------------------------
def find_ab_params(spread: float = 1.0, min_dist: float = 0.1) -> tuple[float, float]:
    """``a``, ``b`` of the low-dimensional similarity 1/(1 + a·d^(2b)), fitted (least squares) to UMAP's target
    curve: 1 below ``min_dist``, exp(-(d - min_dist)/spread) above."""
    from scipy.optimize import curve_fit

    x = np.linspace(0, spread * 3, 300)
    y = np.where(x < min_dist, 1.0, np.exp(-(x - min_dist) / spread))
    (a, b), _ = curve_fit(lambda x, a, b: 1.0 / (1.0 + a * x ** (2 * b)), x, y)
    return float(a), float(b)


def default_epochs(n: int) -> int:
    """UMAP's: 500 epochs up to 10,000 points, 200 above."""
    return 500 if n <= 10_000 else 200


def _clip_columns(g: np.ndarray, bound_sq: np.ndarray, clip_sq: float) -> None:
    """Clip ``g`` (dim, m) to ±√clip_sq in place, touching only the columns whose bound on |g|² exceeds clip_sq."""
    big = np.flatnonzero(bound_sq > clip_sq)
    if big.size:
        c = float(np.sqrt(clip_sq))
        g[:, big] = np.clip(g[:, big], -c, c)


def _forces(YT, i, j, neg, a, b, two_ab, two_gb):
    """The summed SGD step of every moving point of ``i`` (sorted): its pulls along the edges (i, j) and its
    pushes from the points ``neg`` (n_neg, m). Returns (moving points, (dim, points) steps)."""
    # attraction; (i, j) and (j, i) are both sampled, so i gets the pull twice
    Yi = np.take(YT, i, axis=1)
    step = Yi - np.take(YT, j, axis=1)
    d2 = np.einsum("ij,ij->j", step, step)
    d2b = d2**b
    coef = d2b * a
    coef += 1
    coef *= np.maximum(d2, np.float32(1e-30))  # d2 = 0: the difference is 0 and so is its pull
    np.divide(-two_ab * d2b, coef, out=coef)
    step *= coef
    _clip_columns(step, coef * coef * d2, 64.0)  # each direction's pull clipped to ±4 (8 for both)
    if len(neg):  # repulsion from uniformly drawn points (only the sampled end moves)
        diff = Yi[:, None, :] - np.take(YT, neg, axis=1)  # (dim, n_neg, m)
        d2 = np.einsum("ijk,ijk->jk", diff, diff)
        coef = d2**b
        coef *= a
        coef += 1
        coef *= d2 + np.float32(0.001)
        np.divide(two_gb, coef, out=coef)  # finite at d2 = 0, where the difference is 0
        diff *= coef
        big = coef * coef * d2 > 16
        if big.any():
            diff[:, big] = np.clip(diff[:, big], -4, 4)
        step += diff.sum(axis=1)
    starts = np.flatnonzero(np.r_[True, i[1:] != i[:-1]])
    return i[starts], np.add.reduceat(step, starts, axis=1)


def optimize_layout(Y: np.ndarray, G, n_epochs: int, a: float, b: float, seed: int | None = 0,
                    negative_sample_rate: int = 5, repulsion_strength: float = 1.0,
                    learning_rate: float = 0.35, threads: int | None = None, desc: str = "UMAP layout") -> np.ndarray:
    """UMAP's SGD on the symmetric fuzzy graph ``G`` (float32, a new array is returned).

    Edge (i, j) with membership w is sampled about ``n_epochs·w/max(w)`` times; each sample pulls i and j
    together and pushes i away from ``negative_sample_rate`` uniformly drawn points (umap-learn draws that
    many on average; here exactly that many, so the negatives of a sample form one block of an array).
    Per-sample gradients are clipped to ±4 per coordinate, as in UMAP; the learning rate falls linearly to 0.

    umap-learn applies every sample's update at once; here an epoch's updates are summed per point and
    applied together. ``G`` holds each edge in both directions with the same weight, so both are sampled in
    the same epochs: the pull that UMAP applies to j from edge (i, j) is the one computed for edge (j, i), and
    every update is summed by the moving point, which comes sorted from the CSR order (a segment sum, no
    scatter). Applied together, the updates need a smaller step than umap-learn's 1.0 to give the clusters
    umap-learn's layout gives (``benchmarks/RESULTS.md``, block fast-umap-accuracy). ``threads`` (default: the
    thread policy's) split each epoch by moving point; the negatives are drawn before the split, so the
    layout does not depend on the thread count.
    """
    rng = np.random.default_rng(seed)
    n, dim = Y.shape
    n_neg = int(negative_sample_rate)
    if n_neg != negative_sample_rate or n_neg < 0:
        raise UserError(f"negative_sample_rate must be a whole number of at least 0, got {negative_sample_rate!r}")
    YT = np.array(np.asarray(Y, dtype=np.float32).T, order="C")  # (dim, n): every step works along rows
    coo = G.tocoo()
    keep = coo.data >= coo.data.max() / float(n_epochs)  # edges too weak to be sampled even once
    order = np.lexsort((coo.col[keep], coo.row[keep]))
    head = coo.row[keep][order].astype(np.int64)
    tail = coo.col[keep][order].astype(np.int64)
    w = coo.data[keep][order].astype(np.float64)
    if len(w) == 0:
        return np.ascontiguousarray(YT.T)
    eps = w.max() / w  # epochs per sample
    next_sample = eps.copy()
    a, b = np.float32(a), np.float32(b)
    two_ab, two_gb = np.float32(4.0 * a * b), np.float32(2.0 * repulsion_strength * b)  # 4ab: both directions
    if threads is None:
        from .threads import get_threads

        threads = get_threads()
    pool = None
    if threads > 1 and len(w) >= 20_000:  # numpy releases the GIL in its loops; small graphs are not worth it
        from concurrent.futures import ThreadPoolExecutor

        pool = ThreadPoolExecutor(int(threads))
    try:
        for epoch in progress(range(n_epochs), total=n_epochs, desc=desc, unit="epoch"):
            alpha = np.float32(learning_rate * (1.0 - epoch / float(n_epochs)))
            act = np.flatnonzero(next_sample <= epoch)
            if len(act) == 0:
                continue
            next_sample[act] += eps[act]
            i, j = head[act], tail[act]
            neg = rng.integers(0, n, (n_neg, len(act)))
            if pool is None:
                results = [_forces(YT, i, j, neg, a, b, two_ab, two_gb)]
            else:  # split at moving-point boundaries: every part moves its own points
                cuts = np.searchsorted(i, i[np.linspace(0, len(i), int(threads) + 1, dtype=np.int64)[1:-1]])
                parts = [p for p in np.split(np.arange(len(i)), cuts) if len(p)]
                results = list(pool.map(lambda p: _forces(YT, i[p], j[p], neg[:, p], a, b, two_ab, two_gb), parts))
            for moving, total in results:
                total *= alpha
                YT[:, moving] += total
    finally:
        if pool is not None:
            pool.shutdown()
    return np.ascontiguousarray(YT.T)


def view_graph(X: np.ndarray, n_neighbors: int = 15, metric: str = "euclidean", seed: int | None = 0,
               exact_max: int = 200_000, views: list[int] | None = None):
    """UMAP's fuzzy neighbour graph of ``X`` (n, d): steps 1 and 2. ``views``: the widths of consecutive
    column blocks of ``X`` (summing to d), each a view of the same images; each gets its own graph
    (:func:`per_view_graphs`) and the graphs are fused by :func:`intersect_graphs`."""
    return intersect_graphs(per_view_graphs(X, n_neighbors, metric, seed, exact_max, views))


def per_view_graphs(X: np.ndarray, n_neighbors: int = 15, metric: str = "euclidean", seed: int | None = 0,
                    exact_max: int = 200_000, views: list[int] | None = None) -> list:
    """One fuzzy neighbour graph per view (consecutive column blocks of widths ``views``; None: one view),
    before :func:`view_graph` fuses them."""
    X = np.asarray(X, dtype=np.float32)
    n = len(X)
    if n < 3:
        raise UserError(f"UMAP needs at least 3 samples, got {n}")
    if metric not in ("euclidean", "cosine"):
        raise UserError(f"UMAP metric {metric!r}: use euclidean or cosine")
    widths = [X.shape[1]] if views is None else [int(w) for w in views]
    if sum(widths) != X.shape[1] or min(widths) < 1:
        raise UserError(f"UMAP views of widths {widths} do not tile the {X.shape[1]} feature columns")
    bounds = np.cumsum([0] + widths)
    k = int(min(n_neighbors, n - 1))
    graphs = []
    for a, b in zip(bounds[:-1], bounds[1:]):
        block = np.ascontiguousarray(X[:, a:b])
        if metric == "cosine":
            block = block / np.maximum(np.linalg.norm(block, axis=1, keepdims=True), 1e-12)
        idx, dist = nearest_neighbors(block, k, exact_max=exact_max, seed=0 if seed is None else seed)
        if metric == "cosine":
            dist = dist**2 / 2
        graphs.append(fuzzy_simplicial_set(idx, dist))
    return graphs


def graph_layout(G, X: np.ndarray, n_components: int = 10, min_dist: float = 0.1, spread: float = 1.0,
                 n_epochs: int | None = None, negative_sample_rate: int = 5, seed: int | None = 0,
                 desc: str = "UMAP layout") -> np.ndarray:
    """UMAP's layout of the fuzzy graph ``G``: steps 3 and 4 (``X``, the points' features, places the
    graph's connected components)."""
    epochs = default_epochs(G.shape[0]) if n_epochs is None else int(n_epochs)
    Y = spectral_init(G, int(n_components), seed, X=np.asarray(X, dtype=np.float32))
    # UMAP scales each coordinate of the start into [0, 10]
    lo, hi = Y.min(0), Y.max(0)
    Y = 10.0 * (Y - lo) / np.maximum(hi - lo, 1e-12)
    a, b = find_ab_params(spread, min_dist)
    return optimize_layout(Y, G, epochs, a, b, seed, negative_sample_rate, desc=desc)


def umap_embedding(X: np.ndarray, n_components: int = 10, n_neighbors: int = 15, min_dist: float = 0.1,
                   spread: float = 1.0, n_epochs: int | None = None, negative_sample_rate: int = 5,
                   metric: str = "euclidean", seed: int | None = 0, exact_max: int = 200_000,
                   views: list[int] | None = None, desc: str = "UMAP layout") -> np.ndarray:
    """UMAP of ``X`` (n, d) → (n, n_components) float32 through the four steps of this module
    (:func:`view_graph`, then :func:`graph_layout`).

    ``metric``: ``euclidean``, or ``cosine`` (1 - cos, found as Euclidean neighbours of the unit vectors).
    ``n_neighbors`` counts the point itself, as in umap-learn. ``views``: see :func:`view_graph`.
    """
    X = np.ascontiguousarray(X, dtype=np.float32)
    G = view_graph(X, n_neighbors, metric, seed, exact_max, views)
    if metric == "cosine":
        widths = [X.shape[1]] if views is None else [int(w) for w in views]
        bounds = np.cumsum([0] + widths)
        X = np.hstack([X[:, a:b] / np.maximum(np.linalg.norm(X[:, a:b], axis=1, keepdims=True), 1e-12)
                       for a, b in zip(bounds[:-1], bounds[1:])])
    return graph_layout(G, X, n_components, min_dist, spread, n_epochs, negative_sample_rate, seed, desc)


def place_by_neighbours(X_train: np.ndarray, emb_train: np.ndarray, X_new: np.ndarray, k: int = 10) -> np.ndarray:
    """Place new points at the inverse-distance-weighted mean of the embeddings of their ``k`` nearest
    training points (found by faiss, exactly)."""
    from .threads import import_faiss

    faiss = import_faiss()
    X_train = np.ascontiguousarray(X_train, dtype=np.float32)
    k = int(min(k, len(X_train)))
    index = faiss.IndexFlatL2(X_train.shape[1])
    index.add(X_train)
    d2, idx = index.search(np.ascontiguousarray(X_new, dtype=np.float32), k)
    w = 1.0 / np.maximum(np.sqrt(np.maximum(d2, 0)), 1e-6)
    w /= w.sum(1, keepdims=True)
    return np.einsum("nk,nkd->nd", w, np.asarray(emb_train, dtype=np.float32)[idx]).astype(np.float32)
