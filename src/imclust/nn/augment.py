"""Batched image augmentations on torch tensors (no torchvision): random resized crop, flip, colour jitter.

Every function takes a ``(B, C, H, W)`` float batch and a ``torch.Generator`` (so a seed fixes the views),
draws one set of parameters per image and works on the whole batch at once. The crop and flip are one
affine resampling (``affine_grid`` + bilinear ``grid_sample``), so they cost one pass over the batch on
any device.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _uniform(n, lo, hi, g, device):
    return torch.rand(n, generator=g).to(device) * (hi - lo) + lo


def random_resized_crop(x: torch.Tensor, size=None, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), flip: bool = False,
                        generator: torch.Generator | None = None) -> torch.Tensor:
    """Crop a random area (a ``scale`` fraction of the image, aspect ratio in ``ratio``) and resize it to ``size``.

    As torchvision's RandomResizedCrop, except that a crop larger than the image in one direction is
    clipped to it rather than redrawn. With ``flip``, each image is mirrored left-right with probability 1/2.
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


def color_jitter(x: torch.Tensor, strength: float = 0.4, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random brightness, contrast and (for colour images) saturation, each a factor in [1-s, 1+s]."""
    if strength <= 0:
        return x
    b, c = x.shape[:2]
    dev = x.device
    bright = _uniform(b, 1 - strength, 1 + strength, generator, dev).to(x.dtype).view(b, 1, 1, 1)
    contrast = _uniform(b, 1 - strength, 1 + strength, generator, dev).to(x.dtype).view(b, 1, 1, 1)
    sat = _uniform(b, 1 - strength, 1 + strength, generator, dev).to(x.dtype).view(b, 1, 1, 1)
    x = x * bright
    grey = x.mean(dim=1, keepdim=True) if c == 1 else (0.299 * x[:, :1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
    x = (x - grey.mean(dim=(2, 3), keepdim=True)) * contrast + grey.mean(dim=(2, 3), keepdim=True)
    if c == 3:
        grey = 0.299 * x[:, :1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]
        x = (x - grey) * sat + grey
    return x.clamp(0, 1)


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
