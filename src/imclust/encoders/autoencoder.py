"""Autoencoder encoder: train an autoencoder on the images (reconstruction MSE) and use its code as features.

Built on :class:`~imclust.encoders.base.TrainableEncoder`: training goes through the shared loop (device,
fp32 or bf16 with channels_last, seeding, progress bar, checkpoints, exact resume, the NaN stop), and the
trained weights are saved with the pipeline (safetensors), together with the loss history, so a saved
model encodes new images without retraining.

Figures (``write_figures``): ``loss_curve.png``, ``history.json``, ``reconstructions.png`` (originals top
row, reconstructions bottom row, for ``recon_indices``) and, for a 3-D code, ``scatter_3d.png`` (the codes
of the first 200 images drawn as their true label, or cluster id when no labels exist, as tutorial 5 does).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..base import register
from ..data import ImageSet, shrink_to_max_side
from ..errors import UserError
from ..nn.augment import random_shift
from ..nn.autoencoders import ARCHITECTURES, count_parameters, make_autoencoder
from ..progress import log
from .base import TrainableEncoder, _whole


def _size_tuple(size):
    if size is None:
        return None
    if isinstance(size, (int, np.integer)):
        return (int(size), int(size))
    if isinstance(size, (list, tuple)) and len(size) == 2:
        return (int(size[0]), int(size[1]))
    raise UserError(f"autoencoder size {size!r}: give one number or [height, width]")


@register("autoencoder")
class AutoencoderEncoder(TrainableEncoder):
    """Train an autoencoder (``arch``: conv_hw9, mlp3, dec, conv_digits) and encode images with it.

    Parameters: ``size`` ([H, W] or one int) and ``channels`` convert the input first (by default the
    source's own shape; conv_hw9 rounds H and W to the nearest multiple of 8 and says so). Without ``size``,
    ``max_side`` shrinks images whose longer side exceeds it to that side (antialiased, aspect kept): a
    network's cost grows with the pixels it sees, and larger scans or shapes train for minutes. ``code_dim``
    sets the code size of mlp3/dec/conv_digits. ``noise`` (std of Gaussian input noise: a denoising AE),
    ``shift`` (random translation by up to this many pixels, as augmentation). ``min_steps``: train for more
    epochs than ``epochs`` when needed to take at least this many optimizer steps (small sets otherwise get
    too few updates; the epoch count used is ``epochs_``). ``recon_indices`` chooses the images of the
    reconstruction figure; ``infer_batch_size`` the batch of the encoding pass. Training parameters
    (``epochs``, ``batch_size``, ``lr``, ``optimizer``, ``seed``, ``device``, ``precision``,
    ``channels_last``, checkpoints, ``resume``, ...) are those of :class:`TrainableEncoder`.
    """

    arch: str = "conv_digits"
    size: object = None
    max_side: int | None = None
    channels: int | None = None
    code_dim: int | None = None
    noise: float = 0.0
    shift: int = 0
    recon_indices: object = None
    infer_batch_size: int = 512
    min_steps: int = 0
    epochs: int = 20

    INFERENCE_ONLY = ("recon_indices", "infer_batch_size")

    # -- input -------------------------------------------------------------------------------------------
    def check_method_params(self):
        if self.arch not in ARCHITECTURES:
            raise UserError(f"unknown autoencoder architecture {self.arch!r}; choose one of {', '.join(ARCHITECTURES)}")
        if self.noise < 0 or int(self.shift) < 0:
            raise UserError("autoencoder noise and shift must be zero or positive")
        if self.max_side is not None and (not _whole(self.max_side) or self.max_side < 1):
            raise UserError(f"autoencoder max_side={self.max_side!r}: give a whole number of pixels, e.g. 32, "
                            "or leave it out to keep the images' size")

    def _fit_shape(self, ds: ImageSet) -> tuple[int, int, int]:
        size = _size_tuple(self.size) or shrink_to_max_side(int(ds.shape[1]), int(ds.shape[2]), self.max_side)
        c = int(self.channels or ds.shape[0])
        if self.arch == "conv_hw9" and (size[0] % 8 or size[1] % 8):
            new = tuple(max(8, int(round(s / 8)) * 8) for s in size)
            log(f"conv_hw9 needs sides that are multiples of 8: resizing {size[0]}×{size[1]} images to {new[0]}×{new[1]}")
            size = new
        return (c, size[0], size[1])

    def _scale(self, x: np.ndarray) -> np.ndarray:
        lo, hi = self.net_.input_range
        return x if (lo, hi) == (0.0, 1.0) else (x * (hi - lo) + lo).astype(np.float32)

    def _unscale(self, x: np.ndarray) -> np.ndarray:
        lo, hi = self.net_.input_range
        return x if (lo, hi) == (0.0, 1.0) else (x - lo) / (hi - lo)

    def _array(self, ds: ImageSet, desc: str = "decode") -> np.ndarray:
        view = self.input_view(ds)
        return self._scale(view.to_array(desc=desc))

    # -- training hooks ----------------------------------------------------------------------------------
    def prepare_data(self, ds: ImageSet) -> int:
        self.input_shape_ = list(self._fit_shape(ds))
        self._X = torch.from_numpy(self.input_view(ds).to_array(desc="decode"))  # in [0, 1]; scaled per batch
        return len(self._X)

    def build_modules(self) -> dict:
        net = make_autoencoder(self.arch, self.input_shape_, self.code_dim)
        self.n_parameters_ = count_parameters(net)
        log(f"autoencoder {self.arch}: input {'×'.join(map(str, self.input_shape_))}, {self.n_parameters_:,} parameters")
        return {"net": net}

    def planned_epochs(self, n: int) -> int:
        steps_per_epoch = -(-n // int(self.batch_size))
        epochs = max(int(self.epochs), -(-int(self.min_steps or 0) // steps_per_epoch))
        if epochs > int(self.epochs):
            log(f"training {epochs} epochs instead of {self.epochs} to take at least {self.min_steps} steps")
        return epochs

    def training_step(self, idx, trainer):
        lo, hi = self.net_.input_range
        target = trainer.to_device(self._X[idx])
        if (lo, hi) != (0.0, 1.0):
            target = target * (hi - lo) + lo
        inp = target
        if int(self.shift):
            inp = target = random_shift(inp, int(self.shift), fill=lo)
        if self.noise:
            inp = (inp + float(self.noise) * (hi - lo) * torch.randn_like(inp)).clamp(lo, hi)
        _, recon = trainer.modules["net"](inp)
        return torch.mean((recon.float() - target.float()) ** 2)

    def on_fit_end(self, trainer):
        self._X = None

    # -- encoding ----------------------------------------------------------------------------------------
    def transform(self, ds: ImageSet) -> np.ndarray:
        self.require_fitted()
        X = self._array(ds, desc="decode")
        return self.encode_array(X)

    def encode_array(self, X: np.ndarray) -> np.ndarray:
        """Codes of images already at the fitted shape and scale, flattened to (n, d)."""
        self.require_fitted()
        z = self.features(self.net_.encode, X, batch_size=int(self.infer_batch_size),
                          desc="encode" if len(X) > 5000 else None)
        return z.reshape(len(X), -1).astype(np.float32)

    def reconstruct(self, ds: ImageSet, indices) -> tuple[np.ndarray, np.ndarray]:
        """Originals and reconstructions of ``indices``, both in [0, 1] at the fitted shape."""
        self.require_fitted()
        view = self.input_view(ds)
        orig = view.load(np.asarray(indices))
        net = self.net_.eval().to("cpu")
        with torch.no_grad():
            _, rec = net(torch.from_numpy(self._scale(orig)))
        return orig, np.clip(self._unscale(rec.float().numpy()), 0, 1)

    # -- figures -------------------------------------------------------------------------------------------
    def write_figures(self, result, out) -> dict[str, Path]:
        from ..report import figures as F

        out = Path(out)
        figs = super().write_figures(result, out)  # history.json, loss_curve.png
        ds = result.dataset
        if ds is None or len(ds) == 0:
            return figs
        idx = self.recon_indices
        if idx is None:
            idx = list(range(min(8, len(ds))))
        idx = [int(i) for i in idx]
        bad = [i for i in idx if not 0 <= i < len(ds)]
        if bad:
            raise UserError(f"recon_indices {bad} are outside 0..{len(ds) - 1}; choose indices of existing images")
        orig, rec = self.reconstruct(ds, idx)
        figs["reconstructions"] = F.recon_grid(orig, rec, out / "reconstructions.png")
        with torch.no_grad():
            code_dim = int(np.prod(self.net_.to("cpu").encode(torch.zeros((1, *self.input_shape_))).shape[1:]))
        if code_dim == 3:
            n = min(200, len(ds))
            codes = self.transform(ds.subset(list(range(n))))
            if result.true_labels is not None and len(result.true_labels) == len(ds):
                values, what = np.asarray(result.true_labels)[:n], "true label"
            else:
                values, what = np.asarray(result.labels)[:n], "cluster"
            figs["scatter_3d"] = F.scatter_3d(codes, values, out / "scatter_3d.png",
                                              title=f"3-D codes of the first {n} images ({what})", annotate=True)
        return figs

