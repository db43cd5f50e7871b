"""DINOv2, CLIP and SigLIP backbones through transformers, with tiny random models the tests create and save.

No model hub is reachable here: each test builds a small model of the right family, saves it with
``save_pretrained`` (plus its image processor's config) and points ``--weights`` at the folder. Skipped when
transformers is not installed (``pip install "imclust[hf]"``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("transformers")

from conftest import REPO, write_image_folder  # noqa: E402

from imclust import api  # noqa: E402
from imclust.cli import main  # noqa: E402
from imclust.data.transforms import Preprocess  # noqa: E402
from imclust.errors import UserError  # noqa: E402
from imclust.nn import hf  # noqa: E402
from imclust.recipes import available, load_recipe  # noqa: E402

VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8)
TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, vocab_size=99,
            max_position_embeddings=16, bos_token_id=0, eos_token_id=1)
FAMILY = {name: spec.family for name, spec in hf.HF_MODELS.items()}


def make_tiny(family: str, folder) -> Path:
    """A randomly initialised model of ``family`` and its processor config, saved with save_pretrained."""
    import torch
    import transformers as tf

    folder = Path(folder)
    torch.manual_seed(0)
    if family == "clip":
        model = tf.CLIPModel(tf.CLIPConfig(vision_config=VISION, text_config=TEXT, projection_dim=16))
        proc = {"image_processor_type": "CLIPImageProcessor", "do_resize": True, "size": {"shortest_edge": 32},
                "do_center_crop": True, "crop_size": {"height": 32, "width": 32}, "resample": 3,
                "do_normalize": True, "image_mean": [0.4815, 0.4578, 0.4082], "image_std": [0.2686, 0.2613, 0.2758]}
    elif family == "siglip":
        model = tf.SiglipModel(tf.SiglipConfig(vision_config=VISION, text_config=TEXT))
        proc = {"image_processor_type": "SiglipImageProcessor", "do_resize": True, "size": {"height": 32, "width": 32},
                "resample": 3, "do_normalize": True, "image_mean": [0.5] * 3, "image_std": [0.5] * 3}
    else:
        model = tf.Dinov2Model(tf.Dinov2Config(**VISION))
        proc = {"image_processor_type": "BitImageProcessor", "do_resize": True, "size": {"shortest_edge": 36},
                "do_center_crop": True, "crop_size": {"height": 32, "width": 32}, "resample": 3,
                "do_normalize": True, "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}
    model.save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps(proc))
    return folder


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    return {fam: make_tiny(fam, root / fam) for fam in ("dinov2", "clip", "siglip")}


def test_every_backbone_is_pinned_and_has_a_recipe():
    rec = available()
    for name, spec in hf.HF_MODELS.items():
        assert len(spec.revision) == 40 and all(c in "0123456789abcdef" for c in spec.revision), name
        assert "/" in spec.repo and spec.fetch_command() == f"hf download {spec.repo} --revision {spec.revision}"
        assert name in rec and rec[name]["encoder"]["backbone"] == name


def test_processor_config_drives_the_preprocessing():
    clip = Preprocess.from_processor({"size": 224, "crop_size": 224, "do_center_crop": True, "resample": 3,
                                      "image_mean": [0.48, 0.46, 0.41], "image_std": [0.27, 0.26, 0.28]})
    assert clip.steps == [("resize", 224), ("center_crop", 224)] and clip.resample == 3
    assert clip.mean_std == ((0.48, 0.46, 0.41), (0.27, 0.26, 0.28))
    dino = Preprocess.from_processor({"size": {"shortest_edge": 256}, "crop_size": {"height": 224, "width": 224},
                                      "do_center_crop": True, "image_mean": [0.485, 0.456, 0.406],
                                      "image_std": [0.229, 0.224, 0.225]}, size=112)
    assert dino.steps == [("resize", 128), ("center_crop", 112)]  # --size keeps the resize-to-crop ratio
    sig = Preprocess.from_processor({"size": {"height": 224, "width": 224}, "resample": 2,
                                     "image_mean": [0.5] * 3, "image_std": [0.5] * 3})
    assert sig.steps == [("resize_exact", 224)] and sig.output_size == 224
    from PIL import Image

    u8 = sig.pil_to_uint8(Image.new("RGB", (300, 100), (255, 0, 0)))  # squashed to the square, not cropped
    assert tuple(u8.shape) == (3, 224, 224) and int(u8[0].min()) == 255
    assert float(sig.finish(u8[None])[0, 0, 0, 0]) == pytest.approx(1.0)  # (1 - 0.5) / 0.5
    with pytest.raises(UserError, match="square"):
        Preprocess.from_processor({"size": {"height": 224, "width": 160}})
    with pytest.raises(UserError, match="neither resizes nor crops"):
        Preprocess.from_processor({"do_resize": False})


@pytest.mark.parametrize("name", list(hf.HF_MODELS))
def test_recipe_runs_end_to_end_predicts_and_reads_the_cache(name, tiny_models, tmp_path, monkeypatch, one_torch_thread):
    from imclust.encoders.pretrained import PretrainedEncoder

    src = write_image_folder(tmp_path / "imgs", k=3, n_per=5, size=40)
    weights = tiny_models[FAMILY[name]]
    cache = tmp_path / "cache"
    out = tmp_path / "run"
    assert main(["run", str(src), "--recipe", name, "--weights", str(weights), "--k", "3", "--out", str(out),
                 "--feature-cache", str(cache)]) == 0
    pipe = json.loads((out / "model" / "pipeline.json").read_text())
    enc = pipe["parts"]["encoder"]
    assert enc["spec"]["backbone"] == name and enc["state"]["layer_"] == "embedding"
    assert enc["state"]["preprocess_"]["preset"] == "model"
    emb = np.load(out / "embedding.npy")
    assert emb.shape[0] == 15 and np.isfinite(emb).all()
    # predict places the same images in the same clusters, rebuilding the network from the folder
    assert main(["predict", str(out), str(src), "--out", str(tmp_path / "p")]) == 0
    assert (tmp_path / "p" / "predictions.csv").read_text() == (out / "predictions.csv").read_text()
    # a rerun computes nothing: every feature comes from the cache
    computed = []
    real = PretrainedEncoder._compute
    monkeypatch.setattr(PretrainedEncoder, "_compute", lambda self, ds, idx, *a: computed.append(len(idx)) or real(self, ds, idx, *a))
    res = api.run(str(src), recipe=name, k=3, encoder_options={"weights": str(weights), "cache_dir": str(cache)})
    assert computed == [] and len(res.labels) == 15


def test_wrong_family_and_bad_folders_are_one_line(tiny_models, tmp_path):
    from imclust.encoders.pretrained import PretrainedEncoder
    from imclust.data import load_source

    ds = load_source(str(write_image_folder(tmp_path / "imgs", k=2, n_per=2, size=8)))
    with pytest.raises(UserError, match="not the clip"):
        PretrainedEncoder(backbone="clip-b32", weights=str(tiny_models["dinov2"])).fit(ds)
    with pytest.raises(UserError, match="save_pretrained"):
        PretrainedEncoder(backbone="dinov2-small", weights=str(tmp_path)).fit(ds)
    with pytest.raises(UserError, match="do not set a layer"):
        PretrainedEncoder(backbone="dinov2-small", layer="x", weights=str(tiny_models["dinov2"])).fit(ds)
    with pytest.raises(UserError, match="store_weights"):
        PretrainedEncoder(backbone="siglip-b16", store_weights=True, weights=str(tiny_models["siglip"])).fit(ds)


def test_offline_without_cache_says_so_and_how_to_prefetch(tmp_path):
    src = write_image_folder(tmp_path / "imgs", k=2, n_per=2, size=8)
    env = {"PYTHONPATH": str(REPO / "src"), "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "IMCLUST_QUIET": "1",
           "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf-home"), "IMCLUST_CACHE_DIR": str(tmp_path / "c")}
    r = subprocess.run([sys.executable, "-m", "imclust", "run", str(src), "--recipe", "dinov2-small", "--k", "2",
                        "--out", str(tmp_path / "o")], capture_output=True, text=True, env=env, cwd=tmp_path)
    spec = hf.HF_MODELS["dinov2-small"]
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in r.stderr
    assert spec.fetch_command() in lines[0] and "--weights DIR" in lines[0]


def test_hf_recipes_share_the_photo_stage():
    lite = load_recipe("photo-lite")
    for name in hf.HF_MODELS:
        r = load_recipe(name)
        assert r.get("reducers", []) == lite.get("reducers", []) and r["clusterer"] == lite["clusterer"]
