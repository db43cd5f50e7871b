"""The fast manifold path (imclust.manifold) and the umap reducer's backends, on small synthetic data."""

import numpy as np
import pytest

from imclust import manifold as M
from imclust.errors import NotInstalledError, UserError
from imclust.metrics import evaluate
from imclust.reduce import UMAP


def _blobs(n_per=60, k=4, d=8, sep=8.0, seed=0):
    rs = np.random.RandomState(seed)
    centres = rs.randn(k, d) * sep
    X = np.concatenate([c + rs.randn(n_per, d) for c in centres]).astype(np.float32)
    return X, np.repeat(np.arange(k), n_per)


def _brute_knn(X, k):
    D = ((X[:, None, :] - X[None, :, :]) ** 2).sum(-1)
    idx = np.argsort(D, axis=1, kind="stable")[:, :k]
    return idx, np.sqrt(np.take_along_axis(D, idx, 1))


def test_exact_neighbours_match_brute_force_with_self_first():
    X = np.random.RandomState(1).rand(300, 5).astype(np.float32)
    idx, dist = M.nearest_neighbors(X, 7)
    ref_idx, ref_dist = _brute_knn(X.astype(np.float64), 7)
    assert (idx[:, 0] == np.arange(300)).all() and (dist[:, 0] == 0).all()
    np.testing.assert_allclose(dist, ref_dist, atol=1e-4)
    assert (np.sort(idx, 1) == np.sort(ref_idx, 1)).mean() > 0.99  # ties may swap


def test_duplicates_keep_each_point_itself_in_column_zero():
    X = np.repeat(np.random.RandomState(2).rand(20, 3).astype(np.float32), 5, axis=0)  # each point 5 times
    idx, dist = M.nearest_neighbors(X, 4)
    assert (idx[:, 0] == np.arange(len(X))).all()
    assert (dist[:, 1:] == 0).all()  # the other copies


def test_ivf_neighbours_beyond_exact_max_find_most_true_neighbours():
    X, _ = _blobs(n_per=500, k=4, d=6, sep=3.0)
    idx, dist = M.nearest_neighbors(X, 10, exact_max=100, nprobe=8)
    ref, _ = M.nearest_neighbors(X, 10)
    assert (idx[:, 0] == np.arange(len(X))).all()
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(idx, ref)])
    assert recall > 0.9, recall


def test_smooth_knn_memberships_sum_to_log2_k():
    X = np.random.RandomState(3).rand(200, 4).astype(np.float32)
    idx, dist = M.nearest_neighbors(X, 15)
    sigma, rho = M.smooth_knn_dist(dist)
    np.testing.assert_allclose(rho, dist[:, 1], rtol=1e-6)  # distance to the nearest other point
    memb = np.exp(-np.maximum(dist[:, 1:] - rho[:, None], 0) / sigma[:, None]).sum(1)
    np.testing.assert_allclose(memb, np.log2(15), rtol=1e-3)


def test_fuzzy_graph_is_symmetric_without_self_loops():
    X = np.random.RandomState(4).rand(150, 4).astype(np.float32)
    G = M.fuzzy_simplicial_set(*M.nearest_neighbors(X, 10))
    assert abs(G - G.T).max() == 0
    assert G.diagonal().max() == 0
    assert 0 < G.data.min() and G.data.max() <= 1
    # every point's nearest neighbour is joined with membership 1
    idx, _ = M.nearest_neighbors(X, 2)
    np.testing.assert_allclose(np.asarray(G[np.arange(150), idx[:, 1]]).ravel(), 1.0, rtol=1e-6)


def test_ab_params_fit_the_target_curve():
    for min_dist in (0.0, 0.1, 0.5):
        a, b = M.find_ab_params(1.0, min_dist)
        x = np.linspace(0, 3, 300)
        target = np.where(x < min_dist, 1.0, np.exp(-(x - min_dist)))
        fitted = 1 / (1 + a * x ** (2 * b))
        assert np.abs(fitted - target).mean() < 0.05, (min_dist, a, b)
    a0, b0 = M.find_ab_params(1.0, 0.0)
    a1, b1 = M.find_ab_params(1.0, 0.5)
    assert a1 < a0  # a wider plateau needs a flatter curve


def test_spectral_init_places_disconnected_components_apart():
    X, y = _blobs(n_per=40, k=3, sep=30.0)
    G = M.fuzzy_simplicial_set(*M.nearest_neighbors(X, 8))
    from scipy.sparse.csgraph import connected_components

    assert connected_components(G)[0] == 3
    Y = M.spectral_init(G, 2, seed=0, X=X)
    assert np.abs(Y).max() == pytest.approx(10, rel=1e-3)
    from imclust.cluster import KMeans

    assert evaluate(KMeans(3).fit_predict(Y), y)["acc"] == 1.0
    np.testing.assert_array_equal(Y, M.spectral_init(G, 2, seed=0, X=X))


def test_embedding_separates_blobs_and_a_seed_repeats_it():
    X, y = _blobs()
    Z = M.umap_embedding(X, n_components=2, n_neighbors=10, min_dist=0.0, n_epochs=100, seed=0)
    assert Z.shape == (len(X), 2) and Z.dtype == np.float32 and np.isfinite(Z).all()
    from imclust.cluster import KMeans

    assert evaluate(KMeans(4).fit_predict(Z), y)["acc"] > 0.95
    np.testing.assert_array_equal(Z, M.umap_embedding(X, 2, 10, 0.0, n_epochs=100, seed=0))
    assert not np.array_equal(Z, M.umap_embedding(X, 2, 10, 0.0, n_epochs=100, seed=1))


def test_layout_pulls_neighbours_together():
    """After the SGD, graph neighbours are closer than random pairs, far more than in the random start."""
    X, _ = _blobs(n_per=50, k=3, sep=2.0)
    G = M.fuzzy_simplicial_set(*M.nearest_neighbors(X, 10)).tocoo()
    rng = np.random.default_rng(0)
    Y0 = rng.uniform(0, 10, (len(X), 2)).astype(np.float32)
    a, b = M.find_ab_params(1.0, 0.1)
    Y = M.optimize_layout(Y0, G.tocsr(), 200, a, b, seed=0)

    def ratio(Y):
        near = np.linalg.norm(Y[G.row] - Y[G.col], axis=1).mean()
        far = np.linalg.norm(Y[rng.integers(0, len(Y), 2000)] - Y[rng.integers(0, len(Y), 2000)], axis=1).mean()
        return near / far

    assert ratio(Y0) > 0.8 and ratio(Y) < 0.3, (ratio(Y0), ratio(Y))


def test_cosine_metric_uses_directions_only():
    X, y = _blobs(n_per=40, k=3, d=6, sep=1.0)
    X = X + 20 * np.eye(6, dtype=np.float32)[y]  # classes differ by direction
    scale = np.random.RandomState(5).uniform(0.5, 3, (len(X), 1)).astype(np.float32)
    Z = UMAP(n_components=2, n_neighbors=10, metric="cosine", n_epochs=100).fit_transform(X * scale)
    from imclust.cluster import KMeans

    assert evaluate(KMeans(3).fit_predict(Z), y)["acc"] > 0.95


def test_umap_reducer_default_backend_needs_no_umap_learn(monkeypatch):
    import imclust.reduce as R

    monkeypatch.setattr(R, "umap_available", lambda: False)
    X, y = _blobs(n_per=30, k=3)
    red = UMAP(n_components=3, n_neighbors=8, n_epochs=100)
    assert red.backend == "imclust"
    Z = red.fit_transform(X)
    near = red.transform(X[:5] + 0.01)  # new points: placed by their nearest training points
    assert np.linalg.norm(near - Z[:5], axis=1).max() < np.ptp(Z, axis=0).max() * 0.1
    with pytest.raises(NotInstalledError, match="umap-learn"):
        UMAP(backend="umap-learn").fit(X)


def test_umap_reducer_refuses_bad_options():
    X, _ = _blobs(n_per=10, k=2)
    with pytest.raises(UserError, match="backend"):
        UMAP(backend="bogus").fit(X)
    with pytest.raises(UserError, match="metric"):
        UMAP(metric="manhattan").fit(X)
    with pytest.raises(UserError, match="n_neighbors"):
        UMAP(n_neighbors=1).fit(X)
    with pytest.raises(UserError, match="n_epochs"):
        UMAP(n_epochs=0).fit(X)
    with pytest.raises(UserError, match="minimum of 3"):
        UMAP().fit(X[:2])
    with pytest.raises(UserError, match="views 'both'"):
        UMAP(views="both").fit(X)
    # fused views need the view blocks, which only a views encoder right before gives, and our backend
    with pytest.raises(UserError, match="needs a 'views' encoder"):
        UMAP(views="intersect").fit(X)
    red = UMAP(views="intersect", backend="umap-learn")
    red.set_views([4, 4])
    with pytest.raises(UserError, match="backend = 'imclust'"):
        red.fit(X)


def test_umap_reducer_state_roundtrip_places_points_the_same():
    from imclust.base import build

    X, _ = _blobs(n_per=20, k=3)
    red = UMAP(n_components=2, n_neighbors=6, n_epochs=50).fit(X)
    arrays, extra = red.get_state()
    twin = build(red.to_spec())
    twin.set_state(arrays, extra)
    np.testing.assert_array_equal(twin.transform(X[:7]), red.transform(X[:7]))


def test_intersection_keeps_shared_edges_strongest_and_stays_a_fuzzy_graph():
    import scipy.sparse as sp

    # edges 0-1 and 2-3 in both graphs, 0-2 only in the first, 1-3 only in the second
    def graph(edges):
        W = np.zeros((4, 4), np.float32)
        for (i, j), w in edges.items():
            W[i, j] = W[j, i] = w
        return sp.csr_matrix(W)

    A = graph({(0, 1): 1.0, (2, 3): 1.0, (0, 2): 0.8})
    B = graph({(0, 1): 0.9, (2, 3): 1.0, (1, 3): 0.4})
    G = M.intersect_graphs([A, B]).toarray()
    assert np.allclose(G, G.T) and G.diagonal().max() == 0
    assert 0 < G[G > 0].min() and G.max() <= 1
    assert min(G[0, 1], G[2, 3]) > max(G[0, 2], G[1, 3])  # the edges both views have lead
    assert G[0, 2] > 0 and G[1, 3] > 0  # an edge one view lacks is weakened, not cut
    assert M.intersect_graphs([A]) is A


def test_intersected_views_keep_the_neighbours_both_views_see():
    rs = np.random.RandomState(0)
    y = np.repeat(np.arange(4), 100)
    # one latent point per image; view 1 (dims 0-2) cannot tell clusters 0 and 1 apart, view 2 (dims 1-3)
    # cannot tell 2 and 3 apart: each view's graph joins a merged pair, the pairs differ
    means = np.array([[0, 6, 0, 6], [0, 6, 0, -6], [6, -6, 0, 0], [-6, -6, 0, 0]], float)
    Z = (means[y] + rs.randn(400, 4)).astype(np.float32)
    graphs = [M.fuzzy_simplicial_set(*M.nearest_neighbors(np.ascontiguousarray(V), 10)) for V in (Z[:, :3], Z[:, 1:])]

    def within_share(G):
        G = G.tocoo()
        return G.data[y[G.row] == y[G.col]].sum() / G.data.sum()

    alone = [within_share(G) for G in graphs]
    fused = within_share(M.intersect_graphs(graphs))
    assert max(alone) < 0.8 and fused > max(alone) + 0.05, (alone, fused)
    emb = M.umap_embedding(np.hstack([Z[:, :3], Z[:, 1:]]), n_components=2, n_neighbors=10, n_epochs=20, views=[3, 3])
    assert emb.shape == (400, 2) and np.isfinite(emb).all()
    with pytest.raises(UserError, match="do not tile"):
        M.umap_embedding(Z, views=[2, 1])


def _subspaces(n_per=40, k=3, d=30, dim=3, seed=0):
    """Points on k random linear subspaces of dimension ``dim`` through the origin: overlapping near the
    origin, so Euclidean neighbours mix the classes while each point is a combination of its own class."""
    rs = np.random.RandomState(seed)
    bases = [np.linalg.qr(rs.randn(d, dim))[0] for _ in range(k)]
    X = np.concatenate([rs.randn(n_per, dim) @ B.T for B in bases]).astype(np.float32)
    return X, np.repeat(np.arange(k), n_per)


def test_mean_conductance_by_hand():
    import scipy.sparse as sp

    # two triangles (weights 1) joined by one edge of weight 0.5
    W = np.zeros((6, 6), np.float32)
    for i, j in [(0, 1), (1, 2), (0, 2), (3, 4), (4, 5), (3, 5)]:
        W[i, j] = W[j, i] = 1.0
    W[2, 3] = W[3, 2] = 0.5
    G = sp.csr_matrix(W)
    # each triangle: volume 6.5, 0.5 of it leaves
    assert M.mean_conductance(G, np.array([0, 0, 0, 1, 1, 1])) == pytest.approx(0.5 / 6.5)
    assert M.mean_conductance(G, np.zeros(6, int)) == 0.0
    assert M.mean_conductance(sp.csr_matrix((6, 6), dtype=np.float32), np.arange(6) % 2) == 1.0  # no edges
    # cutting a triangle apart: {0, 1} loses 2 of its 4, {2..5} loses 2 of its 9
    assert M.mean_conductance(G, np.array([0, 0, 1, 1, 1, 1])) == pytest.approx((2 / 4 + 2 / 9) / 2)


@pytest.mark.parametrize("n_per, d", [(40, 30), (8, 60)])  # the feature-dimension and the Gram-matrix solve
def test_self_expressive_graph_keeps_the_largest_coefficients(n_per, d):
    X, _ = _subspaces(n_per=n_per, k=3, d=d)
    n, keep = len(X), 5
    G = M.self_expressive_graph(X, n_neighbors=keep + 1, ridge=0.5).toarray()
    Xn = X.astype(np.float64) - X.mean(0)
    Xn /= np.linalg.norm(Xn, axis=1, keepdims=True)
    gram = Xn @ Xn.T
    C = np.abs(np.linalg.solve(gram + 0.5 * np.eye(n), gram))  # the n×n definition
    np.fill_diagonal(C, -1)
    top = np.argsort(-C, axis=1)[:, :keep]
    P = np.zeros((n, n))
    np.put_along_axis(P, top, np.take_along_axis(C, top, 1) / C.max(1, keepdims=True), 1)
    ref = P + P.T - P * P.T
    np.testing.assert_allclose(G, ref, atol=1e-4)


def test_self_expressive_graph_separates_subspaces_that_euclidean_neighbours_mix():
    X, y = _subspaces(d=12, dim=4)  # 4-D subspaces in 12-D: close in angle, so Euclidean neighbours cross
    subspace = M.self_expressive_graph(X, n_neighbors=10)
    idx, dist = M.nearest_neighbors(X, 10)
    euclidean = M.fuzzy_simplicial_set(idx, dist)
    # labels only score the graphs here
    assert M.mean_conductance(subspace, y) < 0.05 < 0.2 < M.mean_conductance(euclidean, y)


def _two_views(shared_has_groups: bool, n_per=40, k=3, seed=0):
    """A view named "px" holding subspaces, and a view "other" holding either well-separated blobs of the
    same classes or plain noise; the pixels hold noise when the other view holds the groups."""
    rs = np.random.RandomState(seed)
    S, y = _subspaces(n_per=n_per, k=k, seed=seed)
    blobs, _ = _blobs(n_per=n_per, k=k, d=6, sep=10.0, seed=seed)
    if shared_has_groups:
        return np.hstack([blobs, rs.randn(*S.shape).astype(np.float32)]), y
    return np.hstack([rs.randn(*blobs.shape).astype(np.float32), S]), y


def _view_reducer(dims, names, k=3, **options):
    """A UMAP reducer over views of these widths and names that compares its graphs at k."""
    red = UMAP(views="intersect", **options)
    red.set_views(dims, names)
    red.set_n_clusters(k)
    return red


@pytest.mark.parametrize("shared_has_groups", [True, False])
def test_umap_subspace_view_is_laid_out_only_where_its_groups_are_cleaner(shared_has_groups):
    from imclust.cluster import KMeans

    X, y = _two_views(shared_has_groups)
    red = _view_reducer([6, 30], ["other", "px"], n_components=3, n_neighbors=10, n_epochs=100, subspace="px")
    Z = red.fit_transform(X)
    choice = red.graph_choice_
    assert choice["k"] == 3 and set(choice["mean_conductance"]) == {UMAP.SHARED, UMAP.SUBSPACE}
    assert choice["chosen"] == (UMAP.SHARED if shared_has_groups else UMAP.SUBSPACE)
    assert evaluate(KMeans(3).fit_predict(Z), y)["acc"] > 0.9


def test_umap_subspace_choice_without_a_given_k_uses_the_middle_of_the_auto_range():
    X, _ = _two_views(False)
    red = _view_reducer([6, 30], ["other", "px"], "auto:4-16", n_components=2, n_neighbors=10, n_epochs=30,
                        subspace="px")
    red.fit(X)
    assert red.graph_choice_["k"] == 8


def test_umap_subspace_option_refuses_what_it_cannot_use():
    X, _ = _two_views(True)
    red = UMAP(views="intersect", subspace="nope")
    red.set_views([6, 30], ["other", "px"])
    with pytest.raises(UserError, match="no view of that name.*other, px"):
        red.fit(X)
    red = UMAP(views="joint", subspace="px")
    red.set_views([6, 30], ["other", "px"])
    with pytest.raises(UserError, match="needs views = 'intersect'"):
        red.fit(X)
    red = UMAP(views="intersect", subspace="px")
    red.set_views([36], ["px"])
    with pytest.raises(UserError, match="at least one other view"):
        red.fit(X)
    red = UMAP(views="intersect", subspace="px", subspace_ridge=0)
    red.set_views([6, 30], ["other", "px"])
    with pytest.raises(UserError, match="subspace_ridge"):
        red.fit(X)


def _fitted_on_even_rows(shared_has_groups: bool):
    """A reducer choosing between the views of :func:`_two_views`, fitted on the even rows; the odd rows are new."""
    X, y = _two_views(shared_has_groups, n_per=60)
    train, new = np.arange(0, len(X), 2), np.arange(1, len(X), 2)
    red = _view_reducer([6, 30], ["other", "px"], n_components=3, n_neighbors=10, n_epochs=100, subspace="px")
    return red, red.fit_transform(X[train]), X, y, train, new


def test_umap_subspace_layout_places_new_points_by_self_expression():
    from imclust.base import build
    from imclust.cluster import KMeans

    red, Z, X, y, train, new = _fitted_on_even_rows(False)
    assert red.graph_choice_["chosen"] == UMAP.SUBSPACE
    groups = KMeans(3).fit(Z)
    assert evaluate(groups.predict(red.transform(X[new])), y[new])["acc"] > 0.9
    near = red.transform(X[train[:5]])  # a training point expresses itself best: it lands on its own place
    assert np.linalg.norm(near - Z[:5], axis=1).max() < np.ptp(Z, axis=0).max() * 0.1
    twin = build(red.to_spec())
    twin.set_state(*red.get_state())
    np.testing.assert_array_equal(twin.transform(X[new]), red.transform(X[new]))


@pytest.mark.parametrize("shared_has_groups", [True, False])
def test_umap_subspace_choice_keeps_and_places_by_the_chosen_views_columns_only(shared_has_groups):
    from imclust.cluster import KMeans

    red, Z, X, y, train, new = _fitted_on_even_rows(shared_has_groups)
    kept = slice(0, 6) if shared_has_groups else slice(6, 36)
    assert red.graph_choice_["columns"] == [[kept.start, kept.stop]]
    np.testing.assert_array_equal(red.train_X_, X[train][:, kept])  # the model stores only the chosen views
    # the views that were not laid out do not move new points: scramble them and the placement is the same
    scrambled = X[new].copy()
    other = slice(6, 36) if shared_has_groups else slice(0, 6)
    scrambled[:, other] = np.random.RandomState(1).randn(len(new), other.stop - other.start)
    placed = red.transform(X[new])
    np.testing.assert_array_equal(red.transform(scrambled), placed)
    assert evaluate(KMeans(3).fit(Z).predict(placed), y[new])["acc"] > 0.9


def _with_optional_view(kind: str, n_per=50, k=3, seed=0):
    """Views "base" and "extra" of the same points. ``kind``: "agrees": base's blobs overlap a little and extra
    holds well-separated blobs of the same classes; "cuts across": base's blobs are clean and extra holds
    overlapping blobs of another grouping of the points; "alone": base is structureless and extra holds the
    classes' blobs."""
    rs = np.random.RandomState(seed + 1)
    base, y = _blobs(n_per=n_per, k=k, d=6, sep={"agrees": 2.5, "cuts across": 4.0}.get(kind, 0.0), seed=seed)
    grouping = rs.permutation(y) if kind == "cuts across" else y
    centres = rs.randn(k, 6) * (1.0 if kind == "cuts across" else 8.0)
    extra = (centres[grouping] + rs.randn(len(y), 6)).astype(np.float32)
    return np.hstack([base, extra]), y


@pytest.mark.parametrize("kind, chosen, columns", [
    ("cuts across", UMAP.WITHOUT.format(view="extra"), [[0, 6]]),
    ("alone", UMAP.ALONE.format(view="extra"), [[6, 12]])])
def test_umap_optional_view_is_left_out_or_laid_out_alone_where_that_graph_is_cleanest(kind, chosen, columns):
    from imclust.cluster import KMeans

    X, y = _with_optional_view(kind)
    red = _view_reducer([6, 6], ["base", "extra"], n_components=3, n_neighbors=10, n_epochs=100, optional_view="extra")
    Z = red.fit_transform(X)
    choice = red.graph_choice_
    scores = choice["mean_conductance"]
    assert list(scores) == [UMAP.SHARED, UMAP.WITHOUT.format(view="extra"), UMAP.ALONE.format(view="extra")]
    assert choice["optional_view"] == "extra" and choice["chosen"] == chosen == min(scores, key=scores.get)
    assert choice["columns"] == columns
    assert evaluate(KMeans(3).fit_predict(Z), y)["acc"] > 0.9  # labels only score


def test_umap_optional_view_is_used_where_its_neighbours_agree():
    """The agreeing view is used (joined or alone), never left out, and its graph beats the base view's."""
    X, y = _with_optional_view("agrees")
    red = _view_reducer([6, 6], ["base", "extra"], n_components=3, n_neighbors=10, n_epochs=100, optional_view="extra")
    red.fit(X)
    scores = red.graph_choice_["mean_conductance"]
    without = UMAP.WITHOUT.format(view="extra")
    assert min(scores[UMAP.SHARED], scores[UMAP.ALONE.format(view="extra")]) < scores[without]
    assert red.graph_choice_["chosen"] != without and [6, 12] in red.graph_choice_["columns"]


def test_umap_compares_its_graphs_again_at_another_k_and_keeps_the_layout_it_is_told():
    """What the pipeline's --k auto uses to settle on a graph: scores at any k, and any laid-out graph kept."""
    X, _ = _with_optional_view("alone")
    options = dict(n_components=3, n_neighbors=10, n_epochs=60, optional_view="extra")
    given = _view_reducer([6, 6], ["base", "extra"], k=3, **options)
    given.fit_transform(X)
    assert given.graph_scores(3) == {}  # k given: the comparison is final, and the other layouts are let go
    red = _view_reducer([6, 6], ["base", "extra"], k="auto:2-4", **options)  # compared first at √(2·4) ≈ 3
    first = red.fit_transform(X)
    choice = dict(red.graph_choice_)
    assert choice == {**given.graph_choice_, "compared_at": choice["compared_at"]}  # the same comparison at 3
    assert red.graph_scores(3) == choice["mean_conductance"]  # the same comparison as the fit's
    other = UMAP.SHARED
    assert choice["chosen"] != other and choice["compared_at"] == [[3, choice["chosen"]]]
    scores = red.graph_scores(5)
    Z = red.keep_graph(other, 5, scores)
    assert red.graph_choice_["chosen"] == other and red.graph_choice_["columns"] == [[0, 6], [6, 12]]
    assert red.graph_choice_["compared_at"] == [[3, choice["chosen"]], [5, min(scores, key=scores.get)]]
    assert not np.array_equal(Z, first)
    np.testing.assert_array_equal(red.train_embedding_, Z)
    np.testing.assert_array_equal(red.train_X_, X)  # new points are placed by both views now
    red.release_graphs()
    assert red.graph_scores(3) == {}


@pytest.mark.parametrize("kind, kept, scrambled", [("cuts across", slice(0, 6), slice(6, 12)),
                                                  ("alone", slice(6, 12), slice(0, 6))])
def test_umap_optional_view_places_new_points_by_the_kept_views_alone(kind, kept, scrambled):
    X, y = _with_optional_view(kind, n_per=60)
    train, new = np.arange(0, len(X), 2), np.arange(1, len(X), 2)
    red = _view_reducer([6, 6], ["base", "extra"], n_components=3, n_neighbors=10, n_epochs=100, optional_view="extra")
    red.fit(X[train])
    np.testing.assert_array_equal(red.train_X_, X[train][:, kept])
    noisy = X[new].copy()
    noisy[:, scrambled] = np.random.RandomState(3).randn(len(new), 6)
    np.testing.assert_array_equal(red.transform(noisy), red.transform(X[new]))


def test_umap_optional_view_and_subspace_view_make_four_graphs_compete():
    X, _ = _with_optional_view("cuts across")
    noise = np.random.RandomState(5).randn(len(X), 20).astype(np.float32)  # a pixel view without subspaces
    red = _view_reducer([6, 6, 20], ["base", "extra", "px"], n_components=3, n_neighbors=10, n_epochs=60,
                        optional_view="extra", subspace="px")
    red.fit(np.hstack([X, noise]))
    scores = red.graph_choice_["mean_conductance"]
    assert list(scores) == [UMAP.SHARED, UMAP.WITHOUT.format(view="extra"), UMAP.ALONE.format(view="extra"),
                            UMAP.SUBSPACE]
    assert red.graph_choice_["chosen"] == min(scores, key=scores.get) == UMAP.WITHOUT.format(view="extra")


def test_umap_optional_view_refuses_what_it_cannot_use():
    X, _ = _with_optional_view("agrees")
    for views, optional, names, match in [
            ("intersect", "nope", ["base", "extra"], "name one of the views in the neighbour graph \\(base, extra\\)"),
            ("joint", "extra", ["base", "extra"], "needs views = 'intersect'"),
            ("intersect", "extra", ["base", "extra"], "at least one other view")]:
        red = UMAP(views=views, optional_view=optional, subspace="base" if match.startswith("at least") else None)
        red.set_views([6, 6], names)
        with pytest.raises(UserError, match=match):
            red.fit(X)
    red = UMAP(views="intersect", optional_view="px", subspace="px")
    red.set_views([6, 6], ["base", "px"])
    with pytest.raises(UserError, match="name one of the views in the neighbour graph \\(base\\)"):
        red.fit(X)
