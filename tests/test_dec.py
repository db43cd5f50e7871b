"""DEC and IDEC: pretraining through the autoencoder encoder, Student's t assignments, the target distribution,
the tol stop, encoder-owned clusters, resume, and the recipes end to end (small synthetic data)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from imclust import components  # noqa: F401
from imclust.data.sources import _array_imageset
from imclust.encoders.dec import DECEncoder, IDECEncoder, StudentT
from imclust.nn.pseudolabels import student_t, target_distribution
from imclust.errors import UserError
from imclust.metrics import cluster_acc

from conftest import blobs_images

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PRETRAIN = {"arch": "mlp3", "code_dim": 3, "epochs": 8, "min_steps": 0, "lr": 5e-3, "batch_size": 30}


def _ds(seed=0, n_per=30):
    X, y = blobs_images(n_per=n_per, k=3, size=8, seed=seed)
    return _array_imageset(X, y, "blobs", "array")


def _enc(cls=DECEncoder, **kw):
    base = dict(n_clusters=3, pretrain=PRETRAIN, epochs=4, batch_size=30, tol=0.0, n_init=3, seed=0, device="cpu")
    return cls(**{**base, **kw})


def test_student_t_and_target_distribution():
    st = StudentT(2, 2)
    st.centres.data = torch.tensor([[0.0, 0.0], [3.0, 0.0]])
    q = st(torch.tensor([[0.0, 0.0], [1.0, 0.0]])).detach().numpy()
    np.testing.assert_allclose(q.sum(1), 1, rtol=1e-6)
    # q_ij ∝ 1 / (1 + d²): the point at the first centre has weights 1 and 1/10
    np.testing.assert_allclose(q[0], [1 / 1.1, 0.1 / 1.1], rtol=1e-5)
    np.testing.assert_allclose(student_t(np.array([[0.0, 0.0], [1.0, 0.0]]), st.centres.detach().numpy()), q, rtol=1e-5)
    p = target_distribution(q)
    w = q ** 2 / q.sum(0)  # p_ij ∝ q_ij² / f_j with f_j = Σ_i q_ij
    np.testing.assert_allclose(p, w / w.sum(1, keepdims=True), rtol=1e-5)
    assert p[0, 0] > q[0, 0]  # squaring sharpens a confident assignment


@pytest.mark.parametrize("cls", [DECEncoder, IDECEncoder])
def test_clusters_are_the_encoders_own(cls):
    ds, new = _ds(), _ds(seed=1)
    enc = _enc(cls).fit(ds)
    y = np.asarray(ds.labels)
    assert enc.labels_.shape == (len(ds),) and enc.n_clusters_ == 3
    assert cluster_acc(y, enc.labels_) > 0.9 and cluster_acc(y, enc.init_labels_) > 0.9
    proba = enc.predict_proba(new)
    assert proba.shape == (len(new), 3) and proba.dtype == np.float32
    np.testing.assert_allclose(proba.sum(1), 1, rtol=1e-5)
    np.testing.assert_array_equal(enc.predict(new), proba.argmax(1))
    assert enc.transform(new).shape == (len(new), 3)
    assert len(enc.history_) == 4 and "changed" in enc.history_[1] and enc.pretrain_history_
    from imclust.base import build

    pre = build({"type": "autoencoder", **enc._pretrain_options()}).fit(ds).net_  # the same pretraining again
    # the decoder moved only for IDEC; the encoder for both
    dec_w = enc.net_.decoder[0].weight
    assert torch.equal(dec_w, pre.decoder[0].weight) != (cls is IDECEncoder)
    assert not torch.equal(enc.net_.encoder[0].weight, pre.encoder[0].weight)


def test_training_stops_when_fewer_than_tol_change():
    enc = _enc(tol=0.5, epochs=10).fit(_ds())
    assert len(enc.history_) == 1 and enc.converged_["epoch"] == 1 and enc.converged_["changed"] < 0.5


@pytest.mark.parametrize("cls", [DECEncoder, IDECEncoder])
def test_interrupted_then_resumed_equals_uninterrupted(tmp_path, cls):
    ds = _ds()
    full = _enc(cls, epochs=4, checkpoint_dir=str(tmp_path / "full"), checkpoint_every=1).fit(ds)
    ck = str(tmp_path / "ck")
    _enc(cls, epochs=2, checkpoint_dir=ck, checkpoint_every=1).fit(ds)  # a constant learning rate: stopping
    assert (tmp_path / "ck" / "pretrain" / "last.json").exists()      # after epoch 2 is an interruption there
    assert (tmp_path / "ck" / "epoch_0002.json").exists()
    resumed = _enc(cls, epochs=4, checkpoint_dir=ck, resume=True).fit(ds)  # more epochs: the run goes on
    assert [h["loss"] for h in resumed.history_] == [h["loss"] for h in full.history_]
    assert [h.get("changed") for h in resumed.history_] == [h.get("changed") for h in full.history_]
    np.testing.assert_array_equal(resumed.labels_, full.labels_)
    for (k, a), b in zip(full.clusters_.state_dict().items(), resumed.clusters_.state_dict().values()):
        assert torch.equal(a, b), k
    with pytest.raises(UserError, match="configuration changed"):
        _enc(cls, epochs=5, checkpoint_dir=ck, resume=True, alpha=2.0).fit(ds)


def test_auto_k_is_chosen_on_the_codes_and_bad_options_are_refused():
    enc = _enc(n_clusters="auto", epochs=1).fit(_ds())
    assert enc.n_clusters == "auto" and enc.n_clusters_ == 3
    with pytest.raises(UserError, match="n_clusters=500 is larger than the number of images"):
        _enc(n_clusters=500).fit(_ds())
    with pytest.raises(UserError, match="unknown option\\(s\\) depth"):
        _enc(pretrain={"depth": 3}).fit(_ds())
    with pytest.raises(UserError, match="gamma"):
        _enc(IDECEncoder, gamma=0).fit(_ds())


@pytest.mark.parametrize("recipe", ["dec", "idec"])
def test_recipe_runs_end_to_end_and_the_model_places_new_images(tmp_path, recipe):
    from imclust.api import predict, run

    X, y = blobs_images(n_per=30, k=3, size=8)
    np.savez(tmp_path / "b.npz", x=X, y=y)
    small = ["encoder.pretrain={arch='mlp3', code_dim=3, epochs=8, min_steps=0, lr=5e-3, batch_size=30}",
             "encoder.epochs=3", "encoder.batch_size=30", "encoder.n_init=3"]
    res = run(str(tmp_path / "b.npz"), recipe=recipe, seed=0, out=tmp_path / recipe, overrides=small)
    assert res.k == 3 and res.metrics["acc"] > 0.9 and res.pipeline.encoder_owns_clusters
    for f in ("predictions.csv", "report.html", "loss_curve.png", "pretrain_loss_curve.png", "model/state.safetensors"):
        assert (tmp_path / recipe / f).exists(), f
    assert "the encoder's own clusters" in (tmp_path / recipe / "report.html").read_text()
    again = predict(tmp_path / recipe / "model", str(tmp_path / "b.npz"))
    np.testing.assert_array_equal(again.labels, res.labels)
