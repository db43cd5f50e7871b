"""Decoding image files safely: modes, EXIF orientation, decompression bombs, truncated files.

:func:`probe` checks a file completely before any image enters a fit: it decodes it (JPEGs at 1/8 scale, which
still reads every coded block) and raises :class:`UnreadableImage` with a reason whose first words name its
category (see :data:`REASONS`). A JPEG cut short and closed with an end marker decodes without complaint
(libjpeg fills the missing blocks with grey), so JPEGs are also checked for that: their marker structure
(and, when progressive, that every coefficient gets all its scans), then two decodes with different filler
bytes placed before the end marker, which differ only when the decoder had run out of data and read them.
The comparison is made at full scale up to :data:`FULL_CHECK_PIXELS` and at 1/8 scale above (for speed), where
a cut inside the last few coded blocks, or inside the final refinement scan of a progressive file, which only
changes fine detail, can pass; at full scale about one cut in a thousand passes, all within the last few
dozen bytes (both fillers happen to decode alike there). What follows the first end marker (camera trailers, a second picture) is not
part of the image and is ignored.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps

DEFAULT_MAX_PIXELS = 100_000_000  # past this an image is treated as a decompression bomb and skipped

# Reason categories, the first words of every skipped.csv reason (details follow a colon).
REASONS = ("unsupported type", "unsupported image type", "unreadable (permission)", "unreadable", "empty file",
           "undecodable", "truncated", "too large", "zero-size image", "hidden", "symlink loop", "broken symlink",
           "not a regular file", "imclust run folder", "this run's output folder", "unreadable folder (permission)",
           "unreadable folder")

# Extensions Pillow registers but cannot turn into pixels without outside help, or that are not pictures.
_NOT_DECODABLE = {".bufr", ".grib", ".h5", ".hdf", ".mpeg", ".mpg", ".emf", ".wmf", ".eps", ".ps", ".iim"}
# Known image formats this Pillow cannot decode: skipped with a hint instead of "unsupported type".
KNOWN_IMAGE_TYPES = {".heic", ".heif", ".hif", ".avif", ".avifs", ".svg", ".svgz", ".jxl", ".raw", ".cr2", ".cr3",
                     ".crw", ".nef", ".nrw", ".arw", ".srf", ".sr2", ".dng", ".orf", ".rw2", ".raf", ".srw", ".pef",
                     ".x3f", ".erf", ".kdc", ".mrw", ".3fr", ".exr", ".hdr", ".eps", ".ps", ".ai", ".emf", ".wmf",
                     ".xcf", ".kra", ".jp2", ".j2k", ".jpx", ".jpf", ".jpc", ".j2c", ".webp", ".mpo", ".cdr"}


def _decodable_extensions() -> frozenset[str]:
    Image.init()
    exts = {e for e, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}
    exts |= {".jif", ".jfi", ".mpo"}  # JPEG names Pillow reads by content but does not register
    return frozenset(exts - _NOT_DECODABLE)


IMAGE_EXTENSIONS = _decodable_extensions()


def unsupported_reason(suffix: str) -> str:
    """The skipped.csv reason for a file whose extension imclust does not read."""
    s = suffix.lower()
    if s in KNOWN_IMAGE_TYPES:
        return f"unsupported image type ({s}): this Pillow cannot decode it; convert it to PNG or JPEG"
    return f"unsupported type ({s})" if s else "unsupported type (no extension)"


class UnreadableImage(Exception):
    """A file that cannot be decoded; the message is the reason shown in skipped.csv."""


def _os_reason(e: OSError) -> str:
    if isinstance(e, PermissionError):
        return "unreadable (permission)"
    return f"unreadable: {e.strerror or e}"


def _open(path: Path, max_pixels: int, data: bytes | None = None) -> Image.Image:
    try:
        size = path.stat().st_size if data is None else len(data)
    except OSError as e:
        raise UnreadableImage(_os_reason(e)) from None
    if size == 0:
        raise UnreadableImage("empty file (0 bytes)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        old = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = max_pixels
        try:
            im = Image.open(path if data is None else io.BytesIO(data))
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise UnreadableImage(f"too large: over the pixel limit of {max_pixels} (decompression bomb?): {e}") from None
        except Image.UnidentifiedImageError:
            raise UnreadableImage("undecodable: not an image file that can be identified") from None
        except OSError as e:
            if isinstance(e, PermissionError) or getattr(e, "errno", None) is not None:
                raise UnreadableImage(_os_reason(e)) from None
            raise UnreadableImage(f"undecodable: {e}") from None
        except Exception as e:  # Pillow raises ValueError, SyntaxError, struct.error ... on damaged headers
            raise UnreadableImage(f"undecodable: damaged header ({type(e).__name__}: {e})") from None
        finally:
            Image.MAX_IMAGE_PIXELS = old
    w, h = im.size
    if w * h > max_pixels:
        im.close()
        raise UnreadableImage(f"too large: {w}x{h} is over the pixel limit of {max_pixels} (decompression bomb?)")
    if w == 0 or h == 0:
        im.close()
        raise UnreadableImage(f"zero-size image ({w}x{h})")
    return im


def _load(im: Image.Image) -> None:
    """Decode all pixels; any failure becomes UnreadableImage ('truncated' when the data ran out)."""
    old = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im.load()
    except Image.DecompressionBombWarning as e:
        raise UnreadableImage(f"too large: {e}") from None
    except PermissionError as e:
        raise UnreadableImage(_os_reason(e)) from None
    except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError, EOFError ... on corrupt data
        msg = str(e)
        if isinstance(e, EOFError) or "truncated" in msg or "premature" in msg.lower():
            raise UnreadableImage(f"truncated: {msg or type(e).__name__}") from None
        raise UnreadableImage(f"undecodable: {type(e).__name__}: {msg}") from None
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = old


# ---------------------------------------------------------------------------------------------------
# JPEG structure
# ---------------------------------------------------------------------------------------------------
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_PROGRESSIVE = {0xC2, 0xC6, 0xCA, 0xCE}
_ARITHMETIC = {0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def jpeg_layout(data: bytes) -> dict:
    """Walk a JPEG's markers up to its first end marker (EOI). Raises UnreadableImage('truncated: ...').

    Returns ``eoi`` (offset of the EOI marker), ``progressive``, ``arithmetic``, ``components`` (frame component
    ids) and ``scans`` (per scan: component ids, Ss, Se, Ah, Al).
    """
    n = len(data)
    if data[:2] != b"\xff\xd8":
        raise UnreadableImage("undecodable: not a JPEG stream")
    pos, frame, progressive, arithmetic, scans = 2, None, False, False, []
    while True:
        while pos < n and data[pos] != 0xFF:  # garbage between segments: tolerated, as decoders do
            pos += 1
        while pos + 1 < n and data[pos + 1] == 0xFF:  # fill bytes
            pos += 1
        if pos + 1 >= n:
            raise UnreadableImage("truncated: the JPEG ends without its end marker")
        marker = data[pos + 1]
        if marker == 0xD9:
            break
        if 0xD0 <= marker <= 0xD8 or marker == 0x01:
            pos += 2
            continue
        if pos + 4 > n:
            raise UnreadableImage("truncated: the JPEG ends inside a header")
        length = int.from_bytes(data[pos + 2:pos + 4], "big")
        seg_end = pos + 2 + length
        if length < 2 or seg_end > n:
            raise UnreadableImage("truncated: the JPEG ends inside a header")
        seg = data[pos + 4:seg_end]
        if marker in _SOF:
            progressive, arithmetic = marker in _PROGRESSIVE, marker in _ARITHMETIC
            if len(seg) < 6 or len(seg) < 6 + 3 * seg[5]:
                raise UnreadableImage("undecodable: damaged JPEG frame header")
            frame = [seg[6 + 3 * i] for i in range(seg[5])]
        pos = seg_end
        if marker == 0xDA:
            ns = seg[0] if seg else 0
            if len(seg) < 4 + 2 * ns:
                raise UnreadableImage("undecodable: damaged JPEG scan header")
            comps = [seg[1 + 2 * i] for i in range(ns)]
            ss, se, a = seg[1 + 2 * ns], seg[2 + 2 * ns], seg[3 + 2 * ns]
            scans.append((comps, ss, se, a >> 4, a & 15))
            while True:  # entropy-coded data: up to the next marker that is not a stuffed byte or a restart
                pos = data.find(b"\xff", pos)
                if pos < 0 or pos + 1 >= n:
                    raise UnreadableImage("truncated: the JPEG ends inside its image data (no end marker)")
                nxt = data[pos + 1]
                if nxt == 0x00 or 0xD0 <= nxt <= 0xD7:
                    pos += 2
                elif nxt == 0xFF:
                    pos += 1
                else:
                    break
    if frame is None or not scans:
        raise UnreadableImage("undecodable: the JPEG holds no image frame or no scan")
    return {"eoi": pos, "progressive": progressive, "arithmetic": arithmetic, "components": frame, "scans": scans}


def _progressive_complete(layout: dict) -> bool:
    """Do a progressive JPEG's scans bring every coefficient of every component to full precision?"""
    done = {(c, k) for c in layout["components"] for k in range(64)}
    for comps, ss, se, _ah, al in layout["scans"]:
        if al == 0:
            for c in comps:
                for k in range(ss, min(se, 63) + 1):
                    done.discard((c, k))
    return not done


# Two complementary bit patterns (no 0xFF, which would start a marker), placed before the end marker. A decoder
# that has all its data never reads them, so both copies decode alike; a starved one decodes them into
# coefficients, and the two patterns give different ones (one may happen to match libjpeg's zero fill, both
# cannot match each other), so two decodes tell a cut file without decoding the original a third time.
_FILLERS = (b"\x5a" * 64, b"\xa5" * 64)
FULL_CHECK_PIXELS = 1 << 18  # JPEGs up to ~512x512 are compared at full scale; larger ones at 1/8 (see probe)


def _pixels(data: bytes, mode: str, scale: int) -> np.ndarray:
    im = Image.open(io.BytesIO(data))
    if scale > 1:
        im.draft(mode, (max(1, im.width // scale), max(1, im.height // scale)))
    _load(im)
    return np.asarray(im)


def _check_jpeg(data: bytes, mode: str, size: tuple[int, int]) -> None:
    layout = jpeg_layout(data)
    if layout["progressive"] and not _progressive_complete(layout):
        raise UnreadableImage("truncated: the progressive JPEG lacks its later scans")
    end = layout["eoi"]
    scale = 1 if size[0] * size[1] <= FULL_CHECK_PIXELS else 8
    if layout["arithmetic"]:  # filler bytes mean something to an arithmetic decoder: the structure check must do
        _pixels(data[:end + 2], mode, scale)
        return
    first, second = (_pixels(data[:end] + f + data[end:end + 2], mode, scale) for f in _FILLERS)
    if not np.array_equal(first, second):
        raise UnreadableImage("truncated: the JPEG data stops before the image is complete (closed early with an end marker)")


def probe(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[tuple[int, int], str]:
    """Check a file completely (see the module doc). Returns ``((width, height), mode)``; raises UnreadableImage."""
    path = Path(path)
    im = _open(path, max_pixels)
    try:
        size, mode, fmt = im.size, im.mode, im.format or ""
        if fmt in ("JPEG", "MPO"):
            try:
                data = path.read_bytes()
            except OSError as e:
                raise UnreadableImage(_os_reason(e)) from None
            _check_jpeg(data, mode, size)
        else:
            _load(im)
            try:  # a mode that cannot become RGB/L would fail later, inside the fit
                to_mode(im.crop((0, 0, 1, 1)), "RGB")
            except Exception as e:
                raise UnreadableImage(f"undecodable: pixel mode {mode!r} ({type(e).__name__}: {e})") from None
        return size, mode
    finally:
        im.close()


def decode(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS, grey: bool = False) -> Image.Image:
    """Decode a file fully into an 'RGB' (or 'L') PIL image with EXIF orientation applied."""
    im = _open(path, max_pixels)
    _load(im)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            im = ImageOps.exif_transpose(im)
        except Exception:  # a damaged EXIF block: the pixels are fine, keep them as stored
            pass
        try:
            im = to_mode(im, "L" if grey else "RGB")
        except Exception as e:
            raise UnreadableImage(f"undecodable: {type(e).__name__}: {e}") from None
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
        arr = np.where(np.isfinite(arr), arr, 0.0)
        lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 1.0)
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
