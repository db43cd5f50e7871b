"""SCAN (Van Gansbeke et al., ECCV 2020): a contrastive pretext, then clustering by neighbours, then self-labelling.

Three stages, each trained through :class:`~imclust.encoders.base.TrainableEncoder` (bf16 + channels_last,
checkpoints in ``checkpoint_dir/<stage>`` and exact resume, DDP under torchrun):

1. **pretext** (:class:`~imclust.encoders.contrastive.SimCLREncoder`): SimCLR features; cached by the
   images' content and the settings, so another run on the same images (other SCAN settings, another seed
   of the later stages) starts from the stored network;
2. **scan**: the ``neighbours`` nearest neighbours of every image in the pretext features (exact cosine
   search: faiss on the CPU, blocked matrix products on the GPU when training there;
   :func:`imclust.nn.contrastive.mine_neighbours`), then the pretext backbone with ``heads``
   linear clustering heads trains on strongly augmented (anchor, random neighbour) pairs with SCAN's loss
   (neighbours agree, minus ``entropy_weight`` times the entropy of the mean prediction; every head in the
   same step; ``entropy_weight`` may also be a list, one weight per head, so that heads pulled towards
   equal cluster sizes with different force compete). One head is kept, without labels: with
   ``keep_head = "information"`` the one whose clusters of the images carry the most information about their
   neighbours' clusters (:func:`imclust.temi.neighbour_information`, as TEMI keeps its head); ``"loss"`` keeps
   the head of lowest loss over the last epoch, SCAN's published rule, whose heads' losses differ by a few
   thousandths while their clusters differ (it needs one entropy weight for all heads: losses under
   different weights do not compare);
3. **selflabel**: the images whose weak view the network assigns to a cluster with probability above
   ``threshold`` (0.99) become targets for the cross-entropy of their strong view (RandAugment plus cutout;
   classes weighted by the inverse of their confident counts); backbone and head train together.

**Collapse is reported, never hidden.** After each stage the clusters of the training images are counted;
an empty cluster, or one holding more than :func:`dominant_share` of the images, is written to the log, to
``history.json``/``scan.json`` and to the run's warnings (``run.json``). The per-epoch history records the
largest cluster's share and the number of clusters in use among the training batches' predictions. A collapse
that self-labelling makes out of clusters the scan stage had kept apart discards self-labelling's network: the
scan stage's network and clusters are kept, and the log, the warnings and ``scan.json`` (``selflabel_kept``)
say so.

**Sizes.** ``preset = "auto"`` chooses from the images (channels and side, never labels) among
:data:`PRESETS`: ``grey`` (one channel: working side at most 32 px, small ConvNet, no flips, no colour
jitter), ``colour-32`` (colour up to 48 px: 32 px), ``photo`` (larger colour images: 64 px, blur in the
views). ``budget = "auto"`` sizes networks and epochs for the device: ``cpu`` (small ConvNet, or for
``colour-32`` a width-16 CIFAR-stem ResNet-18 trained on 24 px views of the 32 px images for 100 epochs; 60
pretext epochs otherwise; no self-labelling, which lowered or left unchanged the heads' clusters on every set
measured on a CPU: ``--set encoder.selflabel.epochs=4`` runs it) or,
when training on a CUDA GPU, ``gpu`` (CIFAR-stem ResNet-18, 100 pretext epochs and at least 8,000 steps).
Any value can be overridden with the ``pretext``, ``scan`` and ``selflabel`` tables (``--set
encoder.pretext.epochs=50``); the settings used are in ``settings_`` and ``scan.json``.

The encoder owns its clusters (:class:`~imclust.encoders.base.ClusteringEncoder`; recipe ``[clusterer]
type = "encoder"``): ``labels_`` are the final network's clusters of the training images,
``predict_proba``/``predict`` place any images, and ``transform`` returns the final backbone's features
(the run's map). Labels are never read: the images are decoded into a set that carries none.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..base import build, register
from ..data import ImageSet
from ..errors import UserError
from ..nn import distributed as ddp
from ..progress import log
from .base import ClusteringEncoder, TrainableEncoder
from .contrastive import ImageNormaliser, aug_generator, in_memory, uint8_of

#: stage settings by kind of images and budget: ``size`` (the largest working side), ``pretext`` (options of the
#: ``simclr`` encoder), ``scan`` and ``selflabel`` (options of those stages). ``cpu``: a small ConvNet (for 32 px
#: colour, a CIFAR-stem ResNet-18 at width 16, which learns more per epoch at a higher cost per step, trained on
#: 24 px views: ``view_scale``) and a frozen backbone in the scan stage, no self-labelling (sized for a two-core
#: CPU); ``gpu``: the published CIFAR-stem ResNet-18, SCAN with the backbone training (SimCLR hyper-parameters
#: as SCAN's: SGD lr 0.4, t = 0.1, batch 512).
_CPU = {"pretext": {"arch": "convnet", "width": 16, "epochs": 60, "min_steps": 800},
        "scan": {"update_backbone": False, "epochs": 100, "min_steps": 2000, "lr": 1e-3},
        "selflabel": {"epochs": 0, "min_steps": 150}}  # epochs > 0 turns self-labelling on
_GPU = {"pretext": {"arch": "resnet18", "width": 64, "epochs": 100, "min_steps": 8000, "batch_size": 512,
                    "lr": 0.4, "weight_decay": 1e-4, "temperature": 0.1},
        "scan": {"update_backbone": True, "epochs": 30, "min_steps": 1500, "batch_size": 256},
        "selflabel": {"epochs": 25, "min_steps": 1000, "batch_size": 512}}
_GREY = {"pretext": {"crop_scale": [0.3, 1.0], "flip": False, "hue": 0.0, "grayscale_p": 0.0},
         "scan": {"flip": False}, "selflabel": {"flip": False}}
_PHOTO = {"pretext": {"blur_p": 0.5}, "scan": {}, "selflabel": {}}
# 24 px views of the 32 px images cost about 0.57x a step at 32 px, so 100 epochs take about the time of 60
_NARROW_RESNET = {"pretext": {"arch": "resnet18", "view_scale": 0.75, "epochs": 100}, "scan": {}, "selflabel": {}}


def _preset(size: int, budget: dict, kind: dict | None = None) -> dict:
    kind = kind or {"pretext": {}, "scan": {}, "selflabel": {}}
    return {"size": size, **{stage: {**budget[stage], **kind[stage]} for stage in ("pretext", "scan", "selflabel")}}


PRESETS: dict[str, dict[str, dict]] = {
    "grey": {"cpu": _preset(32, _CPU, _GREY), "gpu": _preset(64, _GPU, _GREY)},
    "colour-32": {"cpu": _preset(32, _CPU, _NARROW_RESNET), "gpu": _preset(32, _GPU)},
    "photo": {"cpu": _preset(64, _CPU, _PHOTO), "gpu": _preset(96, _GPU, _PHOTO)},
}
KINDS = tuple(PRESETS)
KEEP_HEAD = ("information", "loss")  # how the scan stage keeps one of its heads (ScanStage.keep_head)
BUDGETS = ("cpu", "gpu")


def data_kind(shape) -> str:
    """The preset for images of ``shape`` (C, H, W): ``grey``, ``colour-32`` (side up to 48 px) or ``photo``."""
    c, h, w = (int(s) for s in shape)
    if c == 1:
        return "grey"
    return "colour-32" if min(h, w) <= 48 else "photo"


def dominant_share(k: int) -> float:
    """The share of the images above which one cluster counts as dominant: half of them for k >= 4, two
    thirds for k = 3, 90 % for k = 2."""
    return min(0.9, max(0.5, 2.0 / max(int(k), 1)))


def collapse_report(labels: np.ndarray, k: int, stage: str) -> tuple[dict, list[str]]:
    """Cluster counts of ``labels`` and the warnings they call for (empty or dominant clusters)."""
    counts = np.bincount(np.asarray(labels, np.int64), minlength=int(k))
    share = float(counts.max() / max(len(labels), 1))
    empty = int((counts == 0).sum())
    rec = {"counts": counts.tolist(), "largest_cluster": share, "empty_clusters": empty}
    warnings = []
    if empty:
        warnings.append(f"scan: COLLAPSE after {stage}: {empty} of {k} clusters are empty "
                        f"(cluster sizes {counts.tolist()})")
    if share > dominant_share(k):
        warnings.append(f"scan: COLLAPSE after {stage}: one cluster holds {share:.1%} of the images "
                        f"(more than {dominant_share(k):.0%}; cluster sizes {counts.tolist()})")
    return rec, warnings


class Standardise(nn.Module):
    """``(h - mean) / std`` with fixed statistics (buffers, set from the training images' features), so that the
    clustering heads see well-scaled inputs whatever the backbone's feature magnitudes."""

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(int(dim)))
        self.register_buffer("std", torch.ones(int(dim)))

    def set_statistics(self, features: torch.Tensor) -> None:
        f = features.reshape(-1, features.shape[-1]).float()
        self.mean.copy_(f.mean(0))
        self.std.copy_(f.std(0).clamp(min=1e-4))

    def forward(self, h):
        return (h.float() - self.mean) / self.std


class ClusterHeads(nn.Module):
    """``n`` linear clustering heads on the same standardised features; ``forward`` gives ``(heads, B, k)``
    logits; :meth:`single` is head ``i`` alone (with the standardisation) as one module."""

    def __init__(self, in_dim: int, k: int, n: int):
        super().__init__()
        self.norm = Standardise(in_dim)
        self.heads = nn.ModuleList([nn.Linear(in_dim, k) for _ in range(int(n))])

    def forward(self, h):
        z = self.norm(h)
        return torch.stack([head(z) for head in self.heads])

    def single(self, i: int) -> nn.Module:
        return make_head(self.norm.mean.numel(), self.heads[i].out_features, self.norm, self.heads[i])


def make_head(in_dim: int, k: int, norm: Standardise | None = None, linear: nn.Linear | None = None) -> nn.Module:
    """The clustering head a fitted SCAN encoder keeps: standardisation, then one linear layer."""
    head = nn.Sequential(Standardise(in_dim), nn.Linear(in_dim, k))
    if norm is not None:
        head[0].load_state_dict(norm.state_dict())
    if linear is not None:
        head[1].load_state_dict(linear.state_dict())
    return head


class _StageData:
    """What the SCAN and self-label stages train on: uint8 images, normalisation, the pretext network."""

    def __init__(self, images: ImageSet, mean, std, net: nn.Module, neighbours=None, head: nn.Module | None = None):
        self.images, self.mean, self.std = images, mean, std
        self.net, self.neighbours, self.head = net, neighbours, head


def freeze_batchnorm(module: nn.Module) -> None:
    """Put every BatchNorm layer in eval mode: fine-tuning on strongly augmented batches then neither uses their
    statistics nor moves the running ones away from those of the images the network is applied to."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


class _Stage(TrainableEncoder):
    """Shared parts of the SCAN and self-label stages (internal: the ``scan`` encoder drives them)."""

    n_clusters: int = 10
    flip: bool = True
    n_ops: int = 4
    cutout: float = 0.5
    min_steps: int = 0
    optimizer: str = "adam"
    lr: float = 1e-4
    weight_decay: float = 1e-4
    init: str = ""  # what the stage starts from (the pretext's cache key), so a resume cannot mix two pretexts
    feature_batch: int = 512

    INFERENCE_ONLY = ("feature_batch",)

    def check_method_params(self):
        if not 0 <= float(self.cutout) <= 1 or int(self.n_ops) < 0 or int(self.min_steps) < 0:
            raise UserError(f"{self.component_name}: cutout must be in [0, 1], n_ops and min_steps 0 or more")

    def prepare_data(self, data: _StageData) -> int:
        from ..nn.augment import StrongAugment, WeakAugment

        self._data = data
        self._X8 = uint8_of(data.images)
        self.input_shape_ = list(data.images.shape)
        self._norm = ImageNormaliser(data.mean, data.std)
        self._strong = StrongAugment(flip=bool(self.flip), n_ops=int(self.n_ops), cutout=float(self.cutout))
        self._weak = WeakAugment(flip=bool(self.flip))
        return len(self._X8)

    def _copy_of(self, module: nn.Module) -> nn.Module:
        return copy.deepcopy(module).float().to(memory_format=torch.contiguous_format)

    def planned_epochs(self, n: int) -> int:
        steps = max(1, n // int(self.batch_size)) if n >= int(self.batch_size) else 1
        return max(int(self.epochs), -(-int(self.min_steps) // steps))

    def make_batches(self, epoch, generator):
        from ..nn.train import batch_indices

        n = self.n_train_
        return batch_indices(n, min(int(self.batch_size), n), generator, drop_last=True)

    def load_batch(self, idx):
        return np.asarray(idx, np.int64)

    def view(self, policy, idx, device) -> torch.Tensor:
        """A view of images ``idx`` under ``policy``, normalised (augmented in float32)."""
        x = self._norm.to_float(self._X8[torch.from_numpy(np.asarray(idx, np.int64))], device)
        with torch.autocast(device_type=device.type, enabled=False):
            return self._norm(policy(x, self._gen))

    def on_epoch_start(self, trainer, epoch):
        self._gen = aug_generator(self.seed or 0, epoch, trainer.rank, stream=12)
        self._pick = aug_generator(self.seed or 0, epoch, trainer.rank, stream=13)
        self._counts = torch.zeros(int(self.n_clusters), dtype=torch.int64, device=trainer.device)

    def _count(self, logits: torch.Tensor) -> None:
        # kept on the device: reading it back every step would stall a GPU once per step
        self._counts += torch.bincount(logits.detach().argmax(1), minlength=int(self.n_clusters))

    def _cluster_stats(self) -> dict:
        """The largest cluster's share and the clusters in use among this epoch's predictions (all processes)."""
        counts = np.array([ddp.mean_scalar(float(c)) for c in self._counts.tolist()]) * ddp.world_size()
        total = max(float(counts.sum()), 1.0)
        return {"largest_cluster": float(counts.max() / total), "clusters_used": int((counts > 0.5).sum())}

    def on_fit_end(self, trainer):
        self._X8 = self._data = self._feature_views = self._clean_features = None


class ScanStage(_Stage):
    """SCAN's clustering stage: ``heads`` linear heads trained with consistency to a neighbour plus entropy.

    With ``update_backbone = false`` (the CPU presets) the backbone stays as the pretext left it: its features of
    ``views`` views of every image (the image itself and ``views - 1`` weak augmentations) are computed once, and
    each step pairs a random view of an image with a random view of one of its neighbours, so an epoch costs
    almost nothing and many can run. With ``update_backbone = true`` (SCAN as published; the GPU presets) each
    step passes strongly augmented images through the backbone, which trains too (its BatchNorm statistics
    frozen).
    """

    component_name = "scan"

    heads: int = 5
    keep_head: str = "information"
    entropy_weight: float | list = 5.0  # or one weight per head
    update_backbone: bool = False
    views: int = 8
    epochs: int = 100
    batch_size: int = 256

    def check_method_params(self):
        super().check_method_params()
        if int(self.heads) < 1 or int(self.views) < 1:
            raise UserError("scan: heads and views must be at least 1")
        if self.keep_head not in KEEP_HEAD:
            raise UserError(f"scan: keep_head must be one of {', '.join(KEEP_HEAD)}, got {self.keep_head!r}")
        weights = self.entropy_weights()
        if self.keep_head == "loss" and len(set(weights)) > 1:
            raise UserError(f"scan: keep_head = loss compares the heads' losses, which differ with their entropy "
                            f"weights {weights}; give one entropy_weight, or use keep_head = information")

    def entropy_weights(self) -> list[float]:
        """The entropy weight of each head: ``entropy_weight`` for all, or its list (one per head)."""
        w = self.entropy_weight
        many = isinstance(w, (list, tuple))
        try:
            weights = [float(v) for v in w] if many else [float(w)] * int(self.heads)
        except (TypeError, ValueError):
            weights = []
        if len(weights) != int(self.heads) or not all(v >= 0 for v in weights):
            raise UserError(f"scan: entropy_weight must be a number of 0 or more, or a list of {self.heads} such "
                            f"numbers (one per head), got {w!r}")
        return weights

    def prepare_data(self, data: _StageData) -> int:
        n = super().prepare_data(data)
        self._neighbours = torch.from_numpy(np.asarray(data.neighbours, np.int64))
        self._feature_views = self._compute_views(data.net, 1 if self.update_backbone else int(self.views))
        self._clean_features = self._feature_views[0]
        if self.update_backbone:
            self._feature_views = None
        return n

    def _compute_views(self, net: nn.Module, views: int) -> torch.Tensor:
        """``(views, n, d)`` backbone features: the images, then weak augmentations (seeded by the stage's seed)."""
        from ..nn.train import extract_features, pick_device

        dev = ddp.device_for_rank(pick_device(self.device))
        net = net.to(dev)
        out = []
        for v in range(views):
            self._gen = aug_generator(self.seed or 0, 0, 0, stream=20 + v)
            policy = None if v == 0 else self._weak

            def prepare(rows, device, policy=policy):
                x = self._norm.to_float(rows, device)
                if policy is not None:
                    x = policy(x, self._gen)
                return self._norm(x)

            out.append(torch.from_numpy(extract_features(
                net, self._X8, batch_size=int(self.feature_batch), device=dev, precision=self.precision,
                channels_last=bool(self.channels_last), prepare=prepare, modules=[net],
                desc=f"feature view {v + 1}/{views}" if len(self._X8) > 2000 else None)))
        return torch.stack(out)

    def build_modules(self) -> dict:
        net = self._data.net
        heads = ClusterHeads(net.out_dim, int(self.n_clusters), int(self.heads))
        heads.norm.set_statistics(self._clean_features)
        return {"net": self._copy_of(net), "heads": heads} if self.update_backbone else {"heads": heads}

    def describe(self) -> str:
        how = "backbone trained" if self.update_backbone else f"backbone frozen, {self.views} feature views"
        return f"{self.heads} heads, k={self.n_clusters}, {self._neighbours.shape[1]} neighbours, {how}"

    def on_epoch_start(self, trainer, epoch):
        super().on_epoch_start(trainer, epoch)
        # sums over the epoch's steps, on the device (read back once, at the epoch's end)
        self._head_loss = torch.zeros(int(self.heads), device=trainer.device)
        self._parts = torch.zeros(2, device=trainer.device)
        self._steps = 0

    def _logits(self, idx, nidx, trainer) -> torch.Tensor:
        if self._feature_views is not None:
            fv = self._feature_views
            va = torch.randint(fv.shape[0], (len(idx),), generator=self._pick)
            vn = torch.randint(fv.shape[0], (len(idx),), generator=self._pick)
            h = torch.cat([fv[va, torch.from_numpy(idx)], fv[vn, torch.from_numpy(nidx)]])
            return trainer.modules["heads"](h.to(trainer.device))
        freeze_batchnorm(trainer.modules["net"])
        # anchors and neighbours in one augmentation call: half the kernel launches of two
        x = trainer.to_device(self.view(self._strong, np.concatenate([idx, nidx]), trainer.device))
        return trainer.modules["heads"](trainer.modules["net"](x))

    def training_step(self, idx, trainer):
        from ..nn.contrastive import scan_loss

        nb = self._neighbours[torch.from_numpy(idx)]
        pick = torch.randint(nb.shape[1], (len(idx),), generator=self._pick)
        nidx = nb[torch.arange(len(idx)), pick].numpy()
        logits = self._logits(idx, nidx, trainer)
        b = len(idx)
        losses = []
        for h, weight in enumerate(self.entropy_weights()):
            loss, consistency, ent = scan_loss(logits[h, :b], logits[h, b:], weight)
            losses.append(loss)
            if h == 0:
                self._parts += torch.stack([consistency, ent]).detach().float()
        losses = torch.stack(losses)
        self._head_loss += losses.detach().float()
        self._steps += 1
        # the epoch's cluster counts (collapse monitoring) follow the head of lowest loss so far (with one weight per
        # head, the loss includes each head's own weight): the head kept at the end is chosen only then (keep_head)
        lowest = torch.argmin(self._head_loss).view(1)
        self._count(logits[:, :b].index_select(0, lowest)[0])
        return losses.sum()

    def on_epoch_end(self, trainer, epoch):
        steps = max(self._steps, 1)
        losses = [ddp.mean_scalar(v / steps) for v in self._head_loss.tolist()]
        consistency, ent = self._parts.tolist()
        return {"head_losses": losses, "lowest_loss_head": int(np.argmin(losses)),
                "consistency_head0": ddp.mean_scalar(consistency / steps),
                "entropy_head0": ddp.mean_scalar(ent / steps), **self._cluster_stats()}

    def on_fit_end(self, trainer):
        from ..temi import neighbour_information

        hist = trainer.history
        self.head_losses_ = list(hist[-1]["head_losses"]) if hist else []
        clusters = self._head_clusters(trainer.device)
        neighbours = self._neighbours.numpy()
        self.head_information_ = [neighbour_information(c, neighbours, int(self.n_clusters)) for c in clusters]
        if self.keep_head == "loss":
            self.best_head_ = int(np.argmin(self.head_losses_)) if self.head_losses_ else 0
        else:
            self.best_head_ = int(np.argmax(self.head_information_))
        super().on_fit_end(trainer)

    def _head_clusters(self, device) -> np.ndarray:
        """``(heads, n)``: every head's clusters of the (un-augmented) training images."""
        from ..nn.train import extract_features

        feats = self._compute_views(self.net_, 1)[0] if self.update_backbone else self._clean_features
        logits = extract_features(lambda h: self.heads_(h).transpose(0, 1), feats, device=device,
                                  modules=[self.heads_])  # (n, heads, k)
        return logits.argmax(-1).T.astype(np.int64)

    def backbone(self, pretext_net: nn.Module) -> nn.Module:
        """The backbone after this stage: its own when it trained one, else the pretext's."""
        return self.net_ if self.update_backbone else pretext_net


class SelfLabelStage(_Stage):
    """SCAN's self-labelling: confident weak-view predictions are the targets of the strong view; the backbone
    and the head train together, with the backbone's BatchNorm statistics frozen."""

    component_name = "selflabel"

    threshold: float = 0.99
    balance: bool = True
    entropy_weight: float = 0.0
    freeze_bn: bool = True
    epochs: int = 4
    batch_size: int = 256

    def check_method_params(self):
        super().check_method_params()
        if not 0 < float(self.threshold) < 1:
            raise UserError(f"selflabel: threshold must be between 0 and 1, got {self.threshold!r}")

    def build_modules(self) -> dict:
        return {"net": self._copy_of(self._data.net), "head": self._copy_of(self._data.head)}

    def describe(self) -> str:
        return f"threshold {self.threshold}, k={self.n_clusters}"

    def on_epoch_start(self, trainer, epoch):
        super().on_epoch_start(trainer, epoch)
        self._confident = 0
        self._seen = 0

    def training_step(self, idx, trainer):
        from ..nn.contrastive import self_label_loss

        from ..nn.contrastive import entropy

        net, head = trainer.modules["net"], trainer.modules["head"]
        if self.freeze_bn:
            freeze_batchnorm(net)
        weak = trainer.to_device(self.view(self._weak, idx, trainer.device))
        strong = trainer.to_device(self.view(self._strong, idx, trainer.device))
        with torch.no_grad():
            weak_logits = head(net(weak)).float()
        strong_logits = head(net(strong))
        loss, n = self_label_loss(weak_logits, strong_logits, float(self.threshold), bool(self.balance))
        if self.entropy_weight:
            loss = loss - float(self.entropy_weight) * entropy(torch.softmax(strong_logits.float(), 1).mean(0))
        self._confident += n
        self._seen += len(idx)
        self._count(weak_logits)
        return loss

    def on_epoch_end(self, trainer, epoch):
        conf = ddp.mean_scalar(self._confident / max(self._seen, 1))
        return {"confident": conf, **self._cluster_stats()}


# -- the encoder ------------------------------------------------------------------------------------------------
def _merge(base: dict, over: dict | None, what: str, valid) -> dict:
    out = copy.deepcopy(base)
    for k, v in (over or {}).items():
        if k not in valid:
            raise UserError(f"scan: unknown {what} option {k!r}; valid options are {', '.join(sorted(valid))} "
                            f"(set them with --set encoder.{what}.OPTION=VALUE)")
        out[k] = v
    return out


@register("scan")
class ScanEncoder(ClusteringEncoder):
    """SCAN: SimCLR pretext → neighbour clustering (several heads, the best kept) → self-labelling (module doc).

    Parameters: ``n_clusters`` (k, or "auto": chosen on the pretext features); ``preset`` (``auto``,
    ``grey``, ``colour-32``, ``photo``) and ``budget`` (``auto``, ``cpu``, ``gpu``) choose the stage settings
    of :data:`PRESETS`; ``size`` overrides the preset's working side; ``pretext``, ``scan``, ``selflabel``:
    tables of options overriding the preset's (``pretext``: any ``simclr`` option; ``scan``: ``epochs``,
    ``min_steps``, ``batch_size``, ``lr``, ``heads``, ``keep_head``, ``entropy_weight``, ``update_backbone``, ``flip``,
    ``n_ops``, ``cutout``, ...; ``selflabel``: the same plus ``threshold`` and ``balance``; ``epochs = 0``
    skips self-labelling); ``neighbours``: k of the mined neighbours; shared: ``device``, ``precision``,
    ``channels_last``, ``workers``, ``checkpoint_dir`` (each stage in its own subfolder), ``resume``,
    ``cache``/``cache_dir`` (the pretext cache), ``seed``.
    """

    n_clusters: int | str = 10
    preset: str = "auto"
    budget: str = "auto"
    size: int | None = None
    pretext: dict | None = None
    scan: dict | None = None
    selflabel: dict | None = None
    neighbours: int = 20
    seed: int | None = 0
    device: str = "auto"
    precision: str = "fp32"
    channels_last: bool = False
    workers: int = 0
    checkpoint_dir: str | None = None
    resume: bool = False
    cache: bool = True
    cache_dir: str | None = None

    # -- settings ------------------------------------------------------------------------------------------
    def resolve_settings(self, shape) -> dict:
        """The stage settings for images of ``shape``: the preset's, then this encoder's overrides."""
        from ..base import REGISTRY

        kind = data_kind(shape) if self.preset == "auto" else self.preset
        if kind not in PRESETS:
            raise UserError(f"scan: unknown preset {self.preset!r}; use auto, {', '.join(KINDS)}")
        budget = self.budget
        if budget == "auto":
            from ..nn.train import pick_device

            budget = "gpu" if pick_device(self.device).type == "cuda" else "cpu"
        if budget not in BUDGETS:
            raise UserError(f"scan: unknown budget {self.budget!r}; use auto, cpu or gpu")
        p = PRESETS[kind][budget]
        shared = ("seed", "device", "precision", "channels_last", "workers", "resume", "checkpoint_dir", "init",
                  "n_clusters", "cache", "cache_dir")
        pre_valid = [k for k in REGISTRY["simclr"]._get_param_names() if k not in shared]
        settings = {
            "preset": kind, "budget": budget,
            "size": int(self.size) if self.size is not None else min(int(p["size"]), int(shape[1]), int(shape[2])),
            "pretext": _merge(p["pretext"], self.pretext, "pretext", pre_valid),
            "scan": _merge(p["scan"], self.scan, "scan", [k for k in ScanStage._get_param_names() if k not in shared]),
            "selflabel": _merge(p["selflabel"], self.selflabel, "selflabel",
                                [k for k in SelfLabelStage._get_param_names() if k not in shared]),
        }
        if int(self.neighbours) < 1:
            raise UserError(f"scan: neighbours must be at least 1, got {self.neighbours!r}")
        # the scan stage's values are checked now, not after the pretext has trained
        ScanStage(**{**settings["scan"], "n_clusters": 2}).check_method_params()
        return settings

    def _shared(self, stage: str) -> dict:
        out = {"seed": self.seed, "device": self.device, "precision": self.precision,
               "channels_last": self.channels_last, "workers": self.workers, "resume": self.resume}
        if self.checkpoint_dir:
            out["checkpoint_dir"] = str(Path(self.checkpoint_dir) / stage)
        return out

    # -- fit ----------------------------------------------------------------------------------------------------
    def fit(self, ds: ImageSet, y=None):
        from ..nn.contrastive import mine_neighbours
        from ..nn.train import pick_device

        self.check_n_clusters(len(ds))
        settings = self.settings_ = self.resolve_settings(ds.shape)
        side = settings["size"]
        log(f"scan: preset {settings['preset']} ({settings['budget']} budget), {side} px working images")
        images = in_memory(ds.resized((side, side)))  # decoded once; carries no labels
        self.warnings_: list[str] = []
        # 1. pretext
        pre = build({"type": "simclr", **settings["pretext"], **self._shared("pretext"),
                     "cache": self.cache, "cache_dir": self.cache_dir}, kind="encoder")
        pre.fit(images)
        self.pretext_history_ = pre.history_
        self.pretext_from_cache_ = bool(getattr(pre, "from_cache_", False))
        feats = pre.train_features()
        self.input_shape_ = list(pre.input_shape_)
        self.mean_, self.std_ = pre.mean_, pre.std_
        self.arch_, self.width_ = pre.arch, pre.width
        k = int(self.resolve_n_clusters(feats / np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)))
        if k > len(ds):
            raise UserError(f"scan: {k} clusters for {len(ds)} images; choose fewer clusters")
        # 2. neighbours and clustering heads
        nn_k = min(int(self.neighbours), len(ds) - 1)
        # on a GPU the same exact search runs there (faiss-cpu would be the slow part of the run)
        device = ddp.device_for_rank(pick_device(self.device))
        neighbours = mine_neighbours(feats, nn_k, backend="torch" if device.type == "cuda" else "faiss",
                                     device=device)
        init = getattr(pre, "cache_key_", "") or ""
        scan = ScanStage(**{**settings["scan"], "n_clusters": k, "init": init, **self._shared("scan")})
        scan.fit(_StageData(images, self.mean_, self.std_, pre.net_, neighbours=neighbours))
        self.scan_history_ = scan.history_
        self.best_head_, self.head_losses_, self.head_information_ = (scan.best_head_, scan.head_losses_,
                                                                      scan.head_information_)
        self.net_, self.head_ = scan.backbone(pre.net_), scan.heads_.single(scan.best_head_)
        self.scan_labels_ = self._probabilities(uint8_of(images)).argmax(1).astype(np.int64)
        rec, warn = collapse_report(self.scan_labels_, k, "the scan stage")
        self.scan_clusters_ = rec
        self._warn(warn)
        weights = scan.entropy_weights()
        weight = f" (entropy weight {weights[self.best_head_]:g})" if len(set(weights)) > 1 else ""
        log(f"scan: head {self.best_head_}{weight} kept by {scan.keep_head} (neighbour "
            f"information {', '.join(f'{v:.3f}' for v in self.head_information_)}; losses "
            f"{', '.join(f'{v:.3f}' for v in self.head_losses_)}); cluster sizes {rec['counts']}")
        # 3. self-labelling
        self.selflabel_history_ = []
        self.selflabel_kept_ = False
        sl = settings["selflabel"]
        if int(sl.get("epochs", SelfLabelStage.epochs)) > 0:
            stage = SelfLabelStage(**{**sl, "n_clusters": k, "init": f"{init}/scan-head-{self.best_head_}",
                                      **self._shared("selflabel")})
            stage.fit(_StageData(images, self.mean_, self.std_, self.net_, head=self.head_))
            self.selflabel_history_ = stage.history_
            scan_net, scan_head = self.net_, self.head_
            self.net_, self.head_ = stage.net_, stage.head_
            self.selflabel_kept_ = True
            if stage.history_ and max(h.get("confident", 0.0) for h in stage.history_) == 0:
                self._warn([f"scan: self-labelling found no image above the threshold {stage.threshold}; "
                            "its epochs changed nothing (the scan stage's clusters stand)"])
            selflabel_labels = self._probabilities(uint8_of(images)).argmax(1).astype(np.int64)
            rec_sl, warn_sl = collapse_report(selflabel_labels, k, "self-labelling")
            self._warn(warn_sl)
            if warn_sl and not warn:
                # a collapse that self-labelling made, not one it inherited: its network is worse than the one it
                # started from, so that one is kept (the collapse stays reported above)
                self.net_, self.head_ = scan_net, scan_head
                self.selflabel_kept_ = False
                self._warn([f"scan: self-labelling's network is discarded and the scan stage's kept: self-labelling "
                            f"collapsed clusters that the scan stage had kept apart (cluster sizes {rec['counts']} "
                            f"after the scan stage, {rec_sl['counts']} after self-labelling)"])
        self.labels_ = selflabel_labels if self.selflabel_kept_ else self.scan_labels_
        rec, warn = collapse_report(self.labels_, k, "self-labelling" if self.selflabel_kept_ else "the scan stage")
        self.clusters_ = rec
        self._warn(warn)
        self.net_.eval()
        self.head_.eval()
        return self

    def _warn(self, messages):
        for m in messages:
            if m not in self.warnings_:
                self.warnings_.append(m)
                log(m)

    # -- inference ----------------------------------------------------------------------------------------------
    def _device(self):
        dev = getattr(self, "_dev", None)
        if dev is None:
            from ..nn.train import pick_device

            dev = self._dev = ddp.device_for_rank(pick_device(self.device))
        return dev

    def _run(self, fn, X8: torch.Tensor) -> np.ndarray:
        from ..nn.train import extract_features

        dev = self._device()
        self.net_.to(dev)
        self.head_.to(dev)
        norm = ImageNormaliser(self.mean_, self.std_)
        return extract_features(fn, X8, batch_size=512, device=dev, precision=self.precision,
                                channels_last=bool(self.channels_last), prepare=norm.prepare,
                                modules=[self.net_, self.head_], desc="scan" if len(X8) > 2000 else None)

    def _probabilities(self, X8: torch.Tensor) -> np.ndarray:
        return self._run(lambda x: torch.softmax(self.head_(self.net_(x)).float(), dim=1), X8)

    def _require(self):
        if getattr(self, "net_", None) is None:
            raise UserError("the scan encoder is not trained yet; fit it (imclust run) first")

    def predict_proba(self, ds: ImageSet) -> np.ndarray:
        self._require()
        return self._probabilities(uint8_of(self.input_view(ds))).astype(np.float32)

    def transform(self, ds: ImageSet) -> np.ndarray:
        self._require()
        return self._run(self.net_, uint8_of(self.input_view(ds))).astype(np.float32)

    # -- state ------------------------------------------------------------------------------------------------
    def _build_net(self):
        from ..nn.contrastive_nets import make_backbone

        net = make_backbone(self.arch_, int(self.input_shape_[0]), self.width_)
        return net, make_head(net.out_dim, int(self.n_clusters_))

    def get_state(self):
        from ..nn.train import module_arrays

        arrays = {"mean_": np.asarray(self.mean_, np.float32), "std_": np.asarray(self.std_, np.float32),
                  "labels_": np.asarray(self.labels_, np.int64)}
        arrays.update(module_arrays(self.net_, "net."))
        arrays.update(module_arrays(self.head_, "head."))
        extra = {k: getattr(self, k) for k in ("input_shape_", "arch_", "width_", "n_clusters_", "settings_",
                                               "best_head_", "head_losses_", "head_information_", "warnings_",
                                               "clusters_",
                                               "scan_clusters_", "pretext_history_", "scan_history_",
                                               "selflabel_history_", "selflabel_kept_", "pretext_from_cache_")}
        return arrays, extra

    def set_state(self, arrays, extra):
        from ..nn.train import load_module_arrays

        self.head_information_ = None  # absent from models saved before the scan stage computed it
        for k, v in extra.items():
            setattr(self, k, v)
        self.mean_, self.std_ = np.asarray(arrays["mean_"], np.float32), np.asarray(arrays["std_"], np.float32)
        self.labels_ = np.asarray(arrays["labels_"], np.int64)
        net, head = self._build_net()
        load_module_arrays(net, arrays, "net.")
        load_module_arrays(head, arrays, "head.")
        self.net_, self.head_ = net.eval(), head.eval()

    # -- figures ------------------------------------------------------------------------------------------------
    def summary(self) -> dict:
        return {
            "settings": self.settings_, "n_clusters": int(self.n_clusters_), "best_head": self.best_head_,
            "head_losses": self.head_losses_, "head_information": self.head_information_,
            "pretext_from_cache": self.pretext_from_cache_,
            "clusters_after_scan": self.scan_clusters_, "clusters": self.clusters_,
            "confident_share": [h.get("confident") for h in self.selflabel_history_],
            "selflabel_kept": bool(getattr(self, "selflabel_kept_", bool(self.selflabel_history_))),
            "warnings": list(self.warnings_),
            "seconds": {s: float(sum(h.get("seconds", 0.0) for h in getattr(self, f"{s}_history_")))
                        for s in ("pretext", "scan", "selflabel")},
        }

    def write_figures(self, result, out) -> dict:
        from ..io import write_json
        from ..report.figures import loss_curve

        out = Path(out)
        hist = ([{"stage": "pretext", **h} for h in self.pretext_history_]
                + [{"stage": "scan", **h} for h in self.scan_history_]
                + [{"stage": "selflabel", **h} for h in self.selflabel_history_])
        write_json(out / "history.json", hist)
        write_json(out / "scan.json", self.summary())
        figs = {}
        if self.pretext_history_:
            figs["pretext_loss"] = loss_curve(self.pretext_history_, out / "loss_curve.png", keys=("loss",),
                                              title="SCAN pretext: NT-Xent loss")
        if self.scan_history_:
            figs["scan_loss"] = loss_curve(self.scan_history_, out / "scan_loss.png",
                                           keys=("loss", "largest_cluster"),
                                           title="SCAN stage: loss (all heads) and largest cluster's share")
        if self.selflabel_history_:
            figs["selflabel"] = loss_curve(self.selflabel_history_, out / "selflabel.png",
                                           keys=("loss", "confident", "largest_cluster"),
                                           title="self-labelling: loss, confident share, largest cluster")
        return figs
