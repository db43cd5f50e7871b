"""Autoencoder architectures: the two tutorials' networks and two suited to small grey digits.

Every network here has ``encode(x) -> code``, ``decode(code) -> reconstruction`` and ``forward(x) ->
(code, reconstruction)`` (the tutorial-1 order), and is built by :func:`make_autoencoder` from a name and
the input shape ``(C, H, W)``:

- ``conv_hw9``: tutorial 1 exactly. Encoder Conv(C→64, 3, pad 1)→ReLU→MaxPool2, Conv(64→128)→ReLU→MaxPool2,
  Conv(128→256)→ReLU→MaxPool2; decoder ConvT(256→128, h+1)→ReLU, ConvT(128→64, 2h+1)→ReLU,
  ConvT(64→C, 4h+1)→Tanh, where h = H/8. For the tutorial's 32×32 RGB input h = 4 and the kernels are
  5, 9 and 17, as written. Inputs are scaled to [-1, 1]. H and W must be multiples of 8 (the encoder
  component resizes to the nearest multiple of 8 and says so).
- ``mlp3``: tutorial 5: D→128→64→12→3 with Tanh between layers (linear 3-D code), and 3→12→64→128→D with
  Tanh between layers and a Sigmoid output. D = C·H·W (784 for MNIST).
- ``dec``: the DEC / N2D dense autoencoder D→500→500→2000→code (ReLU, linear code, default 10) and its
  mirror with a linear output.
- ``conv_digits``: a small strided conv autoencoder for 28×28, 16×16 (and 8×8) grey digits, in the style
  of DEC-DA's CAE: Conv(C→32, 5, s2)→Conv(32→64, 5, s2)→Conv(64→128, 3, s2)→Linear→code; the decoder
  mirrors it with transposed convolutions that restore the exact input size, and a linear output.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import UserError

ARCHITECTURES = ("conv_hw9", "mlp3", "dec", "conv_digits")


def count_parameters(module: nn.Module, only_trainable: bool = False) -> int:
    """Number of parameters (as the tutorial's ``count_parameters``)."""
    return int(sum(p.numel() for p in module.parameters() if p.requires_grad or not only_trainable))


class ConvAEHW9(nn.Module):
    """Tutorial 1's convolutional autoencoder, generalised to C channels and H×W inputs (multiples of 8)."""

    input_range = (-1.0, 1.0)

    def __init__(self, channels: int = 3, height: int = 32, width: int = 32):
        super().__init__()
        if height % 8 or width % 8 or height < 8 or width < 8:
            raise UserError(
                f"conv_hw9 needs an image height and width that are multiples of 8 (got {height}×{width}); "
                "resize the images (for example --size 32) or let the autoencoder encoder resize them")
        h, w = height // 8, width // 8
        self.encoder = nn.Sequential(
            nn.Conv2d(channels, 64, 3, stride=1, padding=1), nn.ReLU(True), nn.MaxPool2d(2),
            nn.Conv2d(64, 128, 3, stride=1, padding=1), nn.ReLU(True), nn.MaxPool2d(2),
            nn.Conv2d(128, 256, 3, stride=1, padding=1), nn.ReLU(True), nn.MaxPool2d(2),
        )
        # a stride-1 ConvT with kernel k grows a side by k-1: h→2h needs h+1, 2h→4h needs 2h+1, 4h→8h needs 4h+1
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(256, 128, (h + 1, w + 1), stride=1), nn.ReLU(True),
            nn.ConvTranspose2d(128, 64, (2 * h + 1, 2 * w + 1), stride=1), nn.ReLU(True),
            nn.ConvTranspose2d(64, channels, (4 * h + 1, 4 * w + 1), stride=1), nn.Tanh(),
        )

    def encode(self, x):
        return self.encoder(x)

    def decode(self, z):
        return self.decoder(z)

    def forward(self, x):
        z = self.encoder(x)
        return z, self.decoder(z)


class _FlatAE(nn.Module):
    """Dense autoencoders: images are flattened on the way in and reshaped on the way out."""

    def encode(self, x):
        return self.encoder(x.reshape(len(x), -1))

    def decode(self, z):
        return self.decoder(z)

    def forward(self, x):
        z = self.encode(x)
        return z, self.decoder(z).reshape(x.shape)


class MLPAE3(_FlatAE):
    """Tutorial 5's fully connected autoencoder with a 3-D code (D-128-64-12-3, Tanh; Sigmoid output)."""

    input_range = (0.0, 1.0)

    def __init__(self, in_dim: int = 784, code_dim: int = 3):
        super().__init__()
        self.in_dim = in_dim
        self.encoder = nn.Sequential(
            nn.Linear(in_dim, 128), nn.Tanh(), nn.Linear(128, 64), nn.Tanh(), nn.Linear(64, 12), nn.Tanh(),
            nn.Linear(12, code_dim),
        )
        self.decoder = nn.Sequential(
            nn.Linear(code_dim, 12), nn.Tanh(), nn.Linear(12, 64), nn.Tanh(), nn.Linear(64, 128), nn.Tanh(),
            nn.Linear(128, in_dim), nn.Sigmoid(),
        )


class DenseAE(_FlatAE):
    """The DEC / N2D dense autoencoder: D-500-500-2000-code, ReLU, linear code and linear output."""

    input_range = (0.0, 1.0)

    def __init__(self, in_dim: int = 784, code_dim: int = 10, hidden=(500, 500, 2000)):
        super().__init__()
        dims = [in_dim, *hidden]
        enc: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            enc += [nn.Linear(a, b), nn.ReLU(True)]
        enc.append(nn.Linear(dims[-1], code_dim))
        dec: list[nn.Module] = []
        rdims = [code_dim, *reversed(hidden)]
        for a, b in zip(rdims[:-1], rdims[1:]):
            dec += [nn.Linear(a, b), nn.ReLU(True)]
        dec.append(nn.Linear(rdims[-1], in_dim))
        self.encoder = nn.Sequential(*enc)
        self.decoder = nn.Sequential(*dec)


def _conv_out(n: int, k: int, s: int, p: int) -> int:
    return (n + 2 * p - k) // s + 1


class ConvDigitsAE(nn.Module):
    """A strided conv autoencoder for small grey digits (28×28, 16×16, 8×8), exact-size decoder, linear output."""

    input_range = (0.0, 1.0)
    _LAYERS = ((32, 5, 2, 2), (64, 5, 2, 2), (128, 3, 2, 1))  # (out channels, kernel, stride, padding)

    def __init__(self, channels: int = 1, height: int = 28, width: int = 28, code_dim: int = 10):
        super().__init__()
        sizes = [(height, width)]
        enc: list[nn.Module] = []
        c_in = channels
        for c_out, k, s, p in self._LAYERS:
            enc += [nn.Conv2d(c_in, c_out, k, stride=s, padding=p), nn.ReLU(True)]
            h, w = sizes[-1]
            sizes.append((_conv_out(h, k, s, p), _conv_out(w, k, s, p)))
            c_in = c_out
        if min(sizes[-1]) < 1:
            raise UserError(f"conv_digits cannot take {height}×{width} images (too small); use at least 8×8")
        self.sizes = sizes
        self.encoder_conv = nn.Sequential(*enc)
        flat = c_in * sizes[-1][0] * sizes[-1][1]
        self.to_code = nn.Linear(flat, code_dim)
        self.from_code = nn.Linear(code_dim, flat)
        self.deconvs = nn.ModuleList()
        chans = [channels] + [c for c, *_ in self._LAYERS]
        for i in reversed(range(len(self._LAYERS))):
            _, k, s, p = self._LAYERS[i]
            self.deconvs.append(nn.ConvTranspose2d(chans[i + 1], chans[i], k, stride=s, padding=p))

    def encode(self, x):
        return self.to_code(self.encoder_conv(x).flatten(1))

    def decode(self, z):
        h, w = self.sizes[-1]
        y = torch.relu(self.from_code(z)).reshape(len(z), -1, h, w)
        for j, layer in enumerate(self.deconvs):
            target = self.sizes[len(self.sizes) - 2 - j]
            y = layer(y, output_size=list(target))
            if j < len(self.deconvs) - 1:
                y = torch.relu(y)
        # a linear output (as DEC-DA's CAE): a Sigmoid here saturates on mostly-black digits and the
        # network collapses to the mean image
        return y

    def forward(self, x):
        z = self.encode(x)
        return z, self.decode(z)


def make_autoencoder(arch: str, input_shape, code_dim: int | None = None) -> nn.Module:
    """Build ``arch`` for images of ``input_shape`` = (C, H, W)."""
    c, h, w = (int(v) for v in input_shape)
    if arch == "conv_hw9":
        if code_dim is not None:
            raise UserError("conv_hw9 has a fixed code (256×H/8×W/8); leave code_dim unset")
        return ConvAEHW9(c, h, w)
    if arch == "mlp3":
        return MLPAE3(c * h * w, 3 if code_dim is None else int(code_dim))
    if arch == "dec":
        return DenseAE(c * h * w, 10 if code_dim is None else int(code_dim))
    if arch == "conv_digits":
        return ConvDigitsAE(c, h, w, 10 if code_dim is None else int(code_dim))
    raise UserError(f"unknown autoencoder architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}")
