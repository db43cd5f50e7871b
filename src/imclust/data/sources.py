"""Sources: turn what the user names (``digits``, an array file, IDX files, a folder) into an ImageSet.

Each source kind is one small function registered in ``SOURCES``; :func:`load_source` picks the right one.
"""

from __future__ import annotations

import csv
import gzip
import os
import stat
import struct
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..errors import UserError
from ..io import printable
from ..progress import log, progress
from ..resources import check_memory
from .decode import (DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, UnreadableImage, decode, pil_to_array, probe,
                     unsupported_reason)
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
    values = [str(v).strip() for v in y.tolist()]
    if "" in values:
        raise UserError(f"{where}: label {values.index('')} is empty; give every image a label")
    names = sorted(set(values))
    lut = {s: i for i, s in enumerate(names)}
    return np.array([lut[v] for v in values], dtype=np.int64), names


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


def _npy_header(fh, where: str) -> tuple[tuple, np.dtype]:
    """Shape and dtype from an .npy header, read without touching the data."""
    fmt = np.lib.format
    try:
        version = fmt.read_magic(fh)
        shape, fortran, dtype = (fmt.read_array_header_1_0(fh) if version == (1, 0) else
                                 fmt.read_array_header_2_0(fh) if version == (2, 0) else
                                 fmt._read_array_header(fh, version))
    except Exception as e:  # NumPy raises ValueError (and others) on a damaged header
        raise UserError(f"{where}: not a readable NumPy array (damaged header: {e})") from None
    if dtype.hasobject:
        raise UserError(f"{where}: the array holds Python objects; imclust never unpickles files. Save plain numeric arrays")
    if any(int(d) < 0 for d in shape):
        raise UserError(f"{where}: damaged header (negative dimension in shape {shape})")
    return tuple(int(d) for d in shape), dtype


def _check_array_size(shape, dtype, where: str, stored: int | None) -> None:
    nbytes = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if stored is not None and nbytes > stored:
        raise UserError(f"{where}: the header promises {nbytes} bytes of data but the file holds {stored}; "
                        "the file is truncated or damaged")
    check_memory(nbytes, f"{where} (shape {shape}, {dtype})", "use a smaller array, or a folder of image files")


def _np_load(path: Path):
    """``np.load`` without pickles, after checking every array header against the file and the memory."""
    try:
        with open(path, "rb") as fh:
            zipped = fh.read(2) == b"PK"
        if zipped or zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                for info in zf.infolist():
                    if not info.filename.endswith(".npy"):
                        continue
                    with zf.open(info) as fh:
                        shape, dtype = _npy_header(fh, f"{path}[{info.filename[:-4]}]")
                        header = fh.tell() if fh.seekable() else 128
                    _check_array_size(shape, dtype, f"{path}[{info.filename[:-4]}]", info.file_size - header)
        else:
            with open(path, "rb") as fh:
                shape, dtype = _npy_header(fh, str(path))
                header = fh.tell()
            _check_array_size(shape, dtype, str(path), path.stat().st_size - header)
        return np.load(path, allow_pickle=False)
    except UserError:
        raise
    except ValueError as e:
        if "pickle" in str(e).lower():
            raise UserError(f"{path}: the array holds Python objects; imclust never unpickles files. Save plain numeric arrays") from None
        raise UserError(f"{path}: not a readable NumPy file ({e})") from None
    except PermissionError:
        raise UserError(f"{path}: cannot be read (permission denied)") from None
    except (OSError, EOFError, zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError) as e:
        raise UserError(f"{path}: not a readable NumPy file ({type(e).__name__}: {e})") from None


def _np_member(data, key: str, path: Path):
    """One array of an open .npz (decompressed here: a damaged member is found now)."""
    try:
        return data[key]
    except ValueError as e:
        if "pickle" in str(e).lower():
            raise UserError(f"{path}: key {key!r} holds Python objects; imclust never unpickles files") from None
        raise UserError(f"{path}: key {key!r} is not a readable array ({e})") from None
    except (OSError, EOFError, zipfile.BadZipFile, KeyError, NotImplementedError) as e:
        raise UserError(f"{path}: key {key!r} is damaged ({type(e).__name__}: {e})") from None


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
            images = _np_member(data, image_key, path)
            labels = _np_member(data, label_key, path) if label_key else None
    else:
        images = data
    return _array_imageset(images, labels, str(path), "array", layout=layout)


# ---------------------------------------------------------------------------------------------------
# IDX (MNIST style)
# ---------------------------------------------------------------------------------------------------
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path) -> np.ndarray:
    """An IDX array (optionally gzipped); the header is checked against the data and the memory first."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            gz = fh.read(2) == b"\x1f\x8b"
        with (gzip.open if gz else open)(path, "rb") as fh:
            head = fh.read(4)
            if len(head) < 4 or head[0] != 0 or head[1] != 0 or head[2] not in _IDX_DTYPES:
                raise UserError(f"{path}: not an IDX file (bad magic number)")
            ndim = head[3]
            dims_raw = fh.read(4 * ndim)
            if len(dims_raw) < 4 * ndim:
                raise UserError(f"{path}: IDX header is truncated")
            dims = struct.unpack(">" + "I" * ndim, dims_raw)
            dt = np.dtype(_IDX_DTYPES[head[2]])
            need = int(np.prod(dims, dtype=object)) * dt.itemsize
            if not gz and need > path.stat().st_size - 4 - 4 * ndim:
                raise UserError(f"{path}: IDX data is truncated ({path.stat().st_size - 4 - 4 * ndim} of {need} bytes)")
            check_memory(need, f"{path} (IDX shape {dims})", "use a smaller file")
            body = fh.read(need)
    except UserError:
        raise
    except PermissionError:
        raise UserError(f"{path}: cannot be read (permission denied)") from None
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise UserError(f"{path}: cannot read IDX file ({e})") from None
    if len(body) < need:
        raise UserError(f"{path}: IDX data is truncated ({len(body)} of {need} bytes)")
    return np.frombuffer(body, dtype=dt).reshape(dims)


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
@dataclass
class Scan:
    """What a folder holds: the image files to read (``files``, with their ``ids``) and every other entry with
    the reason it is not read (``skipped``). Each file under the folder is in exactly one of the two; so is each
    folder that is not entered (hidden, unreadable, an imclust run folder, a symlink loop)."""

    files: list[Path] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)

    @property
    def n_seen(self) -> int:
        return len(self.files) + len(self.skipped)


_FILE_KINDS = ((stat.S_ISFIFO, "a named pipe"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
               (stat.S_ISBLK, "a block device"))


def scan_folder(root, exclude: Sequence = ()) -> Scan:
    """Walk ``root`` (following symlinked folders, never round a loop) and sort every entry into files to read
    and skipped entries. Hidden entries (names starting with '.') are skipped and listed, as are folders written
    by imclust (they hold a run marker) and the paths in ``exclude`` (the run's own output folder)."""
    from ..rundir import is_run_folder

    root = Path(root)
    excluded = {os.path.realpath(p) for p in exclude if p is not None}
    scan = Scan()
    used: set[str] = set()

    def skip(rel: str, reason: str) -> None:
        scan.skipped.append(Skipped(printable(rel), reason))

    try:
        root_st = os.stat(root)
    except OSError as e:
        raise UserError(f"{root}: cannot be read ({e.strerror})") from None
    stack = [(root, "", ((root_st.st_dev, root_st.st_ino),))]
    while stack:
        folder, prefix, ancestors = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except PermissionError:
            if not prefix:
                raise UserError(f"{root}: cannot be read (permission denied)") from None
            skip(prefix, "unreadable folder (permission)")
            continue
        except OSError as e:
            if not prefix:
                raise UserError(f"{root}: cannot be read ({e.strerror})") from None
            skip(prefix, f"unreadable folder: {e.strerror}")
            continue
        subfolders = []
        for entry in entries:
            rel = prefix + entry.name
            path = Path(entry.path)
            try:
                link = entry.is_symlink()
                st = os.stat(path) if link else entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                skip(rel, "broken symlink: its target does not exist" if link else "unreadable: it disappeared")
                continue
            except OSError as e:
                if e.errno == 40:  # ELOOP: a link that points at itself, through links
                    skip(rel, "symlink loop")
                else:
                    skip(rel, "unreadable (permission)" if isinstance(e, PermissionError) else f"unreadable: {e.strerror}")
                continue
            is_dir = stat.S_ISDIR(st.st_mode)
            if entry.name.startswith("."):
                skip(rel + ("/" if is_dir else ""), "hidden folder (not read)" if is_dir else "hidden file (not read)")
            elif is_dir:
                key = (st.st_dev, st.st_ino)
                if os.path.realpath(path) in excluded:
                    skip(rel + "/", "this run's output folder (not read)")
                elif is_run_folder(path):
                    skip(rel + "/", "imclust run folder (outputs of an earlier run; not read)")
                elif key in ancestors:
                    skip(rel + "/", "symlink loop: the link leads back to a folder that contains it")
                else:
                    subfolders.append((path, rel + "/", ancestors + (key,)))
            elif not stat.S_ISREG(st.st_mode):
                kind = next((name for test, name in _FILE_KINDS if test(st.st_mode)), "not a file")
                skip(rel, f"not a regular file ({kind})")
            elif path.suffix.lower() in IMAGE_EXTENSIONS:
                file_id = printable(rel)
                n = 2
                while file_id in used:  # two names that differ only in undecodable bytes
                    file_id = f"{printable(rel)}~{n}"
                    n += 1
                used.add(file_id)
                scan.files.append(path)
                scan.ids.append(file_id)
            else:
                skip(rel, unsupported_reason(path.suffix))
        stack.extend(reversed(subfolders))
    order = sorted(range(len(scan.ids)), key=lambda i: scan.ids[i])
    scan.files = [scan.files[i] for i in order]
    scan.ids = [scan.ids[i] for i in order]
    scan.skipped.sort(key=lambda sk: sk.id)
    return scan


def reason_category(reason: str) -> str:
    """The category of a skipped.csv reason: its words before any colon or bracketed detail
    ('truncated: ...' -> 'truncated'; 'unsupported type (.txt)' -> 'unsupported type'), except that the
    permission cases keep their bracket ('unreadable (permission)')."""
    head = reason.split(":")[0].strip()
    return head if head.endswith("(permission)") else head.split(" (")[0]


def summarize_skipped(skipped: Sequence[Skipped]) -> str:
    """'2 truncated, 1 hidden file': the reasons' categories, most common first."""
    counts = Counter(reason_category(sk.reason) for sk in skipped)
    return ", ".join(f"{n} {reason}" for reason, n in counts.most_common())


def _choose_size(sizes: list[tuple[int, int]]) -> tuple[int, int]:
    """Default working size: the common size when all images share one up to 128 px, else 64×64."""
    common = Counter(sizes).most_common(1)[0][0]
    if len(set(sizes)) == 1 and max(common) <= 128:
        return common[1], common[0]
    return 64, 64


def _array_file_hint(root: Path, skipped: Sequence[Skipped]) -> str | None:
    """For a folder without images that holds array files imclust reads as a source of their own (.npy, .npz,
    IDX): the command that clusters the first of them (image files before label files)."""
    import shlex

    arrays = [Path(sk.id) for sk in skipped if reason_category(sk.reason) == "unsupported type"
              and (Path(sk.id).suffix.lower() in (".npy", ".npz") or _is_idx(Path(sk.id)))]
    if not arrays:
        return None
    arrays.sort(key=lambda a: ("label" in a.name.lower(), str(a)))
    more = f" ({len(arrays) - 1} more array file{'s' if len(arrays) > 2 else ''} there)" if len(arrays) > 1 else ""
    return (f"it holds {arrays[0]}, an array file that imclust reads on its own: "
            f"imclust run {shlex.quote(str(root / arrays[0]))}{more}")


@register_source("folder")
def load_folder_source(path, size=None, channels=None, max_pixels: int = DEFAULT_MAX_PIXELS, folder_labels: bool = True,
                       exclude: Sequence = (), **_) -> ImageSet:
    root = Path(path)
    from ..rundir import is_run_folder

    if is_run_folder(root):
        raise UserError(f"{root}: is a folder of imclust outputs, not of images; point at the folder that holds the images")
    scan = scan_folder(root, exclude)
    if not scan.files:
        n_other = len(scan.skipped)
        what = (f"; {n_other} other entr{'y' if n_other == 1 else 'ies'}: {summarize_skipped(scan.skipped)}"
                if scan.skipped else "")
        raise UserError(f"{root}: no image files found (looked for {', '.join(sorted(IMAGE_EXTENSIONS)[:12])} ... , "
                        f"recursively{what}); {_array_file_hint(root, scan.skipped) or 'point at a folder of images'}")
    good: list[Path] = []
    ids: list[str] = []
    sizes: list[tuple[int, int]] = []
    modes: list[str] = []
    skipped: list[Skipped] = list(scan.skipped)
    n_files = len(scan.files)
    items = list(zip(scan.files, scan.ids))
    for p, file_id in progress(items, desc="check files", unit="file") if n_files > 200 else items:
        try:
            (w, h), mode = probe(p, max_pixels)
        except UnreadableImage as e:
            skipped.append(Skipped(file_id, str(e)))
            continue
        good.append(p)
        ids.append(file_id)
        sizes.append((w, h))
        modes.append(mode)
    skipped.sort(key=lambda sk: sk.id)
    if not good:
        bad = [sk for sk in skipped if sk.id in set(scan.ids)]
        raise UserError(f"{root}: none of the {n_files} image files could be read "
                        f"(first: {bad[0].id}: {bad[0].reason})")
    log(f"{root}: {scan.n_seen} files seen: {len(good)} images, {len(skipped)} skipped"
        + (f" ({summarize_skipped(skipped)}; listed in skipped.csv)" if skipped else ""))
    if size is None:
        size = _choose_size(sizes)
    elif isinstance(size, int):
        size = (size, size)
    if channels is None:
        channels = 1 if all(m in ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F") for m in modes) else 3
    grey = channels == 1
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
    ds.n_seen = scan.n_seen
    return ds


# ---------------------------------------------------------------------------------------------------
# labels files and the dispatcher
# ---------------------------------------------------------------------------------------------------
def read_labels_file(path, ids: list[str], source: str = "", skipped_ids=()) -> tuple[np.ndarray, list[str] | None]:
    """Labels from ``.npy``, an IDX file, or a text file, read strictly (see :mod:`.labels`).

    ``skipped_ids``: files of the source that were skipped as unreadable; rows naming them are not an error.
    ``source``: the source folder, so rows may also name files by their full path.
    """
    from .labels import labels_from_values, parse_labels_text, read_text

    path = Path(path)
    if path.suffix.lower() in (".npy", ".npz") or _is_idx(path):
        if not path.exists():
            raise UserError(f"labels file {path} does not exist; check the path given to --labels")
        if path.suffix.lower() == ".npz":
            raise UserError(f"labels file {path}: give the labels as .npy, IDX or CSV (an .npz source carries its "
                            "own labels: name them with --label-key)")
        y = _np_load(path) if path.suffix.lower() == ".npy" else read_idx(path)
        if y.ndim == 0 or (y.ndim > 1 and sum(d > 1 for d in y.shape) > 1):
            raise UserError(f"labels file {path}: labels have shape {y.shape}; give one label per image (a 1-D array)")
        y = np.asarray(y).reshape(-1)
        if len(y) != len(ids):
            raise UserError(f"labels file {path} has {len(y)} labels but {source or 'the source'} has {len(ids)} "
                            "images; give exactly one label per image")
        res = _labels_to_ints(y, str(path))
        return res if isinstance(res, tuple) else (res, None)
    root = os.path.abspath(source) if source and os.path.isdir(source) else None
    values = parse_labels_text(read_text(path, "labels file"), list(ids), path, skipped_ids, root)
    return labels_from_values(values, str(path))


BUILTIN_PREFIX = "builtin:"


def builtin_names() -> list[str]:
    return [k for k in SOURCES if k not in ("array", "idx", "folder")]


def detect_kind(spec: str) -> str:
    """The kind of source ``spec`` names. An existing path always wins over a builtin of the same name (the
    run says which it used); ``builtin:NAME`` asks for the builtin explicitly."""
    if spec.startswith(BUILTIN_PREFIX):
        name = spec[len(BUILTIN_PREFIX):]
        if name not in builtin_names():
            raise UserError(f"{spec}: no such builtin source (builtins: {', '.join(builtin_names())})")
        return name
    p = Path(spec)
    if not os.path.lexists(p):
        if spec in builtin_names():
            return spec
        raise UserError(f"{spec}: no such file or folder (and not a builtin source: {', '.join(builtin_names())})")
    if not p.exists():
        raise UserError(f"{spec}: a broken symlink (its target does not exist)")
    if spec in builtin_names():
        log(f"{spec}: using the {'folder' if p.is_dir() else 'file'} {p.absolute()}, not the builtin dataset "
            f"(write {BUILTIN_PREFIX}{spec} for the builtin)")
    if p.is_dir():
        return "folder"
    if not p.is_file():
        raise UserError(f"{spec}: not a regular file or folder; give a folder of images, an array file or an IDX file")
    suf = "".join(p.suffixes[-2:]).lower()
    if p.suffix.lower() in (".npy", ".npz"):
        return "array"
    if _is_idx(p) or suf.endswith(".gz"):
        return "idx"
    if p.suffix.lower() in IMAGE_EXTENSIONS:
        raise UserError(f"{spec}: is a single image; point imclust at the folder that holds the images")
    raise UserError(f"{spec}: unknown source format; give a folder of images, a .npy/.npz array, an IDX file or 'digits'")


def check_size(size) -> tuple[int, int] | None:
    """``--size`` as (height, width), refused when a side is not a positive number of pixels or is absurd."""
    if size is None:
        return None
    pair = (size, size) if isinstance(size, (int, np.integer)) else tuple(size)
    if len(pair) != 2 or any(not isinstance(v, (int, np.integer)) or isinstance(v, bool) for v in pair):
        raise UserError(f"--size {size}: give one whole number (square) or two (height width)")
    if any(v < 1 or v > MAX_SIDE for v in pair):
        raise UserError(f"--size {' '.join(map(str, pair))}: each side must be between 1 and {MAX_SIDE} pixels")
    return int(pair[0]), int(pair[1])


MAX_SIDE = 8192  # larger working sizes are never useful for clustering and cost gigabytes per image


def load_source(spec, *, size=None, channels=None, labels=None, image_key=None, label_key=None,
                layout: str = "auto", max_pixels: int = DEFAULT_MAX_PIXELS, exclude: Sequence = ()) -> ImageSet:
    """Open ``spec`` as an ImageSet.

    ``spec`` is a builtin name (``digits``, or ``builtin:digits`` when a path of that name exists), a
    ``.npy``/``.npz`` file, an IDX file (or a folder holding one ``*images-idx3*`` file), or a folder of
    images. ``labels`` is an optional labels file; labels that come with the source (npz ``y``, IDX labels,
    class subfolders) are used otherwise. ``size`` resizes images. ``exclude``: folders a folder scan must not
    read (the run's own output folder).
    """
    spec = str(spec)
    hw = check_size(size)
    kind = detect_kind(spec)
    is_npz = kind == "array" and Path(spec).suffix.lower() == ".npz"
    for flag, value in (("--image-key", image_key), ("--label-key", label_key)):
        if value is not None and not is_npz:
            raise UserError(f"{flag} names an array inside an .npz file, but {spec} is not one; leave it out")
    if layout not in ("auto", None) and kind not in ("array", "idx"):
        raise UserError(f"--layout {layout} describes the axes of an image array, but {spec} is not an array; leave it out")
    if kind == "folder":
        idx_files = sorted(Path(spec).glob("*images*idx*"))
        if idx_files and not scan_folder(Path(spec), exclude).files:
            if len(idx_files) > 1:
                raise UserError(f"{spec}: holds {len(idx_files)} IDX image files; name one of them")
            spec, kind = str(idx_files[0]), "idx"
    fn = SOURCES[kind]
    if kind == "folder":
        ds = fn(spec, size=size, channels=channels, max_pixels=max_pixels, exclude=exclude)
    elif kind not in ("array", "idx"):
        log(f"{spec}: the builtin dataset")
        ds = fn()
        if size is not None or channels is not None:
            ds = ds.resized(size, channels)
    else:
        ds = fn(spec, image_key=image_key, label_key=label_key, layout=layout)
        if size is not None or channels is not None:
            ds = ds.resized(size, channels)
    if hw is not None:
        check_memory(min(len(ds), 256) * ds.channels * hw[0] * hw[1] * 4, f"--size {hw[0]} {hw[1]} (one batch of images)",
                     "pass a smaller --size")
    if labels is not None:
        y, names = read_labels_file(labels, ds.ids, spec, skipped_ids=[sk.id for sk in ds.skipped])
        ds = ds.with_labels(y, names)
    return ds
