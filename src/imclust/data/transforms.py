"""Preprocessing for pretrained CNNs, on PIL images and tensors (no torchvision needed).

Named pipelines:

- ``standard``: resize the shorter side to 256, centre-crop 224, scale to [0, 1], normalise with the
  ImageNet mean and standard deviation. This is how torchvision's ImageNet weights were evaluated.
- ``tutorial``: the photo-folder tutorial's centre-crop 512, then resize to 448. The tutorial feeds the
  result to an ImageNet VGG16 without normalising it (and, reading with OpenCV, in BGR order); here the
  image is RGB and, by default, normalised, because that is what the published weights expect.
  ``normalize=False`` gives the tutorial's unnormalised input.
- ``efficientnet``: TensorFlow's evaluation recipe for the EfficientNet-Lite weights: the shorter side
  resized to S + 32, a centre crop of S (the model's own size, ``native``), then ``(x − 127) / 128`` on the
  0–255 scale.
- ``model``: what a model's own processor config says (Hugging Face ``preprocessor_config.json``: resize
  to a shortest edge or to an exact square, optional centre crop, resampling filter, mean and std), passed
  as ``config`` (:meth:`Preprocess.from_processor`).

``size`` rescales any pipeline for a smaller input (``standard`` with ``size=64`` resizes to 73 and
crops 64; ``tutorial`` with ``size=64`` crops 512 and resizes to 64; ``efficientnet`` resizes to 96 and
crops 64; ``model`` keeps its resize-to-crop ratio).

A crop larger than the image pads it with black, as a centre crop does in torchvision.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from ..errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# TensorFlow's EfficientNet-Lite normalisation, (x - 127) / 128 on the 0-255 scale, written for x in [0, 1]
TF_LITE_MEAN = (127.0 / 255.0,) * 3
TF_LITE_STD = (128.0 / 255.0,) * 3

PRESETS = ("standard", "tutorial", "efficientnet", "model")


def resize_shorter(im: Image.Image, size: int, resample: int = Image.BILINEAR) -> Image.Image:
    """Resize so the shorter side is ``size``, keeping the aspect ratio (bilinear by default, antialiased)."""
    w, h = im.size
    if min(w, h) == size:
        return im
    if w <= h:
        nw, nh = size, max(1, int(size * h / w))
    else:
        nw, nh = max(1, int(size * w / h)), size
    return im.resize((nw, nh), resample)


def resize_exact(im: Image.Image, hw: tuple[int, int], resample: int = Image.BILINEAR) -> Image.Image:
    h, w = hw
    if im.size == (w, h):
        return im
    return im.resize((w, h), resample)


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
    """A resolved preprocessing pipeline. ``describe()`` is part of the feature-cache key.

    ``native`` is the model's own input size (``efficientnet``); ``config`` holds a model's processor
    settings as sorted ``(key, value)`` pairs (``model``): ``resize`` (shortest edge) or ``resize_exact``
    (a square side), ``crop`` (or absent), ``resample`` (PIL filter code), ``mean`` and ``std`` (or absent).
    """

    preset: str = "standard"
    size: int | None = None
    normalize: bool = True
    native: int | None = None
    config: tuple = ()

    def __post_init__(self):
        if self.preset not in PRESETS:
            raise UserError(f"unknown preprocessing {self.preset!r}; choose one of {', '.join(PRESETS)}")
        if self.size is not None and (not isinstance(self.size, (int, np.integer)) or self.size < 8):
            raise UserError(f"preprocessing size {self.size!r}: give a whole number of pixels, at least 8")
        if self.preset == "model" and not self.config:
            raise UserError("preprocessing 'model' needs the model's processor settings; use preprocess = 'auto'")

    @classmethod
    def from_processor(cls, cfg: dict, size: int | None = None, normalize: bool = True) -> "Preprocess":
        """From a Hugging Face ``preprocessor_config.json`` (its ``size``, ``crop_size``, ``resample``, mean, std).

        A ``size`` given as one number is a shortest edge when the processor also crops (CLIP's old
        format), else the side of an exact square.
        """
        crops = bool(cfg.get("do_center_crop", "crop_size" in cfg))

        def side(v, what):
            if isinstance(v, (int, np.integer)):
                return ("resize" if crops else "resize_exact"), int(v)
            v = dict(v or {})
            if "shortest_edge" in v:
                return "resize", int(v["shortest_edge"])
            if "height" in v and "width" in v:
                if int(v["height"]) != int(v["width"]):
                    raise UserError(f"the model's processor {what} is {v['height']}x{v['width']}; only square inputs are supported")
                return "resize_exact", int(v["height"])
            raise UserError(f"the model's processor {what} {v!r} is not understood (shortest_edge or height/width)")

        out: dict = {}
        if cfg.get("do_resize", True) and cfg.get("size") is not None:
            kind, n = side(cfg["size"], "size")
            out[kind] = n
        if crops and cfg.get("crop_size") is not None:
            out["crop"] = side(cfg["crop_size"], "crop_size")[1]
        if "resize" not in out and "resize_exact" not in out and "crop" not in out:
            raise UserError("the model's processor neither resizes nor crops; images of mixed sizes cannot be batched")
        out["resample"] = int(cfg.get("resample", Image.BICUBIC))
        if cfg.get("do_normalize", True) and cfg.get("image_mean") is not None:
            out["mean"] = tuple(float(m) for m in cfg["image_mean"])
            out["std"] = tuple(float(m) for m in cfg["image_std"])
        return cls("model", size, normalize, None, tuple(sorted(out.items())))

    @property
    def steps(self) -> list[tuple[str, int]]:
        if self.preset == "standard":
            crop = int(self.size or 224)
            return [("resize", int(round(crop * 256 / 224))), ("center_crop", crop)]
        if self.preset == "efficientnet":
            crop = int(self.size or self.native or 224)
            return [("resize", crop + 32), ("center_crop", crop)]
        if self.preset == "model":
            cfg = dict(self.config)
            out = cfg.get("crop") or cfg.get("resize") or cfg.get("resize_exact")
            scale = (self.size / out) if self.size else 1.0
            steps = []
            if "resize" in cfg:
                steps.append(("resize", max(1, int(round(cfg["resize"] * scale)))))
            if "resize_exact" in cfg:
                steps.append(("resize_exact", max(1, int(round(cfg["resize_exact"] * scale)))))
            if cfg.get("crop"):
                steps.append(("center_crop", int(self.size or cfg["crop"])))
            return steps
        return [("center_crop", 512), ("resize", int(self.size or 448))]

    @property
    def output_size(self) -> int:
        return self.steps[-1][1]

    @property
    def resample(self) -> int:
        return int(dict(self.config).get("resample", Image.BILINEAR))

    @property
    def mean_std(self) -> tuple[tuple, tuple] | None:
        """Per-channel mean and std on the [0, 1] scale, or None when nothing is normalised."""
        if not self.normalize:
            return None
        if self.preset == "efficientnet":
            return TF_LITE_MEAN, TF_LITE_STD
        if self.preset == "model":
            cfg = dict(self.config)
            return (cfg["mean"], cfg["std"]) if "mean" in cfg else None
        return IMAGENET_MEAN, IMAGENET_STD

    def describe(self) -> dict:
        ms = self.mean_std
        d = {"preset": self.preset, "size": self.size, "normalize": self.normalize, "steps": self.steps,
             "mean": ms[0] if ms else None, "std": ms[1] if ms else None}
        if self.native is not None:
            d["native"] = self.native
        if self.config:
            d["config"] = [list(kv) for kv in self.config]
        return d

    def pil_to_uint8(self, im: Image.Image) -> torch.Tensor:
        """The geometric part (resize / crop) and RGB conversion: a ``(3, S, S)`` uint8 tensor."""
        if im.mode != "RGB":
            im = im.convert("RGB")
        rs = self.resample
        for op, n in self.steps:
            if op == "resize":
                im = resize_shorter(im, n, rs)
            elif op == "resize_exact":
                im = resize_exact(im, (n, n), rs)
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
        ms = self.mean_std
        if ms is not None:
            mean = torch.tensor(ms[0], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
            std = torch.tensor(ms[1], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
            x = x.sub_(mean).div_(std)
        return x
