"""ConvNets for DeepCluster: AlexNet-BN and VGG16-BN (images of 64 px and more) and a small ConvNet (28-32 px).

Each network maps ``(B, C, H, W)`` images (already normalised) to a feature vector: ``net(x)`` gives the
training features (after the last ReLU, where the classifier head sits) and ``net.embed(x)`` the features
DeepCluster clusters (the same layer *before* its ReLU, as in the paper, which drops the last ReLU when it
computes features). An optional fixed Sobel filter (grey, then the two 3x3 Sobel kernels) replaces the
colour input with two gradient channels.

AlexNet-BN follows DeepCluster's AlexNet (BatchNorm instead of LRN; 96-256-384-384-256 convolutions and two
4096-d fully connected layers). VGG16-BN is the 13-convolution VGG with BatchNorm and two 4096-d layers.
Both pool their last feature map to at most 6x6 (AlexNet) or 7x7 (VGG), so sizes between 64 and 224 px
work; at 224 px they are the published networks.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import UserError

ARCHS = ("convnet", "alexnet", "vgg16")
MIN_SIZE = {"alexnet": 64, "vgg16": 64, "convnet": 8}


class Sobel(nn.Module):
    """Fixed input filter: grey (mean of the channels), then horizontal and vertical Sobel kernels."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.in_channels = in_channels
        k = torch.tensor([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]])
        self.register_buffer("kernel", torch.stack([k, k.t()])[:, None], persistent=False)

    def forward(self, x):
        grey = x.mean(dim=1, keepdim=True) if x.shape[1] > 1 else x
        return nn.functional.conv2d(grey, self.kernel.to(grey.dtype), padding=1)


def _conv_bn(cin, cout, k=3, stride=1, pad=1):
    return [nn.Conv2d(cin, cout, k, stride, pad), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class DeepClusterNet(nn.Module):
    """Convolutional features → (adaptive) pooling → fully connected layers → feature vector."""

    def __init__(self, arch: str = "convnet", in_channels: int = 1, input_size=(28, 28), sobel: bool = False,
                 width: int | None = None, feat_dim: int | None = None):
        super().__init__()
        if arch not in ARCHS:
            raise UserError(f"unknown DeepCluster architecture {arch!r}; use one of {', '.join(ARCHS)} (or auto)")
        h, w = int(input_size[0]), int(input_size[1])
        if min(h, w) < MIN_SIZE[arch]:
            raise UserError(f"{arch} needs images of at least {MIN_SIZE[arch]} px, these are {h}x{w}; "
                            f"resize them (--size {MIN_SIZE[arch]}) or use arch='convnet'")
        self.arch = arch
        self.sobel = Sobel(in_channels) if sobel else None
        cin = 2 if sobel else in_channels
        if arch == "convnet":
            c = int(width or 32)
            fd = int(feat_dim or 256)
            self.features = nn.Sequential(
                *_conv_bn(cin, c), *_conv_bn(c, c), nn.MaxPool2d(2),
                *_conv_bn(c, 2 * c), *_conv_bn(2 * c, 2 * c), nn.MaxPool2d(2),
                *_conv_bn(2 * c, 4 * c), nn.MaxPool2d(2) if min(h, w) >= 16 else nn.Identity(),
            )
            pool_max, hidden = 4, [fd]
        elif arch == "alexnet":
            c = int(width or 64)  # 64 -> the published 96-256-384-384-256
            ch = [c * 3 // 2, c * 4, c * 6, c * 6, c * 4]
            self.features = nn.Sequential(
                *_conv_bn(cin, ch[0], 11, 4, 2), nn.MaxPool2d(3, 2),
                *_conv_bn(ch[0], ch[1], 5, 1, 2), nn.MaxPool2d(3, 2),
                *_conv_bn(ch[1], ch[2]), *_conv_bn(ch[2], ch[3]), *_conv_bn(ch[3], ch[4]), nn.MaxPool2d(3, 2),
            )
            pool_max, hidden = 6, [int(feat_dim or 4096)] * 2
        else:  # vgg16
            c = int(width or 64)
            cfg = [c, c, "M", 2 * c, 2 * c, "M", 4 * c, 4 * c, 4 * c, "M", 8 * c, 8 * c, 8 * c, "M",
                   8 * c, 8 * c, 8 * c, "M"]
            layers, prev = [], cin
            for v in cfg:
                if v == "M":
                    layers.append(nn.MaxPool2d(2))
                else:
                    layers += _conv_bn(prev, v)
                    prev = v
            self.features = nn.Sequential(*layers)
            pool_max, hidden = 7, [int(feat_dim or 4096)] * 2
        with torch.no_grad():
            probe = torch.zeros(1, cin, h, w)
            fh, fw = self.features.eval()(probe).shape[-2:]
        self.features.train()
        self.pool = nn.AdaptiveAvgPool2d((min(pool_max, fh), min(pool_max, fw)))
        flat = _out_channels(self.features) * min(pool_max, fh) * min(pool_max, fw)
        fc: list[nn.Module] = []
        prev = flat
        for i, d in enumerate(hidden):
            if arch != "convnet":
                fc.append(nn.Dropout(0.5))
            fc.append(nn.Linear(prev, d))
            if arch == "convnet":
                fc.append(nn.BatchNorm1d(d))
            fc.append(nn.ReLU(inplace=True))
            prev = d
        self.classifier = nn.Sequential(*fc)
        self.out_dim = prev
        self._init_weights()

    def _init_weights(self):
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def _trunk(self, x):
        if self.sobel is not None:
            x = self.sobel(x)
        x = self.pool(self.features(x))
        return torch.flatten(x, 1)

    def forward(self, x):
        return self.classifier(self._trunk(x))

    def embed(self, x):
        """Features for clustering: the last hidden layer before its ReLU (dropout is off in eval mode)."""
        return self.classifier[:-1](self._trunk(x))


def _out_channels(seq: nn.Sequential) -> int:
    for m in reversed(list(seq.modules())):
        if isinstance(m, nn.Conv2d):
            return m.out_channels
    raise ValueError("no convolution in the feature extractor")


def auto_arch(size) -> str:
    """The small ConvNet below 64 px, AlexNet-BN from 64 px on."""
    return "convnet" if min(int(size[0]), int(size[1])) < 64 else "alexnet"


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
