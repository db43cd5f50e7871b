"""Batched image augmentations on torch tensors (no torchvision), on whatever device the batch is on.

Every function takes a ``(B, C, H, W)`` float batch with values in [0, 1] and a ``torch.Generator`` (so a
seed fixes the views), draws one set of parameters per image and works on the whole batch at once, on the
batch's own device (a GPU batch never leaves the GPU). The random parameters are drawn from the generator on
the CPU and then moved, so the same seed gives the same parameters on every device.

Operations: :func:`random_resized_crop` (with an optional flip, as one affine resampling),
:func:`horizontal_flip`, :func:`random_shift` (a translation by whole pixels), :func:`color_jitter`
(brightness, contrast, saturation, hue), :func:`random_grayscale`, :func:`gaussian_blur`, :func:`solarize`, :func:`cutout`, and
:func:`rand_augment`, a RandAugment-like strong policy (``n_ops`` operations per image drawn from
:data:`RAND_AUGMENT_OPS`, each with its own magnitude). Images with one channel are handled throughout
(saturation, hue and grayscale then do nothing).

The policies a training loop uses are small dataclasses built on these: :class:`ContrastiveAugment` (the
SimCLR view: crop, flip, jitter, grayscale, blur, solarize, each with its probability),
:class:`WeakAugment` (crop and flip) and :class:`StrongAugment` (crop and flip, RandAugment, cutout).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

LUMA = (0.299, 0.587, 0.114)


# -- random draws (on the CPU generator, then moved) ---------------------------------------------------------
def _uniform(n, lo, hi, g, device):
    return torch.rand(n, generator=g).to(device) * (hi - lo) + lo


def _chance(n: int, p: float, g) -> torch.Tensor:
    """``n`` booleans, each true with probability ``p`` (one draw per image even when p is 0 or 1, so that
    changing a probability never shifts the random stream of the operations that follow)."""
    return torch.rand(n, generator=g) < p


def _per_image(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return v.to(x.device, x.dtype).view(-1, 1, 1, 1)


def _where(mask: torch.Tensor, new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    return torch.where(mask.to(old.device).view(-1, 1, 1, 1), new, old)


def _grey(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 1:
        return x
    return LUMA[0] * x[:, :1] + LUMA[1] * x[:, 1:2] + LUMA[2] * x[:, 2:3]


# -- geometry -----------------------------------------------------------------------------------------------
def random_resized_crop(x: torch.Tensor, size=None, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), flip: bool = False,
                        generator: torch.Generator | None = None) -> torch.Tensor:
    """Crop a random area (a ``scale`` fraction of the image, aspect ratio in ``ratio``) and resize it to ``size``.

    As torchvision's RandomResizedCrop, except that a crop larger than the image in one direction is
    clipped to it rather than redrawn. With ``flip``, each image is mirrored left-right with probability 1/2.
    The crop and flip are one affine resampling (``affine_grid`` + bilinear ``grid_sample``).
    """
    b, _, h, w = x.shape
    oh, ow = (h, w) if size is None else ((size, size) if isinstance(size, int) else size)
    dev = x.device
    area = _uniform(b, scale[0], scale[1], generator, "cpu")
    logr = _uniform(b, math.log(ratio[0]), math.log(ratio[1]), generator, "cpu")
    r = torch.exp(logr)
    # crop width/height as fractions of the image side
    cw = torch.sqrt(area * r).clamp(max=1.0)
    ch = torch.sqrt(area / r).clamp(max=1.0)
    cx = (torch.rand(b, generator=generator) * 2 - 1) * (1 - cw)  # centre in [-1, 1] coordinates
    cy = (torch.rand(b, generator=generator) * 2 - 1) * (1 - ch)
    sx = cw.clone()
    if flip:
        flips = torch.rand(b, generator=generator) < 0.5
        sx = torch.where(flips, -sx, sx)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = sx, cx
    theta[:, 1, 1], theta[:, 1, 2] = ch, cy
    grid = F.affine_grid(theta.to(dev, x.dtype), (b, x.shape[1], oh, ow), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def horizontal_flip(x: torch.Tensor, p: float = 0.5, generator: torch.Generator | None = None) -> torch.Tensor:
    """Mirror each image left-right with probability ``p``."""
    return _where(_chance(len(x), p, generator), x.flip(-1), x)


def random_shift(x: torch.Tensor, max_shift: int, fill: float = 0.0,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Translate each image of a ``(B, C, H, W)`` batch by up to ``max_shift`` pixels in each direction.

    Uncovered pixels take the value ``fill``. Offsets come from ``generator`` (torch's global generator when
    None). The result keeps the batch's memory format (channels_last stays channels_last).
    """
    if int(max_shift) <= 0 or x.dim() != 4:
        return x
    b, c, h, w = x.shape
    p = int(max_shift)
    pad = F.pad(x, (p, p, p, p), value=fill)
    dy = torch.randint(0, 2 * p + 1, (b,), generator=generator)
    dx = torch.randint(0, 2 * p + 1, (b,), generator=generator)
    rows = (dy[:, None] + torch.arange(h)[None]).to(x.device)  # (b, h)
    cols = (dx[:, None] + torch.arange(w)[None]).to(x.device)  # (b, w)
    bi = torch.arange(b, device=x.device)[:, None, None]
    out = pad.permute(0, 2, 3, 1)[bi, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)  # NHWC buffer
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return out
    return out.contiguous()


def _affine(x: torch.Tensor, theta: torch.Tensor, fill: float = 0.5) -> torch.Tensor:
    """Resample each image through its own 2x3 matrix (output -> input, in [-1, 1] coordinates); the area that
    comes from outside the image is ``fill``."""
    grid = F.affine_grid(theta.to(x.device, x.dtype), tuple(x.shape), align_corners=False)
    out = F.grid_sample(x - fill, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out + fill


# -- colour -------------------------------------------------------------------------------------------------
_RGB_TO_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], dtype=torch.float64)
_YIQ_TO_RGB = torch.linalg.inv(_RGB_TO_YIQ)


def hue_matrices(shift: torch.Tensor) -> torch.Tensor:
    """``(B, 3, 3)`` RGB matrices that rotate the hue by ``shift`` (a fraction of the colour circle): a rotation
    of the chroma plane (I, Q) of YIQ about the grey axis, so luma is kept and grey stays grey."""
    a = -shift.double().flatten() * 2 * math.pi  # the sign makes red turn towards yellow and green, as in HSV
    rot = torch.zeros(len(a), 3, 3, dtype=torch.float64)
    rot[:, 0, 0] = 1
    rot[:, 1, 1], rot[:, 1, 2] = torch.cos(a), -torch.sin(a)
    rot[:, 2, 1], rot[:, 2, 2] = torch.sin(a), torch.cos(a)
    return (_YIQ_TO_RGB @ rot @ _RGB_TO_YIQ).float()


def adjust_brightness(x, factor):
    return (x * factor).clamp(0, 1)


def adjust_contrast(x, factor):
    mean = _grey(x).mean(dim=(1, 2, 3), keepdim=True)
    return ((x - mean) * factor + mean).clamp(0, 1)


def adjust_saturation(x, factor):
    if x.shape[1] != 3:
        return x
    grey = _grey(x)
    return ((x - grey) * factor + grey).clamp(0, 1)


def adjust_hue(x, shift):
    """Rotate the hue of each image by ``shift`` (a fraction of the colour circle; a tensor with one value per
    image) about the grey axis (:func:`hue_matrices`). One 3x3 matrix per image, so it costs one pass."""
    if x.shape[1] != 3:
        return x
    m = hue_matrices(torch.as_tensor(shift).reshape(-1).cpu().expand(x.shape[0])).to(x.device, x.dtype)
    return torch.einsum("bij,bjhw->bihw", m, x).clamp(0, 1)


def color_jitter(x: torch.Tensor, strength: float = 0.4, generator: torch.Generator | None = None,
                 hue: float = 0.0, p: float = 1.0) -> torch.Tensor:
    """Random brightness, contrast and saturation (each a factor in [1-s, 1+s]) and hue (a shift in [-hue, hue]
    of the colour circle), applied in that order to each image with probability ``p``.

    The values are clipped to [0, 1] after each step, as torchvision's ColorJitter does (which, unlike this,
    also shuffles the order of the four steps per call, and shifts the hue in HSV rather than by rotating the
    chroma plane).
    """
    if strength <= 0 and hue <= 0:
        return x
    b = x.shape[0]
    dev = x.device
    bright = _uniform(b, 1 - strength, 1 + strength, generator, dev).to(x.dtype).view(b, 1, 1, 1)
    contrast = _uniform(b, 1 - strength, 1 + strength, generator, dev).to(x.dtype).view(b, 1, 1, 1)
    sat = _uniform(b, 1 - strength, 1 + strength, generator, dev).to(x.dtype).view(b, 1, 1, 1)
    y = adjust_saturation(adjust_contrast(adjust_brightness(x, bright), contrast), sat)
    if hue > 0:
        y = adjust_hue(y, _uniform(b, -hue, hue, generator, "cpu"))
    if p < 1:
        y = _where(_chance(b, p, generator), y, x)
    return y


def random_grayscale(x: torch.Tensor, p: float = 0.2, generator: torch.Generator | None = None) -> torch.Tensor:
    """Replace each colour image by its luma (in every channel) with probability ``p``."""
    mask = _chance(len(x), p, generator)
    if x.shape[1] == 1:
        return x
    return _where(mask, _grey(x).expand_as(x), x)


def solarize(x: torch.Tensor, p: float = 0.2, threshold: float = 0.5,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """With probability ``p``, invert every value at or above ``threshold`` (``v -> 1 - v``)."""
    mask = _chance(len(x), p, generator)
    return _where(mask, torch.where(x >= threshold, 1.0 - x, x), x)


def _blur_kernels(sigma: torch.Tensor, k: int) -> torch.Tensor:
    r = torch.arange(k, dtype=torch.float32) - (k - 1) / 2
    ker = torch.exp(-0.5 * (r[None, :] / sigma[:, None]) ** 2)
    return ker / ker.sum(dim=1, keepdim=True)


def gaussian_blur(x: torch.Tensor, p: float = 0.5, sigma=(0.1, 2.0), kernel_size: int | None = None,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """With probability ``p``, blur each image with a Gaussian of standard deviation drawn in ``sigma`` (pixels).

    The kernel is separable, ``kernel_size`` wide (default: the odd number nearest a tenth of the smaller
    side, at least 3, as in SimCLR); the border is reflected. One grouped convolution does the whole batch.
    """
    b, c, h, w = x.shape
    mask = _chance(b, p, generator)
    s = _uniform(b, float(sigma[0]), float(sigma[1]), generator, "cpu")
    if kernel_size is None:
        kernel_size = max(3, int(round(min(h, w) / 10)) | 1)
    k = int(kernel_size)
    if k % 2 == 0 or k < 1:
        raise ValueError(f"gaussian_blur: kernel_size must be odd and positive, got {k}")
    if not bool(mask.any()):
        return x
    ker = _blur_kernels(s, k).to(x.device, x.dtype).repeat_interleave(c, dim=0)  # (B*C, k)
    pad = k // 2
    y = x.reshape(1, b * c, h, w)
    y = F.pad(y, (pad, pad, 0, 0), mode="reflect" if pad < w else "replicate")
    y = F.conv2d(y, ker.view(b * c, 1, 1, k), groups=b * c)
    y = F.pad(y, (0, 0, pad, pad), mode="reflect" if pad < h else "replicate")
    y = F.conv2d(y, ker.view(b * c, 1, k, 1), groups=b * c)
    return _where(mask, y.view(b, c, h, w), x)


def cutout(x: torch.Tensor, size: float = 0.5, p: float = 1.0, fill: float = 0.5,
           generator: torch.Generator | None = None) -> torch.Tensor:
    """With probability ``p``, fill one square with ``fill``: its side a random fraction (up to ``size``) of the
    image side, its centre anywhere in the image (the square may be clipped by the border)."""
    b, _, h, w = x.shape
    mask = _chance(b, p, generator)
    side = torch.rand(b, generator=generator) * size * min(h, w)
    cy = torch.rand(b, generator=generator) * h
    cx = torch.rand(b, generator=generator) * w
    ys = torch.arange(h, dtype=torch.float32)[None, :, None] + 0.5
    xs = torch.arange(w, dtype=torch.float32)[None, None, :] + 0.5
    inside = ((ys - cy[:, None, None]).abs() <= side[:, None, None] / 2) & \
             ((xs - cx[:, None, None]).abs() <= side[:, None, None] / 2) & mask[:, None, None]
    return torch.where(inside.to(x.device)[:, None], torch.full_like(x, fill), x)


# -- RandAugment-like strong policy ----------------------------------------------------------------------------
def autocontrast(x: torch.Tensor) -> torch.Tensor:
    """Stretch each channel of each image to the full [0, 1] range (constant channels are left alone)."""
    lo = x.amin(dim=(2, 3), keepdim=True)
    hi = x.amax(dim=(2, 3), keepdim=True)
    span = hi - lo
    return torch.where(span > 1e-6, (x - lo) / span.clamp(min=1e-6), x)


def equalize(x: torch.Tensor) -> torch.Tensor:
    """Histogram equalisation of each channel of each image on 256 levels (PIL's ``ImageOps.equalize``)."""
    b, c, h, w = x.shape
    q = (x.float() * 255).round().clamp(0, 255).long().reshape(b * c, h * w)
    hist = torch.zeros(b * c, 256, device=x.device).scatter_add_(1, q, torch.ones_like(q, dtype=torch.float32))
    levels = torch.arange(256, device=x.device).expand(b * c, 256)
    last = torch.where(hist > 0, levels, torch.zeros_like(levels)).amax(dim=1)  # the highest occupied level
    step = torch.floor((h * w - hist.gather(1, last[:, None]).squeeze(1)) / 255)
    before = hist.cumsum(dim=1) - hist  # pixels strictly below each level
    lut = torch.floor((before + torch.floor(step / 2)[:, None]) / step.clamp(min=1)[:, None]).clamp(0, 255)
    lut = torch.where((step > 0)[:, None], lut, levels.float())
    return (lut.gather(1, q) / 255).reshape(b, c, h, w).to(x.dtype)


def posterize(x: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """Keep the top ``bits`` (per image, 1-8) of each 8-bit value."""
    q = (x * 255).round().clamp(0, 255)
    step = (2.0 ** (8 - bits.to(x.device, x.dtype))).view(-1, 1, 1, 1)
    return torch.floor(q / step) * step / 255


def adjust_sharpness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL's sharpness: blend with the image smoothed by the 3x3 kernel (1 1 1 / 1 5 1 / 1 1 1)/13 (borders kept);
    factor 0 gives the smoothed image, 1 the original, above 1 sharpens."""
    b, c, h, w = x.shape
    if h < 3 or w < 3:
        return x
    ker = torch.ones(3, 3, device=x.device, dtype=x.dtype)
    ker[1, 1] = 5
    ker = (ker / 13).view(1, 1, 3, 3).expand(c, 1, 3, 3)
    smooth = x.clone()
    smooth[:, :, 1:-1, 1:-1] = F.conv2d(x, ker, groups=c)
    return (smooth + factor * (x - smooth)).clamp(0, 1)


def _rotation(angle_deg, h, w):
    a = angle_deg * math.pi / 180
    cos, sin = torch.cos(a), torch.sin(a)
    theta = torch.zeros(len(a), 2, 3)
    # rotation about the centre in pixel units, expressed in normalised coordinates
    theta[:, 0, 0], theta[:, 0, 1] = cos, -sin * h / w
    theta[:, 1, 0], theta[:, 1, 1] = sin * w / h, cos
    return theta


def _shear(s, axis):
    theta = torch.zeros(len(s), 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1
    theta[:, 0 if axis == "x" else 1, 1 if axis == "x" else 0] = s
    return theta


def _translate(t, axis):
    theta = torch.zeros(len(t), 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1
    theta[:, 0 if axis == "x" else 1, 2] = 2 * t  # a fraction of the side; [-1, 1] spans 2
    return theta


def _theta_rotate(m, s, h, w):
    return _rotation(s * m * 30.0, h, w)


def _theta_shear_x(m, s, h, w):
    return _shear(s * m * 0.3, "x")


def _theta_shear_y(m, s, h, w):
    return _shear(s * m * 0.3, "y")


def _theta_translate_x(m, s, h, w):
    return _translate(s * m * 0.3, "x")


def _theta_translate_y(m, s, h, w):
    return _translate(s * m * 0.3, "y")


#: the geometric operations as their affine matrices, name -> theta(magnitude, sign, height, width), so that
#: :func:`rand_augment` resamples every image that drew one of them in a single pass
_AFFINE_THETAS = {"rotate": _theta_rotate, "shear_x": _theta_shear_x, "shear_y": _theta_shear_y,
                  "translate_x": _theta_translate_x, "translate_y": _theta_translate_y}


def _affine_op(theta):
    """The operation ``op(x, m, s)`` that resamples ``x`` through ``theta(m, s, height, width)``."""
    return lambda x, m, s: _affine(x, theta(m, s, x.shape[2], x.shape[3]))


def _op_identity(x, m, s):
    return x


def _op_autocontrast(x, m, s):
    return autocontrast(x)


def _op_equalize(x, m, s):
    return equalize(x)


def _op_solarize(x, m, s):
    thr = _per_image(1.0 - m, x)
    return torch.where(x >= thr, 1.0 - x, x)


def _op_color(x, m, s):
    return adjust_saturation(x, _per_image(1 + s * m * 0.9, x))


def _op_contrast(x, m, s):
    return adjust_contrast(x, _per_image(1 + s * m * 0.9, x))


def _op_brightness(x, m, s):
    return adjust_brightness(x, _per_image(1 + s * m * 0.9, x))


def _op_sharpness(x, m, s):
    return adjust_sharpness(x, _per_image(1 + s * m * 0.9, x))


def _op_posterize(x, m, s):
    return posterize(x, 8 - torch.round(m * 4))


#: name -> op(x, magnitude in [0, 1] per image, sign +-1 per image). At magnitude 1: rotate 30 degrees, shear
#: 0.3, translate 30 % of the side, colour/contrast/brightness/sharpness factor 1 +- 0.9, solarize threshold 0,
#: posterize to 4 bits.
RAND_AUGMENT_OPS = {
    "identity": _op_identity, "autocontrast": _op_autocontrast, "equalize": _op_equalize,
    "rotate": _affine_op(_theta_rotate), "solarize": _op_solarize, "color": _op_color, "contrast": _op_contrast,
    "brightness": _op_brightness, "sharpness": _op_sharpness, "shear_x": _affine_op(_theta_shear_x),
    "shear_y": _affine_op(_theta_shear_y), "translate_x": _affine_op(_theta_translate_x),
    "translate_y": _affine_op(_theta_translate_y), "posterize": _op_posterize,
}


def rand_augment(x: torch.Tensor, n_ops: int = 4, magnitude: float | None = None,
                 generator: torch.Generator | None = None, ops=None) -> torch.Tensor:
    """RandAugment-like: ``n_ops`` rounds; in each, every image gets one operation drawn uniformly from ``ops``
    (default :data:`RAND_AUGMENT_OPS`) at a magnitude in [0, 1] (``magnitude``, or drawn per image and round
    when None, as SCAN's strong augmentation does) with a random sign for the signed operations.

    Each round draws its choices for the whole batch, gathers the images once in the order of their operation
    (the geometric ones last), runs every other operation once on its contiguous slice and every geometric one
    in a single affine resampling, then scatters the images back: a few launches per operation, which is what
    a GPU step pays for.
    """
    names = list(RAND_AUGMENT_OPS) if ops is None else list(ops)
    unknown = [n for n in names if n not in RAND_AUGMENT_OPS]
    if unknown:
        raise ValueError(f"rand_augment: unknown operation(s) {unknown}; known: {', '.join(RAND_AUGMENT_OPS)}")
    b, _, h, w = x.shape
    run_order = sorted(range(len(names)), key=lambda j: names[j] in _AFFINE_THETAS)  # stable: geometric last
    rank = torch.empty(len(names), dtype=torch.int64)
    rank[run_order] = torch.arange(len(names))
    for _ in range(int(n_ops)):
        choice = torch.randint(len(names), (b,), generator=generator)
        mag = torch.rand(b, generator=generator) if magnitude is None else torch.full((b,), float(magnitude))
        sign = torch.where(torch.rand(b, generator=generator) < 0.5, -1.0, 1.0)
        order = torch.argsort(rank[choice], stable=True)
        counts = torch.bincount(choice, minlength=len(names)).tolist()
        mag, sign = mag[order], sign[order]
        order_d = order.to(x.device)
        grouped = x[order_d]
        start, thetas, affine_from = 0, [], None
        for j in run_order:
            rows = slice(start, start + counts[j])
            start += counts[j]
            if counts[j] == 0 or names[j] == "identity":
                continue
            if names[j] in _AFFINE_THETAS:
                affine_from = rows.start if affine_from is None else affine_from
                thetas.append(_AFFINE_THETAS[names[j]](mag[rows], sign[rows], h, w))
            else:
                grouped[rows] = RAND_AUGMENT_OPS[names[j]](grouped[rows], mag[rows], sign[rows]).to(x.dtype)
        if thetas:
            grouped[affine_from:] = _affine(grouped[affine_from:], torch.cat(thetas)).to(x.dtype)
        out = torch.empty_like(x)
        out[order_d] = grouped
        x = out.clamp(0, 1)
    return x


# -- policies -------------------------------------------------------------------------------------------------
@dataclass
class ContrastiveAugment:
    """The SimCLR view: random resized crop (+ flip), colour jitter with probability ``jitter_p``, grayscale
    with probability ``grayscale_p``, Gaussian blur with ``blur_p`` and solarize with ``solarize_p``."""

    crop_scale: tuple = (0.2, 1.0)
    crop_ratio: tuple = (3 / 4, 4 / 3)
    flip: bool = True
    jitter: float = 0.4
    hue: float = 0.1
    jitter_p: float = 0.8
    grayscale_p: float = 0.2
    blur_p: float = 0.0
    solarize_p: float = 0.0

    def __call__(self, x: torch.Tensor, generator: torch.Generator, size=None) -> torch.Tensor:
        x = random_resized_crop(x, size, scale=tuple(self.crop_scale), ratio=tuple(self.crop_ratio),
                                flip=self.flip, generator=generator)
        x = color_jitter(x, self.jitter, generator=generator, hue=self.hue, p=self.jitter_p)
        x = random_grayscale(x, self.grayscale_p, generator=generator)
        x = gaussian_blur(x, self.blur_p, generator=generator)
        return solarize(x, self.solarize_p, generator=generator)


@dataclass
class WeakAugment:
    """A light view: random resized crop over ``crop_scale`` of the area, and a flip."""

    crop_scale: tuple = (0.6, 1.0)
    flip: bool = True

    def __call__(self, x: torch.Tensor, generator: torch.Generator, size=None) -> torch.Tensor:
        return random_resized_crop(x, size, scale=tuple(self.crop_scale), flip=self.flip, generator=generator)


@dataclass
class StrongAugment:
    """SCAN's strong view: a light crop and flip, then :func:`rand_augment` (``n_ops`` operations), then one
    :func:`cutout` square of up to ``cutout`` of the side (0: none)."""

    crop_scale: tuple = (0.6, 1.0)
    flip: bool = True
    n_ops: int = 4
    magnitude: float | None = None
    cutout: float = 0.5

    def __call__(self, x: torch.Tensor, generator: torch.Generator, size=None) -> torch.Tensor:
        x = random_resized_crop(x, size, scale=tuple(self.crop_scale), flip=self.flip, generator=generator)
        x = rand_augment(x, self.n_ops, self.magnitude, generator=generator)
        if self.cutout > 0:
            x = cutout(x, self.cutout, generator=generator)
        return x
