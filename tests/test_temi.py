"""The TEMI cluster head on synthetic blobs: it clusters, is seeded, saves/loads, and reads no labels."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from imclust import components  # noqa: F401
from imclust.base import REGISTRY, build
from imclust.errors import UserError
from imclust.metrics import evaluate
from imclust.temi import TEMI, neighbour_information


def _blobs(n_per=80, k=4, d=16, seed=0):
    rs = np.random.RandomState(seed)
    centres = rs.randn(k, d) * 6
    X = np.concatenate([c + rs.randn(n_per, d) for c in centres]).astype(np.float32)
    y = np.repeat(np.arange(k), n_per)
    return np.abs(X), y  # all-positive, like a CNN's pooled activations


FAST = dict(steps=150, n_heads=4, hidden=64, bottleneck=32, batch_size=64, lr=1e-3, knn=10)


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_neighbour_information_by_hand():
    labels = np.repeat(np.arange(3), 4)
    same = np.array([[j for j in range(12) if j // 4 == i // 4 and j != i][:2] for i in range(12)])
    assert neighbour_information(labels, same, 3) == pytest.approx(math.log(3))  # balanced, never leave
    merged = np.where(labels == 2, 1, labels)
    assert neighbour_information(merged, same, 3) < math.log(3) - 0.3  # a merge costs information
    rs = np.random.RandomState(0)
    assert neighbour_information(rs.randint(0, 3, 12), rs.randint(0, 12, (12, 2)), 3) < 0.5


def test_temi_clusters_blobs_and_is_seeded():
    X, y = _blobs()
    a = TEMI(4, random_state=0, **FAST).fit(X)
    assert "temi" in REGISTRY and a.labels_.shape == (len(X),) and a.labels_.dtype == np.int64
    assert evaluate(a.labels_, y)["acc"] > 0.9
    b = TEMI(4, random_state=0, **FAST).fit(X)
    np.testing.assert_array_equal(a.labels_, b.labels_)
    np.testing.assert_allclose(a.predict_proba(X), b.predict_proba(X), atol=1e-6)
    P = a.predict_proba(X)
    assert P.shape == (len(X), 4) and P.dtype == np.float32
    np.testing.assert_allclose(P.sum(1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(a.predict(X), P.argmax(1))
    np.testing.assert_array_equal(a.predict(X), a.labels_)
    assert 0 <= a.best_head_ < FAST["n_heads"] and len(a.head_scores_) == FAST["n_heads"]
    assert len(a.history_) > 0 and np.isfinite(a.history_).all()


def test_temi_ignores_labels_and_places_new_points():
    X, y = _blobs()
    a = TEMI(4, random_state=1, **FAST).fit(X)
    b = TEMI(4, random_state=1, **FAST).fit(X, y=np.random.RandomState(0).permutation(y))
    np.testing.assert_array_equal(a.labels_, b.labels_)
    Xn, yn = _blobs(n_per=20, seed=0)  # the same centres, new points
    assert evaluate(a.predict(Xn + 0.01), yn)["acc"] > 0.9


def test_temi_saves_as_arrays_and_json_and_reloads(tmp_path):
    from imclust.pipeline import Pipeline

    X, _ = _blobs(n_per=40, k=3, d=12)
    model = TEMI(3, random_state=0, **FAST).fit(X)
    arrays, extra = model.get_state()
    assert {"head.w1", "head.v", "mean_"} <= set(arrays)
    assert arrays["head.w1"].shape[0] == 1  # only the kept head is saved
    clone = build(model.to_spec())
    clone.set_state(arrays, extra)
    np.testing.assert_allclose(clone.predict_proba(X), model.predict_proba(X), atol=1e-6)
    with pytest.raises(UserError, match="5 features, but TEMI is expecting"):
        clone.predict(X[:, :5])
    pipe = Pipeline(build({"type": "pixels"}), [], model, name="t")
    pipe.save(tmp_path / "m")
    loaded = Pipeline.load(tmp_path / "m")
    np.testing.assert_array_equal(loaded.clusterer.predict(X), model.predict(X))


@pytest.mark.parametrize("bad,match", [(dict(n_clusters=0), "k must"), (dict(steps=0), "steps"),
                                       (dict(beta=1.5), "beta"), (dict(teacher_momentum=1.0), "teacher_momentum"),
                                       (dict(n_heads=2.5), "n_heads"), (dict(lr=0), "lr")])
def test_temi_bad_options_are_one_line(bad, match):
    X, _ = _blobs(n_per=10)
    kw = {**FAST, "n_clusters": 4, **bad}
    with pytest.raises(UserError, match=match):
        TEMI(**kw).fit(X)
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        TEMI(4).predict(X)
