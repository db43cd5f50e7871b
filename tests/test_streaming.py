"""Features larger than memory: scratch arrays on disk, the pixel encoder writing there, PCA reading in blocks."""

import numpy as np

from imclust import reduce as R
from imclust.data.sources import _array_imageset
from imclust.encoders.pixels import PixelEncoder
from imclust.io import scratch_array


def test_scratch_array_is_in_memory_when_small_and_memory_mapped_when_large():
    small = scratch_array((10, 4), np.float32, max_memory_bytes=1000)
    assert type(small) is np.ndarray and not small.any()
    big = scratch_array((100, 40), np.float32, max_memory_bytes=1000)
    assert isinstance(big, np.memmap) and big.shape == (100, 40) and not big.any()
    big[3] = 7
    assert big[3].sum() == 7 * 40


def test_pixel_encoder_streams_to_disk_and_pca_matches_in_memory(monkeypatch):
    rs = np.random.RandomState(0)
    imgs = rs.rand(300, 1, 12, 12).astype(np.float32)
    ds = _array_imageset(imgs, None, "test", "array")
    on_disk = PixelEncoder(in_memory_mb=0).fit(ds).transform(ds)
    in_memory = PixelEncoder().fit(ds).transform(ds)
    assert isinstance(on_disk, np.memmap) and not isinstance(in_memory, np.memmap)
    np.testing.assert_array_equal(np.asarray(on_disk), in_memory)
    monkeypatch.setattr(R, "PCA_BLOCK_ROWS", 37)  # many blocks, the last one short
    streamed = R.PCA(n_components=0.9).fit(on_disk)
    whole = R.PCA(n_components=0.9).fit(in_memory)
    assert streamed.n_components_ == whole.n_components_
    np.testing.assert_allclose(streamed.mean_, in_memory.mean(0), atol=1e-6)
    np.testing.assert_allclose(np.abs(streamed.transform(on_disk)), np.abs(whole.transform(in_memory)), atol=1e-4)


def test_pca_matches_scikit_learn_in_both_shapes():
    from sklearn.decomposition import PCA as SK

    rs = np.random.RandomState(1)
    for n, d in ((200, 30), (20, 60)):  # d <= n: scatter matrix; d > n: Gram matrix
        X = (rs.randn(n, d) * np.linspace(3, 0.1, d)).astype(np.float32)
        ours = R.PCA(n_components=5).fit(X)
        ref = SK(n_components=5).fit(X)
        np.testing.assert_allclose(ours.explained_variance_, ref.explained_variance_, rtol=1e-4)
        np.testing.assert_allclose(np.abs(ours.components_), np.abs(ref.components_), atol=1e-4)
