"""Run folders that appear whole or not at all.

``run``, ``predict`` and ``embed`` never write into ``--out`` directly. They write into a fresh hidden sibling
(``.NAME.imclust-tmp-PID-XXXX``) and, only when everything is written, swap it into place: the earlier run
folder becomes ``NAME.prev`` (the one before that is deleted). A killed or failed command therefore leaves
the old folder or the new one, never a mix; the hidden leftovers of a killed command are removed the next
time a command writes to the same ``--out``.

Every run folder holds a marker, ``.imclust-run.json``, written last: it says imclust wrote the folder (so a
source scan never reads it as images) and lists each file with its size and SHA-256, so ``imclust report``
can refuse a folder that was damaged or mixed by hand. ``report.html`` is left out of the list (rebuilding
it is what ``imclust report`` does), and so is ``clusters/`` (what ``--export`` put there).
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import shutil
import time
import uuid
from pathlib import Path

from .errors import UserError
from .io import TMP_SUFFIX, pid_alive, sha256_file
from .resources import fmt_bytes

MARKER = ".imclust-run.json"
FORMAT = "imclust-run/1"
PREV_SUFFIX = ".prev"
TMP_TAG = ".imclust-tmp-"
OLD_TAG = ".imclust-old-"
UNLISTED = ("report.html", MARKER)  # files a run folder may change after it was written
EXPORT_DIR = "clusters"
LEGACY_FILES = ("run.json", "predictions.csv", "model/pipeline.json")
HASH_LIMIT = 256 * 1024 * 1024  # larger files are listed by size only (hashing them would cost seconds)


def is_run_folder(path) -> bool:
    """Did imclust write this folder (run, predict, embed, or one in progress)? Folders written before the
    marker existed are recognised by their run.json, predictions.csv and model/pipeline.json."""
    p = Path(path)
    try:
        return (p / MARKER).is_file() or all((p / f).is_file() for f in LEGACY_FILES)
    except OSError:
        return False


def read_marker(path) -> dict | None:
    try:
        data = json.loads((Path(path) / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write_marker(folder: Path, info: dict) -> None:
    from .io import write_json

    write_json(folder / MARKER, info)


def resolve_out(out) -> Path:
    """``--out`` as an absolute path, symlinks resolved (a run replaces the folder a link points to, not the link)."""
    p = Path(os.path.abspath(os.path.expanduser(os.fspath(out))))
    return Path(os.path.realpath(p)) if p.is_symlink() else p


def prev_of(out: Path) -> Path:
    return out.with_name(out.name + PREV_SUFFIX)


def _inside(child: Path, parent: Path) -> bool:
    try:
        c, p = os.path.realpath(child), os.path.realpath(parent)
    except OSError:
        return False
    return c == p or c.startswith(p.rstrip(os.sep) + os.sep)


def holds_moved_files(folder: Path) -> bool:
    """Does this run folder hold the user's own image files (put there by ``--export move``)?"""
    info = read_marker(folder) or {}
    return info.get("export") == "move" and (folder / EXPORT_DIR).is_dir() and any((folder / EXPORT_DIR).iterdir())


def check_out(out, sources=(), inner=(), expected_bytes: int = 0, flag: str = "--out") -> Path:
    """Refuse an unusable output folder before any work is done; returns it as an absolute path.

    ``sources``: paths the command reads (a source inside ``out`` would be replaced by the run's own results).
    ``inner``: ``(option, path)`` pairs that must not lie inside ``out`` (checkpoint or cache folders), since
    the folder is replaced as a whole when the run finishes. ``expected_bytes``: the space the outputs need.
    """
    out = resolve_out(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{flag} {out}: is a file, not a folder; give a folder path (it is created if missing)")
    if out.is_dir() and not is_run_folder(out):
        try:
            entries = [e for e in os.listdir(out)]
        except OSError as e:
            raise UserError(f"{flag} {out}: cannot be read ({e.strerror}); choose another folder") from None
        if entries:
            raise UserError(f"{flag} {out}: the folder holds other files and was not written by imclust; imclust replaces "
                            "its output folder as a whole, so give a new or empty folder")
    prev = prev_of(out)
    if os.path.lexists(prev):
        if not prev.is_dir() or not is_run_folder(prev):
            raise UserError(f"{prev} exists and is not an imclust run folder; a rerun into {out} keeps the earlier "
                            f"run as {prev.name}, so move that path away first")
        if is_run_folder(out) and holds_moved_files(prev):
            raise UserError(f"{prev / EXPORT_DIR} holds image files that '--export move' moved there; a new run into "
                            f"{out} would replace {prev.name}, so move those files out (and delete {prev}) first")
    for src in sources:
        if src is not None and os.path.exists(src) and (_inside(src, out) or _inside(src, prev)):
            raise UserError(f"the source {src} lies inside {flag} {out}, which this command replaces when it finishes; "
                            "choose an output folder outside the source")
    for option, path in inner:
        if path and _inside(os.path.abspath(os.path.expanduser(str(path))), out):
            raise UserError(f"{option} {path} lies inside {flag} {out}, which is replaced as a whole when the run "
                            f"finishes; put it beside the output folder (e.g. {out.name}-ckpt)")
    parent = _existing_ancestor(out.parent)
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {out}: cannot write in {parent} (permission denied); choose a folder you can write to")
    if expected_bytes:
        try:
            free = shutil.disk_usage(parent).free
        except OSError:
            free = None
        if free is not None and free < expected_bytes:
            raise UserError(f"{flag} {out}: the outputs need about {fmt_bytes(expected_bytes)} but only "
                            f"{fmt_bytes(free)} are free on that disk; free some space or choose another folder")
    return out


def _existing_ancestor(p: Path) -> Path:
    while not p.exists() and p != p.parent:
        p = p.parent
    if not p.is_dir():
        raise UserError(f"--out: {p} is a file, so no folder can be made inside it; choose another output folder")
    return p


# -------------------------------------------------------------------------------------------------------
# the manifest
# -------------------------------------------------------------------------------------------------------
def _listed(folder: Path) -> list[str]:
    names = []
    for dirpath, dirnames, filenames in os.walk(folder):
        rel_dir = os.path.relpath(dirpath, folder)
        if rel_dir == ".":
            dirnames[:] = [d for d in dirnames if d != EXPORT_DIR]
        for f in filenames:
            rel = f if rel_dir == "." else f"{rel_dir}/{f}".replace(os.sep, "/")
            if rel not in UNLISTED and not f.endswith(TMP_SUFFIX):  # a page being rewritten, or one a kill left
                names.append(rel)
    return sorted(names)


def manifest(folder: Path) -> dict[str, list]:
    """``{relative path: [size, sha256 or None]}`` for every file a run folder holds (see the module doc)."""
    out = {}
    for rel in _listed(folder):
        p = folder / rel
        if p.is_symlink():
            continue
        size = p.stat().st_size
        out[rel] = [size, sha256_file(p) if size <= HASH_LIMIT else None]
    return out


def verify(folder) -> dict:
    """Check a run folder against its manifest; returns the marker. Raises UserError naming the first problem."""
    folder = Path(folder)
    info = read_marker(folder)
    hint = "rerun the command that wrote it"
    if info is None:
        if (folder / MARKER).exists():
            raise UserError(f"{folder / MARKER}: damaged (not valid JSON); {hint}")
        raise UserError(f"{folder}: not a run folder that can be checked (no {MARKER}: not written by imclust, or by "
                        f"a version before it kept one); {hint}")
    if info.get("format") != FORMAT or not info.get("complete") or not isinstance(info.get("files"), dict):
        raise UserError(f"{folder}: the run that wrote this folder did not finish (incomplete {MARKER}); {hint}")
    files = info["files"]
    for rel, entry in sorted(files.items()):
        p = folder / rel
        if not p.is_file():
            raise UserError(f"{folder}: {rel} is missing (a damaged run folder); {hint}")
        try:
            size, digest = entry
            if p.stat().st_size != size or (digest is not None and sha256_file(p) != digest):
                raise UserError(f"{folder}: {rel} is not the file this run wrote (a damaged or mixed run folder); {hint}")
        except (TypeError, ValueError):
            raise UserError(f"{folder / MARKER}: damaged entry for {rel}; {hint}") from None
    for rel in _listed(folder):
        if rel not in files and not (folder / rel).is_symlink():
            raise UserError(f"{folder}: {rel} does not belong to the run that wrote this folder (a mixed run folder); "
                            f"remove it or {hint}")
    return info


# -------------------------------------------------------------------------------------------------------
# swapping
# -------------------------------------------------------------------------------------------------------
_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux renameat2); False where the system cannot."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd = -100
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def remove_tree(path: Path) -> None:
    """Delete a folder imclust made (never one holding files that --export move put there)."""
    if holds_moved_files(path):
        return
    shutil.rmtree(path, ignore_errors=True)


def _siblings(out: Path, tag: str) -> list[Path]:
    prefix = f".{out.name}{tag}"
    try:
        return [out.parent / n for n in os.listdir(out.parent) if n.startswith(prefix)]
    except OSError:
        return []


def clean_leftovers(out: Path) -> None:
    """Remove what a killed command left beside ``out``: unfinished folders, and an old run moved aside while
    the new one was swapped in (which becomes ``.prev`` again when that is missing)."""
    prev = prev_of(out)
    for tmp in _siblings(out, TMP_TAG):
        info = read_marker(tmp) or {}
        writer = tmp.name[len(f".{out.name}{TMP_TAG}"):].split("-")[0]  # the pid in the folder's name
        if writer.isdigit() and int(writer) != os.getpid() and pid_alive(writer):
            continue  # another imclust is writing it right now
        cur = read_marker(out) or {}
        if info.get("complete") and cur.get("created", "") > info.get("created", "") and not os.path.lexists(prev):
            os.replace(tmp, prev)  # the earlier run, moved aside while the new one was swapped in
        else:
            remove_tree(tmp)
    for old in _siblings(out, OLD_TAG):
        if not os.path.lexists(prev) and is_run_folder(old):
            os.replace(old, prev)
        else:
            remove_tree(old)


class RunFolder:
    """``with RunFolder(out, kind) as tmp:`` write everything into ``tmp``; on success it replaces ``out``.

    On an exception (or Ctrl-C) the unfinished folder is deleted and ``out`` is untouched. ``final`` is the
    path the folder will have, for messages. Call :meth:`check` (or :func:`check_out`) before the work starts.
    """

    def __init__(self, out, kind: str = "run", export: str | None = None):
        self.final = resolve_out(out)
        self.kind = kind
        self.export = export
        self.tmp: Path | None = None
        self.info: dict = {}

    def __enter__(self) -> Path:
        out = self.final
        out.parent.mkdir(parents=True, exist_ok=True)
        clean_leftovers(out)
        self.tmp = out.parent / f".{out.name}{TMP_TAG}{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.tmp.mkdir()
        self.info = {"format": FORMAT, "kind": self.kind, "run_id": uuid.uuid4().hex, "complete": False,
                     "created": time.strftime("%Y-%m-%dT%H:%M:%S") + f".{time.time_ns() % 10**9:09d}",
                     "pid": os.getpid(), "export": self.export}
        try:
            _write_marker(self.tmp, self.info)  # from now on no source scan reads this folder
        except BaseException:
            remove_tree(self.tmp)
            raise
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is not None:
            remove_tree(self.tmp)
            if isinstance(exc, OSError) and exc.filename:  # name the file as the user knows it, not the hidden copy
                exc.filename = os.fspath(exc.filename).replace(os.fspath(self.tmp), os.fspath(self.final))
            return False
        self._commit()
        return False

    def _commit(self) -> None:
        """Finish the marker, then swap. Until the swap a failure deletes the new folder (``out`` untouched);
        after it ``out`` is the new run, and what is left to do (the earlier run to ``.prev``) is finished by
        :func:`clean_leftovers` if it fails here."""
        out, tmp = self.final, self.tmp
        old = out.parent / f".{out.name}{OLD_TAG}{uuid.uuid4().hex[:8]}"
        prev = prev_of(out)
        swapped = False
        try:
            self.info.update(complete=True, files=manifest(tmp))
            _write_marker(tmp, self.info)
            if os.path.isdir(out) and not is_run_folder(out) and not os.listdir(out):
                os.rmdir(out)  # an empty folder the user made for us: nothing to keep
            if not os.path.lexists(out):
                os.rename(tmp, out)
                return
            if os.path.lexists(prev):
                os.rename(prev, old)
            if _exchange(tmp, out):  # out is the new run at once; tmp now holds the earlier one
                swapped = True
                os.rename(tmp, prev)
            else:  # no atomic swap here: a kill between these two renames leaves the old run as .prev
                os.rename(out, prev)
                try:
                    os.rename(tmp, out)
                except BaseException:
                    os.rename(prev, out)
                    raise
                swapped = True
        except BaseException:
            if not swapped:
                remove_tree(tmp)
                if os.path.lexists(old) and not os.path.lexists(prev):
                    os.rename(old, prev)
            raise
        if os.path.lexists(old):
            remove_tree(old)


def update_marker(folder, **fields) -> None:
    """Change fields of a finished run folder's marker (``export``), keeping its file list."""
    folder = Path(folder)
    info = read_marker(folder) or {}
    info.update(fields)
    _write_marker(folder, info)
