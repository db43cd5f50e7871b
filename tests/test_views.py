"""The views encoder (several encoders side by side) and the multi-view recipe, on small real data."""

import json

import numpy as np
import pytest

from imclust.api import build_pipeline, fit_pipeline
from imclust.base import build
from imclust.data import load_source
from imclust.errors import UserError
from imclust.pipeline import Pipeline

PIXELS_AND_HOG = {"pixels": {"type": "pixels"}, "shape": {"type": "hog", "cell_px": [4], "grids": [4]}}


@pytest.fixture(scope="module")
def digits300():
    return load_source("digits").subset(np.arange(300))


def test_views_are_reduced_centred_and_scaled_side_by_side(digits300):
    enc = build({"type": "views", "views": PIXELS_AND_HOG, "pca": 20}, kind="encoder")
    F = enc.fit_transform(digits300)
    # in the order of the names: pixels (64 columns, PCA to 20), then shape (HOG, PCA to 20)
    assert enc.view_dims_ == [20, 20] and F.shape == (300, 40) and F.dtype == np.float32
    for block in (F[:, :20], F[:, 20:]):
        assert np.abs(block.mean(0)).max() < 1e-4
        assert np.sqrt((block.astype(np.float64) ** 2).sum(1).mean()) == pytest.approx(1.0, rel=1e-4)
    np.testing.assert_allclose(enc.transform(digits300), F, atol=1e-5)
    narrow = build({"type": "views", "views": PIXELS_AND_HOG, "pca": 0}, kind="encoder").fit(digits300)
    assert narrow.view_dims_[0] == 64 and not narrow.pcas_  # pca = 0 keeps each view whole
    whole = build({"type": "views", "views": PIXELS_AND_HOG, "pca": 20, "unreduced": ["pixels"]},
                  kind="encoder").fit(digits300)
    assert whole.view_dims_ == [64, 20] and whole.view_names_ == ["pixels", "shape"] and list(whole.pcas_) == ["shape"]


def test_views_encoder_refuses_an_unreduced_view_it_does_not_have(digits300):
    with pytest.raises(UserError, match="unreduced must list view names.*pixels, shape"):
        build({"type": "views", "views": PIXELS_AND_HOG, "unreduced": ["pixel"]}, kind="encoder").fit(digits300)


@pytest.mark.parametrize("views, pca, match", [
    ({}, 50, "at least one view"),
    ({"a": {"cell_px": [4]}}, 50, "with an encoder type"),
    ({"a.b": {"type": "pixels"}}, 50, "no dots"),
    ({"a": {"type": "views", "views": PIXELS_AND_HOG}}, 50, "itself a views encoder"),
    ({"a": {"type": "pixels", "bogus": 1}}, 50, "view 'a'.*unknown option"),
    ({"a": {"type": "kmeans"}}, 50, "view 'a'.*not an encoder"),
    (PIXELS_AND_HOG, -1, "pca must be"),
])
def test_views_encoder_refuses_bad_views(digits300, views, pca, match):
    with pytest.raises(UserError, match=match):
        build({"type": "views", "views": views, "pca": pca}, kind="encoder").fit(digits300)


def test_multi_view_pipeline_saves_and_loads_without_changing_a_prediction(digits300, tmp_path, one_torch_thread):
    pipe, _ = build_pipeline("hog-ae-umap", ["encoder.views.autoencoder.min_steps=30",
                                             "encoder.views.autoencoder.epochs=1"], seed=3)
    fit_pipeline(pipe, digits300, 10)
    ae = pipe.encoder.encoders_["autoencoder"]
    assert ae.seed == 3  # the pipeline's seed reaches the views
    assert pipe.encoder.view_dims_ == [10, 50, 32 * 32]  # the pixels view is kept whole, at 32×32
    assert pipe.reducers[0].graph_choice_["k"] == 10  # the run's k reaches the graph comparison
    pipe.save(tmp_path / "m")
    saved = json.loads((tmp_path / "m" / "pipeline.json").read_text())
    loaded = Pipeline.load(tmp_path / "m")
    assert list(loaded.encoder.encoders_) == ["autoencoder", "hog", "pixels"]
    assert loaded.reducers[0].graph_choice_ == pipe.reducers[0].graph_choice_ and saved
    first50 = digits300.subset(np.arange(50))
    np.testing.assert_allclose(loaded.transform(first50), pipe.transform(first50), atol=1e-5)
    np.testing.assert_array_equal(loaded.predict(digits300), pipe.predict(digits300))


def test_intersected_views_cluster_digits_better_than_chance(digits300):
    pipe, _ = build_pipeline("hog-ae-umap", ["encoder.views={raw={type='pixels'}, shape={type='hog'}}",
                                             "encoder.unreduced=[]", "reducers.0.subspace='raw'"], seed=0)
    fit_pipeline(pipe, digits300, 10)
    from imclust.metrics import evaluate

    assert evaluate(pipe.labels_, digits300.labels)["acc"] > 0.7  # chance is about 0.1
    # digits are not linear subspaces: the HOG view's neighbours give the cleaner groups
    assert pipe.reducers[0].graph_choice_["chosen"] == "shared neighbours"


def test_default_grey_run_draws_the_autoencoder_views_figures(tmp_path, one_torch_thread):
    from imclust.api import run

    # the grey default trains its autoencoder view (with the weights installed too, beside a Lite0 view): its loss
    # curve and reconstructions reach the run folder
    res = run("digits", out=tmp_path / "run", seed=0, weightless=True,
              overrides=["encoder.views.autoencoder.min_steps=20", "encoder.views.autoencoder.epochs=1"])
    assert res.recipe_name == "hog-ae-umap"
    for name in ("loss_curve.png", "reconstructions.png", "history.json"):
        assert (tmp_path / "run" / name).is_file(), name
    page = (tmp_path / "run" / "report.html").read_text()
    assert 'alt="training loss per epoch"' in page and 'alt="originals and reconstructions"' in page


def test_graph_comparison_with_k_chosen_automatically_starts_at_the_middle_of_the_range(digits300, one_torch_thread):
    pipe, _ = build_pipeline("hog-ae-umap", ["encoder.views.autoencoder.min_steps=20",
                                             "encoder.views.autoencoder.epochs=1"], seed=0)
    fit_pipeline(pipe, digits300, "auto:4-16")
    choice = pipe.reducers[0].graph_choice_
    assert choice["compared_at"][0][0] == 8  # √(4·16): k is not known when the graphs are first compared
    assert pipe.k_selection_ is not None and 4 <= pipe.n_clusters_ <= 16
    # then again at the chosen k, as a run with that k given compares them: the same graph and the same clusters
    assert choice["k"] == choice["compared_at"][-1][0] == pipe.n_clusters_ and len(choice["compared_at"]) == 2
    auto_labels = pipe.labels_
    pipe.refit_encoded(pipe.features_, pipe.n_clusters_)  # the stages after the encoder, fitted with that k given
    assert pipe.reducers[0].graph_choice_["chosen"] == choice["chosen"]
    np.testing.assert_array_equal(pipe.labels_, auto_labels)


def test_weightless_colour_default_joins_colour_features_and_a_network_trained_on_the_images(tmp_path, monkeypatch,
                                                                                               one_torch_thread):
    from conftest import write_image_folder

    monkeypatch.setenv("IMCLUST_CACHE_DIR", str(tmp_path / "cache"))  # the pretext is trained, not found in a cache
    src = write_image_folder(tmp_path / "imgs", k=3, n_per=6, size=20)
    ds = load_source(str(src))
    pipe, _ = build_pipeline("photo-simclr-umap", ["encoder.views.simclr.min_steps=3",
                                                     "reducers.0.n_neighbors=5"], seed=2)
    fit_pipeline(pipe, ds, 3)
    simclr = pipe.encoder.encoders_["simclr"]
    assert list(pipe.encoder.encoders_) == ["colour_hog", "simclr"] and simclr.seed == 2
    assert simclr.epochs_ >= 3 and len(simclr.history_) == simclr.epochs_  # trained on these images (1 step an epoch)
    assert pipe.encoder.view_dims_ == [17, 17]  # each view shrunk to n - 1 principal components (PCA's clip)
    from imclust.metrics import evaluate

    assert evaluate(pipe.labels_, ds.labels)["acc"] == 1.0  # three colours
    pipe.save(tmp_path / "m")
    loaded = Pipeline.load(tmp_path / "m")
    np.testing.assert_allclose(loaded.transform(ds), pipe.transform(ds), atol=1e-5)
    np.testing.assert_array_equal(loaded.predict(ds), pipe.predict(ds))
