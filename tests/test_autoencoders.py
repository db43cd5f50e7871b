"""Autoencoder architectures and the autoencoder encoder (synthetic data, seconds)."""

import json

import numpy as np
import pytest
import torch

from imclust import components  # noqa: F401
from imclust.data.imageset import ImageSet
from imclust.encoders.autoencoder import AutoencoderEncoder
from imclust.errors import UserError
from imclust.nn.autoencoders import ConvAEHW9, count_parameters, make_autoencoder
from imclust.nn.train import TrainingDiverged
from imclust.pipeline import Pipeline

from conftest import blobs_images


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _imageset(x, y=None):
    x = np.asarray(x, np.float32)
    return ImageSet([str(i) for i in range(len(x))], lambda idx: x[np.asarray(idx)], x.shape[1:],
                    labels=y, source="synthetic", kind="array")


def test_hw9_architecture_is_the_tutorials():
    m = ConvAEHW9()
    convs = [l for l in m.encoder if isinstance(l, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.padding) for c in convs] == [
        (3, 64, (3, 3), (1, 1)), (64, 128, (3, 3), (1, 1)), (128, 256, (3, 3), (1, 1))]
    deconvs = [l for l in m.decoder if isinstance(l, torch.nn.ConvTranspose2d)]
    assert [(d.in_channels, d.out_channels, d.kernel_size) for d in deconvs] == [
        (256, 128, (5, 5)), (128, 64, (9, 9)), (64, 3, (17, 17))]
    assert isinstance(m.decoder[-1], torch.nn.Tanh)
    z, r = m(torch.zeros(2, 3, 32, 32))
    assert z.shape == (2, 256, 4, 4) and r.shape == (2, 3, 32, 32)
    # the tutorial's own count for this network (weights + biases of the six layers)
    expected = (3 * 64 * 9 + 64) + (64 * 128 * 9 + 128) + (128 * 256 * 9 + 256) \
        + (256 * 128 * 25 + 128) + (128 * 64 * 81 + 64) + (64 * 3 * 289 + 3)
    assert count_parameters(m) == expected


@pytest.mark.parametrize("shape", [(1, 16, 24), (4, 8, 8), (3, 64, 40)])
def test_hw9_generalises_to_channels_and_sizes(shape):
    m = make_autoencoder("conv_hw9", shape)
    z, r = m(torch.zeros(1, *shape))
    assert r.shape == (1, *shape)
    assert z.shape == (1, 256, shape[1] // 8, shape[2] // 8)


def test_hw9_rejects_sizes_not_multiple_of_8():
    with pytest.raises(UserError, match="multiples of 8"):
        ConvAEHW9(3, 30, 32)


def test_hw9_encoder_resizes_to_multiple_of_8():
    x, _ = blobs_images(n_per=4, k=2, size=12, channels=3)
    enc = AutoencoderEncoder(arch="conv_hw9", epochs=1, batch_size=8, device="cpu").fit(_imageset(x))
    assert enc.input_shape_ == [3, 16, 16]
    assert enc.transform(_imageset(x)).shape == (len(x), 256 * 2 * 2)


def test_max_side_shrinks_only_larger_images_and_keeps_their_aspect():
    rs = np.random.RandomState(0)
    tall = _imageset(rs.rand(6, 1, 40, 20))
    enc = AutoencoderEncoder(arch="conv_digits", max_side=16, epochs=1, batch_size=4, device="cpu").fit(tall)
    assert enc.input_shape_ == [1, 16, 8]
    assert enc.transform(tall).shape == (6, 10)
    small = _imageset(rs.rand(6, 1, 12, 12))
    enc = AutoencoderEncoder(arch="conv_digits", max_side=16, epochs=1, batch_size=4, device="cpu").fit(small)
    assert enc.input_shape_ == [1, 12, 12]
    fixed = AutoencoderEncoder(arch="conv_digits", size=24, max_side=16, epochs=1, batch_size=4, device="cpu")
    assert fixed.fit(tall).input_shape_ == [1, 24, 24]  # an explicit size wins
    for bad in (0, 2.5, "32"):
        with pytest.raises(UserError, match="max_side"):
            AutoencoderEncoder(arch="conv_digits", max_side=bad, epochs=1, device="cpu").fit(small)


@pytest.mark.parametrize("arch,shape,code", [("mlp3", (1, 28, 28), 3), ("dec", (1, 28, 28), 10),
                                             ("conv_digits", (1, 28, 28), 10), ("conv_digits", (1, 16, 16), 10),
                                             ("conv_digits", (1, 8, 8), 10), ("dec", (3, 5, 7), 10)])
def test_architectures_shapes(arch, shape, code):
    m = make_autoencoder(arch, shape)
    z, r = m(torch.rand(3, *shape))
    assert z.shape == (3, code) and r.shape == (3, *shape)


def test_mlp3_is_tutorial5():
    m = make_autoencoder("mlp3", (1, 28, 28))
    lin = [l for l in m.encoder if isinstance(l, torch.nn.Linear)]
    assert [(l.in_features, l.out_features) for l in lin] == [(784, 128), (128, 64), (64, 12), (12, 3)]
    assert sum(isinstance(l, torch.nn.Tanh) for l in m.encoder) == 3
    assert isinstance(m.decoder[-1], torch.nn.Sigmoid)
    dec = make_autoencoder("dec", (1, 28, 28))
    lin = [l for l in dec.encoder if isinstance(l, torch.nn.Linear)]
    assert [(l.in_features, l.out_features) for l in lin] == [(784, 500), (500, 500), (500, 2000), (2000, 10)]


def test_unknown_arch_is_user_error():
    with pytest.raises(UserError, match="unknown autoencoder"):
        make_autoencoder("resnet", (1, 8, 8))
    x, _ = blobs_images(n_per=3)
    with pytest.raises(UserError, match="unknown autoencoder"):
        AutoencoderEncoder(arch="resnet").fit(_imageset(x))
    with pytest.raises(UserError, match="epochs"):
        AutoencoderEncoder(epochs=0).fit(_imageset(x))


def test_training_reduces_loss_and_is_deterministic():
    x, _ = blobs_images(n_per=20, k=3, size=8)
    ds = _imageset(x)
    a = AutoencoderEncoder(arch="conv_digits", epochs=4, batch_size=16, lr=3e-3, device="cpu", seed=1).fit(ds)
    b = AutoencoderEncoder(arch="conv_digits", epochs=4, batch_size=16, lr=3e-3, device="cpu", seed=1).fit(ds)
    la = [h["loss"] for h in a.history_]
    assert la[-1] < la[0]
    assert la == [h["loss"] for h in b.history_]
    np.testing.assert_array_equal(a.transform(ds), b.transform(ds))


def test_bf16_channels_last_and_augmentation_train():
    x, _ = blobs_images(n_per=10, k=2, size=8)
    enc = AutoencoderEncoder(arch="conv_digits", epochs=2, batch_size=8, device="cpu", precision="bf16",
                             channels_last=True, noise=0.1, shift=1).fit(_imageset(x))
    assert np.isfinite(enc.history_[-1]["loss"])
    assert enc.transform(_imageset(x)).shape == (len(x), 10)


def test_random_shift_moves_content():
    torch.manual_seed(0)
    x = torch.zeros(16, 1, 6, 6)
    x[:, :, 2:4, 2:4] = 1
    from imclust.nn.augment import random_shift

    y = random_shift(x, 2)
    assert y.shape == x.shape
    assert torch.allclose(y.sum((1, 2, 3)), x.sum((1, 2, 3)))  # shift by ≤2 keeps the centre square inside
    assert not torch.equal(x, y)


def test_save_load_roundtrip_and_figures(tmp_path):
    x, y = blobs_images(n_per=15, k=3, size=8)
    ds = _imageset(x, y)
    spec = {"encoder": {"type": "autoencoder", "arch": "mlp3", "epochs": 2, "batch_size": 16, "device": "cpu"},
            "reducers": [], "clusterer": {"type": "kmeans", "n_clusters": 3, "n_init": 2}}
    pipe = Pipeline.from_spec(spec, seed=0).fit(ds)
    pipe.save(tmp_path / "model")
    loaded = Pipeline.load(tmp_path / "model")
    np.testing.assert_allclose(loaded.transform(ds), pipe.transform(ds), atol=1e-6)
    np.testing.assert_array_equal(loaded.predict(ds), pipe.labels_)
    assert loaded.encoder.history_ == pipe.encoder.history_

    class R:  # the parts of a RunResult write_figures reads
        dataset, true_labels, labels = ds, y, pipe.labels_

    figs = loaded.encoder.write_figures(R, tmp_path)
    for name in ("loss_curve", "reconstructions", "scatter_3d"):
        assert figs[name].exists() and figs[name].stat().st_size > 1000, name
    hist = json.loads((tmp_path / "history.json").read_text())
    assert [h["epoch"] for h in hist] == [1, 2] and all("loss" in h for h in hist)
    from PIL import Image

    im = Image.open(tmp_path / "reconstructions.png")
    assert im.width > im.height  # 8 images across, 2 rows


def test_recon_indices_out_of_range(tmp_path):
    x, y = blobs_images(n_per=3, k=2, size=8)
    ds = _imageset(x, y)
    enc = AutoencoderEncoder(arch="dec", epochs=1, batch_size=4, device="cpu", recon_indices=[0, 99]).fit(ds)

    class R:
        dataset, true_labels, labels = ds, y, y

    with pytest.raises(UserError, match="recon_indices"):
        enc.write_figures(R, tmp_path)


def test_checkpoints_resume_and_changed_config(tmp_path):
    x, _ = blobs_images(n_per=8, k=2, size=8)
    ds = _imageset(x)
    ck = str(tmp_path / "ck")
    kw = dict(arch="conv_digits", batch_size=8, device="cpu", checkpoint_dir=ck, checkpoint_every=1, seed=2)
    full = AutoencoderEncoder(epochs=3, **{**kw, "checkpoint_dir": str(tmp_path / "full")}).fit(ds)
    AutoencoderEncoder(epochs=2, **kw).fit(ds)
    resumed = AutoencoderEncoder(epochs=3, resume=True, **kw).fit(ds)
    assert [h["loss"] for h in resumed.history_] == [h["loss"] for h in full.history_]
    np.testing.assert_array_equal(resumed.transform(ds), full.transform(ds))
    assert (tmp_path / "ck" / "epoch_0002.safetensors").exists()
    with pytest.raises(UserError, match="configuration changed"):
        AutoencoderEncoder(epochs=4, resume=True, **{**kw, "lr": 0.5}).fit(ds)


def test_nan_loss_stops_with_clear_message():
    x, _ = blobs_images(n_per=4, k=2, size=8)
    x[0, 0, 0, 0] = np.nan  # a NaN pixel makes the loss NaN
    with pytest.raises(TrainingDiverged, match="loss became nan"):
        AutoencoderEncoder(arch="dec", epochs=1, batch_size=8, device="cpu").fit(_imageset(x))


def test_min_steps_extends_training_on_small_sets():
    x, _ = blobs_images(n_per=5, k=2, size=8)  # 10 images, batch 4 → 3 steps per epoch
    enc = AutoencoderEncoder(arch="mlp3", epochs=1, batch_size=4, min_steps=10, device="cpu").fit(_imageset(x))
    assert enc.epochs_ == 4 and len(enc.history_) == 4
    enc = AutoencoderEncoder(arch="mlp3", epochs=2, batch_size=4, device="cpu").fit(_imageset(x))
    assert enc.epochs_ == 2 and len(enc.history_) == 2
