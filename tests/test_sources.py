"""Sources: builtin, arrays (layouts and ranges), IDX, folders (modes, EXIF, labels, bad files)."""

import gzip
import struct

import numpy as np
import pytest
from PIL import Image

from imclust.data import load_source
from imclust.errors import UserError


def test_digits_builtin():
    ds = load_source("digits")
    assert len(ds) == 1797 and ds.shape == (1, 8, 8)
    x = ds.load([0, 1])
    assert x.dtype == np.float32 and 0 <= x.min() and x.max() <= 1
    assert ds.labels is not None and set(np.unique(ds.labels)) == set(range(10))


@pytest.mark.parametrize("layout", ["nhw", "nhwc", "nchw"])
def test_array_layouts(tmp_path, layout):
    rng = np.random.RandomState(0)
    base = (rng.rand(5, 3, 6, 7) * 255).astype(np.uint8)  # NCHW
    if layout == "nhw":
        arr, expect = base[:, 0], base[:, :1]
    elif layout == "nhwc":
        arr, expect = np.moveaxis(base, 1, -1), base
    else:
        arr, expect = base, base
    np.save(tmp_path / "a.npy", arr)
    ds = load_source(tmp_path / "a.npy")
    assert ds.shape == expect.shape[1:]
    np.testing.assert_allclose(ds.load(range(5)), expect / 255.0, atol=1e-6)


def test_float_ranges(tmp_path):
    x01 = np.random.RandomState(0).rand(4, 5, 5).astype(np.float32)
    np.save(tmp_path / "a.npy", x01 * 2 - 1)
    np.testing.assert_allclose(load_source(tmp_path / "a.npy").load(range(4))[:, 0], x01, atol=1e-6)
    np.save(tmp_path / "b.npy", x01)
    np.testing.assert_allclose(load_source(tmp_path / "b.npy").load(range(4))[:, 0], x01, atol=1e-6)
    np.save(tmp_path / "c.npy", x01 * 5)  # fractional values above 1: ambiguous, refused
    with pytest.raises(UserError, match="expected"):
        load_source(tmp_path / "c.npy")


def test_npz_keys_and_labels(tmp_path):
    x = np.zeros((6, 4, 4), np.uint8)
    np.savez(tmp_path / "d.npz", imgs=x, cls=np.arange(6) % 2, y=np.arange(6))
    ds = load_source(tmp_path / "d.npz", image_key="imgs", label_key="cls")
    assert list(ds.labels) == [0, 1, 0, 1, 0, 1]
    assert list(load_source(tmp_path / "d.npz", image_key="imgs").labels) == list(range(6))  # 'y' found
    with pytest.raises(UserError, match="no key 'pixels'"):
        load_source(tmp_path / "d.npz", image_key="pixels")
    with pytest.raises(UserError, match="no key 'nope'"):
        load_source(tmp_path / "d.npz", image_key="imgs", label_key="nope")


def test_npz_with_objects_is_refused(tmp_path):
    np.save(tmp_path / "o.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(UserError, match="never unpickles"):
        load_source(tmp_path / "o.npy")


def test_nan_and_zero_size(tmp_path):
    x = np.random.rand(3, 4, 4).astype(np.float32)
    x[1, 2, 2] = np.nan
    np.save(tmp_path / "n.npy", x)
    with pytest.raises(UserError, match="NaN or inf.*image 1"):
        load_source(tmp_path / "n.npy")
    x[1, 2, 2] = np.inf
    np.save(tmp_path / "i.npy", x)
    with pytest.raises(UserError, match="NaN or inf"):
        load_source(tmp_path / "i.npy")
    np.save(tmp_path / "z.npy", np.zeros((3, 0, 4), np.uint8))
    with pytest.raises(UserError, match="zero-size"):
        load_source(tmp_path / "z.npy")


def _write_idx(path, arr, gz):
    codes = {np.uint8: 0x08}
    head = bytes([0, 0, codes[arr.dtype.type], arr.ndim]) + struct.pack(">" + "I" * arr.ndim, *arr.shape)
    data = head + arr.tobytes()
    if gz:
        data = gzip.compress(data)
    path.write_bytes(data)


@pytest.mark.parametrize("gz", [True, False])
def test_idx(tmp_path, gz):
    x = (np.random.RandomState(0).rand(7, 5, 5) * 255).astype(np.uint8)
    y = np.arange(7, dtype=np.uint8) % 3
    suf = ".gz" if gz else ""
    _write_idx(tmp_path / f"t-images-idx3-ubyte{suf}", x, gz)
    _write_idx(tmp_path / f"t-labels-idx1-ubyte{suf}", y, gz)
    ds = load_source(tmp_path / f"t-images-idx3-ubyte{suf}")
    np.testing.assert_allclose(ds.load(range(7))[:, 0], x / 255.0, atol=1e-6)
    assert list(ds.labels) == list(y)
    # a folder holding the IDX files works too
    assert len(load_source(tmp_path)) == 7


def test_folder_modes_sizes_and_labels(tmp_path):
    root = tmp_path / "f"
    (root / "cats" / "deep").mkdir(parents=True)
    (root / "dogs").mkdir()
    rgb = np.zeros((10, 20, 3), np.uint8)
    rgb[..., 0] = 200
    Image.fromarray(rgb).save(root / "cats" / "a.jpg")
    Image.fromarray(rgb[..., 0]).save(root / "cats" / "deep" / "grey.png")  # L, recursive
    Image.fromarray(rgb).convert("P").save(root / "cats" / "pal.gif")
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 3] = 0  # fully transparent -> white, not black
    Image.fromarray(rgba, "RGBA").save(root / "dogs" / "t.png")
    Image.fromarray((np.ones((6, 6)) * 40000).astype(np.uint16)).save(root / "dogs" / "s16.png")
    Image.fromarray(rgb).convert("CMYK").save(root / "dogs" / "c.tiff")
    Image.fromarray(rgb).save(root / "dogs" / "w.webp")
    Image.fromarray(rgb).save(root / "dogs" / "b.bmp")
    ds = load_source(root, size=16)
    assert len(ds) == 8 and ds.shape == (3, 16, 16)
    assert ds.class_names == ["cats", "dogs"]
    assert list(ds.labels) == [0, 0, 0, 1, 1, 1, 1, 1]
    x = ds.load(range(len(ds)))
    assert np.isfinite(x).all()
    t = ds.ids.index("dogs/t.png")
    assert x[t].min() > 0.95  # transparency composited on white
    s16 = ds.ids.index("dogs/s16.png")
    assert abs(x[s16].mean() - 40000 / 65535) < 0.02  # 16-bit scaled, not clipped


def test_exif_orientation(tmp_path):
    arr = np.zeros((10, 20, 3), np.uint8)
    arr[:, :10] = 255  # left half white (landscape 20 wide, 10 tall)
    im = Image.fromarray(arr)
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90 CW when displayed
    (tmp_path / "e").mkdir()
    im.save(tmp_path / "e" / "r.jpg", exif=exif.tobytes(), quality=95)
    ds = load_source(tmp_path / "e", size=None)
    pil = ds.pil(0)
    assert pil.size == (10, 20)  # portrait after honouring EXIF


def test_labels_csv_for_folder(tmp_path, image_folder):
    ids = load_source(image_folder).ids
    csv = tmp_path / "lab.csv"
    csv.write_text("file,label\n" + "".join(f"{i},{'odd' if n % 2 else 'even'}\n" for n, i in enumerate(ids)))
    ds = load_source(image_folder, labels=csv)
    assert ds.class_names == ["even", "odd"]
    assert list(ds.labels[:4]) == [0, 1, 0, 1]
    bad = tmp_path / "short.csv"
    bad.write_text("label\n1\n2\n")
    with pytest.raises(UserError, match="2 labels but"):
        load_source(image_folder, labels=bad)


def test_bad_files_are_skipped_and_listed(tmp_path, image_folder):
    good = len(load_source(image_folder))
    d = image_folder / "class0"
    (d / "empty.jpg").write_bytes(b"")
    (d / "text.jpg").write_text("this is not an image")
    full = (d / "img0.png").read_bytes()
    buf = Image.fromarray((np.random.RandomState(0).rand(64, 64, 3) * 255).astype(np.uint8))
    buf.save(d / "whole.jpg", quality=90)
    data = (d / "whole.jpg").read_bytes()
    (d / "trunc.jpg").write_bytes(data[: len(data) // 2])
    Image.new("L", (12000, 12000)).save(d / "bomb.png")  # 144 Mpx, past the default limit
    ds = load_source(image_folder)
    reasons = {s.id.split("/")[-1]: s.reason for s in ds.skipped}
    assert set(reasons) == {"empty.jpg", "text.jpg", "trunc.jpg", "bomb.png"}
    assert "0 bytes" in reasons["empty.jpg"]
    assert "truncated" in reasons["trunc.jpg"]
    assert "pixel limit" in reasons["bomb.png"]
    assert len(ds) == good + 1  # whole.jpg kept
    assert len(full) > 0


def test_empty_and_unreadable_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no image files"):
        load_source(tmp_path / "empty")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.png").write_text("nope")
    with pytest.raises(UserError, match="none of the 1 image files could be read"):
        load_source(tmp_path / "bad")
    with pytest.raises(UserError, match="no such file or folder"):
        load_source(tmp_path / "missing")


def test_folder_is_lazy(tmp_path, image_folder, monkeypatch):
    import imclust.data.sources as S

    calls = []
    real = S.decode
    monkeypatch.setattr(S, "decode", lambda *a, **k: calls.append(1) or real(*a, **k))
    ds = load_source(image_folder)
    assert calls == []  # the scan checks each file but keeps no pixels: images are decoded when loaded
    ds.load([0, 1])
    assert len(calls) == 2


def test_late_decode_failure_is_recorded(tmp_path, image_folder):
    ds = load_source(image_folder)
    # corrupt a file after scanning: the failure is recorded, not raised, and not silent
    p = image_folder / ds.ids[0]
    p.write_bytes(p.read_bytes()[:60])
    x = ds.load([0, 1])
    assert 0 in ds.failed and x[0].max() == 0


def test_whole_number_floats_in_0_255(tmp_path):
    x = (np.random.RandomState(0).rand(3, 4, 4) * 255).round().astype(np.float32)
    np.save(tmp_path / "w.npy", x)
    np.testing.assert_allclose(load_source(tmp_path / "w.npy").load(range(3))[:, 0], x / 255, atol=1e-6)
