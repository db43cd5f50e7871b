"""Shape descriptors for small grey images: deskewed pixels plus histograms of oriented gradients (HOG).

Nothing is learned, yet its neighbourhoods are far cleaner than those of raw pixels: on the first 3,000
MNIST-test digits the share of each image's 10 nearest neighbours that carry its own digit rises from 0.82
(pixels) to 0.92 with the default recipe's settings (``tests/test_hog.py`` prints both). Followed by
PCA -> UMAP -> GMM it is the default recipe for small grey images (``benchmarks/ae_accuracy.py``,
``benchmarks/RESULTS.md``).

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
"""

from __future__ import annotations

import math

import numpy as np

from ..base import register
from ..data import ImageSet
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
    max_side : images whose longer side exceeds this are first shrunk (antialiased, aspect kept) to that side,
        which bounds the feature size for photo folders (HOG of 4-px cells on a 64-px image: 2,304 values).
    size : resize the source to this size first instead (as the ``pixels`` encoder); colour becomes grey either way.
    """

    def __init__(self, cell_px=(4,), grids=(4,), bins: int = 9, sigma: float = 1.0, min_side: int = 24,
                 max_side: int | None = 64, deskew: bool = True, pixels: bool = True, size=None, batch_size: int = 2048):
        self.cell_px = cell_px
        self.grids = grids
        self.bins = bins
        self.sigma = sigma
        self.min_side = min_side
        self.max_side = max_side
        self.deskew = deskew
        self.pixels = pixels
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
        view = ds.resized(self.size, 1)
        h, w = int(view.shape[1]), int(view.shape[2])
        if self.size is None and self.max_side and max(h, w) > int(self.max_side):
            scale = int(self.max_side) / max(h, w)
            h, w = max(1, round(h * scale)), max(1, round(w * scale))
        self.input_shape_ = [1, h, w]
        f = upsample_factor(h, w, int(self.min_side))
        self.upsample_factor_ = int(f)
        self.cells_ = self._cells(h * f, w * f)
        self.n_features_ = int(self._encode(np.zeros((1, h, w), np.float32)).shape[1])
        return self

    def _encode(self, X: np.ndarray) -> np.ndarray:
        X = upsample(X.astype(np.float32, copy=False), int(self.upsample_factor_))
        if self.deskew:
            X = deskew(X)
        blocks = [hog(X, c, int(self.bins), float(self.sigma)) for c in self.cells_]
        parts = [np.hstack(blocks) / np.float32(math.sqrt(len(blocks)))]
        if self.pixels:
            parts.append(_l2(X))
        return np.hstack(parts).astype(np.float32, copy=False)

    def transform(self, ds: ImageSet) -> np.ndarray:
        view = self.input_view(ds)
        out = np.empty((len(view), int(self.n_features_)), np.float32)
        desc = "HOG features" if len(view) > 2000 else None
        for idx, batch in view.iter_batches(int(self.batch_size), desc=desc):
            out[idx] = self._encode(batch[:, 0])
        return out
