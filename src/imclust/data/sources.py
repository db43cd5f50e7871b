"""Sources: turn what the user names (``digits``, an array file, IDX files, a folder) into an ImageSet.

Each source kind is one small function registered in ``SOURCES``; :func:`load_source` picks the right one.
"""

from __future__ import annotations

import csv
import gzip
import os
import struct
from collections import Counter
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import UserError
from ..progress import log, progress
from .decode import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, UnreadableImage, decode, pil_to_array, probe
from .imageset import ImageSet, Skipped

SOURCES: dict[str, Callable[..., ImageSet]] = {}


def register_source(name: str):
    def deco(fn):
        SOURCES[name] = fn
        return fn

    return deco


# ---------------------------------------------------------------------------------------------------
# array helpers
# ---------------------------------------------------------------------------------------------------
def _array_imageset(images: np.ndarray, labels, source: str, kind: str, layout: str = "auto", class_names=None) -> ImageSet:
    """Validate an image array (NHW, NHWC or NCHW; uint8, or float in [0,1] or [-1,1]) and wrap it."""
    x = np.asarray(images)
    if x.dtype == object or x.dtype.kind not in "uifb":
        raise UserError(f"{source}: images have dtype {x.dtype}; give numbers (uint8, or float in [0,1] or [-1,1])")
    if x.ndim == 2:
        raise UserError(f"{source}: images have shape {x.shape}; expected NHW, NHWC or NCHW (one image per row of a 3-D or 4-D array)")
    if x.ndim not in (3, 4):
        raise UserError(f"{source}: images have shape {x.shape}; expected NHW, NHWC or NCHW")
    if x.shape[0] == 0:
        raise UserError(f"{source}: the array holds no images (shape {x.shape})")
    if x.ndim == 3:
        x = x[:, None]
    else:
        if layout == "auto":
            last, second = x.shape[-1], x.shape[1]
            if last in (1, 3, 4) and second not in (1, 3, 4):
                layout = "nhwc"
            elif second in (1, 3, 4) and last not in (1, 3, 4):
                layout = "nchw"
            elif last in (1, 3, 4):
                layout = "nhwc"
            else:
                raise UserError(f"{source}: cannot tell the channel axis of shape {x.shape}; pass --layout nhwc or nchw")
        if layout.lower() == "nhwc":
            x = np.moveaxis(x, -1, 1)
        elif layout.lower() != "nchw":
            raise UserError(f"unknown layout {layout!r}; use nhw, nhwc or nchw")
        if x.shape[1] == 4:
            x = x[:, :3]
        if x.shape[1] not in (1, 3):
            raise UserError(f"{source}: images have {x.shape[1]} channels; expected 1 (grey), 3 (RGB) or 4 (RGBA)")
    if x.shape[2] == 0 or x.shape[3] == 0:
        raise UserError(f"{source}: images are {x.shape[2]}x{x.shape[3]} pixels (zero-size); each image needs at least one pixel")
    # value range
    if x.dtype == np.uint8:
        scale, offset = 1.0 / 255.0, 0.0
        store = np.ascontiguousarray(x)
    elif x.dtype.kind in "ui":
        hi = float(x.max())
        lo = float(x.min())
        if lo < 0:
            raise UserError(f"{source}: integer images with negative values; give uint8 or float in [0,1] or [-1,1]")
        scale = 1.0 / (65535.0 if hi > 255 else 255.0)
        offset = 0.0
        store = np.ascontiguousarray(x)
    else:
        xf = x.astype(np.float32, copy=False)
        finite = np.isfinite(xf)
        if not finite.all():
            bad = int((~finite).sum())
            first = int(np.argwhere(~finite.reshape(len(xf), -1).all(axis=1))[0][0])
            raise UserError(f"{source}: {bad} NaN or inf values (first in image {first}); clean the array before clustering")
        lo, hi = float(xf.min()), float(xf.max())
        eps = 1e-3
        if lo >= -eps and hi <= 1 + eps:
            scale, offset = 1.0, 0.0
        elif lo >= -1 - eps and hi <= 1 + eps:
            scale, offset = 0.5, 0.5
        elif lo >= 0 and hi <= 255 and np.array_equal(xf, np.round(xf)):
            scale, offset = 1.0 / 255.0, 0.0  # whole-number floats in [0, 255]: uint8 values stored as float
        else:
            raise UserError(f"{source}: float values span [{lo:.3g}, {hi:.3g}]; expected floats in [0,1] or [-1,1] (or whole numbers 0..255); rescale the array")
        store = np.ascontiguousarray(xf)
    n = store.shape[0]

    def loader(idx):
        b = store[idx].astype(np.float32)
        if scale != 1.0 or offset != 0.0:
            b = b * scale + offset
        return np.clip(b, 0.0, 1.0)

    labels_arr = None if labels is None else _labels_to_ints(np.asarray(labels), source)
    names = class_names
    if labels_arr is not None and isinstance(labels_arr, tuple):
        labels_arr, names = labels_arr
    return ImageSet([str(i) for i in range(n)], loader, store.shape[1:], labels=labels_arr,
                    class_names=names, source=source, kind=kind)


def _labels_to_ints(y: np.ndarray, where: str):
    y = np.asarray(y).reshape(-1) if np.asarray(y).ndim > 1 and 1 in np.asarray(y).shape else np.asarray(y)
    if y.ndim != 1:
        raise UserError(f"{where}: labels have shape {y.shape}; give one label per image")
    if y.dtype.kind in "iub":
        return y.astype(np.int64)
    if y.dtype.kind == "f":
        if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
            raise UserError(f"{where}: labels must be whole numbers or names")
        return y.astype(np.int64)
    names = sorted(set(map(str, y.tolist())))
    lut = {s: i for i, s in enumerate(names)}
    return np.array([lut[str(v)] for v in y.tolist()], dtype=np.int64), names


# ---------------------------------------------------------------------------------------------------
# builtin
# ---------------------------------------------------------------------------------------------------
@register_source("digits")
def load_digits_source(**_) -> ImageSet:
    """scikit-learn's 1,797 8×8 digits (values 0..16), with labels for evaluation."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)
    return _array_imageset(x, d.target, "digits", "builtin")


# ---------------------------------------------------------------------------------------------------
# npy / npz
# ---------------------------------------------------------------------------------------------------
IMAGE_KEYS = ("x", "X", "images", "imgs", "data", "x_test", "x_train", "arr_0")
LABEL_KEYS = ("y", "Y", "labels", "label", "targets", "target", "y_test", "y_train")


def _np_load(path: Path):
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as e:
        if "pickle" in str(e).lower():
            raise UserError(f"{path}: the array holds Python objects; imclust never unpickles files. Save plain numeric arrays") from None
        raise UserError(f"{path}: not a readable NumPy file ({e})") from None
    except (OSError, EOFError) as e:
        raise UserError(f"{path}: not a readable NumPy file ({e})") from None


@register_source("array")
def load_array_source(path, image_key: str | None = None, label_key: str | None = None, layout: str = "auto", **_) -> ImageSet:
    path = Path(path)
    data = _np_load(path)
    labels = None
    if isinstance(data, np.lib.npyio.NpzFile):
        keys = list(data.files)
        with data:
            if image_key is None:
                image_key = next((k for k in IMAGE_KEYS if k in keys), None)
                if image_key is None:
                    raise UserError(f"{path}: no image array found among keys {keys}; name one with --image-key")
            elif image_key not in keys:
                raise UserError(f"{path}: no key {image_key!r}; the keys are {keys}. Choose one with --image-key")
            if label_key is not None and label_key not in keys:
                raise UserError(f"{path}: no key {label_key!r}; the keys are {keys}. Choose one with --label-key")
            if label_key is None:
                label_key = next((k for k in LABEL_KEYS if k in keys and k != image_key), None)
            try:
                images = data[image_key]
                labels = data[label_key] if label_key else None
            except ValueError as e:
                raise UserError(f"{path}: key holds Python objects; imclust never unpickles files ({e})") from None
    else:
        images = data
    return _array_imageset(images, labels, str(path), "array", layout=layout)


# ---------------------------------------------------------------------------------------------------
# IDX (MNIST style)
# ---------------------------------------------------------------------------------------------------
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path) -> np.ndarray:
    path = Path(path)
    with open(path, "rb") as fh:
        head = fh.read(2)
    opener = gzip.open if head == b"\x1f\x8b" else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError) as e:
        raise UserError(f"{path}: cannot read IDX file ({e})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise UserError(f"{path}: not an IDX file (bad magic number)")
    ndim = raw[3]
    if len(raw) < 4 + 4 * ndim:
        raise UserError(f"{path}: IDX header is truncated")
    dims = struct.unpack(">" + "I" * ndim, raw[4 : 4 + 4 * ndim])
    dt = np.dtype(_IDX_DTYPES[raw[2]])
    need = int(np.prod(dims)) * dt.itemsize
    body = raw[4 + 4 * ndim :]
    if len(body) < need:
        raise UserError(f"{path}: IDX data is truncated ({len(body)} of {need} bytes)")
    return np.frombuffer(body[:need], dtype=dt).reshape(dims)


def _is_idx(path: Path) -> bool:
    name = path.name.lower()
    return "idx" in name or name.endswith((".idx", ".ubyte", ".ubyte.gz"))


def _idx_labels_for(path: Path) -> Path | None:
    name = path.name
    for a, b in (("images-idx3", "labels-idx1"), ("images.idx3", "labels.idx1"), ("images", "labels")):
        if a in name:
            cand = path.with_name(name.replace(a, b))
            if cand.exists():
                return cand
    return None


@register_source("idx")
def load_idx_source(path, labels_path: str | os.PathLike | None = None, **_) -> ImageSet:
    path = Path(path)
    x = read_idx(path)
    y = None
    lp = Path(labels_path) if labels_path else _idx_labels_for(path)
    if lp is not None:
        y = read_idx(lp)
    return _array_imageset(x, y, str(path), "idx")


# ---------------------------------------------------------------------------------------------------
# folders
# ---------------------------------------------------------------------------------------------------
def _scan(root: Path) -> list[Path]:
    files = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for f in filenames:
            if f.startswith("."):
                continue
            p = Path(dirpath) / f
            if p.suffix.lower() in IMAGE_EXTENSIONS:
                files.append(p)
    files.sort(key=lambda p: p.relative_to(root).as_posix())
    return files


def _choose_size(sizes: list[tuple[int, int]]) -> tuple[int, int]:
    """Default working size: the common size when all images share one up to 128 px, else 64×64."""
    common = Counter(sizes).most_common(1)[0][0]
    if len(set(sizes)) == 1 and max(common) <= 128:
        return common[1], common[0]
    return 64, 64


@register_source("folder")
def load_folder_source(path, size=None, channels=None, max_pixels: int = DEFAULT_MAX_PIXELS, folder_labels: bool = True, **_) -> ImageSet:
    root = Path(path)
    files = _scan(root)
    if not files:
        raise UserError(f"{root}: no image files found (looked for {', '.join(sorted(IMAGE_EXTENSIONS))}, recursively); point at a folder of images")
    good: list[Path] = []
    sizes: list[tuple[int, int]] = []
    modes: list[str] = []
    skipped: list[Skipped] = []
    for p in progress(files, desc="scan", unit="file") if len(files) > 500 else files:
        rel = p.relative_to(root).as_posix()
        try:
            (w, h), mode = probe(p, max_pixels)
        except UnreadableImage as e:
            skipped.append(Skipped(rel, str(e)))
            continue
        except OSError as e:
            skipped.append(Skipped(rel, f"cannot read: {e}"))
            continue
        good.append(p)
        sizes.append((w, h))
        modes.append(mode)
    if not good:
        raise UserError(f"{root}: none of the {len(files)} image files could be read (first: {skipped[0].id}: {skipped[0].reason})")
    if skipped:
        log(f"skipped {len(skipped)} unreadable file(s) of {len(files)}; they are listed in skipped.csv")
    if size is None:
        size = _choose_size(sizes)
    elif isinstance(size, int):
        size = (size, size)
    if channels is None:
        channels = 1 if all(m in ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F") for m in modes) else 3
    grey = channels == 1
    ids = [p.relative_to(root).as_posix() for p in good]
    paths = [str(p) for p in good]
    failed: dict[int, str] = {}

    def loader(idx):
        out = np.zeros((len(idx), channels, size[0], size[1]), dtype=np.float32)
        for j, i in enumerate(idx):
            i = int(i)
            if i in failed:
                continue
            try:
                out[j] = pil_to_array(decode(Path(paths[i]), max_pixels, grey=grey), size)
            except UnreadableImage as e:
                failed[i] = str(e)
        return out

    def pil_loader(i):
        return decode(Path(paths[i]), max_pixels, grey=grey)

    labels = class_names = None
    top = {Path(i).parts[0] for i in ids}
    if folder_labels and all(len(Path(i).parts) >= 2 for i in ids) and len(top) >= 2:
        class_names = sorted(top)
        lut = {c: k for k, c in enumerate(class_names)}
        labels = np.array([lut[Path(i).parts[0]] for i in ids], dtype=np.int64)
    ds = ImageSet(ids, loader, (channels, size[0], size[1]), labels=labels, class_names=class_names,
                  skipped=skipped, source=str(root), kind="folder", paths=paths, pil_loader=pil_loader)
    ds.failed = failed
    return ds


# ---------------------------------------------------------------------------------------------------
# labels files and the dispatcher
# ---------------------------------------------------------------------------------------------------
def read_labels_file(path, ids: list[str], source: str = "") -> tuple[np.ndarray, list[str] | None]:
    """Labels from ``.npy``, an IDX file, or a CSV/text file (``file,label`` rows, or one label per line)."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"labels file {path} does not exist; check the path given to --labels")
    if path.suffix == ".npy":
        y = _np_load(path)
    elif _is_idx(path):
        y = read_idx(path)
    else:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = [r for r in csv.reader(fh) if r and any(c.strip() for c in r)]
        if not rows:
            raise UserError(f"labels file {path} is empty")
        if len(rows[0]) >= 2:
            head = [c.strip().lower() for c in rows[0]]
            if head[0] in ("file", "filename", "id", "path", "image", "name"):
                rows = rows[1:]
            mapping = {r[0].strip(): r[1].strip() for r in rows}
            missing = [i for i in ids if i not in mapping and Path(i).name not in mapping]
            if missing:
                raise UserError(f"labels file {path}: no label for {len(missing)} of {len(ids)} images (first: {missing[0]}); add a 'file,label' row for each")
            y = np.array([mapping.get(i, mapping.get(Path(i).name)) for i in ids])
        else:
            if rows[0][0].strip().lower() in ("label", "labels", "y"):
                rows = rows[1:]
            y = np.array([r[0].strip() for r in rows])
            try:
                y = y.astype(np.int64)
            except ValueError:
                pass
    y = np.asarray(y).reshape(-1)
    if len(y) != len(ids):
        raise UserError(f"labels file {path} has {len(y)} labels but {source or 'the source'} has {len(ids)} images; give exactly one label per image")
    res = _labels_to_ints(y, str(path))
    if isinstance(res, tuple):
        return res
    return res, None


def detect_kind(spec: str) -> str:
    if spec in SOURCES and spec not in ("array", "idx", "folder"):
        return spec
    p = Path(spec)
    if not p.exists():
        raise UserError(f"{spec}: no such file or folder (and not a builtin source: {', '.join(k for k in SOURCES if k not in ('array', 'idx', 'folder'))})")
    if p.is_dir():
        return "folder"
    suf = "".join(p.suffixes[-2:]).lower()
    if p.suffix.lower() in (".npy", ".npz"):
        return "array"
    if _is_idx(p) or suf.endswith(".gz"):
        return "idx"
    if p.suffix.lower() in IMAGE_EXTENSIONS:
        raise UserError(f"{spec}: is a single image; point imclust at the folder that holds the images")
    raise UserError(f"{spec}: unknown source format; give a folder of images, a .npy/.npz array, an IDX file or 'digits'")


def load_source(spec, *, size=None, channels=None, labels=None, image_key=None, label_key=None,
                layout: str = "auto", max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageSet:
    """Open ``spec`` as an ImageSet.

    ``spec`` is a builtin name (``digits``), a ``.npy``/``.npz`` file, an IDX file (or a folder holding one
    ``*images-idx3*`` file), or a folder of images. ``labels`` is an optional labels file; labels that come
    with the source (npz ``y``, IDX labels, class subfolders) are used otherwise. ``size`` resizes images.
    """
    spec = str(spec)
    kind = detect_kind(spec)
    if kind == "folder":
        idx_files = sorted(Path(spec).glob("*images*idx*"))
        if idx_files and not _scan(Path(spec)):
            if len(idx_files) > 1:
                raise UserError(f"{spec}: holds {len(idx_files)} IDX image files; name one of them")
            spec, kind = str(idx_files[0]), "idx"
    fn = SOURCES[kind]
    if kind == "folder":
        ds = fn(spec, size=size, channels=channels, max_pixels=max_pixels)
    elif kind not in ("array", "idx"):
        ds = fn()
        if size is not None or channels is not None:
            ds = ds.resized(size, channels)
    else:
        ds = fn(spec, image_key=image_key, label_key=label_key, layout=layout)
        if size is not None or channels is not None:
            ds = ds.resized(size, channels)
    if labels is not None:
        y, names = read_labels_file(labels, ds.ids, spec)
        ds = ds.with_labels(y, names)
    return ds
