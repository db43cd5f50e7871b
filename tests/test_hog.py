"""The ``hog`` encoder: HOG histograms, deskewing, upsampling, and the encoder as a pipeline part."""

from __future__ import annotations

import numpy as np
import pytest

from imclust.cluster import KMeans
from imclust.data import ImageSet
from imclust.encoders.hog import HOGEncoder, colour_histogram, deskew, hog, rgb_to_hsv, upsample_factor
from imclust.errors import UserError
from imclust.metrics import cluster_acc
from imclust.pipeline import Pipeline


def _set(x: np.ndarray) -> ImageSet:
    x = x.astype(np.float32)
    return ImageSet([str(i) for i in range(len(x))], lambda idx: x[np.asarray(idx)], x.shape[1:])


def test_hog_puts_an_edge_in_its_orientation_bin():
    img = np.zeros((2, 16, 16), np.float32)
    img[0, :, 8:] = 1.0  # vertical edge: gradient along x, angle 0 -> bin 0
    img[1, 8:, :] = 1.0  # horizontal edge: gradient along y, angle pi/2 -> bin 9 // 2 = 4
    H = hog(img, cell=16, bins=9, sigma=0.0)
    assert H.shape == (2, 9)
    np.testing.assert_allclose(np.linalg.norm(H, axis=1), 1.0, atol=1e-5)
    assert np.argmax(H[0]) == 0 and H[0, 0] > 0.99
    assert np.argmax(H[1]) == 4 and H[1, 4] > 0.99


def test_hog_cells_tile_from_the_top_left():
    img = np.zeros((1, 9, 9), np.float32)
    img[0, :, 2] = 1.0  # a vertical stroke in the left column of cells only
    H = hog(img, cell=4, bins=4, sigma=0.0).reshape(2, 2, 4)  # 2x2 cells; the 9th row/column is left out
    assert H[:, 0].sum() > 0 and H[:, 1].sum() == 0


def test_deskew_straightens_a_slanted_stroke():
    h = w = 28
    x = np.zeros((1, h, w), np.float32)
    for r in range(4, 24):  # a stroke leaning right by 0.5 px per row, centred off-centre
        c = 10 + (r - 14) * 0.5
        x[0, r, int(round(c)) : int(round(c)) + 2] = 1.0

    def slant_and_centre(img):
        rows, cols = np.mgrid[:h, :w]
        t = img.sum()
        mr, mc = (rows * img).sum() / t, (cols * img).sum() / t
        return ((rows - mr) * (cols - mc) * img).sum() / ((rows - mr) ** 2 * img).sum(), mr, mc

    before, _, _ = slant_and_centre(x[0])
    after, mr, mc = slant_and_centre(deskew(x)[0])
    assert abs(before) > 0.4
    assert abs(after) < 0.05
    assert abs(mc - w / 2) < 1.0 and abs(mr - h / 2) < 1.0
    blank = np.zeros((1, 8, 8), np.float32)
    np.testing.assert_array_equal(deskew(blank), blank)


@pytest.mark.parametrize("side,factor", [(8, 3), (16, 2), (28, 1), (23, 2)])
def test_upsample_factor(side, factor):
    assert upsample_factor(side, side + 5, 24) == factor


def test_encoder_shapes_batches_and_grey():
    rs = np.random.RandomState(0)
    x = rs.rand(30, 3, 8, 8).astype(np.float32)  # colour input becomes grey
    enc = HOGEncoder(cell_px=[4], grids=[4], batch_size=7).fit(_set(x))
    assert enc.upsample_factor_ == 3 and enc.cells_ == [4, 6]
    F = enc.transform(_set(x))
    # 24x24 after upsampling: 6x6 cells of 4 px and 4x4 cells of 6 px, 9 bins each, then 576 pixels
    assert F.shape == (30, 6 * 6 * 9 + 4 * 4 * 9 + 576) == (30, enc.n_features_)
    one_batch = HOGEncoder(cell_px=[4], grids=[4], batch_size=100).fit(_set(x)).transform(_set(x))
    np.testing.assert_allclose(F, one_batch, atol=1e-6)
    # the HOG block (two scales, /sqrt 2) and the pixel block each have unit norm
    np.testing.assert_allclose(np.linalg.norm(F[:, :468], axis=1), 1.0, atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(F[:, 468:], axis=1), 1.0, atol=1e-4)
    no_pix = HOGEncoder(cell_px=[4], grids=[], pixels=False, deskew=False).fit(_set(x)).transform(_set(x))
    assert no_pix.shape == (30, 6 * 6 * 9)


def test_large_images_are_shrunk_to_max_side():
    x = np.random.RandomState(0).rand(3, 3, 100, 50).astype(np.float32)
    enc = HOGEncoder(cell_px=[4], grids=[], max_side=64).fit(_set(x))
    assert enc.input_shape_ == [1, 64, 32] and enc.upsample_factor_ == 1
    assert enc.transform(_set(x)).shape == (3, 16 * 8 * 9 + 64 * 32)
    assert HOGEncoder(max_side=None).fit(_set(x)).input_shape_ == [1, 100, 50]


def _bars(n: int, rs) -> tuple[np.ndarray, np.ndarray]:
    """Short bars at random places: class 0 vertical, class 1 horizontal."""
    x = np.zeros((n, 1, 20, 20), np.float32)
    y = rs.randint(0, 2, n)
    for i in range(n):
        r, c = rs.randint(2, 10, 2)
        if y[i] == 0:
            x[i, 0, r : r + 8, c : c + 2] = 1.0
        else:
            x[i, 0, r : r + 2, c : c + 8] = 1.0
    return x, y


def test_hog_separates_orientation_where_pixels_do_not():
    rs = np.random.RandomState(0)
    x, y = _bars(200, rs)
    pix = x.reshape(len(x), -1)
    acc_pix = cluster_acc(y, KMeans(2, random_state=0).fit_predict(pix))
    F = HOGEncoder(cell_px=[], grids=[1], deskew=False, pixels=False).fit(_set(x)).transform(_set(x))
    acc_hog = cluster_acc(y, KMeans(2, random_state=0).fit_predict(F))
    assert acc_hog == 1.0
    assert acc_pix < 0.9


def test_encoder_in_a_saved_pipeline(tmp_path):
    rs = np.random.RandomState(1)
    x, _ = _bars(60, rs)
    enc = HOGEncoder(cell_px=[4], grids=[2])
    pipe = Pipeline(enc, [], KMeans(2, random_state=0), name="hog-test").fit(_set(x))
    pipe.save(tmp_path / "m")
    loaded = Pipeline.load(tmp_path / "m")
    np.testing.assert_array_equal(loaded.predict(_set(x)), pipe.predict(_set(x)))
    # new images of another size are resized to the fitted size first
    big = np.repeat(np.repeat(x, 2, axis=2), 2, axis=3)
    assert loaded.encoder.transform(_set(big)).shape == (60, loaded.encoder.n_features_)


def test_rgb_to_hsv_matches_colorsys():
    import colorsys

    rs = np.random.RandomState(0)
    x = rs.rand(5, 3, 4, 4).astype(np.float32)
    x[0, :, 0, 0] = 0.5  # grey: hue and saturation 0
    x[1, :, 0, 0] = 0.0  # black
    h, s, v = rgb_to_hsv(x)
    for i in range(5):
        for r in range(4):
            for c in range(4):
                want = colorsys.rgb_to_hsv(*(float(t) for t in x[i, :, r, c]))
                np.testing.assert_allclose([h[i, r, c], s[i, r, c], v[i, r, c]], want, atol=1e-5)


def test_colour_histogram_bins_by_hand():
    red = np.zeros((1, 3, 4, 4), np.float32)
    red[:, 0] = 1.0  # hue 0, saturation 1, value 1
    H = colour_histogram(red, (12, 4, 4))
    assert H.shape == (1, 192) and H[0, (0 * 4 + 3) * 4 + 3] == 1.0 and H.sum() == 1.0
    half = red.copy()
    half[:, :, :, 2:] = 0.0
    half[:, 2, :, 2:] = 1.0  # right half pure blue: hue 2/3 -> hue bin 8
    H = colour_histogram(half, (12, 4, 4))
    np.testing.assert_allclose(H[0, [(0 * 4 + 3) * 4 + 3, (8 * 4 + 3) * 4 + 3]], [np.sqrt(0.5)] * 2)
    np.testing.assert_allclose(np.linalg.norm(H, axis=1), 1.0, atol=1e-6)
    grey = np.full((1, 1, 4, 4), 0.6, np.float32)  # grey input: an intensity histogram (value bin 2)
    assert colour_histogram(grey, (12, 4, 4))[0, 2] == 1.0


def _equal_luma_squares(n: int, rs) -> tuple[np.ndarray, np.ndarray]:
    """Squares at random places on black, red in class 0 and a green of the very same luma in class 1."""
    x = np.zeros((n, 3, 16, 16), np.float32)
    y = rs.randint(0, 2, n)
    for i in range(n):
        r, c = rs.randint(0, 9, 2)
        if y[i] == 0:
            x[i, 0, r : r + 7, c : c + 7] = 1.0
        else:
            x[i, 1, r : r + 7, c : c + 7] = 0.299 / 0.587
    return x, y


def test_colour_block_separates_what_grey_shape_cannot():
    rs = np.random.RandomState(0)
    x, y = _equal_luma_squares(120, rs)
    grey = HOGEncoder(cell_px=[], grids=[2], deskew=False, pixels=False).fit(_set(x))
    col = HOGEncoder(cell_px=[], grids=[2], deskew=False, pixels=False, colour_bins=[12, 4, 4]).fit(_set(x))
    assert grey.input_shape_[0] == 1 and col.input_shape_[0] == 3
    Fg, Fc = grey.transform(_set(x)), col.transform(_set(x))
    assert Fc.shape == (120, grey.n_features_ + 2 * 192) == (120, col.n_features_)
    np.testing.assert_allclose(Fc[:, : grey.n_features_], Fg, atol=1e-5)  # the shape block is unchanged
    np.testing.assert_allclose(np.linalg.norm(Fc[:, grey.n_features_:], axis=1), np.sqrt(2), atol=1e-5)
    acc_grey = cluster_acc(y, KMeans(2, random_state=0).fit_predict(Fg))
    acc_col = cluster_acc(y, KMeans(2, random_state=0).fit_predict(Fc))
    assert acc_col == 1.0
    assert acc_grey < 0.8


def test_colour_pipeline_saves_and_predicts_grey_and_colour_sets(tmp_path):
    x, _ = _equal_luma_squares(40, np.random.RandomState(2))
    enc = HOGEncoder(cell_px=[4], grids=[], deskew=False, colour_bins=[6, 2, 2])
    pipe = Pipeline(enc, [], KMeans(2, random_state=0), name="colour-test").fit(_set(x))
    pipe.save(tmp_path / "m")
    loaded = Pipeline.load(tmp_path / "m")
    assert loaded.encoder.colour_bins == [6, 2, 2]
    np.testing.assert_array_equal(loaded.predict(_set(x)), pipe.predict(_set(x)))
    grey = x.max(axis=1, keepdims=True)  # a grey set is brought to the fitted three channels
    assert loaded.encoder.transform(_set(grey)).shape == (40, loaded.encoder.n_features_)
    only_grey = HOGEncoder(cell_px=[4], grids=[], colour_bins=[6, 2, 2]).fit(_set(grey))
    assert only_grey.input_shape_[0] == 1 and only_grey.n_features_ == 8 * 8 * 9 + 32 * 32 + 2 * 24  # 16 px upsampled to 32


@pytest.mark.parametrize("kw,msg", [(dict(grids=[0]), "cells across"), (dict(cell_px=[40], grids=[]), "does not fit"),
                                    (dict(cell_px=[], grids=[]), "no HOG scale"), (dict(bins=0), "orientation bin"),
                                    (dict(colour_bins=[12, 4]), "colour_bins"), (dict(colour_bins=[12, 0, 4]), "colour_bins"),
                                    (dict(colour_bins="many"), "colour_bins")])
def test_bad_options_are_user_errors(kw, msg):
    x = np.zeros((4, 1, 8, 8), np.float32)
    with pytest.raises(UserError, match=msg):
        HOGEncoder(**kw).fit(_set(x))


@pytest.mark.integration
def test_mnist_neighbours_are_cleaner_than_raw_pixels(shared_data):
    """On 3,000 MNIST-test digits, the default recipe's features put more same-digit images among each image's
    10 nearest neighbours than raw pixels do (labels are read only to score)."""
    from sklearn.neighbors import NearestNeighbors

    from imclust.data import load_source
    from imclust.recipes import load_recipe

    path = shared_data / "mnist-test" / "t10k-images-idx3-ubyte.gz"
    if not path.exists():
        pytest.skip(f"{path} not found")
    ds = load_source(str(path)).subset(np.arange(3000))
    y = np.asarray(ds.labels)
    spec = dict(load_recipe("hog-umap")["encoder"])
    assert spec.pop("type") == "hog"

    def agreement(F):
        _, idx = NearestNeighbors(n_neighbors=11).fit(F).kneighbors(F)
        return float((y[idx[:, 1:]] == y[:, None]).mean())

    pix = ds.to_array(desc=None).reshape(len(ds), -1)
    feats = HOGEncoder(**spec).fit(ds).transform(ds)
    a_pix, a_hog = agreement(pix), agreement(feats)
    assert a_hog > a_pix + 0.03, (a_hog, a_pix)
    print(f"10-NN label agreement: pixels {a_pix:.3f}, hog recipe features {a_hog:.3f}")


@pytest.mark.integration
def test_flower_neighbours_need_colour(shared_data):
    """On 100 photos of each of the five flower species, the colour recipe's features (photo-umap) put more
    same-species photos among each photo's 10 nearest neighbours than raw pixels or grey shape (hog-umap)
    do (labels are read only to pick the photos and to score)."""
    from sklearn.neighbors import NearestNeighbors

    from imclust.data import load_source
    from imclust.recipes import load_recipe

    folder = shared_data / "flowers5"
    if not folder.is_dir():
        pytest.skip(f"{folder} not found")
    full = load_source(str(folder))
    labels = np.asarray(full.labels)
    ds = full.subset(np.concatenate([np.flatnonzero(labels == c)[:100] for c in np.unique(labels)]))
    y = np.asarray(ds.labels)

    def agreement(F):
        _, idx = NearestNeighbors(n_neighbors=11).fit(F).kneighbors(F)
        return float((y[idx[:, 1:]] == y[:, None]).mean())

    def features(recipe):
        spec = dict(load_recipe(recipe)["encoder"])
        assert spec.pop("type") == "hog"
        return HOGEncoder(**spec).fit(ds).transform(ds)

    pix = ds.resized(32).to_array(desc=None).reshape(len(ds), -1)
    a_pix, a_grey, a_colour = agreement(pix), agreement(features("hog-umap")), agreement(features("photo-umap"))
    print(f"10-NN label agreement: pixels {a_pix:.3f}, grey shape {a_grey:.3f}, colour recipe {a_colour:.3f}")
    assert a_colour > max(a_pix, a_grey) + 0.03, (a_colour, a_pix, a_grey)
