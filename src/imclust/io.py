"""Atomic output helpers: every file we write appears whole or not at all."""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def _atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the usual permissions of a new file
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def write_bytes(path, data: bytes) -> Path:
    return _atomic_write_bytes(path, data)


def write_text(path, text: str) -> Path:
    return _atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def write_csv(path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> Path:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for r in rows:
        w.writerow(r)
    return write_text(path, buf.getvalue())


def write_npy(path, arr: np.ndarray) -> Path:
    buf = io.BytesIO()
    np.save(buf, np.asarray(arr), allow_pickle=False)
    return _atomic_write_bytes(path, buf.getvalue())


def save_tensors(path, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> Path:
    """Save a flat dict of arrays as safetensors (atomically)."""
    from safetensors.numpy import save

    clean = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    return _atomic_write_bytes(path, save(clean, metadata=metadata))


def load_tensors(path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return dict(load_file(str(path)))


def scratch_array(shape: tuple[int, ...], dtype=np.float32, max_memory_bytes: int = 512 * 2**20) -> np.ndarray:
    """A zeroed work array: in memory when it is at most ``max_memory_bytes``, else memory-mapped from a
    temporary file (in ``TMPDIR``), so features larger than memory stream to disk and are read back in blocks.

    The file is unlinked at once where the system allows it (it lives as long as the mapping does).
    """
    dtype = np.dtype(dtype)
    size = int(np.prod(shape)) * dtype.itemsize
    if size <= max_memory_bytes:
        return np.zeros(shape, dtype)
    fd, path = tempfile.mkstemp(prefix="imclust-features-", suffix=".npy")
    os.close(fd)
    arr = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=tuple(shape))
    try:
        os.unlink(path)
    except OSError:  # pragma: no cover - systems that cannot unlink an open file: remove it when done
        import weakref

        weakref.finalize(arr, lambda p=path: Path(p).unlink(missing_ok=True))
    return arr
