"""Preprocessing for pretrained CNNs, on PIL images and tensors (no torchvision needed).

Two named pipelines:

- ``standard``: resize the shorter side to 256, centre-crop 224, scale to [0, 1], normalise with the
  ImageNet mean and standard deviation. This is how torchvision's ImageNet weights were evaluated.
- ``tutorial``: the photo-folder tutorial's centre-crop 512, then resize to 448. The tutorial feeds the
  result to an ImageNet VGG16 without normalising it (and, reading with OpenCV, in BGR order); here the
  image is RGB and, by default, normalised, because that is what the published weights expect.
  ``normalize=False`` gives the tutorial's unnormalised input.

``size`` rescales either pipeline for a smaller input (``standard`` with ``size=64`` resizes to 73 and
crops 64; ``tutorial`` with ``size=64`` crops 512 and resizes to 64).

A crop larger than the image pads it with black, as a centre crop does in torchvision.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from PIL import Image

from ..errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

PRESETS = ("standard", "tutorial")


def resize_shorter(im: Image.Image, size: int) -> Image.Image:
    """Resize so the shorter side is ``size``, keeping the aspect ratio (bilinear, antialiased)."""
    w, h = im.size
    if min(w, h) == size:
        return im
    if w <= h:
        nw, nh = size, max(1, int(size * h / w))
    else:
        nw, nh = max(1, int(size * w / h)), size
    return im.resize((nw, nh), Image.BILINEAR)


def resize_exact(im: Image.Image, hw: tuple[int, int]) -> Image.Image:
    h, w = hw
    if im.size == (w, h):
        return im
    return im.resize((w, h), Image.BILINEAR)


def center_crop(im: Image.Image, size: int) -> Image.Image:
    """The central ``size``×``size`` square; parts outside the image are black."""
    w, h = im.size
    if (w, h) == (size, size):
        return im
    left = int(round((w - size) / 2.0))
    top = int(round((h - size) / 2.0))
    return im.crop((left, top, left + size, top + size))


def to_uint8_tensor(im: Image.Image) -> torch.Tensor:
    """RGB PIL image → ``(3, H, W)`` uint8 tensor."""
    if im.mode != "RGB":
        im = im.convert("RGB")
    arr = np.asarray(im, dtype=np.uint8)
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


@dataclass(frozen=True)
class Preprocess:
    """A resolved preprocessing pipeline. ``describe()`` is part of the feature-cache key."""

    preset: str = "standard"
    size: int | None = None
    normalize: bool = True

    def __post_init__(self):
        if self.preset not in PRESETS:
            raise UserError(f"unknown preprocessing {self.preset!r}; choose one of {', '.join(PRESETS)}")
        if self.size is not None and (not isinstance(self.size, (int, np.integer)) or self.size < 8):
            raise UserError(f"preprocessing size {self.size!r}: give a whole number of pixels, at least 8")

    @property
    def steps(self) -> list[tuple[str, int]]:
        if self.preset == "standard":
            crop = int(self.size or 224)
            return [("resize", int(round(crop * 256 / 224))), ("center_crop", crop)]
        return [("center_crop", 512), ("resize", int(self.size or 448))]

    @property
    def output_size(self) -> int:
        return self.steps[-1][1]

    def describe(self) -> dict:
        return {**asdict(self), "steps": self.steps,
                "mean": IMAGENET_MEAN if self.normalize else None, "std": IMAGENET_STD if self.normalize else None}

    def pil_to_uint8(self, im: Image.Image) -> torch.Tensor:
        """The geometric part (resize / crop) and RGB conversion: a ``(3, S, S)`` uint8 tensor."""
        if im.mode != "RGB":
            im = im.convert("RGB")
        for op, n in self.steps:
            if op == "resize":
                im = resize_shorter(im, n)
            else:
                im = center_crop(im, n)
        # a shorter-side resize of a square crop is already square; make sure for any aspect ratio
        s = self.output_size
        if im.size != (s, s):
            im = center_crop(im, s)
        return to_uint8_tensor(im)

    def finish(self, batch_u8: torch.Tensor) -> torch.Tensor:
        """uint8 ``(B, 3, S, S)`` → float in [0, 1], normalised when asked."""
        x = batch_u8.float().div_(255.0)
        if self.normalize:
            mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
            std = torch.tensor(IMAGENET_STD, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
            x = x.sub_(mean).div_(std)
        return x
