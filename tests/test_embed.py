"""imclust embed (supervised embedding), the networks, the selflabel encoder and the digits-kmeans recipe."""

import json

import numpy as np
import pytest
import torch

from imclust.cli import main
from imclust.errors import UserError

from conftest import blobs_images


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def blobs_npz(tmp_path):
    x, y = blobs_images(n_per=40, k=3, size=12, seed=0)
    p = tmp_path / "blobs.npz"
    np.savez(p, x=(x[:, 0] * 255).astype(np.uint8), y=y)
    return p, y


def test_networks_shapes_and_any_input_size():
    from imclust.nn.embedding_nets import EmbeddingMLP, EmbeddingResCNN, make_net

    for shape in [(1, 28, 28), (3, 32, 32), (1, 16, 20)]:
        for name in ("mlp", "cnn"):
            net = make_net(name, shape, 3).eval()
            assert net(torch.rand(2, *shape)).shape == (2, 3)
    mlp = EmbeddingMLP((1, 28, 28), 2)
    widths = [m.out_features for m in mlp.modules() if isinstance(m, torch.nn.Linear)]
    assert widths == [512, 256, 128, 2]
    assert sum(isinstance(m, torch.nn.Mish) for m in mlp.modules()) == 3
    cnn = EmbeddingResCNN((1, 28, 28), 2)
    assert cnn.fc.in_features == 64 and cnn.stem[0].kernel_size == (7, 7)
    with pytest.raises(UserError, match="unknown network"):
        make_net("vgg", (1, 8, 8), 2)


def test_embed_end_to_end_and_predict(blobs_npz, tmp_path):
    from PIL import Image

    from imclust.api import predict
    from imclust.embed import embed

    path, y = blobs_npz
    out = tmp_path / "run"
    res = embed(path, head="arcface", dim=2, net="mlp", epochs=3, batch_size=32, seed=0, out=out)
    m = res.metrics
    assert m["n_train"] == 96 and m["n_heldout"] == 24
    assert m["acc"] > 0.9, m  # three well-separated classes
    # the split is stratified and seeded
    assert sorted(np.bincount(y[res.heldout_index])) == [8, 8, 8]
    from imclust.embed import split_indices

    assert np.array_equal(res.heldout_index, split_indices(y, 0.2, 0)[1])
    assert not np.array_equal(res.heldout_index, split_indices(y, 0.2, 1)[1])
    for f in ["predictions.csv", "embedding.npy", "metrics.json", "history.json", "loss_curve.png", "split.csv",
              "model/pipeline.json", "model/state.safetensors", "epochs/epoch_001.png", "epochs/epoch_003.png"]:
        assert (out / f).exists(), f
    gif = Image.open(out / "embedding.gif")
    assert gif.n_frames == 3
    # the page is built after the frames: it shows the animation, byte for byte
    import base64

    page = (out / "report.html").read_text()
    assert "data:image/gif;base64," + base64.b64encode((out / "embedding.gif").read_bytes()).decode() in page
    assert len(json.loads((out / "history.json").read_text())) == 3
    # arcface output lies on the unit circle
    assert np.allclose(np.linalg.norm(res.embedding, axis=1), 1, atol=1e-4)
    # the saved model places the same images into the same clusters
    pred = predict(out / "model", path)
    assert np.array_equal(pred.labels, res.labels)
    assert np.allclose(pred.embedding, res.embedding, atol=1e-5)


def test_embed_cli_and_bad_input(blobs_npz, tmp_path, capsys):
    path, y = blobs_npz
    # no labels: an .npy array carries none
    x = np.load(path)["x"]
    np.save(tmp_path / "nolab.npy", x)
    assert main(["embed", str(tmp_path / "nolab.npy"), "--epochs", "1", "--out", str(tmp_path / "o1")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("imclust: error:") and "no labels to train on" in err and "--labels" in err
    assert len(err.splitlines()) == 1
    # a labels file whose count does not match
    np.save(tmp_path / "short.npy", y[:-5])
    assert main(["embed", str(tmp_path / "nolab.npy"), "--labels", str(tmp_path / "short.npy"), "--epochs", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "115 labels" in err and "120 images" in err and len(err.splitlines()) == 1
    # dim 1 with a plot asked for
    assert main(["embed", str(path), "--dim", "1", "--epochs", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--dim 1 cannot be plotted" in err and "--no-plot" in err
    # ... and without a plot it runs
    out = tmp_path / "dim1"
    assert main(["embed", str(path), "--dim", "1", "--no-plot", "--epochs", "1", "--net", "mlp", "--out", str(out)]) == 0
    assert np.load(out / "embedding.npy").shape == (120, 1)
    assert not (out / "epochs").exists()
    # a class with a single image cannot be split
    y1 = y.copy()
    y1[0] = 7
    np.save(tmp_path / "lonely.npy", y1)
    assert main(["embed", str(tmp_path / "nolab.npy"), "--labels", str(tmp_path / "lonely.npy"), "--epochs", "1"]) == 2
    assert "single image" in capsys.readouterr().err


def test_supervised_encoder_refuses_to_fit_without_labels(blobs_npz):
    from imclust.api import run

    path, _ = blobs_npz
    with pytest.raises(UserError, match="needs labels"):
        run(path, recipe="baseline", overrides=["encoder.type='embedding'"])


def test_selflabel_never_reads_labels(blobs_npz):
    from imclust.data import load_source
    from imclust.encoders.embedding import SelfLabelEncoder
    from imclust.metrics import cluster_acc

    path, y = blobs_npz
    ds = load_source(path)
    kw = dict(head="arcface", dim=8, n_clusters=3, net="mlp", epochs=3, batch_size=32, seed=0)
    a = SelfLabelEncoder(**kw).fit(ds)
    shuffled = ds.with_labels(np.random.RandomState(1).permutation(ds.labels))
    b = SelfLabelEncoder(**kw).fit(shuffled)
    za, zb = a.transform(ds), b.transform(ds)
    assert np.array_equal(za, zb)  # labels (even scrambled ones) change nothing
    assert cluster_acc(y, a.pseudo_labels_) > 0.9
    hist = a.history_
    assert len(hist) == 3 and "nmi_prev" in hist[1] and "largest_cluster" in hist[0]


@pytest.mark.parametrize("head", ["softmax", "center", "softmax+center", "cosface"])
def test_selflabel_recipe_runs_with_each_head(blobs_npz, tmp_path, head):
    from imclust.api import run
    from imclust.pipeline import Pipeline

    path, y = blobs_npz
    res = run(path, recipe="selflabel", k=3, seed=0, out=tmp_path / head,
              overrides=[f"encoder.head='{head}'", "encoder.epochs=2", "encoder.n_clusters=3", "encoder.dim=4"])
    assert res.metrics["acc"] > 0.9
    assert (tmp_path / head / "loss_curve.png").exists()
    again = Pipeline.load(tmp_path / head / "model").predict(res.dataset)
    assert np.array_equal(again, res.labels)


def test_digits_kmeans_recipe_uses_hungarian_acc():
    """Tutorial 4's k-means on sklearn digits, scored properly."""
    from imclust.api import run
    from imclust.metrics import cluster_acc

    res = run("digits", recipe="digits-kmeans", seed=0)
    y, pred = res.true_labels, res.labels
    assert res.k == 10 and len(pred) == 1797
    acc = res.metrics["acc"]
    assert acc == pytest.approx(cluster_acc(y, pred))
    assert 0.6 < acc < 0.95  # raw-pixel k-means on digits is known to land near 0.8
    # comparing cluster ids with digits directly (no matching) is meaningless: it depends on arbitrary ids
    perm = np.random.RandomState(0).permutation(10)
    assert cluster_acc(y, perm[pred]) == pytest.approx(acc)
    naive = [(perm[pred] == y).mean(), (pred == y).mean()]
    assert max(naive) < acc


def test_margin_warmup_and_cosine_schedule(blobs_npz):
    from imclust.data import load_source
    from imclust.encoders.embedding import EmbeddingEncoder

    path, y = blobs_npz
    ds = load_source(path)
    enc = EmbeddingEncoder(head="arcface", dim=2, net="mlp", epochs=4, margin=0.4, margin_warmup=2, seed=0)
    enc.fit(ds, y)
    h = enc.history_
    assert [r["margin"] for r in h] == pytest.approx([0.0, 0.2, 0.4, 0.4])
    assert enc.head_.margin == pytest.approx(0.4)
    assert h[0]["lr_factor"] == 1.0 and h[-1]["lr_factor"] < h[1]["lr_factor"] < 1.0


@pytest.mark.integration
def test_supervised_embedding_on_real_digits(shared_data):
    """2-D softmax+center embedding of 1,500 MNIST-test digits, k-means on 500 held-out ones."""
    from imclust.cluster import KMeans
    from imclust.data import load_source
    from imclust.encoders.embedding import EmbeddingEncoder
    from imclust.metrics import cluster_acc

    ds = load_source(shared_data / "mnist-test" / "t10k-images-idx3-ubyte.gz")
    tr, te = np.arange(1500), np.arange(1500, 2000)
    enc = EmbeddingEncoder(head="softmax+center", dim=2, net="mlp", epochs=10, batch_size=64, seed=0)
    enc.fit(ds.subset(tr), ds.labels[tr])
    Z = enc.transform(ds.subset(te))
    acc = cluster_acc(ds.labels[te], KMeans(10, random_state=0).fit_predict(Z))
    assert acc > 0.6  # raw-pixel k-means on MNIST is about 0.54


def test_weight_init_reaches_the_head_and_is_refused_where_it_means_nothing(blobs_npz, capsys):
    from imclust.data import load_source
    from imclust.encoders.embedding import EmbeddingEncoder

    path, y = blobs_npz
    ds = load_source(path)
    for asked, used in (("auto", "spread"), ("xavier", "xavier")):
        enc = EmbeddingEncoder(head="arcface", dim=2, net="mlp", epochs=1, weight_init=asked, seed=0).fit(ds, y)
        assert enc.head_.weight_init_ == used
    with pytest.raises(UserError, match="takes no weight_init"):
        EmbeddingEncoder(head="softmax", dim=2, net="mlp", epochs=1, weight_init="spread").fit(ds, y)
    assert main(["embed", str(path), "--head", "softmax+center", "--weight-init", "spread", "--epochs", "1", "--no-plot"]) == 2
    err = capsys.readouterr().err.strip()
    assert "takes no weight_init" in err and len(err.splitlines()) == 1


def test_embed_3d_report_shows_the_3d_scatter(blobs_npz, tmp_path):
    from imclust.embed import embed

    path, _ = blobs_npz
    out = tmp_path / "run3"
    embed(path, head="softmax", dim=3, net="mlp", epochs=1, batch_size=32, seed=0, out=out, gif=False)
    assert (out / "scatter_3d.png").exists()
    page = (out / "report.html").read_text()
    assert 'alt="scatter_3d.png"' in page and "The embedding in 3-D" in page
