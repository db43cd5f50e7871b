"""The tutorial recipes (hw9, ae3d, n2d) and the default recipe, end to end on small data."""

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from imclust import api
from imclust.recipes import available, default_recipe, load_recipe
from imclust.tutorial_outputs import invert_labels

from conftest import REPO, write_image_folder


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_recipes_listed_and_one_default():
    rec = available()
    for name in ("baseline", "hw9", "ae3d", "n2d"):
        assert name in rec
    marked = [n for n, r in rec.items() if r.get("default")]
    assert len(marked) == 1 and default_recipe(weightless=True) == marked[0]
    colour = [n for n, r in rec.items() if r.get("default_for") == "colour"]
    weightless = default_recipe(channels=3, weightless=True)
    assert len(colour) == 2 and weightless in colour and weightless != marked[0]  # one with weights, one without
    assert default_recipe(channels=3) in colour
    grey = [n for n, r in rec.items() if r.get("default_for") == "grey"]  # the grey default with weights
    assert len(grey) == 1 and default_recipe(channels=1) in grey + marked
    assert default_recipe(channels=1, weightless=True) == marked[0]
    hw9 = load_recipe("hw9")
    assert hw9["encoder"]["arch"] == "conv_hw9" and hw9["encoder"]["lr"] == 1e-5 and hw9["encoder"]["epochs"] == 100
    assert [r["type"] for r in hw9["reducers"]] == ["kernel_pca", "tsne"]
    assert hw9["reducers"][0]["n_components"] == 200 and hw9["clusterer"]["type"] == "minibatch_kmeans"


class _Chosen(Exception):
    pass


@pytest.mark.parametrize("channels,recipe,weights,want", [
    (3, None, False, "photo-simclr-umap"), (1, None, False, "hog-ae-umap"), (3, None, True, "photo-lite"),
    (1, None, True, "hog-ae-lite-umap"), (3, "baseline", True, "baseline"), (1, "photo-umap", False, "photo-umap")])
def test_run_picks_the_default_by_colour_and_weights_unless_a_recipe_is_named(monkeypatch, tmp_path, capsys, channels,
                                                                              recipe, weights, want):
    from imclust.nn import efficientnet

    monkeypatch.setattr(efficientnet, "weights_installed", lambda name="efficientnet-lite0": weights)  # imclust[photos]
    x = np.random.RandomState(0).rand(6, channels, 8, 8).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    seen = []

    def fake_build(name, *a, **kw):
        seen.append(name)
        raise _Chosen

    monkeypatch.setattr(api, "build_pipeline", fake_build)
    monkeypatch.delenv("IMCLUST_QUIET", raising=False)
    with pytest.raises(_Chosen):
        api.run(str(tmp_path / "x.npy"), recipe=recipe)
    assert seen == [want]
    kind = "colour" if channels == 3 else "grey"
    said = f"{kind} images: recipe '{want}'" in capsys.readouterr().err
    assert said == (recipe is None)  # the choice is announced, never silent


def test_invert_labels():
    np.testing.assert_array_equal(invert_labels([0, 1, 1, 0], 2), [1, 0, 0, 1])
    np.testing.assert_array_equal(invert_labels([0, 2, 1], 3), [2, 0, 1])


def test_hw9_recipe_writes_prediction_and_inverted_copy(tmp_path):
    src = write_image_folder(tmp_path / "imgs", k=2, n_per=10, size=12)
    out = tmp_path / "run"
    res = api.run(str(src), recipe="hw9", out=out, overrides=[
        "encoder.epochs=1", "encoder.recon_indices=[0,1,2]", "encoder.device='cpu'",
        "reducers.0.n_components=5", "reducers.1.perplexity=5", "reducers.1.n_iter=300", "reducers.1.n_jobs=1"])
    assert res.k == 2  # the recipe's k
    assert res.pipeline.encoder.input_shape_ == [3, 16, 16]  # 12×12 rounded to a multiple of 8
    rows = list(csv.reader(open(out / "prediction.csv")))
    inv = list(csv.reader(open(out / "prediction_invert.csv")))
    assert rows[0] == ["id", "label"] and len(rows) == 21
    assert all(int(a[1]) == 1 - int(b[1]) and a[0] == b[0] for a, b in zip(rows[1:], inv[1:]))
    for f in ("reconstructions.png", "loss_curve.png", "history.json", "scatter_labels.png", "scatter_clusters.png"):
        assert (out / f).exists(), f
    assert res.metrics["acc"] > 0.9  # two solid colours are trivially separable


def test_ae3d_recipe_on_digits(tmp_path):
    out = tmp_path / "ae3d"
    res = api.run("digits", recipe="ae3d", out=out, overrides=["encoder.epochs=10", "encoder.device='cpu'"])
    assert res.pipeline.encoder.transform(res.dataset).shape == (1797, 3)
    assert (out / "scatter_3d.png").stat().st_size > 5000
    hist = json.loads((out / "history.json").read_text())
    assert len(hist) == 10
    assert res.metrics["acc"] > 0.3  # well above chance (0.1) after the tutorial's 10 epochs
    # the saved model places new images without refitting
    again = api.predict(out / "model", "digits")
    np.testing.assert_array_equal(again.labels, res.labels)


def test_cli_bad_recipe_option_is_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "imclust", "run", "digits", "--recipe", "ae3d", "--set", "encoder.arch='bogus'",
                        "--out", str(tmp_path / "x")], capture_output=True, text=True, cwd=REPO,
                       env={"PYTHONPATH": str(REPO / "src"), "IMCLUST_QUIET": "1", "PATH": "/usr/bin:/bin"})
    assert r.returncode == 2
    assert "unknown autoencoder architecture" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow
def test_n2d_and_default_recipes_on_digits(tmp_path):
    # the recipes' own settings; chance is 0.1. The default recipe's learned view must clearly beat the
    # pixel baseline (PCA -> k-means) fitted in the same test. Its ACC at one seed is not compared with
    # issue 3's 0.95: it lands on either side of that line on different CPUs (0.955 on an AMD EPYC, 0.949 on
    # an Intel Xeon), and the scoreboard gives 0.904-0.955 over seeds 0-2.
    acc = {recipe: api.run("digits", recipe=recipe, seed=0).metrics["acc"] for recipe in ("n2d", default_recipe(), "baseline")}
    assert acc["n2d"] >= 0.7, acc
    assert acc[default_recipe()] >= acc["baseline"] + 0.05, acc
