"""Labels files, read strictly: a file that could mean two things is refused with one line, never guessed.

A labels file is ``.npy``, an IDX file, or text: ``id,label`` rows (any of ``,`` ``;`` tab ``|`` as the
delimiter, found by checking which one splits every row into the same number of fields; an optional header
naming the columns) or one label per line (in the order of the images). Refused, each with the line it was
found on: text that is not UTF-8 (or is binary), an ambiguous delimiter, rows of unequal length, an empty id
or label, an id given twice, ids that match no image (files that were skipped as unreadable excepted),
images with no label, and a one-column file that lists file names instead of labels.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from ..errors import UserError

ID_COLUMNS = ("id", "file", "filename", "file_name", "path", "image", "image_id", "imageid", "name")
LABEL_COLUMNS = ("label", "labels", "class", "class_name", "category", "target", "y")
DELIMITERS = (",", ";", "\t", "|")
_DELIM_NAMES = {",": "comma", ";": "semicolon", "\t": "tab", "|": "bar"}


def read_text(path, what: str) -> str:
    """A text file that must be UTF-8 (a BOM is allowed); binary or other encodings give one clear line."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{what} {path} does not exist; check the path")
    if path.is_dir():
        raise UserError(f"{what} {path} is a folder; give a file")
    try:
        data = path.read_bytes()
    except PermissionError:
        raise UserError(f"{what} {path} cannot be read (permission denied)") from None
    except OSError as e:
        raise UserError(f"{what} {path} cannot be read ({e.strerror})") from None
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError:
            pass
    if b"\x00" in data[:65536]:
        raise UserError(f"{what} {path} is a binary file, not text; give a CSV or text file (or .npy)")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise UserError(f"{what} {path} is not UTF-8 text (byte 0x{data[e.start]:02x} on line {line}); "
                        "save it as UTF-8") from None


def _rows(text: str, path) -> tuple[list[tuple[int, list[str]]], str | None]:
    """Non-empty lines split by the one delimiter that fits them all: ``[(line number, fields)]``, delimiter."""
    lines = [(i + 1, ln) for i, ln in enumerate(text.splitlines())]
    while lines and not lines[-1][1].strip():
        lines.pop()
    if not lines:
        raise UserError(f"labels file {path} is empty")
    blank = next((n for n, ln in lines if not ln.strip()), None)
    fits = {}
    for d in DELIMITERS:
        try:
            parsed = [(n, next(csv.reader(io.StringIO(ln), delimiter=d))) for n, ln in lines if ln.strip()]
        except csv.Error as e:
            raise UserError(f"labels file {path}: cannot parse ({e})") from None
        widths = {len(r) for _, r in parsed}
        if len(widths) == 1 and widths.pop() >= 2:
            fits[d] = parsed
    if len(fits) > 1:
        names = " and ".join(_DELIM_NAMES[d] for d in fits)
        raise UserError(f"labels file {path}: both {names} split every row evenly, so the columns are ambiguous; "
                        "use one delimiter (e.g. 'file,label' per row)")
    if fits:
        (d, parsed), = fits.items()
        if blank is not None:
            raise UserError(f"labels file {path}: line {blank} is empty; remove it (every row needs an id and a label)")
        return parsed, d
    parsed = [(n, [ln.strip()]) for n, ln in lines]
    for d in DELIMITERS:  # one column, unless some rows hold a delimiter: then the rows disagree
        with_d = [n for n, ln in lines if d in ln]
        if with_d and len(with_d) < len(lines):
            raise UserError(f"labels file {path}: line {with_d[0]} has a {_DELIM_NAMES[d]} but line "
                            f"{next(n for n, ln in lines if d not in ln)} does not; give every row the same columns")
        if with_d:
            widths = sorted({len(next(csv.reader(io.StringIO(ln), delimiter=d))) for _, ln in lines})
            raise UserError(f"labels file {path}: rows split by {_DELIM_NAMES[d]} into {widths[0]} to {widths[-1]} "
                            "fields; give every row the same columns (id,label)")
    if blank is not None:
        raise UserError(f"labels file {path}: line {blank} is empty; every image needs a label (one per line)")
    return parsed, None


def _header(first: list[str]) -> tuple[int, int] | None:
    """(id column, label column) when the first row names its columns, else None."""
    low = [c.strip().lower() for c in first]
    id_col = next((i for i, c in enumerate(low) if c in ID_COLUMNS), None)
    label_col = next((i for i, c in enumerate(low) if c in LABEL_COLUMNS), None)
    if id_col is not None and label_col is not None and id_col != label_col:
        return id_col, label_col
    return None


def _match(keys: dict[str, int], ids: list[str], path, root=None) -> dict[str, str]:
    """Map each key of the file to an image id: the id itself (also written ``./id``, or as a path under the
    source folder ``root``), or the image's file name when no two images share it."""
    import os

    id_set = set(ids)
    by_name: dict[str, list[str]] = {}
    for i in ids:
        by_name.setdefault(i.replace("\\", "/").rsplit("/", 1)[-1], []).append(i)
    out = {}
    for key, line in keys.items():
        alias = key[2:] if key.startswith("./") else key
        if root is not None and os.path.isabs(alias):
            alias = os.path.relpath(alias, root).replace(os.sep, "/")
        if alias in id_set:
            out[key] = alias
        elif key in by_name:
            if len(by_name[key]) > 1:
                raise UserError(f"labels file {path}, line {line}: {key!r} names {len(by_name[key])} images "
                                f"({by_name[key][0]}, {by_name[key][1]}, ...); give the relative path instead")
            out[key] = by_name[key][0]
    return out


def parse_labels_text(text: str, ids: list[str], path, skipped_ids=(), root=None) -> list[str]:
    """One label (as text) per id, from the text of a labels file (see the module doc)."""
    rows, delim = _rows(text, path)
    if delim is None:  # one label per line, in the order of the images
        values = [r[0] for _, r in rows]
        if values and values[0].lower() in LABEL_COLUMNS:
            values = values[1:]
        from .decode import IMAGE_EXTENSIONS

        looks_like_names = sum(Path(v).suffix.lower() in IMAGE_EXTENSIONS for v in values)
        if values and looks_like_names > len(values) // 2:
            raise UserError(f"labels file {path}: one column of file names, no labels; give 'file,label' rows")
        if len(values) != len(ids):
            raise UserError(f"labels file {path} has {len(values)} labels but the source has {len(ids)} images; "
                            "give exactly one label per image (or 'file,label' rows)")
        return values
    empty_cols = [c for c in range(len(rows[0][1])) if not any(r[c].strip() for _, r in rows)]
    if empty_cols:  # a trailing delimiter on every row (spreadsheet exports): those columns say nothing
        rows = [(n, [v for c, v in enumerate(r) if c not in empty_cols]) for n, r in rows]
    header = _header(rows[0][1])
    width = len(rows[0][1])
    if header is not None:
        id_col, label_col = header
        rows = rows[1:]
    elif width == 2:
        id_col, label_col = 0, 1
    else:
        raise UserError(f"labels file {path}: {width} columns and no header naming them; add a header such as "
                        "'file,label' (or give two columns)")
    if not rows:
        raise UserError(f"labels file {path} has a header but no rows")
    first_line: dict[str, int] = {}
    labels: dict[str, str] = {}
    for line, r in rows:
        key, lab = r[id_col].strip(), r[label_col].strip()
        if not key:
            raise UserError(f"labels file {path}, line {line}: the id is empty")
        if not lab:
            raise UserError(f"labels file {path}, line {line}: the label of {key!r} is empty; give every image a label")
        if key in first_line:
            raise UserError(f"labels file {path}: {key!r} appears twice (lines {first_line[key]} and {line}); "
                            "give each image one row")
        first_line[key] = line
        labels[key] = lab
    where = _match(first_line, ids, path, root)
    skipped = set(skipped_ids)
    skipped_names = {s.replace("\\", "/").rsplit("/", 1)[-1] for s in skipped}
    unknown = [k for k in first_line if k not in where and k not in skipped and k not in skipped_names]
    if unknown:
        raise UserError(f"labels file {path}: {len(unknown)} id(s) match no image (first: {unknown[0]!r}, line "
                        f"{first_line[unknown[0]]}); check the names, or remove those rows")
    seen: dict[str, str] = {}
    for key, image_id in where.items():
        if image_id in seen:
            raise UserError(f"labels file {path}: {seen[image_id]!r} and {key!r} both name the image {image_id}")
        seen[image_id] = key
    missing = [i for i in ids if i not in seen]
    if missing:
        raise UserError(f"labels file {path}: no label for {len(missing)} of {len(ids)} images (first: {missing[0]}); "
                        "add a 'file,label' row for each")
    return [labels[seen[i]] for i in ids]


def labels_from_values(values, where: str):
    """Text labels → ints: whole numbers stay numbers, anything else becomes a class name (sorted)."""
    try:
        return np.array([int(v) for v in values], dtype=np.int64), None
    except ValueError:
        names = sorted(set(values))
        lut = {s: i for i, s in enumerate(names)}
        return np.array([lut[v] for v in values], dtype=np.int64), names
