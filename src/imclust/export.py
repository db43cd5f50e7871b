"""Putting a folder's files into one folder per cluster, and the tutorial's ``submission.csv``.

:func:`export_clusters` copies, symlinks or moves each image file to ``<out>/clusters/<label>/<name>``.
It keeps file names; it never overwrites anything (two different files with one name become ``name`` and
``name~2``); it is idempotent (running it again finds the files already in place and does nothing); and no
name or pre-existing link can make it write outside ``<out>/clusters``.
"""

from __future__ import annotations

import filecmp
import os
import shutil
from pathlib import Path

from .errors import UserError
from .io import printable, write_csv
from .outputs import register_output
from .progress import log, progress

EXPORT_MODES = ("copy", "symlink", "move")


def _safe_name(file_id: str) -> str:
    name = file_id.replace("\\", "/").rsplit("/", 1)[-1]
    if name in ("", ".", "..") or "\x00" in name:
        raise UserError(f"cannot export {file_id!r}: it has no usable file name")
    return name


def _candidates(name: str):
    p = Path(name)
    stem, suffix = (p.stem, p.suffix) if p.stem else (name, "")
    yield name
    n = 2
    while True:
        yield f"{stem}~{n}{suffix}"
        n += 1


def _same(dest: Path, src: Path, mode: str) -> bool:
    """Is ``dest`` already this export of ``src``?"""
    if mode == "symlink":
        return dest.is_symlink() and os.path.realpath(dest) == os.path.realpath(src)
    if dest.is_symlink() or not dest.is_file():
        return False
    if mode == "move":
        return not src.exists()  # moved on an earlier run: the file now lives here
    return dest.stat().st_size == src.stat().st_size and filecmp.cmp(dest, src, shallow=False)


def _inside(path: Path, root_real: str) -> bool:
    real = os.path.realpath(path)
    return real == root_real or real.startswith(root_real + os.sep)


def export_clusters(out, ids, labels, paths, mode: str = "copy") -> dict:
    """Copy/symlink/move ``paths[i]`` to ``out/clusters/<labels[i]>/``; returns counts and the destinations."""
    if mode not in EXPORT_MODES:
        raise UserError(f"--export {mode!r}: choose one of {', '.join(EXPORT_MODES)}")
    if paths is None:
        raise UserError("--export puts image files into clusters/<label>/, but this source is an array with no "
                        "files; export works for folder sources")
    if not (len(ids) == len(labels) == len(paths)):
        raise UserError("export: ids, labels and paths differ in length")
    root = Path(out) / "clusters"
    root.mkdir(parents=True, exist_ok=True)
    root_real = os.path.realpath(root)
    done, already, dests = 0, 0, []
    for file_id, lab, src in progress(list(zip(ids, labels, paths)), desc=f"export ({mode})", unit="file"):
        src = Path(src)
        tail = str(file_id).rsplit("/", 1)[-1]
        if src.name not in ("", ".", "..") and printable(src.name) == tail:
            name = src.name  # the file's own name: an id writes undecodable bytes as \xNN, the copy keeps them
        else:
            name = _safe_name(str(file_id))
        d = root / str(int(lab))
        if d.is_symlink() or (d.exists() and not d.is_dir()):
            raise UserError(f"{d} exists and is not a plain folder; remove it or export into another --out")
        d.mkdir(exist_ok=True)
        if not _inside(d, root_real):
            raise UserError(f"{d} leads outside {root}; refusing to export there")
        if _inside(src, root_real):  # the source itself lies in the clusters folder
            dests.append(str(src))
            already += 1
            continue
        if mode != "move" and not src.is_file():
            raise UserError(f"cannot export {src}: the file no longer exists")
        for cand in _candidates(name):
            dest = d / cand
            if not _inside(dest.parent, root_real) or dest.parent != d:
                raise UserError(f"cannot export {file_id!r}: its name leads outside {d}")
            if os.path.lexists(dest):
                if _same(dest, src, mode):
                    already += 1
                    break
                continue
            if mode == "move" and not src.exists():
                raise UserError(f"cannot move {src}: the file no longer exists (and is not in {d})")
            _place(src, dest, mode)
            done += 1
            break
        dests.append(str(dest))
    write_csv(root / "export.csv", ["id", "label", "file"],
              ((i, int(lab), os.path.relpath(p, root)) for i, lab, p in zip(ids, labels, dests)))
    verb = {"copy": "copied", "symlink": "linked", "move": "moved"}[mode]
    log(f"export: {done} file(s) {verb} into {root}, {already} already there")
    return {"done": done, "already": already, "files": dests}


def _place(src: Path, dest: Path, mode: str) -> None:
    if mode == "symlink":
        os.symlink(os.path.realpath(src), dest)  # fails rather than overwrite
        return
    if mode == "move":
        try:
            os.link(src, dest)  # same file system: a new name that cannot overwrite, then drop the old one
            os.unlink(src)
        except OSError:
            if os.path.lexists(dest):
                raise UserError(f"cannot move {src} to {dest}: the destination appeared meanwhile") from None
            shutil.move(str(src), str(dest))
        return
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    shutil.copy2(src, tmp)
    try:
        os.link(tmp, dest)  # atomic and never overwrites
    except FileExistsError:
        raise UserError(f"cannot copy {src} to {dest}: the destination appeared meanwhile") from None
    except OSError:  # no hard links on this file system
        if os.path.lexists(dest):
            raise UserError(f"cannot copy {src} to {dest}: the destination appeared meanwhile") from None
        os.replace(tmp, dest)
        return
    finally:
        if tmp.exists():
            tmp.unlink()


@register_output("submission")
def write_submission(result, out) -> Path:
    """The tutorial's submission file: ``ImageID,label``, the id being the file name without its extension."""
    def image_id(i: str) -> str:
        p = Path(str(i))
        return p.with_suffix("").as_posix() if p.suffix else p.as_posix()

    return write_csv(Path(out) / "submission.csv", ["ImageID", "label"],
                     ((image_id(i), int(v)) for i, v in zip(result.ids, result.labels)))
