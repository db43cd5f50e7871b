"""The TrainableEncoder base: declared parameters, hooks, the resume fingerprint, callbacks, workers, the
feature helper, early stopping, the registry by kind, heads registered by decorator."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.base import clone
from torch import nn

from imclust import components  # noqa: F401
from imclust.base import REGISTRY, Component, build, register, registered
from imclust.data.sources import _array_imageset
from imclust.encoders.base import TrainableEncoder
from imclust.errors import UserError
from imclust.nn import train as train_mod
from imclust.nn.train import LRSchedule, TrainConfig, Trainer, batch_indices, extract_features

from conftest import blobs_images

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class ToyAE(TrainableEncoder):
    """A linear autoencoder on flattened images: the smallest complete method on the base."""

    code: int = 2
    epochs: int = 3
    batch_size: int = 16
    lr: float = 1e-2

    def prepare_data(self, ds):
        self.input_shape_ = list(ds.shape)
        self._X = torch.from_numpy(ds.to_array(desc=None).reshape(len(ds), -1))
        self._calls = []
        return len(self._X)

    def build_modules(self):
        d = int(np.prod(self.input_shape_))
        return {"net": nn.Sequential(nn.Linear(d, int(self.code)), nn.Linear(int(self.code), d))}

    def load_batch(self, idx):
        return self._X[idx]

    def training_step(self, xb, trainer):
        x = trainer.to_device(xb)
        return ((trainer.modules["net"](x) - x) ** 2).mean()

    def on_epoch_start(self, trainer, epoch):
        self._calls.append(("start", epoch))
        return {"seen": epoch}

    def on_epoch_end(self, trainer, epoch):
        self._calls.append(("end", epoch))

    def transform(self, ds):
        self.require_fitted()
        return self.features(self.net_[0], ds.to_array(desc=None).reshape(len(ds), -1))


@pytest.fixture
def toy_registered():
    register("test-toy-ae")(ToyAE)
    yield ToyAE
    REGISTRY.pop("test-toy-ae", None)


def _ds(n_per=16, k=3, size=6, seed=0):
    X, y = blobs_images(n_per=n_per, k=k, size=size, seed=seed)
    return _array_imageset(X, y, "blobs", "array")


# -- declared parameters -------------------------------------------------------------------------------------
def test_declared_parameters_are_sklearn_parameters():
    names = ToyAE._get_param_names()
    for p in ("epochs", "batch_size", "lr", "seed", "device", "precision", "checkpoint_dir", "resume", "workers", "code"):
        assert p in names
    enc = ToyAE(code=3, lr=0.5)
    assert enc.get_params()["code"] == 3 and enc.lr == 0.5 and enc.epochs == 3  # redeclared default
    assert TrainableEncoder().epochs == 10  # the base keeps its own default
    c = clone(enc)
    assert c.get_params() == enc.get_params() and c is not enc
    with pytest.raises(TypeError, match="unexpected parameter"):
        ToyAE(nope=1)


def test_build_refuses_unknown_options_in_one_line(toy_registered):
    with pytest.raises(UserError, match="unknown option\\(s\\) nope; valid options are .*code"):
        build({"type": "test-toy-ae", "nope": 1})


# -- hooks and training -----------------------------------------------------------------------------------------
def test_hooks_run_in_order_and_state_round_trips(toy_registered, tmp_path):
    from imclust.pipeline import Pipeline

    ds = _ds()
    enc = ToyAE(seed=1).fit(ds)
    assert enc._calls == [("start", 0), ("end", 0), ("start", 1), ("end", 1), ("start", 2), ("end", 2)]
    assert [h["seen"] for h in enc.history_] == [0, 1, 2] and enc.history_[-1]["loss"] < enc.history_[0]["loss"]
    assert not enc.net_.training  # eval mode after fit
    spec = {"encoder": {"type": "test-toy-ae", "seed": 1}, "reducers": [], "clusterer": {"type": "kmeans", "n_clusters": 3}}
    pipe = Pipeline.from_spec(spec, seed=1).fit(ds)
    pipe.save(tmp_path / "m")
    loaded = Pipeline.load(tmp_path / "m")
    np.testing.assert_array_equal(loaded.transform(ds), pipe.transform(ds))
    assert loaded.encoder.module_names_ == ["net"]


def test_workers_prefetch_gives_the_same_training():
    ds = _ds()
    a = ToyAE(seed=2, workers=0).fit(ds)
    b = ToyAE(seed=2, workers=2).fit(ds)
    assert [h["loss"] for h in a.history_] == [h["loss"] for h in b.history_]
    with pytest.raises(UserError, match="workers"):
        ToyAE(workers=-1).fit(ds)


def test_shared_parameters_are_checked_in_one_line():
    ds = _ds()
    for bad, match in (({"epochs": 0}, "epochs"), ({"lr": -1.0}, "lr"), ({"optimizer": "lbfgs"}, "optimizer"),
                       ({"precision": "fp8"}, "precision"), ({"batch_size": 2.5}, "batch_size")):
        with pytest.raises(UserError, match=match):
            ToyAE(**bad).fit(ds)


# -- resume --------------------------------------------------------------------------------------------------------
def test_fingerprint_leaves_out_what_may_change_on_resume():
    enc = ToyAE()
    enc.input_shape_ = [1, 6, 6]
    fp = enc.resume_fingerprint(48)
    for name in ("resume", "epochs", "checkpoint_dir", "checkpoint_every", "device", "workers"):
        assert name not in fp["params"]
    assert fp["params"]["lr"] == enc.lr and fp["data"] == {"n": 48, "shape": [1, 6, 6]}


@pytest.mark.parametrize("native", [True, False])
def test_fingerprint_records_the_precision_auto_resolves_to(monkeypatch, native):
    """A pretext cached or checkpointed under ``auto`` is keyed by what ran (bf16 or fp32), not by ``auto``."""
    monkeypatch.setattr(train_mod, "cpu_computes_bf16", lambda: native)
    enc = ToyAE(precision="auto", device="cpu")
    enc.input_shape_ = [1, 6, 6]
    assert enc.resume_fingerprint(48)["params"]["precision"] == ("bf16" if native else "fp32")


def test_a_fit_under_auto_precision_says_what_it_resolved_to(monkeypatch, capsys):
    monkeypatch.setattr(train_mod, "cpu_computes_bf16", lambda: False)
    monkeypatch.delenv("IMCLUST_QUIET", raising=False)
    ToyAE(precision="auto", device="cpu", epochs=1).fit(_ds())
    assert "precision auto -> fp32" in capsys.readouterr().err


def test_interrupted_then_resumed_equals_uninterrupted_and_longer_runs_continue(tmp_path):
    ds = _ds()
    full = ToyAE(epochs=4, seed=3, checkpoint_dir=str(tmp_path / "full"), checkpoint_every=1).fit(ds)
    ck = str(tmp_path / "ck")
    ToyAE(epochs=2, seed=3, checkpoint_dir=ck, checkpoint_every=1).fit(ds)
    # resumed with more epochs, another checkpoint interval and worker count: a continuation, not a refusal
    resumed = ToyAE(epochs=4, seed=3, checkpoint_dir=ck, checkpoint_every=2, workers=1, resume=True).fit(ds)
    assert [h["loss"] for h in resumed.history_] == [h["loss"] for h in full.history_]
    for (k, a), b in zip(full.net_.state_dict().items(), resumed.net_.state_dict().values()):
        assert torch.equal(a, b), k
    with pytest.raises(UserError, match="configuration changed \\(params.lr"):
        ToyAE(epochs=5, seed=3, lr=0.5, checkpoint_dir=ck, resume=True).fit(ds)


# -- the training loop's additions ------------------------------------------------------------------------------
def test_lr_schedule_callback_factors():
    cos = LRSchedule("cosine")
    assert cos.factor(0, 4) == 1.0 and cos.factor(2, 4) == pytest.approx(0.5)
    warm = LRSchedule("cosine", warmup_epochs=2)
    assert [round(warm.factor(e, 6), 4) for e in range(3)] == [round(1 / 3, 4), round(2 / 3, 4), 1.0]
    assert LRSchedule("constant").factor(3, 4) == 1.0
    with pytest.raises(UserError, match="lr_schedule"):
        LRSchedule("step")
    X = np.random.RandomState(0).rand(32, 4).astype(np.float32)
    net = nn.Linear(4, 4)
    tr = Trainer({"net": net}, TrainConfig(epochs=3, lr=0.1), callbacks=[LRSchedule("cosine")])
    hist = tr.fit(lambda idx, t: t.modules["net"](t.to_device(X[idx])).pow(2).mean(),
                  lambda e, g: batch_indices(len(X), 8, g))
    assert [h["lr_factor"] for h in hist] == pytest.approx([1.0, 0.75, 0.25])
    assert tr.optimizer.param_groups[0]["lr"] == pytest.approx(0.025)


def test_request_stop_ends_training_before_the_epoch():
    X = np.random.RandomState(0).rand(16, 3).astype(np.float32)

    def start(trainer, epoch):
        if epoch == 2:
            trainer.request_stop("converged")

    tr = Trainer({"net": nn.Linear(3, 3)}, TrainConfig(epochs=6))
    hist = tr.fit(lambda idx, t: t.modules["net"](t.to_device(X[idx])).pow(2).mean(),
                  lambda e, g: batch_indices(len(X), 8, g), on_epoch_start=start)
    assert len(hist) == 2 and tr.epoch == 2 and tr.stop_reason == "converged"


def test_extract_features_eval_mode_prepare_and_precision():
    net = nn.Sequential(nn.Linear(5, 4), nn.Dropout(0.5), nn.ReLU())
    net.train()
    X = np.random.RandomState(0).rand(23, 5).astype(np.float32)
    out = extract_features(net, X, batch_size=4, modules=[net])
    with torch.no_grad():
        ref = net.eval()(torch.from_numpy(X)).numpy()
    np.testing.assert_allclose(out, ref, atol=1e-6)  # dropout off: eval mode for the pass
    net.train()
    extract_features(net, X, batch_size=4, modules=[net])
    assert net.training  # the mode is restored
    doubled = extract_features(lambda x: x, X, batch_size=5, prepare=lambda rows, dev: torch.from_numpy(rows * 2))
    np.testing.assert_array_equal(doubled, X * 2)
    seen = {}

    def probe(x):
        seen["dtype"] = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None
        seen["cl"] = x.is_contiguous(memory_format=torch.channels_last)
        return x.flatten(1)

    extract_features(probe, np.random.rand(4, 3, 5, 5).astype(np.float32), precision="bf16", channels_last=True)
    assert seen == {"dtype": torch.bfloat16, "cl": True}


# -- registry by kind, heads by decorator ----------------------------------------------------------------------
def test_registry_is_split_by_kind_and_refuses_a_part_in_the_wrong_place():
    assert {"pca", "umap", "tsne"} <= set(registered("reducer"))
    assert {"kmeans", "gmm"} <= set(registered("clusterer"))
    assert {"autoencoder", "deepcluster", "dec", "idec", "selflabel"} <= set(registered("encoder"))
    with pytest.raises(UserError, match="'kmeans' is a clusterer, not an encoder") as err:
        build({"type": "kmeans"}, kind="encoder")
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="'pca' is a reducer, not a clusterer"):
        build({"type": "pca"}, kind="clusterer")
    with pytest.raises(TypeError, match="derives from Encoder, Reducer or Clusterer"):
        register("test-no-kind")(type("NoKind", (Component,), {}))


def test_recipe_with_a_clusterer_as_encoder_fails_when_built(tmp_path, capsys):
    from imclust.cli import main

    code = main(["run", "digits", "--recipe", "baseline", "--set", "encoder.type='kmeans'", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and "'kmeans' is a clusterer, not an encoder" in err and "Traceback" not in err
    assert not (tmp_path / "r" / "predictions.csv").exists()


def test_heads_register_with_a_decorator():
    from imclust.nn import heads as H

    @H.register_head("test-scaled-softmax", options=("bias",))
    class Scaled(H.SoftmaxHead):
        def logits(self, features):
            return 2 * self.fc(features)

    try:
        assert "test-scaled-softmax" in H.head_names() and "test-scaled-softmax+center" in H.head_names()
        head = H.make_head("test-scaled-softmax", 4, 3)
        assert isinstance(head, Scaled)
        loss, logits = H.make_head("test-scaled-softmax+center", 4, 3)(torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1]))
        assert torch.isfinite(loss) and logits.shape == (5, 3)
        with pytest.raises(UserError, match="does not take option"):
            H.make_head("test-scaled-softmax", 4, 3, margin=0.3)
    finally:
        H.HEADS.pop("test-scaled-softmax")
    assert "test-scaled-softmax" not in H.head_names()


def test_the_developing_md_example_method_runs_end_to_end(tmp_path):
    """The "Adding a deep clustering method" example in DEVELOPING.md, executed as written."""
    import re
    from pathlib import Path

    from imclust.encoders.base import ClusteringEncoder
    from imclust.pipeline import Pipeline

    text = (Path(__file__).resolve().parents[1] / "DEVELOPING.md").read_text()
    code = re.search(r"```python\n(@register\(\"mymethod\"\).*?)```", text, re.S).group(1)

    def my_clustering_loss(logits):  # confident assignments (low entropy each) that use every cluster (high marginal entropy)
        p = logits.softmax(1)
        m = p.mean(0)
        return -(p * p.clamp_min(1e-8).log()).sum(1).mean() + (m * m.clamp_min(1e-8).log()).sum()

    ns = {"register": register, "ClusteringEncoder": ClusteringEncoder, "TrainableEncoder": TrainableEncoder,
          "torch": torch, "nn": nn, "np": np, "my_clustering_loss": my_clustering_loss}
    try:
        exec(code, ns)
        ds = _ds()
        spec = {"encoder": {"type": "mymethod", "epochs": 3, "width": 8}, "clusterer": {"type": "encoder"}}
        pipe = Pipeline.from_spec(spec, seed=0)
        pipe.set_k(3)
        pipe.fit(ds)
        assert pipe.labels_.shape == (len(ds),) and pipe.n_clusters_ == 3
        pipe.save(tmp_path / "m")
        np.testing.assert_array_equal(Pipeline.load(tmp_path / "m").predict(ds), pipe.predict(ds))
    finally:
        REGISTRY.pop("mymethod", None)
