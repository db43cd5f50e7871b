"""Pretrained-CNN features (tutorial 2): backbones, weights, preprocessing, feature cache, predict, export."""

from __future__ import annotations

import hashlib
import io
import shutil
import sys
import types
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from conftest import write_image_folder
from imclust import api
from imclust.cli import main
from imclust.data import load_source
from imclust.data.transforms import IMAGENET_MEAN, IMAGENET_STD, Preprocess, center_crop, resize_shorter
from imclust.encoders.pretrained import PretrainedEncoder
from imclust.errors import NotInstalledError, UserError
from imclust.export import export_clusters
from imclust.nn import backbones as bb
from imclust.nn import weights as wmod


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    """Every test gets its own cache folder (features and weights), never the user's ~/.cache."""
    monkeypatch.setenv("IMCLUST_CACHE_DIR", str(tmp_path / "cache"))


# ---------------------------------------------------------------------------------------------------
# torchvision's key layout, written out independently of imclust's module definitions
# ---------------------------------------------------------------------------------------------------
BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def tv_keys(arch: str) -> list[str]:
    keys: list[str] = []
    if arch in ("vgg16", "vgg16_bn"):
        plan = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
        i = 0
        for item in plan:
            if item == "M":
                i += 1
                continue
            keys += [f"features.{i}.weight", f"features.{i}.bias"]
            if arch == "vgg16_bn":
                keys += [f"features.{i + 1}.{b}" for b in BN]
                i += 3
            else:
                i += 2
        keys += [f"classifier.{j}.{p}" for j in (0, 3, 6) for p in ("weight", "bias")]
    elif arch == "alexnet":
        keys += [f"features.{j}.{p}" for j in (0, 3, 6, 8, 10) for p in ("weight", "bias")]
        keys += [f"classifier.{j}.{p}" for j in (1, 4, 6) for p in ("weight", "bias")]
    else:
        bottleneck = arch == "resnet50"
        depths = (3, 4, 6, 3) if bottleneck else (2, 2, 2, 2)
        keys += ["conv1.weight"] + [f"bn1.{b}" for b in BN]
        for s, n in enumerate(depths, start=1):
            for j in range(n):
                pre = f"layer{s}.{j}"
                for c in range(1, 4 if bottleneck else 3):
                    keys += [f"{pre}.conv{c}.weight"] + [f"{pre}.bn{c}.{b}" for b in BN]
                if j == 0 and (bottleneck or s > 1):
                    keys += [f"{pre}.downsample.0.weight"] + [f"{pre}.downsample.1.{b}" for b in BN]
        keys += ["fc.weight", "fc.bias"]
    return keys


# published parameter counts of torchvision's ImageNet models
PARAMS = {"vgg16": 138_357_544, "vgg16_bn": 138_365_992, "alexnet": 61_100_840,
          "resnet18": 11_689_512, "resnet50": 25_557_032}


@pytest.mark.parametrize("arch", sorted(PARAMS))
def test_backbone_state_dict_matches_torchvision_layout(arch):
    m = bb.build_backbone(arch)
    assert sorted(m.state_dict()) == sorted(tv_keys(arch))
    assert sum(p.numel() for p in m.parameters()) == PARAMS[arch]


def test_layer_names_and_truncation():
    m = bb.build_backbone("resnet18")
    x = torch.rand(2, 3, 40, 40)
    with torch.no_grad():
        full = m(x, "layer2")
        assert m(x, "layer2.1").shape == full.shape  # the stage's last block answers to both names
        bb.truncate(m, "layer2")
        assert torch.allclose(m(x, "layer2"), full)
    assert not any(k.startswith(("layer3", "layer4", "fc")) for k in m.state_dict())
    with pytest.raises(UserError, match="no layer 'layer9'"):
        bb.check_layer(m, "layer9")
    with pytest.raises(UserError, match="unknown backbone"):
        bb.build_backbone("vgg19")


# ---------------------------------------------------------------------------------------------------
# preprocessing
# ---------------------------------------------------------------------------------------------------
def test_transforms_geometry_and_normalisation():
    im = Image.new("RGB", (300, 200), (255, 255, 255))
    assert resize_shorter(im, 100).size == (150, 100)
    assert center_crop(im, 100).size == (100, 100)
    padded = np.asarray(center_crop(Image.new("RGB", (10, 10), (255, 0, 0)), 20))
    assert padded.shape == (20, 20, 3) and padded[0, 0].tolist() == [0, 0, 0] and padded[10, 10].tolist() == [255, 0, 0]
    std = Preprocess("standard")
    assert std.steps == [("resize", 256), ("center_crop", 224)]
    u8 = std.pil_to_uint8(im)
    assert tuple(u8.shape) == (3, 224, 224) and u8.dtype == torch.uint8
    x = std.finish(u8[None])
    want = [(1 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)]
    assert torch.allclose(x[0, :, 0, 0], torch.tensor(want), atol=1e-5)
    tut = Preprocess("tutorial")
    assert tut.steps == [("center_crop", 512), ("resize", 448)]
    assert tuple(tut.pil_to_uint8(Image.new("L", (600, 700), 128)).shape) == (3, 448, 448)
    assert Preprocess("tutorial", normalize=False).finish(u8[None]).max().item() == pytest.approx(1.0)
    with pytest.raises(UserError, match="unknown preprocessing"):
        Preprocess("imagenet")
    with pytest.raises(UserError, match="at least 8"):
        Preprocess("standard", size=2)


# ---------------------------------------------------------------------------------------------------
# weights
# ---------------------------------------------------------------------------------------------------
def tv_state(arch: str, seed: int = 7) -> dict[str, torch.Tensor]:
    """A state_dict in torchvision's layout with random values (shapes from a reference build)."""
    shapes = {k: v.shape for k, v in bb.build_backbone(arch).state_dict().items()}
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k in tv_keys(arch):
        if k.endswith("num_batches_tracked"):
            sd[k] = torch.tensor(5)
        elif k.endswith("running_var"):
            sd[k] = torch.rand(shapes[k], generator=g) + 0.5
        else:
            sd[k] = torch.randn(shapes[k], generator=g) * 0.05
    return sd


def _arrays(n=6, size=32, seed=0):
    rng = np.random.RandomState(seed)
    return rng.randint(0, 256, (n, size, size, 3)).astype(np.uint8)


def test_weights_file_loads_and_defines_the_features(tmp_path):
    """A .pth made by the test in torchvision's layout: resnet18's conv1 features match a hand computation."""
    sd = tv_state("resnet18")
    pth = tmp_path / "r18.pth"
    torch.save(sd, pth)
    from safetensors.torch import save_file

    st = tmp_path / "r18.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(st))
    np.savez(tmp_path / "x.npz", x=_arrays())
    ds = load_source(tmp_path / "x.npz")
    common = dict(backbone="resnet18", layer="conv1", size=32, workers=0, cache=False)
    f_pth = PretrainedEncoder(weights=str(pth), **common).fit_transform(ds)
    f_st = PretrainedEncoder(weights=str(st), **common).fit_transform(ds)
    f_rand = PretrainedEncoder(**common).fit_transform(ds)
    prep = Preprocess("standard", 32)
    x = prep.finish(torch.stack([prep.pil_to_uint8(ds.pil(i)) for i in range(len(ds))]))
    ref = F.conv2d(x, sd["conv1.weight"], stride=2, padding=3).mean(dim=(2, 3)).numpy()
    assert f_pth.shape == (6, 64)
    np.testing.assert_allclose(f_pth, ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(f_pth, f_st)
    assert not np.allclose(f_rand, f_pth)


def test_wrong_architecture_weights_name_the_keys(tmp_path):
    pth = tmp_path / "r18.pth"
    torch.save(tv_state("resnet18"), pth)
    np.savez(tmp_path / "x.npz", x=_arrays(2))
    ds = load_source(tmp_path / "x.npz")
    with pytest.raises(UserError, match=r"do not fit the alexnet architecture.*missing.*features\.0\.weight.*unexpected.*bn1"):
        PretrainedEncoder(backbone="alexnet", weights=str(pth), size=32, cache=False).fit(ds)
    sd = tv_state("resnet18")
    sd["conv1.weight"] = torch.zeros(64, 3, 5, 5)
    torch.save(sd, pth)
    with pytest.raises(UserError, match=r"shape mismatch: conv1\.weight"):
        PretrainedEncoder(backbone="resnet18", weights=str(pth), size=32, cache=False).fit(ds)
    # a head with another class count is fine when the cut is before it
    sd = tv_state("resnet18")
    sd["fc.weight"], sd["fc.bias"] = torch.zeros(10, 512), torch.zeros(10)
    torch.save(sd, pth)
    assert PretrainedEncoder(backbone="resnet18", weights=str(pth), size=32, cache=False, workers=0).fit_transform(ds).shape == (2, 512)


class _NotAWeight:
    pass


def test_bad_weight_files(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        wmod.read_state_file(tmp_path / "nope.pth")
    with pytest.raises(UserError, match="is a folder"):
        wmod.read_state_file(tmp_path)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file at all")
    with pytest.raises(UserError, match="not a readable safetensors"):
        wmod.read_state_file(bad)
    pickled = tmp_path / "obj.pth"
    torch.save({"w": _NotAWeight()}, pickled)
    with pytest.raises(UserError, match="weights_only=True"):
        wmod.read_state_file(pickled)
    torch.save({"state_dict": {"module.conv1.weight": torch.zeros(1)}}, tmp_path / "wrapped.pth")
    assert list(wmod.read_state_file(tmp_path / "wrapped.pth")) == ["conv1.weight"]


def test_pretrained_offline_says_so_in_one_line(tmp_path, monkeypatch, capsys):
    def offline(*a, **k):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(wmod, "_urlopen", offline)
    with pytest.raises(UserError, match=r"cannot download the ImageNet weights for resnet18.*--weights PATH"):
        wmod.download_weights("resnet18")
    assert not list((tmp_path / "cache" / "weights").glob("*"))  # nothing half-written stays behind
    write_image_folder(tmp_path / "imgs", k=2, n_per=3)
    code = main(["run", str(tmp_path / "imgs"), "--recipe", "vgg-kmeans", "--pretrained", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("imclust: error: cannot download the ImageNet weights for vgg16")
    assert "--weights PATH" in err[-1] and "Traceback" not in "\n".join(err)


class _FakeResponse(io.BytesIO):
    headers = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def test_pretrained_download_is_hash_checked_and_cached(tmp_path, monkeypatch):
    buf = io.BytesIO()
    torch.save(tv_state("resnet18"), buf)
    payload = buf.getvalue()
    digest = hashlib.sha256(payload).hexdigest()
    calls = []

    def serve(url, timeout=None):
        calls.append(url)
        return _FakeResponse(payload)

    monkeypatch.setattr(wmod, "_urlopen", serve)
    monkeypatch.setitem(bb.WEIGHT_URLS, "resnet18", f"https://example.invalid/resnet18-{digest[:8]}.pth")
    path = wmod.download_weights("resnet18")
    assert path.read_bytes() == payload and path.parent == tmp_path / "cache" / "weights"
    assert wmod.download_weights("resnet18") == path and len(calls) == 1  # cached: no second download
    np.savez(tmp_path / "x.npz", x=_arrays(2))
    enc = PretrainedEncoder(backbone="resnet18", pretrained=True, size=32, cache=False, workers=0)
    enc.fit(load_source(tmp_path / "x.npz"))
    assert "ImageNet" in enc.weights_source_
    # a file whose hash does not match the name is refused and not kept
    monkeypatch.setitem(bb.WEIGHT_URLS, "resnet50", "https://example.invalid/resnet50-00000000.pth")
    with pytest.raises(UserError, match="corrupt or was tampered"):
        wmod.download_weights("resnet50")
    assert not (tmp_path / "cache" / "weights" / "resnet50-00000000.pth").exists()


def test_optional_backends(tmp_path, monkeypatch):
    np.savez(tmp_path / "x.npz", x=_arrays(3))
    ds = load_source(tmp_path / "x.npz")
    try:
        import timm  # noqa: F401
        have_timm = True
    except Exception:
        have_timm = False
    if not have_timm:
        with pytest.raises(NotInstalledError, match="'timm'"):
            PretrainedEncoder(backbone="timm:resnet18", cache=False).fit(ds)
    # a stand-in timm module exercises the plumbing: create_model(num_classes=0) gives pooled features
    fake = types.ModuleType("timm")
    made = {}

    def create_model(name, pretrained=False, num_classes=None):
        made.update(name=name, pretrained=pretrained, num_classes=num_classes)
        return torch.nn.Sequential(torch.nn.Conv2d(3, 5, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())

    fake.create_model = create_model
    monkeypatch.setitem(sys.modules, "timm", fake)
    f = PretrainedEncoder(backbone="timm:tiny", size=32, cache=False, workers=0).fit_transform(ds)
    assert f.shape == (3, 5) and made == {"name": "tiny", "pretrained": False, "num_classes": 0}
    with pytest.raises(UserError, match="do not set a layer"):
        PretrainedEncoder(backbone="timm:tiny", layer="x", cache=False).fit(ds)
    monkeypatch.setitem(sys.modules, "torchvision", None)  # importing it raises ImportError
    with pytest.raises(NotInstalledError, match="'torchvision'"):
        PretrainedEncoder(backbone="torchvision:resnet18", cache=False).fit(ds)


# ---------------------------------------------------------------------------------------------------
# encoder: the tutorial cut, the recipe, the cache
# ---------------------------------------------------------------------------------------------------
def test_vgg16_tutorial_cut_gives_4096_and_recipe_writes_submission(tmp_path):
    root = write_image_folder(tmp_path / "imgs", k=3, n_per=4, size=24)
    # the recipe as shipped: VGG16 cut at classifier.0, tutorial preprocessing, k=5 and seed 42
    res = api.run(root, recipe="vgg-kmeans", out=tmp_path / "out", overrides=["encoder.size=32"])
    enc = res.pipeline.encoder
    assert enc.backbone == "vgg16" and enc.layer_ == "classifier.0" and enc.preprocess == "tutorial"
    assert res.pipeline.features_.shape == (12, 4096)
    assert res.k == 5 and res.seed == 42 and res.pipeline.clusterer.random_state == 42
    rows = (tmp_path / "out" / "submission.csv").read_text().splitlines()
    assert rows[0] == "ImageID,label" and len(rows) == 13
    assert rows[1].split(",")[0] == "class0/img0"
    assert sorted(p.name for p in (tmp_path / "out" / "montages").iterdir()) == [f"montage_{c}.png" for c in range(5)]


def _count_computed(monkeypatch) -> list[int]:
    """From now on, the number of images each feature pass of a PretrainedEncoder computes (not read from the cache)."""
    computed, real = [], PretrainedEncoder._compute

    def spy(self, ds, indices, *a):
        computed.append(len(indices))
        return real(self, ds, indices, *a)

    monkeypatch.setattr(PretrainedEncoder, "_compute", spy)
    return computed


def test_feature_cache_computes_only_new_images(tmp_path, monkeypatch):
    root = write_image_folder(tmp_path / "imgs", k=2, n_per=4, size=20)
    computed = _count_computed(monkeypatch)
    kw = dict(backbone="resnet18", layer="layer2", size=32, workers=0, cache_dir=str(tmp_path / "fc"))
    first = PretrainedEncoder(**kw).fit_transform(load_source(root))
    again = PretrainedEncoder(**kw).fit_transform(load_source(root))
    assert computed == [8] and np.array_equal(first, again)
    write_image_folder(tmp_path / "imgs", k=2, n_per=4, size=20, seed=1)  # same names, new content
    for c in range(2):
        Image.new("RGB", (20, 20), (9, 9, 9 + c)).save(root / f"class{c}" / "extra.png")
    grown = PretrainedEncoder(**kw).fit_transform(load_source(root))
    assert computed == [8, 10]  # 8 rewritten files + 2 new ones; nothing served stale
    write_image_folder(tmp_path / "imgs", k=2, n_per=4, size=20, seed=0)  # back to the first content
    for c in range(2):
        Image.new("RGB", (20, 20), (1, 2, 3 + c)).save(root / f"class{c}" / "new.png")
    ds = load_source(root)
    last = PretrainedEncoder(**kw).fit_transform(ds)
    assert computed == [8, 10, 2]  # only the two images never seen before
    uncached = PretrainedEncoder(**{**kw, "cache": False}).fit_transform(ds)
    np.testing.assert_array_equal(last, uncached)
    assert grown.shape == (10, 128)
    # another layer or preprocessing is another cache entry
    PretrainedEncoder(**{**kw, "layer": "layer1"}).fit_transform(ds)
    assert computed[-1] == 12


def test_features_reach_the_cache_while_computing_so_an_interrupted_run_resumes(tmp_path, monkeypatch):
    from imclust.encoders import pretrained as pmod

    root = write_image_folder(tmp_path / "imgs", k=2, n_per=5, size=20)
    kw = dict(backbone="resnet18", layer="layer2", size=32, workers=0, batch_size=2, cache_dir=str(tmp_path / "fc"))
    whole = PretrainedEncoder(**{**kw, "cache": False}).fit_transform(load_source(root))
    monkeypatch.setattr(pmod, "CACHE_FLUSH_ROWS", 4)
    real_pooled, calls = pmod.pooled, []

    def dies_on_the_fourth_batch(y):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real_pooled(y)

    monkeypatch.setattr(pmod, "pooled", dies_on_the_fourth_batch)
    with pytest.raises(KeyboardInterrupt):
        PretrainedEncoder(**kw).fit_transform(load_source(root))
    monkeypatch.setattr(pmod, "pooled", real_pooled)
    assert len(list((tmp_path / "fc").rglob("shard-*.safetensors"))) == 1  # batches 1-2 flushed; batch 3 was pending
    computed = _count_computed(monkeypatch)
    resumed = PretrainedEncoder(**kw).fit_transform(load_source(root))
    assert computed == [6]  # the 4 images flushed before the interruption are not computed again
    np.testing.assert_array_equal(resumed, whole)
    assert len(list((tmp_path / "fc").rglob("shard-*.safetensors"))) == 3  # 4 rows, then 4 + 2


def test_damaged_cache_shard_is_ignored(tmp_path):
    root = write_image_folder(tmp_path / "imgs", k=2, n_per=2, size=20)
    kw = dict(backbone="resnet18", layer="layer1", size=32, workers=0, cache_dir=str(tmp_path / "fc"))
    a = PretrainedEncoder(**kw).fit_transform(load_source(root))
    for shard in (tmp_path / "fc").rglob("shard-*.safetensors"):
        shard.write_bytes(b"garbage")
    b = PretrainedEncoder(**kw).fit_transform(load_source(root))
    np.testing.assert_array_equal(a, b)


def test_workers_bf16_channels_last(tmp_path):
    root = write_image_folder(tmp_path / "imgs", k=2, n_per=5, size=20)
    ds = load_source(root)
    kw = dict(backbone="resnet18", layer="layer1", size=32, cache=False)
    base = PretrainedEncoder(workers=0, **kw).fit_transform(ds)
    par = PretrainedEncoder(workers=2, batch_size=3, **kw).fit_transform(ds)
    np.testing.assert_allclose(par, base, rtol=1e-5, atol=1e-6)
    fast = PretrainedEncoder(workers=0, precision="bf16", channels_last=True, **kw).fit_transform(ds)
    assert fast.dtype == np.float32 and fast.shape == base.shape
    assert np.corrcoef(fast.ravel(), base.ravel())[0, 1] > 0.99  # bf16 is close, not equal


def test_unreadable_file_is_skipped_not_fatal(tmp_path):
    root = write_image_folder(tmp_path / "imgs", k=2, n_per=4, size=20)
    good = (root / "class0" / "img0.png").read_bytes()
    (root / "class0" / "broken.png").write_bytes(good[: len(good) // 2] + b"\x00" * 8 + b"IEND")
    res = api.run(root, recipe="cnn-kmeans", k=2, out=tmp_path / "o",
                  overrides=["encoder.backbone=\"resnet18\"", "encoder.size=32", "encoder.workers=0"])
    assert "class0/broken.png" not in res.ids and len(res.ids) == 8
    assert "class0/broken.png" in (tmp_path / "o" / "skipped.csv").read_text()


# ---------------------------------------------------------------------------------------------------
# predict
# ---------------------------------------------------------------------------------------------------
def test_predict_reproduces_training_labels_without_refitting(tmp_path, monkeypatch, capsys):
    root = write_image_folder(tmp_path / "imgs", k=3, n_per=5, size=24)
    pth = tmp_path / "w" / "r18.pth"
    pth.parent.mkdir()
    torch.save(tv_state("resnet18"), pth)
    opts = {"weights": str(pth), "cache": False}
    res = api.run(root, recipe="cnn-kmeans", k=3, out=tmp_path / "run", encoder_options=opts,
                  overrides=['encoder.backbone="resnet18"', "encoder.size=32", "encoder.workers=0"])
    from imclust.cluster import KMeans

    def no_refit(self, *a, **k):
        raise AssertionError("predict must not refit")

    monkeypatch.setattr(KMeans, "fit", no_refit)
    pred = api.predict(tmp_path / "run" / "model", root, out=tmp_path / "pred")
    assert pred.ids == res.ids and np.array_equal(pred.labels, res.labels)
    for name in ("predictions.csv", "submission.csv"):
        assert (tmp_path / "pred" / name).read_text() == (tmp_path / "run" / name).read_text()
    assert {p.name for p in (tmp_path / "run").iterdir()} <= {p.name for p in (tmp_path / "pred").iterdir()}
    # the weights file moved: a clear error, and --weights points predict at it
    moved = tmp_path / "w" / "moved.pth"
    shutil.move(pth, moved)
    assert main(["predict", str(tmp_path / "run"), str(root), "--out", str(tmp_path / "p2")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["predict", str(tmp_path / "run"), str(root), "--out", str(tmp_path / "p2"), "--weights", str(moved)]) == 0
    assert (tmp_path / "p2" / "predictions.csv").read_text() == (tmp_path / "run" / "predictions.csv").read_text()
    # other weights than the model was fitted with are refused
    other = tmp_path / "w" / "other.pth"
    torch.save(tv_state("resnet18", seed=99), other)
    with pytest.raises(UserError, match="not the one the clusters were fitted with"):
        api.predict(tmp_path / "run" / "model", root, weights=str(other))


def test_random_init_model_predicts_and_store_weights(tmp_path):
    root = write_image_folder(tmp_path / "imgs", k=2, n_per=4, size=24)
    over = ['encoder.backbone="resnet18"', 'encoder.layer="layer2"', "encoder.size=32", "encoder.workers=0",
            "encoder.cache=false"]
    res = api.run(root, recipe="cnn-kmeans", k=2, out=tmp_path / "a", seed=3, overrides=over)
    assert np.array_equal(api.predict(tmp_path / "a" / "model", root).labels, res.labels)
    res2 = api.run(root, recipe="cnn-kmeans", k=2, out=tmp_path / "b", seed=3,
                   overrides=over + ["encoder.store_weights=true"])
    from imclust.io import load_tensors

    stored = load_tensors(tmp_path / "b" / "model" / "state.safetensors")
    assert "encoder.net.conv1.weight" in stored and not any(k.startswith("encoder.net.layer3") for k in stored)
    assert np.array_equal(api.predict(tmp_path / "b" / "model", root).labels, res2.labels)


# ---------------------------------------------------------------------------------------------------
# export
# ---------------------------------------------------------------------------------------------------
def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): (p.read_bytes() if not p.is_symlink() else b"->" + str(p.resolve()).encode())
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != "export.csv"}


@pytest.mark.parametrize("mode", ["copy", "symlink", "move"])
def test_export_is_idempotent_and_keeps_names(tmp_path, mode):
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    (src / "b").mkdir()
    for sub, color in (("a", 10), ("b", 200)):
        Image.new("RGB", (8, 8), (color, 0, 0)).save(src / sub / "same.png")
    Image.new("RGB", (8, 8), (0, 99, 0)).save(src / "a" / "other.png")
    ids = ["a/same.png", "b/same.png", "a/other.png"]
    paths = [str(src / i) for i in ids]
    contents = {i: (src / i).read_bytes() for i in ids}
    out = tmp_path / "out"
    first = export_clusters(out, ids, [0, 0, 1], paths, mode)
    tree1 = _tree(out / "clusters")
    assert first["done"] == 3 and sorted(tree1) == ["0/same.png", "0/same~2.png", "1/other.png"]
    if mode != "symlink":
        assert tree1["0/same.png"] == contents["a/same.png"] and tree1["0/same~2.png"] == contents["b/same.png"]
    else:
        assert (out / "clusters" / "0" / "same~2.png").resolve() == (src / "b" / "same.png").resolve()
    assert (src / "a" / "same.png").exists() == (mode != "move")
    second = export_clusters(out, ids, [0, 0, 1], paths, mode)
    assert second["done"] == 0 and second["already"] == 3 and _tree(out / "clusters") == tree1


def test_export_never_overwrites_and_stays_inside(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(src / "x.png")
    out = tmp_path / "out"
    (out / "clusters" / "0").mkdir(parents=True)
    (out / "clusters" / "0" / "x.png").write_bytes(b"someone else's file")
    res = export_clusters(out, ["x.png"], [0], [str(src / "x.png")], "copy")
    assert (out / "clusters" / "0" / "x.png").read_bytes() == b"someone else's file"
    assert res["files"] == [str(out / "clusters" / "0" / "x~2.png")]
    # a cluster folder that is a link to elsewhere is refused
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (out / "clusters" / "1").symlink_to(elsewhere)
    with pytest.raises(UserError, match="not a plain folder"):
        export_clusters(out, ["x.png"], [1], [str(src / "x.png")], "copy")
    assert not list(elsewhere.iterdir())
    # names that try to climb out keep only their last component
    res = export_clusters(out, ["../../x.png"], [2], [str(src / "x.png")], "copy")
    assert Path(res["files"][0]).parent == out / "clusters" / "2"
    with pytest.raises(UserError, match="no usable file name"):
        export_clusters(out, ["a/.."], [2], [str(src / "x.png")], "copy")
    with pytest.raises(UserError, match="choose one of copy, symlink, move"):
        export_clusters(out, ["x.png"], [0], [str(src / "x.png")], "hardlink")
    with pytest.raises(UserError, match="array with no files"):
        export_clusters(out, ["0"], [0], None, "copy")


def test_cli_export_and_bad_flags(tmp_path, capsys):
    root = write_image_folder(tmp_path / "imgs", k=2, n_per=3, size=20)
    args = ["run", str(root), "--recipe", "cnn-kmeans", "--k", "2", "--out", str(tmp_path / "o"), "--export", "copy",
            "--set", 'encoder.backbone="resnet18"', "--size", "32", "--feature-cache", str(tmp_path / "fc")]
    assert main(args) == 0
    import json

    spec = json.loads((tmp_path / "o" / "model" / "pipeline.json").read_text())["parts"]["encoder"]["spec"]
    assert spec["size"] == 32  # --size is the CNN's input size
    exported = sorted(p.relative_to(tmp_path / "o" / "clusters").as_posix()
                      for p in (tmp_path / "o" / "clusters").rglob("*.png"))
    assert len(exported) == 6 and list((tmp_path / "fc").rglob("shard-*.safetensors"))
    assert main(args) == 0  # a rerun exports nothing new and overwrites nothing
    assert sorted(p.relative_to(tmp_path / "o" / "clusters").as_posix()
                  for p in (tmp_path / "o" / "clusters").rglob("*.png")) == exported
    capsys.readouterr()
    for bad, msg in [
        (["run", str(root), "--weightless", "--weights", str(tmp_path / "w.pth"), "--out", str(tmp_path / "x")],
         "uses the 'views' encoder"),
        (["run", str(root), "--recipe", "cnn-kmeans", "--weights", str(tmp_path / "w.pth"), "--out", str(tmp_path / "x")],
         "does not exist"),
        (["run", str(root), "--recipe", "cnn-kmeans", "--set", 'encoder.backbone="vgg19"', "--out", str(tmp_path / "x")],
         "unknown backbone"),
        (["run", str(root), "--recipe", "cnn-kmeans", "--set", 'encoder.layer="fc7"', "--out", str(tmp_path / "x")],
         "no layer 'fc7'"),
        (["run", str(root), "--recipe", "cnn-kmeans", "--set", 'encoder.precision="fp16"', "--out", str(tmp_path / "x")],
         "unknown precision"),
        (["run", "digits", "--export", "copy", "--out", str(tmp_path / "d")], "array with no files"),
    ]:
        assert main(bad) == 2, bad
        err = capsys.readouterr().err.strip().splitlines()
        assert msg in err[-1] and err[-1].startswith("imclust: error:"), (bad, err)


# ---------------------------------------------------------------------------------------------------
# memory on a large folder
# ---------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_folder_of_20000_images_peak_rss_under_3gb(tmp_path):
    import os
    import subprocess

    root = tmp_path / "big"
    rng = np.random.RandomState(0)
    for d in range(20):
        (root / f"d{d:02d}").mkdir(parents=True)
    base = rng.randint(0, 256, (10, 32, 32, 3)).astype(np.uint8)
    for i in range(20000):
        arr = np.roll(base[i % 10], i // 10, axis=1)
        Image.fromarray(arr).save(root / f"d{i % 20:02d}" / f"{i:05d}.png", compress_level=1)
    env = {**os.environ, "IMCLUST_QUIET": "1", "IMCLUST_CACHE_DIR": str(tmp_path / "cache"),
           "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    argv = ["run", str(root), "--recipe", "cnn-kmeans", "--k", "10",
            "--set", 'encoder.backbone="resnet18"', "--set", 'encoder.layer="layer1"', "--set", "encoder.size=32",
            "--set", "encoder.batch_size=256", "--out", str(tmp_path / "out")]
    # a fresh interpreter runs the CLI and reports its own peak RSS and that of its DataLoader workers
    probe = ("import resource, sys\nfrom imclust.cli import main\ncode = main(sys.argv[1:])\n"
             "print('RSS', code, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "
             "resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    proc = subprocess.run([sys.executable, "-c", probe, *argv], env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    _, code, self_kib, workers_kib = proc.stdout.strip().splitlines()[-1].split()
    assert code == "0"
    lines = (tmp_path / "out" / "predictions.csv").read_text().splitlines()
    assert len(lines) == 20001
    print(f"20,000 images: peak RSS {int(self_kib) / 1024:.0f} MiB (main), {int(workers_kib) / 1024:.0f} MiB (largest worker)")
    assert int(self_kib) < 3 * 1024 * 1024, f"peak RSS {int(self_kib) / 1024:.0f} MiB"
    assert int(workers_kib) < 3 * 1024 * 1024, f"peak worker RSS {int(workers_kib) / 1024:.0f} MiB"


@pytest.mark.integration
def test_real_jpeg_folder_run_and_predict(shared_data, tmp_path):
    """A few real flowers5 JPEGs (copied to a temporary folder): run, then predict the same files."""
    src = shared_data / "flowers5"
    root = tmp_path / "flowers"
    for cls in ("daisy", "sunflower"):
        (root / cls).mkdir(parents=True)
        for f in sorted((src / cls).glob("*.jpg"))[:12]:
            shutil.copy(f, root / cls / f.name)
    over = ['encoder.backbone="resnet18"', "encoder.size=64", "encoder.workers=1", "clusterer.n_init=3"]
    res = api.run(root, recipe="cnn-kmeans", out=tmp_path / "run", overrides=over, export="symlink")
    assert res.k == 2 and len(res.ids) == 24 and res.pipeline.features_.shape == (24, 512)
    assert len(list((tmp_path / "run" / "clusters").rglob("*.jpg"))) == 24
    pred = api.predict(tmp_path / "run" / "model", root)
    assert np.array_equal(pred.labels, res.labels)
