"""Backbones for contrastive pretext training: a ResNet with a CIFAR stem (32-96 px) and a small ConvNet.

``make_backbone(arch, in_channels, width=None)`` returns a module mapping ``(B, C, H, W)`` images (already
normalised) to a ``(B, out_dim)`` feature vector (global average pooling of the last feature map); its
``out_dim`` attribute is the feature size.

- ``resnet18``: ResNet-18 with the CIFAR stem (one 3x3 convolution at stride 1, no max-pool), as SimCLR and
  SCAN use for 32 px images; ``width`` is the first stage's channel count (64 is the published network,
  512-d features); smaller widths scale every stage, for a CPU budget.
- ``resnet10``: the same with one residual block per stage.
- ``convnet``: four stages of two 3x3 conv-BN-ReLU layers (the last stage one), max-pooling between them,
  ``width``-2w-4w-8w channels (default 32): small enough for 28 px grey digits and a CPU.

The networks work at any input size of at least 8 px (they end with adaptive pooling).
"""

from __future__ import annotations

from torch import nn

from ..errors import UserError

ARCHS = ("resnet18", "resnet10", "convnet")
DEFAULT_WIDTH = {"resnet18": 64, "resnet10": 64, "convnet": 32}


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNetCifar(nn.Module):
    """ResNet with the CIFAR stem; ``blocks`` residual blocks per stage, stages at width w, 2w, 4w, 8w."""

    def __init__(self, in_channels: int = 3, width: int = 64, blocks=(2, 2, 2, 2)):
        super().__init__()
        w = int(width)
        self.stem = nn.Sequential(nn.Conv2d(in_channels, w, 3, 1, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True))
        layers, cin = [], w
        for i, n in enumerate(blocks):
            cout = w * 2**i
            for j in range(int(n)):
                layers.append(BasicBlock(cin, cout, 2 if (j == 0 and i > 0) else 1))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.out_dim = cin
        _init(self)

    def forward(self, x):
        return self.pool(self.layers(self.stem(x))).flatten(1)


def _conv_bn(cin, cout):
    return [nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class SmallConvNet(nn.Module):
    """conv-BN-ReLU x2, pool, x2, pool, x2, pool, x1 (widths w, 2w, 4w, 8w), global average pooling."""

    def __init__(self, in_channels: int = 1, width: int = 32):
        super().__init__()
        w = int(width)
        self.features = nn.Sequential(
            *_conv_bn(in_channels, w), *_conv_bn(w, w), nn.MaxPool2d(2),
            *_conv_bn(w, 2 * w), *_conv_bn(2 * w, 2 * w), nn.MaxPool2d(2),
            *_conv_bn(2 * w, 4 * w), *_conv_bn(4 * w, 4 * w), nn.MaxPool2d(2),
            *_conv_bn(4 * w, 8 * w),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.out_dim = 8 * w
        _init(self)

    def forward(self, x):
        return self.pool(self.features(x)).flatten(1)


def _init(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def make_backbone(arch: str, in_channels: int, width: int | None = None) -> nn.Module:
    if arch not in ARCHS:
        raise UserError(f"unknown backbone {arch!r}; use one of {', '.join(ARCHS)}")
    w = int(width or DEFAULT_WIDTH[arch])
    if w < 1:
        raise UserError(f"backbone width must be a positive whole number, got {width!r}")
    if arch == "convnet":
        return SmallConvNet(in_channels, w)
    return ResNetCifar(in_channels, w, (2, 2, 2, 2) if arch == "resnet18" else (1, 1, 1, 1))


class ProjectionHead(nn.Module):
    """SimCLR's projection g(h): Linear - BN - ReLU - Linear (the loss is computed on its output)."""

    def __init__(self, in_dim: int, hidden: int | None = None, out_dim: int = 128):
        super().__init__()
        hidden = int(hidden or in_dim)
        self.net = nn.Sequential(nn.Linear(in_dim, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                                 nn.Linear(hidden, int(out_dim)))
        self.out_dim = int(out_dim)

    def forward(self, h):
        return self.net(h)
