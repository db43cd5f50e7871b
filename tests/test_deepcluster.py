"""DeepCluster: augmentations, networks, the encoder's epoch loop, labels never used in fitting, collapse
reporting, resume, save/load and bad input (its pseudo-label tools: tests/test_pseudolabels.py)."""

from __future__ import annotations

import json
import numpy as np
import pytest
import torch

from imclust.encoders.deepcluster import DeepClusterEncoder
from imclust.errors import UserError
from imclust.nn.augment import color_jitter, random_resized_crop
from imclust.nn.deepcluster_nets import DeepClusterNet, Sobel, auto_arch

from conftest import blobs_images


def _ds(n_per=20, k=3, size=12, labels=True, seed=0):
    from imclust.data.sources import _array_imageset

    X, y = blobs_images(n_per=n_per, k=k, size=size, seed=seed)
    return _array_imageset(X, y if labels else None, "blobs", "array")


def _enc(**kw):
    base = dict(k_train=6, epochs=2, batch_size=16, pca_dim=16, width=4, feat_dim=16, crop_scale=(0.5, 1.0),
                flip=False, kmeans_iter=5, device="cpu", seed=0)
    return DeepClusterEncoder(**{**base, **kw})


# -- augmentations ---------------------------------------------------------------------------------------------
def test_random_resized_crop_identity_and_flip():
    x = torch.rand(6, 3, 10, 10)
    same = random_resized_crop(x, (10, 10), scale=(1, 1), ratio=(1, 1), flip=False, generator=torch.Generator())
    assert torch.allclose(same, x, atol=1e-5)
    g = torch.Generator().manual_seed(3)
    fl = random_resized_crop(x, (10, 10), scale=(1, 1), ratio=(1, 1), flip=True, generator=g)
    mirrored = [torch.allclose(fl[i], x[i].flip(-1), atol=1e-5) for i in range(6)]
    kept = [torch.allclose(fl[i], x[i], atol=1e-5) for i in range(6)]
    assert all(m or k for m, k in zip(mirrored, kept)) and any(mirrored) and any(kept)


def test_random_resized_crop_zooms_and_is_seeded():
    x = torch.zeros(4, 1, 16, 16)
    x[:, :, 4:12, 4:12] = 1.0  # a bright centre square
    a = random_resized_crop(x, (8, 8), scale=(0.2, 0.3), generator=torch.Generator().manual_seed(0))
    b = random_resized_crop(x, (8, 8), scale=(0.2, 0.3), generator=torch.Generator().manual_seed(0))
    assert a.shape == (4, 1, 8, 8) and torch.equal(a, b)
    # a crop of 20-30 % of the area is zoomed in: the square covers more of the view than its 25 % of the image
    assert a.mean() > x.mean()


def test_color_jitter_changes_and_stays_in_range():
    x = torch.rand(5, 3, 8, 8)
    y = color_jitter(x, 0.5, generator=torch.Generator().manual_seed(0))
    assert y.shape == x.shape and not torch.allclose(x, y) and y.min() >= 0 and y.max() <= 1
    assert torch.equal(color_jitter(x, 0.0), x)


# -- networks --------------------------------------------------------------------------------------------------
def test_sobel_responds_to_edges_only():
    x = torch.zeros(1, 3, 8, 8)
    x[..., 4:] = 1.0  # a vertical edge
    out = Sobel(3)(x)
    assert out.shape == (1, 2, 8, 8)
    assert out[0, 0, 2:6, 3:5].abs().min() > 0  # horizontal gradient at the edge
    assert out[0, 1, 2:6, :].abs().max() == 0  # no vertical gradient away from the border
    assert out[0, 0, 2:6, 0:2].abs().max() == 0  # nothing in a flat area


@pytest.mark.parametrize("arch,size,ch", [("convnet", 28, 1), ("convnet", 32, 3), ("alexnet", 64, 3), ("vgg16", 64, 3)])
def test_networks_shapes(arch, size, ch):
    net = DeepClusterNet(arch, ch, (size, size), sobel=(ch == 3), width=8, feat_dim=32).eval()
    x = torch.rand(2, ch, size, size)
    assert net(x).shape == (2, 32) and net.embed(x).shape == (2, 32)
    assert (net(x) >= 0).all()  # after ReLU; embed is the same layer before it
    assert torch.allclose(torch.relu(net.embed(x)), net(x))


def test_large_networks_refuse_small_images_and_auto_picks():
    with pytest.raises(UserError, match="at least 64 px"):
        DeepClusterNet("alexnet", 3, (32, 32))
    with pytest.raises(UserError, match="unknown DeepCluster architecture"):
        DeepClusterNet("resnet", 3, (32, 32))
    assert auto_arch((28, 28)) == "convnet" and auto_arch((96, 96)) == "alexnet"


# -- the encoder -----------------------------------------------------------------------------------------------
def test_encoder_epochs_log_stability_and_scores():
    ds = _ds()
    enc = _enc(epochs=3).fit(ds)
    h = enc.history_
    assert [r["epoch"] for r in h] == [1, 2, 3]
    assert "nmi_prev" not in h[0] and all(0 <= r["nmi_prev"] <= 1 for r in h[1:])
    for r in h:
        assert np.isfinite(r["loss"]) and r["empty_repaired"] >= 0 and 0 < r["largest_cluster"] <= 1
        assert {"nmi_labels", "acc_k", "time_features", "time_kmeans", "time_train"} <= set(r)
    assert enc.pseudo_labels_.shape == (60,) and enc.pseudo_labels_.max() < 6
    Z = enc.transform(ds)
    assert Z.shape == (60, 16) and np.isfinite(Z).all()


def test_labels_are_never_used_to_fit():
    a = _enc().fit(_ds(labels=True))
    b = _enc().fit(_ds(labels=False))
    assert np.array_equal(a.pseudo_labels_, b.pseudo_labels_)
    for (k, va), vb in zip(a.net_.state_dict().items(), b.net_.state_dict().values()):
        assert torch.equal(va, vb), k
    assert "nmi_labels" in a.history_[0] and "nmi_labels" not in b.history_[0]


def test_k_train_larger_than_images_is_refused():
    with pytest.raises(UserError, match="k_train=500 is larger than the number of images \\(60\\)"):
        _enc(k_train=500).fit(_ds())


def test_bad_options_are_refused():
    with pytest.raises(UserError, match="crop_scale"):
        _enc(crop_scale=(0.5, 2.0)).fit(_ds())
    with pytest.raises(UserError, match="epochs"):
        _enc(epochs=-1).fit(_ds())


def test_heads_from_issue_6_plug_in_and_unknown_head_is_a_clear_error():
    enc = _enc(head="arcface", epochs=1).fit(_ds())
    assert np.isfinite(enc.history_[0]["loss"])
    with pytest.raises(UserError, match="unknown head 'nope'"):
        _enc(head="nope").fit(_ds())


def test_collapse_is_reported(monkeypatch, tmp_path, capsys):
    import imclust.nn.pseudolabels as pl

    def collapsed(X, k, seed, **kw):
        labels = np.zeros(len(X), np.int64)
        labels[: k - 1] = np.arange(1, k)  # one point in each other cluster: 95 % in cluster 0
        return labels, np.zeros((k, X.shape[1]), np.float32), 0

    monkeypatch.setattr(pl, "kmeans_labels", collapsed)
    monkeypatch.setenv("IMCLUST_QUIET", "0")
    enc = _enc(epochs=1, k_train=4).fit(_ds())
    assert enc.history_[0]["collapsed"] is True and enc.history_[0]["largest_cluster"] > 0.9
    assert any("COLLAPSE" in w for w in enc.warnings_)
    assert "COLLAPSE at epoch 1" in capsys.readouterr().err

    # and in a run's outputs: history.json, deepcluster.json and run.json's warnings
    from imclust import api

    X, _ = blobs_images(n_per=20, k=3, size=12)
    np.save(tmp_path / "x.npy", X)
    small = ["encoder.epochs=1", "encoder.k_train=4", "encoder.width=4", "encoder.feat_dim=16", "encoder.batch_size=16"]
    api.run(str(tmp_path / "x.npy"), recipe="deepcluster", k=3, out=tmp_path / "run", overrides=small)
    summary = json.loads((tmp_path / "run" / "deepcluster.json").read_text())
    assert summary["collapsed_epochs"] == [1] and summary["warnings"]
    assert json.loads((tmp_path / "run" / "history.json").read_text())[0]["collapsed"] is True
    assert any("COLLAPSE" in w for w in json.loads((tmp_path / "run" / "run.json").read_text())["warnings"])


def test_resume_equals_uninterrupted(tmp_path):
    ds = _ds()
    full = _enc(epochs=3, checkpoint_dir=str(tmp_path / "a"), checkpoint_every=1).fit(ds)
    _enc(epochs=2, checkpoint_dir=str(tmp_path / "b"), checkpoint_every=1).fit(ds)
    assert (tmp_path / "b" / "epoch_0002.safetensors").exists()
    resumed = _enc(epochs=3, checkpoint_dir=str(tmp_path / "b"), resume=True).fit(ds)
    assert np.array_equal(full.pseudo_labels_, resumed.pseudo_labels_)
    for (k, va), vb in zip(full.net_.state_dict().items(), resumed.net_.state_dict().values()):
        assert torch.equal(va, vb), k
    assert [h["loss"] for h in full.history_] == [h["loss"] for h in resumed.history_]
    assert resumed.history_[2]["nmi_prev"] == full.history_[2]["nmi_prev"]  # the previous labels came back too


def test_pipeline_save_load_predicts_the_same(tmp_path):
    from imclust.pipeline import Pipeline
    from imclust.reduce import PCA, L2Normalize
    from imclust.cluster import KMeans

    ds = _ds()
    pipe = Pipeline(_enc(), [PCA(8, whiten=True), L2Normalize()], KMeans(3, n_init=2), name="deepcluster").fit(ds)
    pipe.save(tmp_path / "model")
    loaded = Pipeline.load(tmp_path / "model")
    assert np.array_equal(loaded.predict(ds), pipe.labels_)
    assert np.array_equal(loaded.encoder.pseudo_labels_, pipe.encoder.pseudo_labels_)


def test_cli_recipe_runs_and_refuses_big_k_train(tmp_path, capsys):
    from imclust.cli import main

    X, _ = blobs_images(n_per=20, k=3, size=12)
    np.save(tmp_path / "x.npy", X)
    cmd = ["run", str(tmp_path / "x.npy"), "--recipe", "deepcluster", "--k", "3"]
    small = ["--set", "encoder.epochs=1", "--set", "encoder.width=4", "--set", "encoder.feat_dim=16",
             "--set", "encoder.batch_size=16", "--set", "encoder.k_train=6"]
    assert main(cmd + ["--set", "encoder.k_train=1000", "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err
    assert "k_train=1000 is larger than the number of images (60)" in err and "Traceback" not in err
    assert main(cmd + small + ["--out", str(tmp_path / "run")]) == 0
    out = tmp_path / "run"
    for f in ("predictions.csv", "history.json", "loss_curve.png", "deepcluster.json", "model/pipeline.json"):
        assert (out / f).exists(), f
    hist = json.loads((out / "history.json").read_text())
    assert hist[0]["epoch"] == 1 and "loss" in hist[0]


@pytest.mark.integration
def test_smoke_mnist_subset_checkpoints_and_resumes(shared_data, tmp_path):
    """CI smoke test on a tiny MNIST subset: the loop runs, checkpoints and resumes (not accuracy)."""
    from imclust.data import load_source

    path = shared_data / "mnist-test" / "t10k-images-idx3-ubyte.gz"
    if not path.exists():
        pytest.skip("MNIST-test not in the shared data")
    ds = load_source(str(path)).subset(np.arange(160))
    kw = dict(k_train=12, batch_size=32, width=8, feat_dim=32, pca_dim=32, flip=False, crop_scale=(0.3, 1.0),
              kmeans_iter=5, device="cpu", seed=0, checkpoint_dir=str(tmp_path / "ckpt"), checkpoint_every=1)
    first = DeepClusterEncoder(epochs=1, **kw).fit(ds)
    assert (tmp_path / "ckpt" / "epoch_0001.safetensors").exists() and len(first.history_) == 1
    with pytest.raises(UserError, match="already holds a checkpoint"):
        DeepClusterEncoder(epochs=2, **kw).fit(ds)
    resumed = DeepClusterEncoder(epochs=2, resume=True, **kw).fit(ds)
    assert [h["epoch"] for h in resumed.history_] == [1, 2]
    assert resumed.history_[0] == first.history_[0]
    assert (tmp_path / "ckpt" / "epoch_0002.safetensors").exists()
    assert 0 <= resumed.history_[1]["nmi_prev"] <= 1
    Z = resumed.transform(ds)
    assert Z.shape == (160, 32) and np.isfinite(Z).all() and (Z >= 0).all()
