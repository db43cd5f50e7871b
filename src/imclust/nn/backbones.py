"""ImageNet backbones defined in imclust, with state_dict keys laid out as torchvision lays them out.

torchvision's published weight files (``vgg16-397923af.pth`` and friends) therefore load straight into
these modules, without torchvision being installed (its wheels are CUDA builds and are not a dependency).

Models: ``vgg16``, ``vgg16_bn``, ``resnet18``, ``resnet50``, ``alexnet``; ``efficientnet-lite0/1/2`` are
defined in :mod:`.efficientnet` (with the keys of their pip-installed weight files) and registered here.

Every model lists its forward pass as an ordered chain of named steps (:meth:`Backbone.steps`), so a
feature layer is chosen by name and the forward pass simply stops there:

- VGG: ``features.0`` … ``features.30`` (single layers), ``avgpool``, ``flatten``, ``classifier.0`` …
  ``classifier.6``. The tutorial's cut is ``classifier.0``: features → avgpool (7×7) → flatten → the first
  Linear, 25088 → 4096.
- AlexNet: ``features.0`` … ``features.12``, ``avgpool``, ``flatten``, ``classifier.0`` … ``classifier.6``.
- ResNet: ``conv1``, ``bn1``, ``relu``, ``maxpool``, ``layer1`` … ``layer4`` (and each block, e.g.
  ``layer3.1``), ``avgpool`` (global average pooling), ``flatten``, ``fc``.

A layer whose output is still spatial (``(B, C, H, W)``) is reduced to a vector by global average pooling,
so every layer gives one fixed-length vector per image. The modules after the cut are dropped
(:func:`truncate`), so they cost neither memory nor time.
"""

from __future__ import annotations

from typing import Callable, Iterator

import torch
from torch import nn

from ..errors import UserError

# A feature layer per model when none is named: the tutorial's cut for VGG16 (first Linear, 4096-d), the
# same first Linear for VGG16-BN and AlexNet, global average pooling for ResNets.
DEFAULT_LAYER = {
    "vgg16": "classifier.0",
    "vgg16_bn": "classifier.0",
    "alexnet": "classifier.1",
    "resnet18": "avgpool",
    "resnet50": "avgpool",
}

# torchvision's published ImageNet weights. The 8 hex digits in each file name are the start of the file's
# sha256, which is what the download checks (torchvision names its files the same way).
WEIGHT_URLS = {
    "vgg16": "https://download.pytorch.org/models/vgg16-397923af.pth",
    "vgg16_bn": "https://download.pytorch.org/models/vgg16_bn-6c64b313.pth",
    "resnet18": "https://download.pytorch.org/models/resnet18-f37072fd.pth",
    "resnet50": "https://download.pytorch.org/models/resnet50-0676ba61.pth",
    "alexnet": "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
}

Step = tuple[str, Callable[[torch.Tensor], torch.Tensor]]


class Backbone(nn.Module):
    """Base: a forward pass made of named steps, stoppable at any of them."""

    arch = "backbone"

    def steps(self) -> Iterator[Step]:  # pragma: no cover - abstract
        raise NotImplementedError

    def layer_names(self) -> list[str]:
        return [name for name, _ in self.steps()]

    def forward(self, x: torch.Tensor, layer: str | None = None) -> torch.Tensor:
        for name, fn in self.steps():
            x = fn(x)
            if name == layer:
                return x
        if layer is not None:
            raise UserError(f"{self.arch}: no layer {layer!r}; choose one of {', '.join(self.layer_names())}")
        return x


def _flatten(x: torch.Tensor) -> torch.Tensor:
    return torch.flatten(x, 1)


def _sequential_steps(prefix: str, seq: nn.Sequential) -> Iterator[Step]:
    for i, m in enumerate(seq):
        yield f"{prefix}.{i}", m


# ---------------------------------------------------------------------------------------------------
# VGG
# ---------------------------------------------------------------------------------------------------
VGG16_PLAN = (64, 64, "pool", 128, 128, "pool", 256, 256, 256, "pool", 512, 512, 512, "pool", 512, 512, 512, "pool")


def _vgg_trunk(batch_norm: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    ch = 3
    for item in VGG16_PLAN:
        if item == "pool":
            layers.append(nn.MaxPool2d(2, 2))
            continue
        layers.append(nn.Conv2d(ch, item, 3, padding=1))
        if batch_norm:
            layers.append(nn.BatchNorm2d(item))
        layers.append(nn.ReLU(inplace=True))
        ch = item
    return nn.Sequential(*layers)


def _fc_head(in_features: int, dropout_first: bool) -> nn.Sequential:
    """The three-Linear ImageNet head (4096, 4096, 1000); AlexNet puts dropout before each Linear."""
    if dropout_first:
        mods = [nn.Dropout(0.5), nn.Linear(in_features, 4096), nn.ReLU(inplace=True),
                nn.Dropout(0.5), nn.Linear(4096, 4096), nn.ReLU(inplace=True), nn.Linear(4096, 1000)]
    else:
        mods = [nn.Linear(in_features, 4096), nn.ReLU(inplace=True), nn.Dropout(0.5),
                nn.Linear(4096, 4096), nn.ReLU(inplace=True), nn.Dropout(0.5), nn.Linear(4096, 1000)]
    return nn.Sequential(*mods)


class VGG16(Backbone):
    """VGG16 (configuration D), optionally with BatchNorm after every convolution."""

    def __init__(self, batch_norm: bool = False):
        super().__init__()
        self.arch = "vgg16_bn" if batch_norm else "vgg16"
        self.features = _vgg_trunk(batch_norm)
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = _fc_head(512 * 7 * 7, dropout_first=False)

    def steps(self):
        yield from _sequential_steps("features", self.features)
        yield "avgpool", self.avgpool
        yield "flatten", _flatten
        yield from _sequential_steps("classifier", self.classifier)


class AlexNet(Backbone):
    """AlexNet as torchvision defines it (the single-tower "one weird trick" variant)."""

    arch = "alexnet"

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, 11, stride=4, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
            nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
            nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = _fc_head(256 * 6 * 6, dropout_first=True)

    def steps(self):
        yield from _sequential_steps("features", self.features)
        yield "avgpool", self.avgpool
        yield "flatten", _flatten
        yield from _sequential_steps("classifier", self.classifier)


# ---------------------------------------------------------------------------------------------------
# ResNet
# ---------------------------------------------------------------------------------------------------
def _conv3(cin, cout, stride=1):
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


def _conv1(cin, cout, stride=1):
    return nn.Conv2d(cin, cout, 1, stride=stride, bias=False)


def _shortcut(cin, cout, stride):
    if stride == 1 and cin == cout:
        return None
    return nn.Sequential(_conv1(cin, cout, stride), nn.BatchNorm2d(cout))


class BasicBlock(nn.Module):
    """Two 3×3 convolutions with a residual connection (ResNet-18/34)."""

    expansion = 1

    def __init__(self, cin: int, width: int, stride: int = 1):
        super().__init__()
        self.conv1 = _conv3(cin, width, stride)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3(width, width)
        self.bn2 = nn.BatchNorm2d(width)
        self.downsample = _shortcut(cin, width, stride)

    def forward(self, x):
        skip = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.relu(y + skip)


class Bottleneck(nn.Module):
    """1×1 → 3×3 (strided, as in ResNet v1.5) → 1×1 with 4× expansion (ResNet-50)."""

    expansion = 4

    def __init__(self, cin: int, width: int, stride: int = 1):
        super().__init__()
        out = width * self.expansion
        self.conv1 = _conv1(cin, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = _conv3(width, width, stride)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = _conv1(width, out)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(cin, out, stride)

    def forward(self, x):
        skip = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + skip)


class ResNet(Backbone):
    def __init__(self, block: type, depths: tuple[int, ...], arch: str):
        super().__init__()
        self.arch = arch
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        cin = 64
        for i, (n, width) in enumerate(zip(depths, (64, 128, 256, 512))):
            blocks = []
            for j in range(n):
                stride = 2 if (j == 0 and i > 0) else 1
                blocks.append(block(cin, width, stride))
                cin = width * block.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(cin, 1000)

    def steps(self):
        yield "conv1", self.conv1
        yield "bn1", self.bn1
        yield "relu", self.relu
        yield "maxpool", self.maxpool
        for i in range(1, 5):
            stage = getattr(self, f"layer{i}")
            for j, blk in enumerate(stage):
                name = f"layer{i}.{j}"
                yield (f"layer{i}" if j == len(stage) - 1 else name), blk
        yield "avgpool", self.avgpool
        yield "flatten", _flatten
        yield "fc", self.fc

    def layer_names(self) -> list[str]:
        names = []
        for name, _ in self.steps():
            if name.startswith("layer") and "." not in name:  # the stage's last block also answers to layerI.J
                names.append(f"{name}.{len(getattr(self, name)) - 1}")
            names.append(name)
        return names

    def forward(self, x, layer=None):
        if layer is not None and layer.startswith("layer") and "." in layer:
            stage, j = layer.split(".", 1)
            if stage in ("layer1", "layer2", "layer3", "layer4") and j.isdigit() and int(j) == len(getattr(self, stage)) - 1:
                layer = stage
        return super().forward(x, layer)


# ---------------------------------------------------------------------------------------------------
# construction, initialisation, truncation
# ---------------------------------------------------------------------------------------------------
def _init_weights(model: nn.Module) -> None:
    """He-normal convolutions (fan-out), unit BatchNorm, small-normal Linear layers, zero biases."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
            m.reset_running_stats()
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.zeros_(m.bias)


BUILDERS: dict[str, Callable[[], Backbone]] = {
    "vgg16": lambda: VGG16(batch_norm=False),
    "vgg16_bn": lambda: VGG16(batch_norm=True),
    "alexnet": AlexNet,
    "resnet18": lambda: ResNet(BasicBlock, (2, 2, 2, 2), "resnet18"),
    "resnet50": lambda: ResNet(Bottleneck, (3, 4, 6, 3), "resnet50"),
}

ALIASES = {"vgg16-bn": "vgg16_bn", "vgg16bn": "vgg16_bn", "resnet-18": "resnet18", "resnet-50": "resnet50",
           "efficientnet_lite0": "efficientnet-lite0", "efficientnet_lite1": "efficientnet-lite1",
           "efficientnet_lite2": "efficientnet-lite2", "lite0": "efficientnet-lite0", "lite1": "efficientnet-lite1",
           "lite2": "efficientnet-lite2"}


def canonical_name(name: str) -> str:
    key = ALIASES.get(str(name).lower(), str(name).lower())
    if key not in BUILDERS:
        raise UserError(f"unknown backbone {name!r}; choose one of {', '.join(BUILDERS)} "
                        "(or torchvision:NAME / timm:NAME when those packages are installed)")
    return key


def build_backbone(name: str, materialize: bool = True) -> Backbone:
    """A freshly (randomly) initialised backbone; seed torch first for reproducible weights.

    The modules are created on the ``meta`` device (no memory, no default initialisation) and, with
    ``materialize``, allocated on the CPU and initialised once by :func:`initialize`. With
    ``materialize=False`` the caller may :func:`truncate` first, so layers after the cut are never
    allocated; the kept layers get the same values either way, because initialisation walks the modules
    in order and the cut only removes later ones.
    """
    with torch.device("meta"):
        model = BUILDERS[canonical_name(name)]()
    if materialize:
        initialize(model)
    return model


def initialize(model: nn.Module) -> nn.Module:
    """Allocate a meta-device model on the CPU and initialise it (seed torch first)."""
    model.to_empty(device="cpu")
    _init_weights(model)
    return model


def default_layer(name: str) -> str:
    return DEFAULT_LAYER[canonical_name(name)]


def check_layer(model: Backbone, layer: str) -> str:
    names = model.layer_names()
    if layer not in names:
        raise UserError(f"{model.arch}: no layer {layer!r}; choose one of {', '.join(names)}")
    return layer


def needed_prefixes(model: Backbone, layer: str) -> set[str]:
    """Top-level module names (and Sequential children) that the forward pass up to ``layer`` uses."""
    check_layer(model, layer)
    if isinstance(model, ResNet) and "." in layer and layer.split(".")[0] in ("layer1", "layer2", "layer3", "layer4"):
        stage, j = layer.split(".", 1)
        if int(j) == len(getattr(model, stage)) - 1:
            layer = stage
    used = []
    for name, fn in model.steps():
        used.append(name)
        if name == layer:
            break
    return set(used)


def truncate(model: Backbone, layer: str) -> Backbone:
    """Drop every module after ``layer`` (in place), so the weights after the cut cost no memory.

    A dropped position inside a Sequential becomes ``nn.Identity`` so the names of the kept ones stay
    torchvision's (``classifier.0`` stays ``classifier.0``). A model with its own ``truncate_to`` does it itself.
    """
    if hasattr(model, "truncate_to"):
        check_layer(model, layer)
        return model.truncate_to(layer)
    used = needed_prefixes(model, layer)
    for top, child in list(model.named_children()):
        if isinstance(child, nn.Sequential) and not top.startswith("layer"):
            for i in range(len(child)):
                if f"{top}.{i}" not in used:
                    child[i] = nn.Identity()
            if all(isinstance(c, nn.Identity) for c in child):
                setattr(model, top, nn.Sequential(*[nn.Identity() for _ in child]))
        elif isinstance(child, nn.Sequential):  # a ResNet stage: keep the blocks that run
            keep = any(u == top or u.startswith(top + ".") for u in used)
            if not keep:
                setattr(model, top, nn.Sequential(*[nn.Identity() for _ in child]))
            else:
                for j in range(len(child)):
                    if f"{top}.{j}" not in used and top not in used:
                        child[j] = nn.Identity()
        elif top not in used:
            setattr(model, top, nn.Identity())
    return model


def pooled(x: torch.Tensor) -> torch.Tensor:
    """One vector per image: global average pooling for spatial outputs, flatten otherwise."""
    if x.dim() == 4:
        return x.mean(dim=(2, 3))
    return x.reshape(len(x), -1)


class FeatureExtractor(nn.Module):
    """``backbone`` run up to ``layer``, then reduced to one vector per image."""

    def __init__(self, backbone: nn.Module, layer: str | None, custom: Callable | None = None):
        super().__init__()
        self.backbone = backbone
        self.layer = layer
        self._custom = custom

    def forward(self, x):
        if self._custom is not None:
            return pooled(self._custom(x))
        return pooled(self.backbone(x, self.layer))


from . import efficientnet  # noqa: E402,F401  (registers efficientnet-lite0/1/2 in BUILDERS)
