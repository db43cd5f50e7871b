"""Autoencoder encoder: train an autoencoder on the images (reconstruction MSE) and use its code as features.

Training goes through the shared loop (:class:`imclust.nn.train.Trainer`): device, fp32 or bf16 with
channels_last, seeding, progress bar, checkpoints, exact resume and the NaN stop all come from there. The
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
from ..data import ImageSet
from ..errors import UserError
from ..nn.autoencoders import ARCHITECTURES, count_parameters, make_autoencoder
from ..nn.train import (TrainConfig, Trainer, batch_indices, load_module_arrays, module_arrays, pick_device,
                        predict_batches, seed_all)
from ..progress import log
from .base import Encoder


def _size_tuple(size):
    if size is None:
        return None
    if isinstance(size, (int, np.integer)):
        return (int(size), int(size))
    if isinstance(size, (list, tuple)) and len(size) == 2:
        return (int(size[0]), int(size[1]))
    raise UserError(f"autoencoder size {size!r}: give one number or [height, width]")


@register("autoencoder")
class AutoencoderEncoder(Encoder):
    """Train an autoencoder (``arch``: conv_hw9, mlp3, dec, conv_digits) and encode images with it.

    Parameters: ``size`` ([H, W] or one int) and ``channels`` convert the input first (by default the
    source's own shape; conv_hw9 rounds H and W to the nearest multiple of 8 and says so). ``code_dim``
    sets the code size of mlp3/dec/conv_digits. Training: ``epochs``, ``batch_size``, ``lr``,
    ``weight_decay``, ``optimizer``, ``seed``, ``device`` (auto, cpu, cuda, mps), ``precision`` (fp32,
    bf16), ``channels_last``, ``noise`` (std of Gaussian input noise: a denoising AE), ``shift`` (random
    translation by up to this many pixels, as augmentation), ``checkpoint_dir``/``checkpoint_every``/
    ``resume``. ``min_steps``: train for more epochs than ``epochs`` when needed to take at least this many
    optimizer steps (small sets otherwise get too few updates; the epoch count used is ``epochs_``).
    ``recon_indices`` chooses the images of the reconstruction figure.
    """

    trainable = True

    def __init__(self, arch: str = "conv_digits", size=None, channels: int | None = None, code_dim: int | None = None,
                 epochs: int = 20, batch_size: int = 256, lr: float = 1e-3, weight_decay: float = 0.0,
                 optimizer: str = "adam", seed: int = 0, device: str = "auto", precision: str = "fp32",
                 channels_last: bool = False, noise: float = 0.0, shift: int = 0, checkpoint_dir: str | None = None,
                 checkpoint_every: int = 10, resume: bool = False, recon_indices=None, infer_batch_size: int = 512,
                 min_steps: int = 0):
        self.arch = arch
        self.size = size
        self.channels = channels
        self.code_dim = code_dim
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.optimizer = optimizer
        self.seed = seed
        self.device = device
        self.precision = precision
        self.channels_last = channels_last
        self.noise = noise
        self.shift = shift
        self.checkpoint_dir = checkpoint_dir
        self.checkpoint_every = checkpoint_every
        self.resume = resume
        self.recon_indices = recon_indices
        self.infer_batch_size = infer_batch_size
        self.min_steps = min_steps

    # -- input -------------------------------------------------------------------------------------------
    def _check_params(self):
        if self.arch not in ARCHITECTURES:
            raise UserError(f"unknown autoencoder architecture {self.arch!r}; choose one of {', '.join(ARCHITECTURES)}")
        for name in ("epochs", "batch_size"):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or v < 1:
                raise UserError(f"autoencoder {name} must be a whole number of at least 1, got {v!r}")
        if not (isinstance(self.lr, (int, float)) and self.lr > 0):
            raise UserError(f"autoencoder lr must be a positive number, got {self.lr!r}")
        if self.noise < 0 or int(self.shift) < 0:
            raise UserError("autoencoder noise and shift must be zero or positive")

    def _fit_shape(self, ds: ImageSet) -> tuple[int, int, int]:
        size = _size_tuple(self.size) or (int(ds.shape[1]), int(ds.shape[2]))
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

    # -- fitting -----------------------------------------------------------------------------------------
    def _build(self):
        self.net_ = make_autoencoder(self.arch, self.input_shape_, self.code_dim)
        self.n_parameters_ = count_parameters(self.net_)

    def fit(self, ds: ImageSet, y=None):
        self._check_params()
        self.input_shape_ = list(self._fit_shape(ds))
        seed_all(int(self.seed))
        self._build()
        log(f"autoencoder {self.arch}: input {'×'.join(map(str, self.input_shape_))}, "
            f"{self.n_parameters_:,} parameters")
        X = torch.from_numpy(self._array(ds))
        steps_per_epoch = -(-len(X) // int(self.batch_size))
        self.epochs_ = max(int(self.epochs), -(-int(self.min_steps or 0) // steps_per_epoch))
        if self.epochs_ > int(self.epochs):
            log(f"training {self.epochs_} epochs instead of {self.epochs} to take at least {self.min_steps} steps")
        cfg = TrainConfig(epochs=self.epochs_, batch_size=int(self.batch_size), lr=float(self.lr),
                          weight_decay=float(self.weight_decay), optimizer=self.optimizer, seed=int(self.seed),
                          device=self.device, precision=self.precision, channels_last=bool(self.channels_last),
                          checkpoint_dir=self.checkpoint_dir, checkpoint_every=int(self.checkpoint_every),
                          resume=bool(self.resume),
                          extra={"arch": self.arch, "input_shape": self.input_shape_, "code_dim": self.code_dim,
                                 "noise": self.noise, "shift": self.shift, "n": len(X)})
        trainer = Trainer({"net": self.net_}, cfg, desc=f"autoencoder {self.arch}",
                          fingerprint={"data": [len(X), list(X.shape[1:])]})
        noise, shift = float(self.noise), int(self.shift)
        lo, hi = self.net_.input_range

        def step(idx, t):
            target = t.to_device(X[idx])
            inp = target
            if shift:
                inp = _random_shift(inp, shift, fill=lo)
                target = inp
            if noise:
                inp = (inp + noise * (hi - lo) * torch.randn_like(inp)).clamp(lo, hi)
            _, recon = t.modules["net"](inp)
            return torch.mean((recon.float() - target.float()) ** 2)

        self.history_ = trainer.fit(step, lambda e, g: batch_indices(len(X), cfg.batch_size, g))
        self.net_.eval()
        return self

    # -- encoding ----------------------------------------------------------------------------------------
    def _require_fitted(self):
        if getattr(self, "net_", None) is None:
            raise UserError("the autoencoder is not trained yet; fit it (imclust run) before encoding")

    def transform(self, ds: ImageSet) -> np.ndarray:
        self._require_fitted()
        X = self._array(ds, desc="decode")
        return self.encode_array(X)

    def encode_array(self, X: np.ndarray) -> np.ndarray:
        """Codes of images already at the fitted shape and scale, flattened to (n, d)."""
        self._require_fitted()
        net = self.net_.eval()
        dev = pick_device(self.device)
        net.to(dev)
        z = predict_batches(net.encode, X, batch_size=int(self.infer_batch_size), device=dev,
                            precision=self.precision, desc="encode" if len(X) > 5000 else None)
        return z.reshape(len(X), -1).astype(np.float32)

    def reconstruct(self, ds: ImageSet, indices) -> tuple[np.ndarray, np.ndarray]:
        """Originals and reconstructions of ``indices``, both in [0, 1] at the fitted shape."""
        self._require_fitted()
        view = self.input_view(ds)
        orig = view.load(np.asarray(indices))
        net = self.net_.eval().to("cpu")
        with torch.no_grad():
            _, rec = net(torch.from_numpy(self._scale(orig)))
        return orig, np.clip(self._unscale(rec.float().numpy()), 0, 1)

    # -- state ---------------------------------------------------------------------------------------------
    def get_state(self):
        arrays, extra = super().get_state()
        if getattr(self, "net_", None) is not None:
            arrays.update(module_arrays(self.net_, "net."))
        return arrays, extra

    def set_state(self, arrays, extra):
        net_arrays = {k: v for k, v in arrays.items() if k.startswith("net.")}
        rest = {k: v for k, v in arrays.items() if not k.startswith("net.")}
        super().set_state(rest, extra)
        if net_arrays:
            self._build()
            load_module_arrays(self.net_, net_arrays, "net.")
            self.net_.eval()

    # -- figures -------------------------------------------------------------------------------------------
    def write_figures(self, result, out) -> dict[str, Path]:
        from ..io import write_json
        from ..report import figures as F

        out = Path(out)
        figs: dict[str, Path] = {}
        hist = list(getattr(self, "history_", []) or [])
        if hist:
            write_json(out / "history.json", hist)
            figs["loss_curve"] = F.loss_curve(hist, out / "loss_curve.png", title=f"autoencoder {self.arch}: training loss")
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


def _random_shift(x: torch.Tensor, shift: int, fill: float = 0.0) -> torch.Tensor:
    """Translate each image of a (B, C, H, W) batch by up to ``shift`` pixels (uses torch's seeded RNG)."""
    if x.dim() != 4:
        return x
    b, c, h, w = x.shape
    pad = torch.nn.functional.pad(x, (shift, shift, shift, shift), value=fill)
    dy = torch.randint(0, 2 * shift + 1, (b,))
    dx = torch.randint(0, 2 * shift + 1, (b,))
    rows = (dy[:, None] + torch.arange(h)[None]).to(x.device)
    cols = (dx[:, None] + torch.arange(w)[None]).to(x.device)
    bi = torch.arange(b, device=x.device)[:, None, None]
    out = pad.permute(0, 2, 3, 1)[bi, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2)  # an NHWC buffer seen as NCHW: channels_last strides
