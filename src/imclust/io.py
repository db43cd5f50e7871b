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


TMP_SUFFIX = ".imclust.tmp"


def _atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # the writer's pid is in the name, so a later process can tell the leftovers of a killed one
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}-", suffix=TMP_SUFFIX, dir=path.parent)
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


def sha256_file(path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def pid_alive(pid) -> bool:
    """Is process ``pid`` running (on this machine)?"""
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, run by someone else
    except (OSError, ValueError, TypeError, OverflowError):
        return False
    return True


def remove_stale_temps(folder) -> int:
    """Delete the half-written temporary files a killed process left in ``folder``; returns how many."""
    removed = 0
    try:
        names = os.listdir(folder)
    except OSError:
        return 0
    for name in names:
        if not (name.startswith(".") and name.endswith(TMP_SUFFIX)):
            continue
        pid = name[: -len(TMP_SUFFIX)].rsplit(".", 1)[-1].split("-")[0]
        if pid.isdigit() and (int(pid) == os.getpid() or pid_alive(pid)):
            continue  # its writer is still running
        try:
            os.unlink(os.path.join(folder, name))
            removed += 1
        except OSError:
            pass
    return removed


def write_bytes(path, data: bytes) -> Path:
    return _atomic_write_bytes(path, data)


def printable(text: str) -> str:
    """``text`` with the undecodable bytes of a file name (Python's surrogate escapes) written as ``\\xNN``.

    Linux file names are bytes; Python decodes those that are not UTF-8 into lone surrogates, which no UTF-8
    file can hold. Ids, paths and messages pass through here, so every output stays valid UTF-8.
    """
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # surrogates that did not come from bytes
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def write_text(path, text: str) -> Path:
    return _atomic_write_bytes(path, printable(text).encode("utf-8"))


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


def load_tensors(path, what: str = "file") -> dict[str, np.ndarray]:
    """Read a safetensors file; a damaged one raises a one-line UserError naming it."""
    return read_tensors(path, what)[0]


def read_tensors(path, what: str = "file") -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The arrays and the metadata of a safetensors file (a damaged one raises a UserError naming ``what``)."""
    from safetensors import safe_open

    from .errors import UserError

    try:
        with safe_open(str(path), framework="numpy") as fh:
            meta = dict(fh.metadata() or {})
            return {k: fh.get_tensor(k) for k in fh.keys()}, meta
    except FileNotFoundError:
        raise UserError(f"{path}: the {what} is missing") from None
    except PermissionError:
        raise UserError(f"{path}: the {what} cannot be read (permission denied)") from None
    except Exception as e:  # safetensors raises its own error types (and OSError, ValueError) on damaged files
        raise UserError(f"{path}: the {what} is damaged ({type(e).__name__}: {str(e)[:160]}); "
                        "restore it or write it again") from None

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
