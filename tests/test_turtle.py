"""TURTLE on synthetic features: it clusters, finds the grouping every feature space shares, is seeded,
saves/loads, reads no labels, takes the view blocks from a pipeline, and refuses bad options in one line."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from imclust import components  # noqa: F401
from imclust.base import REGISTRY, build
from imclust.errors import UserError
from imclust.metrics import evaluate
from imclust.turtle import TURTLE

FAST = dict(iterations=300, device="cpu")


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _blobs(n_per=60, k=3, d=10, seed=0):
    rs = np.random.RandomState(seed)
    centres = rs.randn(k, d) * 5
    X = np.concatenate([c + rs.randn(n_per, d) for c in centres]).astype(np.float32)
    return X, np.repeat(np.arange(k), n_per)


def _two_spaces(n=300, d=8, seed=0):
    """Space A splits the points by a nuisance ``u`` far more than by the grouping ``y``; space B holds ``y``
    alone. k-means on the joined columns follows ``u``; only ``y`` is learnable in both spaces."""
    rs = np.random.RandomState(seed)
    y, u = rs.randint(0, 2, n), rs.randint(0, 2, n)

    def direction():
        v = rs.randn(d)
        return v / np.linalg.norm(v)

    A = 3 * np.outer(y, direction()) + 12 * np.outer(u, direction()) + rs.randn(n, d)
    B = 5 * np.outer(y, direction()) + rs.randn(n, d)
    return np.hstack([A, B]).astype(np.float32), y, u


def test_turtle_clusters_blobs_and_is_seeded():
    X, y = _blobs()
    a = TURTLE(3, random_state=0, **FAST).fit(X)
    assert "turtle" in REGISTRY and a.labels_.shape == (len(X),) and a.labels_.dtype == np.int64
    assert evaluate(a.labels_, y)["acc"] > 0.95
    b = TURTLE(3, random_state=0, **FAST).fit(X)
    np.testing.assert_array_equal(a.labels_, b.labels_)
    np.testing.assert_allclose(a.predict_proba(X), b.predict_proba(X), atol=1e-6)
    P = a.predict_proba(X)
    assert P.shape == (len(X), 3) and P.dtype == np.float32
    np.testing.assert_allclose(P.sum(1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(a.predict(X), a.labels_)
    assert a.space_widths_ == [X.shape[1]] and len(a.history_) > 0 and np.isfinite(a.history_).all()


def test_two_spaces_find_the_grouping_both_share():
    from sklearn.cluster import KMeans

    X, y, u = _two_spaces()
    joined = KMeans(2, n_init=10, random_state=0).fit_predict(X)
    assert evaluate(joined, u)["acc"] > 0.95  # the nuisance wins on the joined columns...
    one = TURTLE(2, spaces="one", random_state=0, **FAST).fit(X)
    assert evaluate(one.labels_, u)["acc"] > 0.95  # ...and in one space
    two = TURTLE(2, spaces=[8, 8], random_state=0, **FAST).fit(X)
    assert two.space_widths_ == [8, 8]
    assert evaluate(two.labels_, y)["acc"] > 0.95  # each space must be able to learn the labelling


def test_turtle_ignores_labels_and_places_new_points():
    X, y = _blobs()
    a = TURTLE(3, random_state=1, **FAST).fit(X)
    b = TURTLE(3, random_state=1, **FAST).fit(X, y=np.random.RandomState(0).permutation(y))
    np.testing.assert_array_equal(a.labels_, b.labels_)
    Xn, yn = _blobs(n_per=15, seed=0)  # the same centres, new noise
    assert evaluate(a.predict(Xn + 0.01), yn)["acc"] > 0.95


def test_turtle_reduces_each_space_and_saves_as_arrays_and_json(tmp_path):
    from imclust.pipeline import Pipeline

    X, _, _ = _two_spaces(n=120)
    model = TURTLE(2, spaces=[8, 8], n_components=5, random_state=0, **FAST).fit(X)
    arrays, extra = model.get_state()
    assert arrays["space0.axes"].shape == (5, 8) and arrays["space1.weight"].shape == (2, 5)
    assert extra["space_widths_"] == [8, 8]
    clone = build(model.to_spec())
    clone.set_state(arrays, extra)
    np.testing.assert_allclose(clone.predict_proba(X), model.predict_proba(X), atol=1e-6)
    with pytest.raises(UserError, match="5 features, but TURTLE is expecting"):
        clone.predict(X[:, :5])
    pipe = Pipeline(build({"type": "pixels"}), [], model, name="t")
    pipe.save(tmp_path / "m")
    loaded = Pipeline.load(tmp_path / "m")
    np.testing.assert_array_equal(loaded.clusterer.predict(X), model.predict(X))


def test_pipeline_gives_the_view_blocks_to_turtle():
    from imclust.data import load_source
    from imclust.pipeline import Pipeline

    ds = load_source("digits").subset(np.arange(300))
    views = {"type": "views", "pca": 20,
             "views": {"pixels": {"type": "pixels"}, "shape": {"type": "hog", "cell_px": [4], "grids": [4]}}}
    pipe = Pipeline(build(views), [], build({"type": "turtle", "n_clusters": 10, **FAST}), name="v").fit(ds)
    assert pipe.clusterer.space_widths_ == pipe.encoder.view_dims_ == [20, 20]
    assert evaluate(pipe.labels_, ds.labels)["acc"] > 0.6  # chance is about 0.1
    with_reducer = Pipeline(build(views), [build({"type": "pca", "n_components": 8})],
                            build({"type": "turtle", "n_clusters": 10, **FAST}), name="r").fit(ds)
    assert with_reducer.clusterer.space_widths_ == [8]  # a reducer mixes the views: one space


@pytest.mark.parametrize("bad,match", [(dict(n_clusters=0), "k must"), (dict(iterations=0), "iterations"),
                                       (dict(spaces=[8, 9]), "add up to 17"), (dict(spaces="two"), "spaces must"),
                                       (dict(n_components=-1), "n_components"), (dict(lr=0), "lr"),
                                       (dict(gamma=-1), "gamma")])
def test_turtle_bad_options_are_one_line(bad, match):
    X, _, _ = _two_spaces(n=30)
    with pytest.raises(UserError, match=match) as err:
        TURTLE(**{**FAST, "n_clusters": 2, **bad}).fit(X)
    assert "\n" not in str(err.value)
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        TURTLE(2).predict(X)
