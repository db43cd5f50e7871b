"""The encoder-owned-clusters protocol: a ClusteringEncoder's clusters through Pipeline fit/predict/save/load, the
api (k given to the encoder), metrics and the report; and `--k auto` that never overwrites n_clusters."""

from __future__ import annotations

import json

import numpy as np
import pytest

from imclust import components  # noqa: F401
from imclust.base import REGISTRY, register
from imclust.data.sources import _array_imageset
from imclust.encoders.base import ClusteringEncoder
from imclust.errors import UserError
from imclust.pipeline import Pipeline

from conftest import blobs_images


class NearestMeanClusters(ClusteringEncoder):
    """A tiny clustering encoder: k-means on the pixels inside the encoder, soft assignments by distance."""

    temperature: float = 1.0
    seed: int | None = 0

    def fit(self, ds, y=None):
        from imclust.cluster import KMeans

        X = ds.to_array(desc=None).reshape(len(ds), -1)
        self.check_n_clusters(len(ds))
        km = KMeans(self.resolve_n_clusters(X), n_init=3, random_state=self.seed).fit(X)
        self.centres_, self.labels_ = km.cluster_centers_, km.labels_
        self.input_shape_ = list(ds.shape)
        return self

    def transform(self, ds):
        return ds.to_array(desc=None).reshape(len(ds), -1)

    def predict_proba(self, ds):
        X = self.transform(ds)
        d2 = ((X[:, None, :] - self.centres_[None]) ** 2).sum(2)
        e = np.exp(-(d2 - d2.min(1, keepdims=True)) / self.temperature)
        return (e / e.sum(1, keepdims=True)).astype(np.float32)


@pytest.fixture(autouse=True)
def toy_clusters():
    register("test-nearest-mean")(NearestMeanClusters)
    yield
    REGISTRY.pop("test-nearest-mean", None)


def _ds(seed=0, n_per=20):
    X, y = blobs_images(n_per=n_per, k=3, size=8, seed=seed)
    return _array_imageset(X, y, "blobs", "array")


SPEC = {"encoder": {"type": "test-nearest-mean", "n_clusters": 3}, "reducers": [{"type": "pca", "n_components": 2}],
        "clusterer": {"type": "encoder"}}


def test_pipeline_takes_the_encoders_clusters_and_predicts_new_images(tmp_path):
    ds, new = _ds(), _ds(seed=1)
    pipe = Pipeline.from_spec(SPEC, seed=0).fit(ds)
    assert pipe.encoder_owns_clusters and np.array_equal(pipe.labels_, pipe.encoder.labels_)
    assert pipe.embedding_.shape == (len(ds), 2)  # the reducers still make the map
    assert pipe.n_clusters_ == 3
    proba = pipe.encoder.predict_proba(new)
    assert proba.shape == (len(new), 3) and proba.dtype == np.float32
    np.testing.assert_allclose(proba.sum(1), 1, rtol=1e-5)
    np.testing.assert_array_equal(pipe.predict(new), proba.argmax(1))
    pipe.save(tmp_path / "model")
    assert json.loads((tmp_path / "model" / "pipeline.json").read_text())["parts"]["clusterer"]["spec"] == {"type": "encoder"}
    loaded = Pipeline.load(tmp_path / "model")
    assert loaded.encoder_owns_clusters
    np.testing.assert_array_equal(loaded.predict(new), pipe.predict(new))
    labels, emb = loaded.assign(new)
    np.testing.assert_allclose(emb, pipe.transform(new), atol=1e-5)


def test_encoder_clusters_need_a_clustering_encoder():
    with pytest.raises(UserError, match="needs an encoder that learns its own clusters, but 'pixels' does not"):
        Pipeline.from_spec({"encoder": {"type": "pixels"}, "clusterer": {"type": "encoder"}})
    with pytest.raises(UserError, match="takes no options"):
        Pipeline.from_spec({**SPEC, "clusterer": {"type": "encoder", "n_init": 3}})


def test_api_gives_k_to_the_encoder_and_writes_metrics_and_report(tmp_path, monkeypatch):
    from imclust import api
    from imclust.recipes import load_recipe

    X, y = blobs_images(n_per=20, k=3, size=8)
    np.save(tmp_path / "x.npy", X)
    np.save(tmp_path / "y.npy", y)
    base = load_recipe("baseline")
    monkeypatch.setattr(api, "load_recipe", lambda name: {**base, "name": "toy", "encoder": dict(SPEC["encoder"], n_clusters=7),
                                                          "reducers": [], "clusterer": {"type": "encoder"}})
    res = api.run(str(tmp_path / "x.npy"), labels=str(tmp_path / "y.npy"), k=3, out=tmp_path / "run", seed=0)
    assert res.pipeline.encoder.n_clusters == 3 and res.k == 3  # --k reached the encoder
    assert res.metrics["acc"] == 1.0
    for f in ("predictions.csv", "metrics.json", "report.html", "model/pipeline.json"):
        assert (tmp_path / "run" / f).exists(), f
    again = api.predict(tmp_path / "run" / "model", str(tmp_path / "x.npy"), labels=str(tmp_path / "y.npy"))
    np.testing.assert_array_equal(again.labels, res.labels)
    assert again.metrics["acc"] == 1.0 and again.k == 3


def test_auto_k_goes_to_n_clusters_underscore_and_leaves_the_parameter():
    from imclust.cluster import KMeans

    rs = np.random.RandomState(0)
    X = np.concatenate([rs.randn(60, 2) * 0.2 + c for c in ([0, 0], [6, 0], [0, 6], [6, 6])]).astype(np.float32)
    km = KMeans(n_clusters="auto", n_init=2).fit(X)
    assert km.n_clusters == "auto" and km.n_clusters_ == 4 and len(np.unique(km.labels_)) == 4
    ds = _ds()
    pipe = Pipeline.from_spec(SPEC, seed=0)
    pipe.set_k("auto")
    pipe.fit(ds)
    assert pipe.encoder.n_clusters == "auto" and pipe.n_clusters_ == 3


def test_selflabel_hands_over_its_clusters(tmp_path):
    from imclust.api import run

    X, y = blobs_images(n_per=30, k=3, size=8)
    np.savez(tmp_path / "b.npz", x=X, y=y)
    res = run(str(tmp_path / "b.npz"), recipe="selflabel", k=3, seed=0, out=tmp_path / "sl",
              overrides=["clusterer={type='encoder'}", "encoder.epochs=3", "encoder.dim=4"])
    enc = res.pipeline.encoder
    assert enc.n_clusters == 3 and np.array_equal(res.labels, enc.labels_)
    assert res.metrics["acc"] > 0.9
    again = Pipeline.load(tmp_path / "sl" / "model").predict(res.dataset)
    np.testing.assert_array_equal(again, res.labels)
