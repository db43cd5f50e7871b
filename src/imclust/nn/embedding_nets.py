"""Tutorial 4's networks with a d-dimensional feature layer, generalised to any input size.

* :class:`EmbeddingMLP`: ``in → 512 → 256 → 128 → d`` (Linear without bias, BatchNorm, Mish; the last
  layer plain Linear), the tutorial's MNIST MLP with ``in`` = C·H·W.
* :class:`EmbeddingResCNN`: the tutorial's small residual CNN (``VGGnet_pro``): a 7×7/2 stem and 3×3/2
  max-pool, a 1×1 → depthwise 3×3 → 1×1 bottleneck, a 3×3/2 stage with a strided 1×1 shortcut (Mish after
  the sum), three 3×3 convolutions, global average pooling, then ``Linear(width, d)``. The tutorial's
  ``AvgPool2d(4, 1)`` only fits 28×28 inputs; global average pooling gives the same result there and
  works for any size. ``in_channels`` is taken from the data (the tutorial hard-codes 1).

d = 2 or 3 gives features to plot directly; a larger d gives features for clustering.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError


def _check_dim(dim) -> int:
    if int(dim) < 1:
        raise UserError(f"the feature dimension must be at least 1, got {dim}")
    return int(dim)


class EmbeddingMLP(nn.Module):
    def __init__(self, in_shape, dim: int = 2, hidden=(512, 256, 128)):
        super().__init__()
        c, h, w = (int(s) for s in in_shape)
        layers, prev = [], c * h * w
        for width in hidden:
            layers += [nn.Linear(prev, int(width), bias=False), nn.BatchNorm1d(int(width)), nn.Mish()]
            prev = int(width)
        layers.append(nn.Linear(prev, _check_dim(dim)))
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x.reshape(len(x), -1))


def _cbm(cin, cout, k, s=1, p=0, groups=1, act=True):
    mods = [nn.Conv2d(cin, cout, k, s, p, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    if act:
        mods.append(nn.Mish())
    return mods


class EmbeddingResCNN(nn.Module):
    def __init__(self, in_shape, dim: int = 2, width: int = 64):
        super().__init__()
        c = int(in_shape[0])
        w = int(width)
        self.stem = nn.Sequential(*_cbm(c, w, 7, 2, 3), nn.MaxPool2d(3, 2, 1))
        self.shortcut = nn.Sequential(*_cbm(w, w, 1, 2, 0, act=False))
        self.bottleneck = nn.Sequential(*_cbm(w, 2 * w, 1), *_cbm(2 * w, 2 * w, 3, 1, 1, groups=2 * w), *_cbm(2 * w, w, 1))
        self.down = nn.Sequential(*_cbm(w, w, 3, 2, 1), *_cbm(w, w, 3, 1, 1, act=False))
        self.tail = nn.Sequential(*_cbm(w, w, 3, 1, 1), *_cbm(w, w, 3, 1, 1), *_cbm(w, w, 3, 1, 1))
        self.fc = nn.Linear(w, _check_dim(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = F.mish(self.down(self.bottleneck(x)) + self.shortcut(x))
        x = self.tail(x)
        return self.fc(x.mean(dim=(2, 3)))


NETS = {"mlp": EmbeddingMLP, "cnn": EmbeddingResCNN}


def make_net(name: str, in_shape, dim: int, **kw) -> nn.Module:
    if name not in NETS:
        raise UserError(f"unknown network {name!r}; use one of {', '.join(NETS)}")
    return NETS[name](in_shape, dim, **kw)
