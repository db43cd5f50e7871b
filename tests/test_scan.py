"""SimCLR pretext and SCAN encoders: end to end on synthetic images, labels never read, the pretext cache, exact
resume, collapse reporting, presets, save/load through the pipeline."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from imclust import components  # noqa: F401
from imclust.base import build
from imclust.data.sources import _array_imageset
from imclust.encoders.scan import PRESETS, ScanStage, collapse_report, data_kind, dominant_share
from imclust.errors import UserError
from imclust.metrics import cluster_acc


def stripes(n=64, size=16, seed=0):
    """Two obviously different classes: vertical stripes and horizontal stripes (random phase, noise)."""
    rng = np.random.RandomState(seed)
    xs, ys = [], []
    for i in range(n):
        c = i % 2
        img = np.zeros((size, size), np.float32)
        phase = rng.randint(4)
        if c == 0:
            img[:, phase::4] = 1.0
        else:
            img[phase::4, :] = 1.0
        xs.append(np.clip(img + 0.1 * rng.randn(size, size), 0, 1))
        ys.append(c)
    return np.stack(xs)[:, None].astype(np.float32), np.array(ys)


TINY = {"pretext": {"width": 4, "epochs": 4, "min_steps": 0, "batch_size": 32},
        "scan": {"epochs": 10, "min_steps": 0, "batch_size": 32, "views": 2},
        "selflabel": {"epochs": 1, "min_steps": 0, "batch_size": 32}}


def tiny_scan(**over):
    spec = {"type": "scan", "n_clusters": 2, "cache": False, "device": "cpu", **json.loads(json.dumps(TINY))}
    for k, v in over.items():
        if isinstance(v, dict):
            spec[k] = {**spec.get(k, {}), **v}
        else:
            spec[k] = v
    return build(spec, kind="encoder")


@pytest.fixture
def two_classes():
    X, y = stripes()
    return _array_imageset(X, y, "stripes", "array"), y


def test_scan_separates_two_obviously_different_classes(one_torch_thread, two_classes):
    ds, y = two_classes
    enc = tiny_scan().fit(ds)
    assert cluster_acc(y, enc.labels_) == 1.0
    proba = enc.predict_proba(ds)
    assert proba.shape == (len(ds), 2) and np.allclose(proba.sum(1), 1, atol=1e-5)
    assert np.array_equal(enc.predict(ds), enc.labels_)
    assert enc.transform(ds).shape == (len(ds), 32)  # the backbone's features (width 4 -> 8w = 32)
    # new images are placed; images of another size are resized to the working shape first
    X2, y2 = stripes(n=10, seed=5)
    assert cluster_acc(y2, enc.predict(_array_imageset(X2, None, "new", "array"))) == 1.0
    assert enc.predict(_array_imageset(np.random.rand(3, 1, 24, 20).astype(np.float32), None, "x", "array")).shape == (3,)
    stages = {"pretext", "scan", "selflabel"}
    assert all(getattr(enc, f"{s}_history_") for s in stages)


def test_scan_stage_that_trains_the_backbone_separates_and_is_seeded(one_torch_thread, two_classes):
    """The GPU presets' scan stage (strong views through the backbone, which trains), run on the CPU."""
    ds, y = two_classes
    over = {"scan": {"update_backbone": True, "epochs": 3}, "selflabel": {"epochs": 0}, "seed": 2}
    a, b = tiny_scan(**over).fit(ds), tiny_scan(**over).fit(ds)
    assert cluster_acc(y, a.labels_) == 1.0
    assert np.array_equal(a.labels_, b.labels_)
    last = a.scan_history_[-1]
    assert len(last["head_losses"]) == ScanStage.heads and np.all(np.isfinite(last["head_losses"]))
    assert last["lowest_loss_head"] == int(np.argmin(last["head_losses"])) and last["clusters_used"] == 2
    # the backbone trained in this stage: its features differ from the same pretext's, kept frozen
    frozen = tiny_scan(**{**over, "scan": {"epochs": 3}}).fit(ds)
    assert not np.allclose(a.transform(ds), frozen.transform(ds), atol=1e-4)


def test_cpu_budget_skips_self_labelling_unless_asked(one_torch_thread, two_classes):
    ds, _ = two_classes
    spec = {**json.loads(json.dumps(TINY)), "type": "scan", "n_clusters": 2, "cache": False, "device": "cpu",
            "budget": "cpu", "seed": 4}
    spec["selflabel"] = {"min_steps": 0, "batch_size": 32}  # the preset's epochs
    skipped = build(spec, kind="encoder").fit(ds)
    assert not skipped.selflabel_history_ and not skipped.selflabel_kept_
    assert np.array_equal(skipped.labels_, skipped.scan_labels_)  # the scan stage's clusters are the result
    spec["selflabel"] = {**spec["selflabel"], "epochs": 1}
    assert len(build(spec, kind="encoder").fit(ds).selflabel_history_) == 1


def test_labels_are_never_read_while_fitting(one_torch_thread, two_classes):
    ds, y = two_classes
    with_labels = tiny_scan(seed=1).fit(ds).labels_
    shuffled = _array_imageset(ds.to_array(desc=None), np.random.RandomState(0).permutation(y), "stripes", "array")
    without = _array_imageset(ds.to_array(desc=None), None, "stripes", "array")
    assert np.array_equal(tiny_scan(seed=1).fit(shuffled).labels_, with_labels)
    assert np.array_equal(tiny_scan(seed=1).fit(without).labels_, with_labels)


def test_seed_fixes_the_result(one_torch_thread, two_classes):
    ds, _ = two_classes
    a, b = tiny_scan(seed=3).fit(ds), tiny_scan(seed=3).fit(ds)
    assert np.array_equal(a.labels_, b.labels_)
    assert np.allclose(a.predict_proba(ds), b.predict_proba(ds))


def test_pretext_cache_is_reused_and_keyed_by_settings_and_content(one_torch_thread, two_classes, tmp_path):
    ds, _ = two_classes
    spec = {"type": "simclr", "width": 4, "epochs": 2, "batch_size": 32, "cache_dir": str(tmp_path), "device": "cpu"}
    first = build(spec, kind="encoder").fit(ds)
    assert not first.from_cache_ and len(list(tmp_path.iterdir())) == 1
    again = build(spec, kind="encoder").fit(ds)
    assert again.from_cache_ and again.cache_key_ == first.cache_key_
    assert np.array_equal(again.train_features(), first.train_features())
    assert np.allclose(again.transform(ds), first.transform(ds), atol=1e-5)
    other_seed = build({**spec, "seed": 1}, kind="encoder").fit(ds)
    assert not other_seed.from_cache_
    X = ds.to_array(desc=None).copy()
    X[0] = 1 - X[0]  # one image changed: another key
    changed = build(spec, kind="encoder").fit(_array_imageset(X, None, "x", "array"))
    assert not changed.from_cache_ and len(list(tmp_path.iterdir())) == 3
    # a second SCAN run with other settings of the later stages reuses the first one's pretext
    first_scan = tiny_scan(cache=True, cache_dir=str(tmp_path)).fit(ds)
    second_scan = tiny_scan(cache=True, cache_dir=str(tmp_path), scan={"heads": 2}).fit(ds)
    assert not first_scan.pretext_from_cache_ and second_scan.pretext_from_cache_


def test_simclr_view_scale_trains_on_smaller_views_and_embeds_at_the_working_side(one_torch_thread, two_classes,
                                                                                   tmp_path):
    ds, _ = two_classes  # 16 px images
    spec = {"type": "simclr", "width": 4, "epochs": 1, "batch_size": 32, "cache_dir": str(tmp_path), "device": "cpu"}
    seen = {}
    for scale, side in ((1.0, 16), (0.5, 8)):
        enc = build({**spec, "view_scale": scale}, kind="encoder")
        original = enc.two_views

        def record(x8, device, original=original, scale=scale):
            v = original(x8, device)
            seen.setdefault(scale, set()).add(tuple(v.shape[1:]))
            return v

        enc.two_views = record
        enc.fit(ds)
        assert seen[scale] == {(1, side, side)}  # every training view at the scaled side
        assert enc.input_shape_ == [1, 16, 16]  # features: the images at their own side
        assert enc.train_features().shape == enc.transform(ds).shape == (len(ds), enc.net_.out_dim)
        seen[f"key {scale}"] = enc.cache_key_
    assert seen["key 1.0"] != seen["key 0.5"]  # another pretext: its own cache entry
    for bad in (0.2, 1.5):
        with pytest.raises(UserError, match="view_scale"):
            build({**spec, "view_scale": bad}, kind="encoder").fit(ds)


def test_simclr_resume_reaches_the_uninterrupted_result(one_torch_thread, two_classes, tmp_path):
    ds, _ = two_classes
    spec = {"type": "simclr", "width": 4, "epochs": 3, "batch_size": 32, "cache": False, "device": "cpu",
            "precision": "bf16", "channels_last": True, "checkpoint_every": 1}
    whole = build({**spec, "checkpoint_dir": str(tmp_path / "a")}, kind="encoder").fit(ds)

    class Stop(Exception):
        pass

    enc = build({**spec, "checkpoint_dir": str(tmp_path / "b")}, kind="encoder")
    original = enc.on_epoch_start

    def stop_at_two(trainer, epoch):
        if epoch == 2:
            raise Stop()
        return original(trainer, epoch)

    enc.on_epoch_start = stop_at_two
    with pytest.raises(Stop):
        enc.fit(ds)
    resumed = build({**spec, "checkpoint_dir": str(tmp_path / "b"), "resume": True}, kind="encoder").fit(ds)
    assert len(resumed.history_) == 3
    for (name, p), q in zip(whole.net_.state_dict().items(), resumed.net_.state_dict().values()):
        assert torch.equal(p, q), name
    with pytest.raises(UserError, match="configuration changed"):
        build({**spec, "checkpoint_dir": str(tmp_path / "b"), "resume": True, "temperature": 0.5},
              kind="encoder").fit(ds)


def test_scan_stages_resume_from_their_checkpoints(one_torch_thread, two_classes, tmp_path):
    ds, _ = two_classes
    first = tiny_scan(checkpoint_dir=str(tmp_path)).fit(ds)
    assert {p.name for p in tmp_path.iterdir()} == {"pretext", "scan", "selflabel"}
    again = tiny_scan(checkpoint_dir=str(tmp_path), resume=True).fit(ds)  # every stage finished: nothing trains
    assert np.array_equal(again.labels_, first.labels_)
    assert [h["loss"] for h in again.scan_history_] == [h["loss"] for h in first.scan_history_]


def test_collapse_is_reported(one_torch_thread, two_classes):
    rec, warn = collapse_report(np.array([0] * 9 + [1]), 3, "the scan stage")
    assert rec["counts"] == [9, 1, 0] and rec["empty_clusters"] == 1 and rec["largest_cluster"] == 0.9
    assert len(warn) == 2 and all("COLLAPSE" in w for w in warn)
    assert collapse_report(np.array([0, 1, 2, 0, 1, 2]), 3, "x")[1] == []
    assert dominant_share(2) == 0.9 and dominant_share(3) == pytest.approx(2 / 3) and dominant_share(10) == 0.5
    # without the entropy term nothing keeps the clusters apart: the run says so
    ds, _ = two_classes
    enc = tiny_scan(n_clusters=4, scan={"entropy_weight": 0.0, "epochs": 30}, selflabel={"epochs": 0}).fit(ds)
    assert any("COLLAPSE" in w for w in enc.warnings_)
    assert enc.clusters_["empty_clusters"] > 0 or enc.clusters_["largest_cluster"] > dominant_share(4)


class _AllInClusterZero(torch.nn.Module):
    """Logits that put every image in cluster 0: a self-labelling stage that collapsed completely."""

    def forward(self, h):
        out = torch.zeros(len(h), 2, dtype=h.dtype, device=h.device)
        out[:, 0] = 10.0
        return out


def test_self_labelling_that_collapses_the_scan_stages_clusters_is_discarded(one_torch_thread, two_classes,
                                                                              monkeypatch):
    from imclust.encoders import scan as scan_module

    ds, y = two_classes
    kept = tiny_scan().fit(ds)
    assert kept.selflabel_kept_ and cluster_acc(y, kept.labels_) == 1.0
    real_fit = scan_module.SelfLabelStage.fit

    def collapsing_fit(stage, data):
        real_fit(stage, data)
        stage.head_ = torch.nn.Sequential(stage.head_, _AllInClusterZero())
        return stage

    monkeypatch.setattr(scan_module.SelfLabelStage, "fit", collapsing_fit)
    enc = tiny_scan().fit(ds)
    assert not enc.selflabel_kept_ and enc.selflabel_history_  # it ran, and was discarded
    assert any("COLLAPSE after self-labelling" in w for w in enc.warnings_)
    assert any("self-labelling's network is discarded" in w for w in enc.warnings_)
    # the scan stage's network and clusters stand, and new images are placed with them
    assert np.array_equal(enc.labels_, enc.scan_labels_) and cluster_acc(y, enc.labels_) == 1.0
    assert np.array_equal(enc.predict(ds), enc.labels_)
    assert enc.clusters_["largest_cluster"] <= dominant_share(2) and enc.summary()["selflabel_kept"] is False


def test_scan_stage_keeps_the_head_whose_clusters_follow_the_neighbours():
    """Two heads on features of two groups whose neighbours stay in their group: head 1 splits the groups,
    head 0 cuts across them but has the lower loss. The information rule keeps head 1; "loss" keeps head 0."""
    from types import SimpleNamespace

    from imclust.encoders.scan import ClusterHeads

    rng = np.random.RandomState(0)
    shift = np.array([5.0, 0, 0, 0])
    feats = np.concatenate([rng.randn(20, 4) + shift, rng.randn(20, 4) - shift]).astype(np.float32)
    group = np.repeat([0, 1], 20)
    neighbours = np.stack([rng.choice(np.flatnonzero(group == g), 3) for g in group])
    heads = ClusterHeads(4, 2, 2)
    heads.norm.set_statistics(torch.from_numpy(feats))
    with torch.no_grad():
        for h, axis in ((0, 1), (1, 0)):  # head 0 reads a noise axis, head 1 the groups' axis
            heads.heads[h].weight.zero_()
            heads.heads[h].bias.zero_()
            heads.heads[h].weight[0, axis], heads.heads[h].weight[1, axis] = 1.0, -1.0
    for keep, expected in (("information", 1), ("loss", 0)):
        stage = ScanStage(n_clusters=2, heads=2, keep_head=keep)
        stage.heads_, stage._clean_features = heads, torch.from_numpy(feats)
        stage._neighbours = torch.from_numpy(neighbours)
        stage.on_fit_end(SimpleNamespace(history=[{"head_losses": [-1.0, -0.5]}], device=torch.device("cpu")))
        assert stage.best_head_ == expected
        assert stage.head_information_[1] > stage.head_information_[0] + 0.3  # ln 2 = 0.69 against about 0
    with pytest.raises(UserError, match="keep_head must be one of information, loss"):
        build({"type": "scan", "scan": {"keep_head": "lowest"}}, kind="encoder").resolve_settings((1, 28, 28))


def test_every_heads_information_is_reported_and_the_rules_share_the_training(one_torch_thread, two_classes):
    ds, _ = two_classes
    enc = tiny_scan(scan={"heads": 3}, selflabel={"epochs": 0}).fit(ds)
    info = enc.head_information_
    assert len(info) == 3 and enc.best_head_ == int(np.argmax(info))
    assert enc.summary()["head_information"] == info
    by_loss = tiny_scan(scan={"heads": 3, "keep_head": "loss"}, selflabel={"epochs": 0}).fit(ds)
    assert by_loss.head_losses_ == enc.head_losses_  # the same training; only the choice differs
    assert by_loss.best_head_ == int(np.argmin(by_loss.head_losses_))
    arrays, extra = enc.get_state()
    del extra["head_information_"]  # a model saved before the scan stage computed it still loads and saves
    older = tiny_scan(scan={"heads": 3})
    older.set_state(arrays, extra)
    assert older.summary()["head_information"] is None and older.get_state()[1]["head_information_"] is None


def test_heads_with_their_own_entropy_weights_compete(one_torch_thread, two_classes):
    """entropy_weight as a list gives each head its own weight: a head's training depends on its weight only
    (the head of weight 5 trains as in a run where every head has 5), and the information rule passes over the
    head that, without the entropy term, lets its clusters merge."""
    ds, _ = two_classes
    common = {"heads": 2, "epochs": 30}
    mixed = tiny_scan(n_clusters=4, scan={**common, "entropy_weight": [0.0, 5.0]}, selflabel={"epochs": 0}).fit(ds)
    same = tiny_scan(n_clusters=4, scan={**common, "entropy_weight": 5.0}, selflabel={"epochs": 0}).fit(ds)
    assert mixed.head_losses_[1] == pytest.approx(same.head_losses_[1], rel=1e-5)
    assert mixed.head_losses_[0] != pytest.approx(same.head_losses_[0], rel=1e-3)
    assert mixed.head_information_[1] > mixed.head_information_[0]
    assert mixed.best_head_ == 1
    bad = {"a list of the wrong length": {"entropy_weight": [1.0, 2.0]},
           "a negative weight": {"entropy_weight": [1.0, -1.0, 2.0]},
           "not a number": {"entropy_weight": "high"}}
    for scan in bad.values():
        with pytest.raises(UserError, match="entropy_weight must be a number of 0 or more, or a list of 3"):
            build({"type": "scan", "scan": {"heads": 3, **scan}}, kind="encoder").resolve_settings((1, 28, 28))
    with pytest.raises(UserError, match="keep_head = loss compares the heads' losses"):
        build({"type": "scan", "scan": {"heads": 2, "entropy_weight": [1.0, 5.0], "keep_head": "loss"}},
              kind="encoder").resolve_settings((1, 28, 28))
    # one weight written as a list of equal ones is one weight: the loss rule still applies
    build({"type": "scan", "scan": {"heads": 2, "entropy_weight": [5, 5], "keep_head": "loss"}},
          kind="encoder").resolve_settings((1, 28, 28))


def test_presets_follow_the_images_and_overrides_are_checked():
    assert data_kind((1, 28, 28)) == "grey" and data_kind((3, 32, 32)) == "colour-32"
    assert data_kind((3, 96, 96)) == "photo" and data_kind((3, 48, 64)) == "colour-32"
    enc = build({"type": "scan", "pretext": {"epochs": 7}, "budget": "cpu"}, kind="encoder")
    s = enc.resolve_settings((3, 150, 150))
    assert s["preset"] == "photo" and s["size"] == PRESETS["photo"]["cpu"]["size"] and s["pretext"]["epochs"] == 7
    assert s["pretext"]["blur_p"] == PRESETS["photo"]["cpu"]["pretext"]["blur_p"]
    assert enc.resolve_settings((1, 28, 28))["size"] == 28  # never upsampled beyond the images
    assert build({"type": "scan", "budget": "gpu"}, kind="encoder").resolve_settings((3, 32, 32))["pretext"]["arch"] == "resnet18"
    # on a CPU only the 32 px colour preset affords the (narrow) ResNet-18; grey and 64 px photos keep the ConvNet
    on_cpu = build({"type": "scan", "budget": "cpu"}, kind="encoder")
    archs = {shape: on_cpu.resolve_settings(shape)["pretext"]["arch"] for shape in [(3, 32, 32), (1, 28, 28), (3, 96, 96)]}
    assert archs == {(3, 32, 32): "resnet18", (1, 28, 28): "convnet", (3, 96, 96): "convnet"}
    # the 32 px colour preset trains on 24 px views (features at 32 px); the others on views of the working side
    scales = {shape: on_cpu.resolve_settings(shape)["pretext"].get("view_scale", 1.0)
              for shape in [(3, 32, 32), (1, 28, 28), (3, 96, 96)]}
    assert scales == {(3, 32, 32): 0.75, (1, 28, 28): 1.0, (3, 96, 96): 1.0}
    # self-labelling is off on the CPU budget (every preset) and on with the GPU's
    on_gpu = build({"type": "scan", "budget": "gpu"}, kind="encoder")
    for shape in [(3, 32, 32), (1, 28, 28), (3, 96, 96)]:
        assert on_cpu.resolve_settings(shape)["selflabel"]["epochs"] == 0
        assert on_gpu.resolve_settings(shape)["selflabel"]["epochs"] > 0
    with pytest.raises(UserError, match="unknown pretext option 'epoch'"):
        build({"type": "scan", "pretext": {"epoch": 3}}, kind="encoder").resolve_settings((1, 28, 28))
    with pytest.raises(UserError, match="unknown preset"):
        build({"type": "scan", "preset": "huge"}, kind="encoder").resolve_settings((1, 28, 28))


def test_scan_pipeline_saves_loads_and_predicts(one_torch_thread, two_classes, tmp_path):
    from imclust.pipeline import Pipeline

    ds, y = two_classes
    spec = {"encoder": {"type": "scan", "cache": False, "device": "cpu", **TINY}, "clusterer": {"type": "encoder"}}
    pipe = Pipeline.from_spec(spec, name="scan", seed=0)
    pipe.set_k(2)
    pipe.fit(ds)
    assert cluster_acc(y, pipe.labels_) == 1.0
    pipe.save(tmp_path / "model")
    loaded = Pipeline.load(tmp_path / "model")
    assert np.array_equal(loaded.predict(ds), pipe.labels_)
    assert loaded.encoder.settings_["preset"] == "grey" and loaded.encoder.n_clusters_ == 2
