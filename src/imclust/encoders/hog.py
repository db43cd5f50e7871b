"""Shape (and colour) descriptors: deskewed pixels, histograms of oriented gradients (HOG), colour histograms.

Nothing is learned, yet its neighbourhoods are far cleaner than those of raw pixels: on the first 3,000
MNIST-test digits the share of each image's 10 nearest neighbours that carry its own digit rises from 0.82
(pixels) to 0.92 with the ``hog-umap`` recipe's settings (``tests/test_hog.py`` prints both). Followed by
PCA -> UMAP -> GMM it is that recipe; the grey defaults, ``hog-ae-umap`` and ``hog-ae-lite-umap``, use it as
one of their views, beside a learned autoencoder and the pixels (``benchmarks/RESULTS.md``).

Per image, in this order:

1. **Grey.** Colour images are converted to luminance.
2. **Upsample** by the smallest whole factor that makes the shorter side at least ``min_side`` pixels
   (bilinear), so that 8x8 or 16x16 images still hold several HOG cells. Larger images are left as they are.
3. **Deskew** (``deskew=True``): the classic moment-based correction for slanted handwriting. The image's
   intensity-weighted covariance gives its slant ``alpha = cov(row, col) / var(row)``; a shear by ``-alpha``
   about the centre of mass makes the main axis vertical. It assumes bright strokes on a dark background (as
   in MNIST, USPS, sklearn digits, Fashion-MNIST); on an image without such structure the slant is near 0 and
   the image barely changes.
4. **HOG** at each cell size: a Gaussian blur (``sigma``), central-difference gradients, unsigned orientation
   in ``bins`` bins over [0, pi), each pixel votes its gradient magnitude into its cell's bin. Cell sizes come
   from ``cell_px`` (fixed pixel sizes) and ``grids`` (cells across the image: ``4`` = a 4x4 grid). Each
   scale's histogram is L2-normalised; the scales are joined and divided by sqrt(number of scales).
5. **Pixels** (``pixels=True``): the (deskewed) pixels, L2-normalised, are appended, so the HOG block and the
   pixel block weigh the same in Euclidean distances.
6. **Colour** (``colour_bins=[h, s, v]``): a joint hue/saturation/value histogram of the whole image and one
   of its central half (the middle 50 % of each side, where the subject of a photo usually is), taken from
   the colour image before steps 1-5. Each is normalised to sum 1 and square-rooted (the Hellinger map), so
   it has unit length like the other blocks. For grey images hue and saturation are 0 and the block is an
   intensity histogram. This is what the ``photo-umap`` recipe (and the colour view of ``photo-simclr-umap``)
   adds for colour photos, where grey shape alone clusters near chance (``benchmarks/photo_accuracy.py``).
"""

from __future__ import annotations

import math

import numpy as np

from ..base import register
from ..data import ImageSet, convert_batch, shrink_to_max_side
from ..errors import UserError
from .base import Encoder


def upsample_factor(h: int, w: int, min_side: int) -> int:
    """The smallest whole factor f with min(h, w) * f >= min_side (1 when the image is large enough)."""
    if min_side <= 0:
        return 1
    return max(1, math.ceil(min_side / max(1, min(h, w))))


def upsample(X: np.ndarray, factor: int) -> np.ndarray:
    """Bilinear upsampling of a ``(N, H, W)`` batch by a whole factor."""
    if factor == 1:
        return X
    from scipy import ndimage

    return ndimage.zoom(X, (1, factor, factor), order=1).astype(np.float32, copy=False)


def deskew(X: np.ndarray) -> np.ndarray:
    """Shear each ``(H, W)`` image of a ``(N, H, W)`` batch so that its main axis is vertical.

    The slant is ``alpha = cov(row, col) / var(row)`` of the intensity-weighted pixel coordinates; output
    pixel ``(r, c)`` samples input ``(r + dr, c + alpha * (r - h/2) + dc)``, where ``(dr, dc)`` moves the
    centre of mass to the image centre. Blank images are returned unchanged.
    """
    from scipy import ndimage

    n, h, w = X.shape
    out = np.empty_like(X, dtype=np.float32)
    rows, cols = np.mgrid[:h, :w].astype(np.float64)
    for i in range(n):
        img = X[i].astype(np.float64)
        tot = img.sum()
        if tot <= 1e-12:
            out[i] = img
            continue
        mr, mc = (rows * img).sum() / tot, (cols * img).sum() / tot
        var_r = ((rows - mr) ** 2 * img).sum() / tot
        cov_rc = ((rows - mr) * (cols - mc) * img).sum() / tot
        alpha = cov_rc / var_r if var_r > 1e-12 else 0.0
        A = np.array([[1.0, 0.0], [alpha, 1.0]])
        offset = np.array([mr, mc]) - A @ np.array([h / 2.0, w / 2.0])
        out[i] = ndimage.affine_transform(img, A, offset=offset, order=1)
    return out


def hog(X: np.ndarray, cell: int, bins: int = 9, sigma: float = 1.0) -> np.ndarray:
    """Per-image histograms of oriented gradients, ``(N, rows * cols * bins)``, each row L2-normalised.

    Square cells of ``cell`` pixels tile the image from the top-left corner (a remainder narrower than a
    cell is left out); each pixel adds its gradient magnitude to the bin of its unsigned orientation.
    """
    n, h, w = X.shape
    if cell < 1 or cell > min(h, w):
        raise UserError(f"HOG cell of {cell} px does not fit a {h}x{w} image; use a cell size between 1 and {min(h, w)}")
    if sigma > 0:
        from scipy import ndimage

        X = ndimage.gaussian_filter(X, (0, sigma, sigma))
    X = X.astype(np.float32, copy=False)
    gy = np.zeros_like(X)
    gx = np.zeros_like(X)
    gy[:, 1:-1] = X[:, 2:] - X[:, :-2]
    gx[:, :, 1:-1] = X[:, :, 2:] - X[:, :, :-2]
    mag = np.hypot(gx, gy)
    ang = np.mod(np.arctan2(gy, gx), np.pi)
    b = np.minimum((ang * (bins / np.pi)).astype(np.int64), bins - 1)
    ch, cw = h // cell, w // cell
    mag = mag[:, : ch * cell, : cw * cell]
    b = b[:, : ch * cell, : cw * cell]
    cell_r = (np.arange(ch * cell) // cell)[:, None]
    cell_c = (np.arange(cw * cell) // cell)[None, :]
    slot = (cell_r * cw + cell_c) * bins  # (H', W') first bin of each pixel's cell
    per_img = ch * cw * bins
    idx = (np.arange(n)[:, None, None] * per_img + slot[None] + b).ravel()
    H = np.bincount(idx, weights=mag.ravel().astype(np.float64), minlength=n * per_img).reshape(n, per_img)
    return _l2(H.astype(np.float32))


def rgb_to_hsv(X: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hue, saturation and value in [0, 1] of a ``(N, 3, H, W)`` RGB batch in [0, 1] (hue 0 where grey)."""
    r, g, b = X[:, 0], X[:, 1], X[:, 2]
    mx, mn = X.max(axis=1), X.min(axis=1)
    d = mx - mn
    safe = np.where(d > 1e-8, d, 1.0)
    h = np.where(mx == r, np.mod((g - b) / safe, 6.0), np.where(mx == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0))
    h = np.where(d > 1e-8, h / 6.0, 0.0)
    s = np.where(mx > 1e-8, d / np.where(mx > 1e-8, mx, 1.0), 0.0)
    return h.astype(np.float32), s.astype(np.float32), mx.astype(np.float32)


def colour_histogram(X: np.ndarray, bins=(12, 4, 4)) -> np.ndarray:
    """Joint HSV histograms of a ``(N, C, H, W)`` batch (C = 3 colour, or 1 grey), ``(N, prod(bins))``.

    Each row is normalised to sum 1 and square-rooted, so it has unit L2 norm (Hellinger map).
    """
    bh, bs, bv = (int(b) for b in bins)
    if X.shape[1] == 3:
        h, s, v = rgb_to_hsv(X)
    else:
        v = X[:, 0]
        h = s = np.zeros_like(v)
    n = len(X)

    def q(a, nb):
        return np.minimum((a * nb).astype(np.int64), nb - 1)

    cell = (q(h, bh) * bs + q(s, bs)) * bv + q(np.clip(v, 0.0, 1.0), bv)
    per_img = bh * bs * bv
    idx = (np.arange(n)[:, None, None] * per_img + cell).ravel()
    H = np.bincount(idx, minlength=n * per_img).reshape(n, per_img).astype(np.float64)
    H /= np.maximum(H.sum(axis=1, keepdims=True), 1.0)
    return np.sqrt(H).astype(np.float32)


def _l2(F: np.ndarray) -> np.ndarray:
    F = F.reshape(len(F), -1).astype(np.float32, copy=False)
    return F / (np.linalg.norm(F, axis=1, keepdims=True) + 1e-8)


@register("hog")
class HOGEncoder(Encoder):
    """Deskewed pixels plus multi-scale HOG (see the module doc for each step).

    Parameters
    ----------
    cell_px : HOG cell sizes in pixels (after upsampling), e.g. ``[4]``.
    grids : HOG cell grids given as cells across the image side, e.g. ``[4]`` for a 4x4 grid.
    bins : orientation bins over [0, pi).
    sigma : Gaussian blur (pixels, after upsampling) before the gradients; 0 turns it off. The default, 1, is
        what lifted sklearn digits from a bimodal 0.92 to 0.965 (`benchmarks/RESULTS.md`, issue 3).
    min_side : upsample small images by a whole factor until the shorter side is at least this.
    deskew : straighten slanted strokes first (moment-based shear).
    pixels : append the (deskewed) pixels as an L2-normalised block.
    colour_bins : ``[hue, saturation, value]`` bins of the colour histograms (step 6), e.g. ``[12, 4, 4]``;
        ``None`` (the default) leaves them out and reads the images as grey.
    max_side : images whose longer side exceeds this are first shrunk (antialiased, aspect kept) to that side,
        which bounds the feature size for photo folders (HOG of 4-px cells on a 64-px image: 2,304 values).
    size : resize the source to this size first instead (as the ``pixels`` encoder); the shape blocks read it as
        grey either way.
    """

    def __init__(self, cell_px=(4,), grids=(4,), bins: int = 9, sigma: float = 1.0, min_side: int = 24,
                 max_side: int | None = 64, deskew: bool = True, pixels: bool = True, colour_bins=None, size=None,
                 batch_size: int = 2048):
        self.cell_px = cell_px
        self.grids = grids
        self.bins = bins
        self.sigma = sigma
        self.min_side = min_side
        self.max_side = max_side
        self.deskew = deskew
        self.pixels = pixels
        self.colour_bins = colour_bins
        self.size = size
        self.batch_size = batch_size

    def _cells(self, h: int, w: int) -> list[int]:
        cells = [int(c) for c in (self.cell_px or [])]
        for g in self.grids or []:
            g = int(g)
            if g < 1:
                raise UserError(f"hog grids: {g} cells across is not valid; give a whole number of at least 1, e.g. 4")
            cells.append(max(1, min(h, w) // g))
        if not cells:
            raise UserError("hog: no HOG scale given; set cell_px (e.g. [4]) or grids (e.g. [4])")
        return cells

    def fit(self, ds: ImageSet, y=None):
        if int(self.bins) < 1:
            raise UserError(f"hog bins={self.bins}: give at least 1 orientation bin, e.g. 9")
        if self.colour_bins is not None:
            cb = list(self.colour_bins) if isinstance(self.colour_bins, (list, tuple)) else []
            if len(cb) != 3 or any(not isinstance(b, int) or isinstance(b, bool) or b < 1 for b in cb):
                raise UserError(f"hog colour_bins={self.colour_bins!r}: give three whole numbers of at least 1 "
                                "(hue, saturation, value bins), e.g. [12, 4, 4]")
        channels = 3 if self.colour_bins is not None and ds.channels == 3 else 1
        view = ds.resized(self.size, channels)
        h, w = int(view.shape[1]), int(view.shape[2])
        if self.size is None:
            h, w = shrink_to_max_side(h, w, self.max_side)
        self.input_shape_ = [channels, h, w]
        f = upsample_factor(h, w, int(self.min_side))
        self.upsample_factor_ = int(f)
        self.cells_ = self._cells(h * f, w * f)
        self.n_features_ = int(self._encode(np.zeros((1, channels, h, w), np.float32)).shape[1])
        return self

    def _encode(self, batch: np.ndarray) -> np.ndarray:
        """Features of a ``(N, C, H, W)`` batch at the fitted input shape."""
        colour = []
        if self.colour_bins is not None:
            h, w = batch.shape[2], batch.shape[3]
            ch, cw = h // 4, w // 4
            centre = batch[:, :, ch:h - ch, cw:w - cw] if h - 2 * ch > 0 and w - 2 * cw > 0 else batch
            colour = [colour_histogram(batch, self.colour_bins), colour_histogram(centre, self.colour_bins)]
        X = upsample(convert_batch(batch, 1, batch.shape[2:])[:, 0], int(self.upsample_factor_))
        if self.deskew:
            X = deskew(X)
        blocks = [hog(X, c, int(self.bins), float(self.sigma)) for c in self.cells_]
        parts = [np.hstack(blocks) / np.float32(math.sqrt(len(blocks)))]
        if self.pixels:
            parts.append(_l2(X))
        return np.hstack(parts + colour).astype(np.float32, copy=False)

    def transform(self, ds: ImageSet) -> np.ndarray:
        view = self.input_view(ds)
        out = np.empty((len(view), int(self.n_features_)), np.float32)
        desc = "HOG features" if len(view) > 2000 else None
        for idx, batch in view.iter_batches(int(self.batch_size), desc=desc):
            out[idx] = self._encode(batch)
        return out
