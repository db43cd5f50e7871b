"""A thumbnail sprite sheet per run, so that the HTML report can show any point's image on hover.

The run saves ``thumbs.jpg`` or ``thumbs.png`` (one tile per image, row-major, ``cols`` tiles per row) and
``thumbs.json`` (tile size, layout, which points have a tile) into its output folder, and ``imclust report``
rebuilds the page from them without decoding a single image again.

The size is bounded whatever the number of images: at most :data:`MAX_THUMBS` tiles (a seeded sample of the
points beyond that), tiles of at most :data:`MAX_TILE` pixels a side, and an encoded sheet of at most
:data:`BUDGET_BYTES` (tiles shrink, then JPEG quality drops, until it fits).
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np

from ..io import write_bytes, write_json
from ..progress import progress

MAX_TILE = 32
MIN_TILE = 8
MAX_THUMBS = 20_000
BUDGET_BYTES = 4 * 1024 * 1024
_TILE_STEPS = (32, 24, 16, 12, 8)


def _tile_shape(h: int, w: int, side: int) -> tuple[int, int]:
    """Tile (height, width) with the image's aspect ratio, the longer side ``side`` (never upscaled)."""
    side = min(side, max(h, w))
    if h >= w:
        return side, max(1, round(w * side / h))
    return max(1, round(h * side / w)), side


def _render(tiles: np.ndarray, cols: int) -> np.ndarray:
    """``(m, th, tw, c)`` uint8 tiles → one sheet ``(rows*th, cols*tw, c)`` (unused slots black)."""
    m, th, tw, c = tiles.shape
    rows = max(1, math.ceil(m / cols))
    sheet = np.zeros((rows * th, cols * tw, c), np.uint8)
    for j in range(m):
        r, cc = divmod(j, cols)
        sheet[r * th:(r + 1) * th, cc * tw:(cc + 1) * tw] = tiles[j]
    return sheet


def _encode(sheet: np.ndarray, fmt: str, quality: int = 85) -> bytes:
    from PIL import Image

    im = Image.fromarray(sheet[..., 0] if sheet.shape[2] == 1 else sheet, mode="L" if sheet.shape[2] == 1 else "RGB")
    buf = io.BytesIO()
    if fmt == "png":
        im.save(buf, format="PNG", optimize=True)
    else:
        im.save(buf, format="JPEG", quality=quality, subsampling=0 if quality >= 80 else 2)
    return buf.getvalue()


def _shrink(tiles: np.ndarray, th: int, tw: int) -> np.ndarray:
    from PIL import Image

    out = np.empty((len(tiles), th, tw, tiles.shape[3]), np.uint8)
    for j, t in enumerate(tiles):
        im = Image.fromarray(t[..., 0] if t.shape[2] == 1 else t)
        out[j] = np.asarray(im.resize((tw, th), Image.BILINEAR)).reshape(th, tw, -1)
    return out


def choose_points(n: int, max_thumbs: int = MAX_THUMBS, seed: int = 0) -> np.ndarray:
    """Which of ``n`` points get a tile: all of them, or a seeded sorted sample of ``max_thumbs``."""
    if n <= max_thumbs:
        return np.arange(n)
    return np.sort(np.random.RandomState(seed).choice(n, max_thumbs, replace=False))


def write_thumbnails(ds, out, indices=None, max_thumbs: int = MAX_THUMBS, budget_bytes: int = BUDGET_BYTES,
                     seed: int = 0) -> Path | None:
    """Write the sprite sheet and ``thumbs.json`` for ``ds`` (restricted to ``indices``, the run's points).

    ``indices[i]`` is the dataset index of the run's ``i``-th point (the order of ``predictions.csv``).
    Returns the path of ``thumbs.json``, or ``None`` when there is nothing to draw.
    """
    out = Path(out)
    n = len(ds) if indices is None else len(indices)
    if n == 0:
        return None
    idx = np.arange(len(ds)) if indices is None else np.asarray(indices, dtype=np.int64)
    points = choose_points(n, max_thumbs, seed)
    c, h, w = ds.shape
    ch = 1 if c == 1 else 3
    th, tw = _tile_shape(h, w, MAX_TILE)
    view = ds.resized((th, tw), ch)
    tiles = np.empty((len(points), th, tw, ch), np.uint8)
    bar = progress(total=len(points), desc="thumbnails", unit="img") if len(points) > 2000 else None
    try:
        for start in range(0, len(points), 512):
            sel = points[start:start + 512]
            batch = view.load(idx[sel])
            tiles[start:start + len(sel)] = np.clip(np.moveaxis(batch, 1, -1) * 255 + 0.5, 0, 255).astype(np.uint8)
            if bar is not None:
                bar.update(len(sel))
    finally:
        if bar is not None:
            bar.close()

    cols = max(1, math.ceil(math.sqrt(len(points) * th / tw)))
    data, fmt, quality = b"", "png", None
    steps = [s for s in _TILE_STEPS if s < max(th, tw)]
    cur = tiles
    fmt_choice = None
    for side in [max(th, tw), *steps]:
        if side != max(cur.shape[1], cur.shape[2]):
            cur = _shrink(tiles, *_tile_shape(th, tw, side))
        cols = max(1, math.ceil(math.sqrt(len(points) * cur.shape[1] / cur.shape[2])))
        sheet = _render(cur, cols)
        if fmt_choice is None:  # PNG for line art and digits, JPEG for photos: decided on a sample (PNG is slow)
            probe = _render(cur[:400], 20)
            fmt_choice = "png" if len(_encode(probe, "png")) <= len(_encode(probe, "jpeg", 85)) else "jpeg"
        data, fmt, quality = (_encode(sheet, "png"), "png", None) if fmt_choice == "png" else (_encode(sheet, "jpeg", 85), "jpeg", 85)
        if len(data) <= budget_bytes or side <= MIN_TILE:
            break
    q = 70
    while len(data) > budget_bytes and q >= 30:
        data, fmt, quality = _encode(sheet, "jpeg", q), "jpeg", q
        q -= 20
    name = "thumbs.png" if fmt == "png" else "thumbs.jpg"
    for old in ("thumbs.png", "thumbs.jpg"):
        if old != name and (out / old).exists():
            (out / old).unlink()
    write_bytes(out / name, data)
    meta = {
        "file": name,
        "format": fmt,
        "quality": quality,
        "tile_h": int(cur.shape[1]),
        "tile_w": int(cur.shape[2]),
        "cols": int(cols),
        "count": int(len(points)),
        "n_points": int(n),
        # null when every point has a tile, in order; else the point index of each tile
        "points": None if len(points) == n else [int(p) for p in points],
    }
    return write_json(out / "thumbs.json", meta)


def read_thumbnails(run_dir) -> tuple[dict, bytes] | None:
    """``(meta, image bytes)`` of a run's sprite sheet, or ``None`` when the run has none."""
    run_dir = Path(run_dir)
    meta_path = run_dir / "thumbs.json"
    if not meta_path.exists():
        return None
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    img = run_dir / meta.get("file", "")
    if not img.is_file():
        return None
    return meta, img.read_bytes()
