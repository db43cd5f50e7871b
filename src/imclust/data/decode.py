"""Decoding image files safely: modes, EXIF orientation, decompression bombs, truncated files."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
DEFAULT_MAX_PIXELS = 100_000_000  # past this an image is treated as a decompression bomb and skipped


class UnreadableImage(Exception):
    """A file that cannot be decoded; the message is the reason shown in skipped.csv."""


def _open(path: Path, max_pixels: int) -> Image.Image:
    if path.stat().st_size == 0:
        raise UnreadableImage("empty file (0 bytes)")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        old = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = max_pixels
        try:
            im = Image.open(path)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise UnreadableImage(f"image too large, over the pixel limit of {max_pixels} (decompression bomb?): {e}") from None
        except Image.UnidentifiedImageError:
            raise UnreadableImage("not an image file that can be identified") from None
        except OSError as e:
            raise UnreadableImage(f"cannot open: {e}") from None
        finally:
            Image.MAX_IMAGE_PIXELS = old
    w, h = im.size
    if w * h > max_pixels:
        im.close()
        raise UnreadableImage(f"image too large: {w}x{h} is over the pixel limit of {max_pixels} (decompression bomb?)")
    if w == 0 or h == 0:
        im.close()
        raise UnreadableImage(f"zero-size image ({w}x{h})")
    return im


def _tail_ok(path: Path, fmt: str) -> bool:
    """Cheap truncation check: JPEG ends with EOI (FFD9), PNG with an IEND chunk."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        fh.seek(max(0, size - 64))
        tail = fh.read()
    if fmt == "JPEG":
        return b"\xff\xd9" in tail.rstrip(b"\x00")[-16:]
    if fmt == "PNG":
        return b"IEND" in tail
    return True


def probe(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[tuple[int, int], str]:
    """Check a file without decoding all of it. Returns ``((width, height), mode)``; raises UnreadableImage."""
    im = _open(path, max_pixels)
    try:
        fmt = im.format or ""
        if not _tail_ok(path, fmt):
            raise UnreadableImage(f"truncated {fmt} file (no end marker)")
        return im.size, im.mode
    finally:
        im.close()


def decode(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS, grey: bool = False) -> Image.Image:
    """Decode a file fully into an 'RGB' (or 'L') PIL image with EXIF orientation applied."""
    im = _open(path, max_pixels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            im.load()
            im = ImageOps.exif_transpose(im)
            im = to_mode(im, "L" if grey else "RGB")
    except UnreadableImage:
        raise
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError ... on corrupt data
        raise UnreadableImage(f"cannot decode: {e}") from None
    return im


def to_mode(im: Image.Image, mode: str) -> Image.Image:
    """Convert any PIL mode (1, L, P, RGBA, LA, I;16, I, F, CMYK, YCbCr ...) to 'RGB' or 'L'."""
    if im.mode == mode:
        return im
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(im, dtype=np.float64)
        hi = 65535.0 if im.mode.startswith("I;16") or arr.max() > 255 else 255.0
        im = Image.fromarray(np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")
    elif im.mode == "F":
        arr = np.asarray(im, dtype=np.float64)
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        scale = 1.0 if hi <= 1.0 and lo >= 0 else 1.0 / max(hi - lo, 1e-12)
        arr = (arr - (0 if scale == 1.0 else lo)) * scale
        im = Image.fromarray(np.clip(arr * 255 + 0.5, 0, 255).astype(np.uint8), mode="L")
    elif im.mode == "P":
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA"):
        # Composite transparency onto white, so transparent pixels do not turn black.
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(bg, rgba).convert("RGB")
    return im.convert(mode)


def pil_to_array(im: Image.Image, size: tuple[int, int] | None) -> np.ndarray:
    """PIL image → float32 ``(C, H, W)`` in [0, 1], resized to ``size`` = (H, W) when given."""
    if size is not None and (im.size[1], im.size[0]) != tuple(size):
        im = im.resize((size[1], size[0]), Image.BILINEAR, reducing_gap=None)
    arr = np.asarray(im, dtype=np.float32) / 255.0
    if arr.ndim == 2:
        arr = arr[None]
    else:
        arr = np.moveaxis(arr, -1, 0)
    return arr
