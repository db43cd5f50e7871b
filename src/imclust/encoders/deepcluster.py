"""DeepCluster (Caron et al., ECCV 2018): alternate k-means pseudo-labels and ConvNet training.

A :class:`~imclust.encoders.base.TrainableEncoder`. Each epoch, in :meth:`DeepClusterEncoder.on_epoch_start`:

1. features of every image, without augmentation (eval mode; the last hidden layer before its ReLU);
2. PCA to ``pca_dim`` (256) dimensions with whitening, then L2 normalisation;
3. k-means with ``k_train`` clusters (:mod:`imclust.nn.pseudolabels`: :class:`imclust.cluster.KMeans`,
   faiss when installed, ``kmeans_iter`` Lloyd iterations; an empty cluster is repaired by splitting the
   largest, and the number repaired is logged);
4. the assignments become pseudo-labels;
5. a sampler draws ``n`` images uniformly over the non-empty clusters (so a giant cluster cannot dominate);
6. the classifier head is re-initialised (fresh weights, no momentum carried over);
7. the ConvNet and head train with cross-entropy on augmented views (random resized crop, optional flip
   and colour jitter) by SGD (lr 0.05, momentum 0.9, weight decay 1e-5 by default).

Each epoch logs the NMI between this epoch's pseudo-labels and the previous epoch's (stability), the share
of the largest cluster (a collapse, over 90 %, is reported loudly and kept in the history), and the number
of repaired clusters. When the image set carries labels, the epoch also logs NMI of the pseudo-labels and
ACC/NMI of a k-means at the number of classes against them: for *evaluation only*; the labels never reach
the k-means, the sampler or the loss (a test checks that fitting with and without labels gives the same
pseudo-labels).

Under ``torchrun`` the shared loop trains with DDP; here every rank computes features for its share of the
batches, rank 0 gathers them and runs PCA and k-means, and the pseudo-labels are broadcast to every rank.

``transform`` returns features for any images; a recipe clusters them at the final ``k`` (over-clustering:
``k_train`` > ``k``). By default (``output="relu"``) these are the last hidden layer *after* its ReLU, the
layer the classifier head reads; ``output="pre_relu"`` gives the layer the per-epoch k-means clusters. On
MNIST the final k-means does far better on the ReLU features, L2-normalised and *not* whitened (ACC 0.95
against 0.54 with the per-epoch PCA-256-whitened recipe on the same network; see benchmarks/RESULTS.md),
so the ``deepcluster`` recipe uses those; the per-epoch clustering stays the paper's.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from ..base import register
from ..data import ImageSet
from ..errors import UserError
from ..nn import distributed as ddp
from ..nn.pseudolabels import PseudoLabels
from ..nn.train import epoch_seed
from ..progress import log
from .base import TrainableEncoder

COLLAPSE_SHARE = 0.9
#: random streams of an epoch besides the pseudo-label tools' (see imclust.nn.train.epoch_seed)
STREAM_PCA, STREAM_AUGMENT, STREAM_EVAL = 1, 4, 5


@register("deepcluster")
class DeepClusterEncoder(TrainableEncoder):
    """DeepCluster: a ConvNet trained on its own k-means pseudo-labels; features = its last hidden layer.

    Parameters (recipe ``[encoder]`` options)
    ----------
    arch : ``auto`` (convnet below 64 px, AlexNet-BN from 64 px), ``convnet``, ``alexnet`` or ``vgg16``.
    size, channels : resize / convert the images first (default: the source's own shape).
    sobel : the fixed Sobel input filter.
    k_train : clusters of the per-epoch k-means (over-clustering: more than the final k).
    pca_dim : PCA dimensions (whitened) before the k-means.
    crop_scale, crop_ratio, flip, color_jitter : augmentations of the training views.
    head : ``softmax`` (linear + cross-entropy, weights from N(0, 0.01²)) or another name from
        ``imclust.nn.heads`` (center, arcface, ...).
    width, feat_dim : network width and feature size (None: the architecture's default).
    kmeans_iter, kmeans_backend : k-means iterations; ``auto`` / ``faiss`` / ``sklearn`` (see cluster.KMeans).
    feature_batch : batch size of the feature pass.
    output : what ``transform`` returns: ``relu`` (the head's input) or ``pre_relu`` (the per-epoch k-means input).
    Training (:class:`TrainableEncoder`): SGD by default (paper: lr 0.05, momentum 0.9, weight decay 1e-5),
    ``epochs`` (0 allowed), ``batch_size``, ``device``, ``precision``, ``channels_last``, checkpoints,
    ``resume``; ``seed`` fixes initialisation, k-means, sampling and augmentation.
    """

    arch: str = "auto"
    size: object = None
    channels: int | None = None
    sobel: bool = False
    k_train: int = 100
    pca_dim: int = 256
    crop_scale: tuple = (0.08, 1.0)
    crop_ratio: tuple = (3 / 4, 4 / 3)
    flip: bool = True
    color_jitter: float = 0.0
    head: str = "softmax"
    width: int | None = None
    feat_dim: int | None = None
    kmeans_iter: int = 20
    kmeans_backend: str = "auto"
    feature_batch: int = 512
    output: str = "relu"
    epochs: int = 20
    lr: float = 0.05
    optimizer: str = "sgd"
    weight_decay: float = 1e-5
    checkpoint_every: int = 5

    INFERENCE_ONLY = ("output",)
    saved_modules = ("net",)  # the head is re-initialised every epoch; features come from the net
    min_epochs = 0

    # -- building ------------------------------------------------------------------------------------------
    def check_method_params(self):
        def whole(name, v, lo=1):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
                raise UserError(f"deepcluster: {name} must be a whole number of at least {lo}, got {v!r} "
                                f"(set it with --set encoder.{name}=...)")

        whole("k_train", self.k_train, 2)
        whole("pca_dim", self.pca_dim)
        whole("kmeans_iter", self.kmeans_iter)
        cs, cr = tuple(self.crop_scale), tuple(self.crop_ratio)
        if len(cs) != 2 or not 0 < cs[0] <= cs[1] <= 1:
            raise UserError(f"deepcluster: crop_scale must be [min, max] with 0 < min <= max <= 1, got {list(cs)}")
        if len(cr) != 2 or not 0 < cr[0] <= cr[1]:
            raise UserError(f"deepcluster: crop_ratio must be [min, max] with 0 < min <= max, got {list(cr)}")
        if self.output not in ("relu", "pre_relu"):
            raise UserError(f"deepcluster: output must be 'relu' or 'pre_relu', got {self.output!r}")
        if self.kmeans_backend not in ("auto", "faiss", "sklearn"):
            raise UserError(f"deepcluster: unknown kmeans_backend {self.kmeans_backend!r}; use auto, faiss or sklearn")

    def _build_net(self):
        from ..nn.deepcluster_nets import DeepClusterNet, auto_arch

        c, h, w = self.input_shape_
        arch = auto_arch((h, w)) if self.arch == "auto" else self.arch
        self.arch_ = arch
        return DeepClusterNet(arch, c, (h, w), sobel=self.sobel, width=self.width, feat_dim=self.feat_dim)

    def _make_head(self, in_dim: int):
        from ..nn.heads import make_head

        return make_head(self.head, in_dim, int(self.k_train), **({"init_std": 0.01} if self.head == "softmax" else {}))

    def build_modules(self) -> dict:
        net = self._build_net()
        return {"net": net, "head": self._make_head(net.out_dim)}

    def describe(self) -> str:
        return f"{self.arch_}, k_train={self.k_train}"

    def _images(self, ds: ImageSet) -> torch.Tensor:
        """All images as uint8 ``(n, C, H, W)`` (a quarter of float32's memory), at the fitted shape."""
        view = self.input_view(ds)
        out = torch.empty((len(view), *view.shape), dtype=torch.uint8)
        for idx, batch in view.iter_batches(1024, desc="decode" if len(view) > 2000 else None):
            out[torch.from_numpy(idx)] = torch.from_numpy(np.clip(batch * 255.0 + 0.5, 0, 255).astype(np.uint8))
        return out

    def _normalise(self, xb: torch.Tensor) -> torch.Tensor:
        mean = torch.as_tensor(self.mean_, dtype=xb.dtype, device=xb.device).view(1, -1, 1, 1)
        std = torch.as_tensor(self.std_, dtype=xb.dtype, device=xb.device).view(1, -1, 1, 1)
        return (xb - mean) / std

    def _to_float(self, x8: torch.Tensor, device) -> torch.Tensor:
        x = x8.to(device, non_blocking=True).float().div_(255.0)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    # -- features --------------------------------------------------------------------------------------------
    def _features(self, X8: torch.Tensor, gather: str = "all", desc: str | None = "features",
                  relu: bool = False) -> np.ndarray | None:
        """Features of every image (no augmentation); under DDP gathered on every rank or on rank 0 only."""
        net = self.net_
        fn = (lambda x: torch.relu(net.embed(x))) if relu else net.embed
        return self.features(fn, X8, prepare=lambda rows, dev: self._normalise(self._to_float(rows, dev)),
                             batch_size=int(self.feature_batch), desc=desc, gather=gather)

    # -- training hooks ------------------------------------------------------------------------------------------
    def prepare_data(self, ds: ImageSet) -> int:
        view = ds.resized(self.size, self.channels)
        if self.k_train > len(view):
            raise UserError(f"deepcluster: k_train={self.k_train} is larger than the number of images ({len(view)}); "
                            f"choose k_train at most {len(view)} (--set encoder.k_train=...)")
        self.input_shape_ = list(view.shape)
        self.warnings_ = []
        self._X8 = self._images(view)
        # per-channel statistics for normalisation (of the images only)
        xf = self._X8[: min(len(self._X8), 20000)].float().div_(255.0)
        self.mean_ = xf.mean(dim=(0, 2, 3)).numpy().astype(np.float32)
        self.std_ = np.maximum(xf.std(dim=(0, 2, 3)).numpy(), 1e-3).astype(np.float32)
        # labels, when the set has them, only score each epoch's clusters (see _evaluate); never used to fit
        self._eval_labels = None if ds.labels is None else np.asarray(ds.labels)
        self._pseudo = PseudoLabels(int(self.k_train), int(self.seed or 0), n_init=1, max_iter=int(self.kmeans_iter),
                                    backend=self.kmeans_backend)
        return len(view)

    def _cluster_features(self, feats: np.ndarray, epoch: int) -> dict:
        from ..reduce import PCA

        pca = PCA(n_components=min(self.pca_dim, feats.shape[1], len(feats) - 1), whiten=True,
                  random_state=epoch_seed(int(self.seed or 0), epoch, STREAM_PCA))
        Z = pca.fit_transform(feats)
        Z /= np.maximum(np.linalg.norm(Z, axis=1, keepdims=True), 1e-12)
        return self._pseudo.update(Z, epoch)

    def on_epoch_start(self, trainer, epoch: int) -> dict:
        rec: dict = {}
        t0 = time.perf_counter()
        feats = self._features(self._X8, gather="main", desc=f"features {epoch + 1}")
        rec["time_features"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        rec.update(self._cluster_features(feats, epoch) if trainer.is_main else {})
        rec["time_kmeans"] = time.perf_counter() - t1
        labels = ddp.broadcast_array(self._pseudo.labels if trainer.is_main else None)
        if not trainer.is_main:
            rec.update(self._pseudo.set(labels))
        if "nmi_prev" in rec:
            trainer.postfix["nmi_prev"] = f"{rec['nmi_prev']:.3f}"
        largest = rec["largest_cluster"]
        if largest > COLLAPSE_SHARE:
            rec["collapsed"] = True
            msg = (f"deepcluster: COLLAPSE at epoch {epoch + 1}: one cluster holds {largest:.1%} of the images "
                   f"(more than {COLLAPSE_SHARE:.0%}); the representation is degenerate")
            self.warnings_.append(msg)
            log(msg)
        if self._eval_labels is not None and trainer.is_main:
            rec.update(self._evaluate(feats, labels, epoch))
        # a sampler uniform over the clusters
        self._sample = self._pseudo.sample(len(labels), epoch)
        self._targets = torch.from_numpy(labels)
        # a fresh classifier head: new weights (the same on every rank), no momentum carried over
        head = trainer.raw("head")
        head.load_state_dict(self._make_head(self.net_.out_dim).to(trainer.device).state_dict())
        ddp.broadcast_module(head)
        for p in head.parameters():
            trainer.optimizer.state.pop(p, None)
        self._aug_gen = torch.Generator()
        self._aug_gen.manual_seed(epoch_seed(int(self.seed or 0), epoch, STREAM_AUGMENT) + 7 * trainer.rank)
        self._t_train = time.perf_counter()
        return rec

    def _evaluate(self, feats, labels, epoch) -> dict:
        """Scores against the evaluation labels. Nothing here feeds back into training.

        ``nmi_labels``: the pseudo-labels (k_train clusters) against the labels; ``acc_k``/``nmi_k``: a k-means
        at the number of classes on the output features, L2-normalised, as the recipe's final clustering."""
        from ..cluster import KMeans
        from ..metrics import cluster_acc, nmi

        y = self._eval_labels
        out = {"nmi_labels": nmi(y, labels)}
        k = len(np.unique(y))
        Z = np.maximum(feats, 0) if self.output == "relu" else feats.copy()
        Z /= np.maximum(np.linalg.norm(Z, axis=1, keepdims=True), 1e-12)
        lab_k = KMeans(k, n_init=1, random_state=epoch_seed(int(self.seed or 0), epoch, STREAM_EVAL)).fit_predict(Z)
        out["acc_k"] = cluster_acc(y, lab_k)
        out["nmi_k"] = nmi(y, lab_k)
        return out

    def make_batches(self, epoch, generator):
        from ..nn.train import batch_indices

        order = self._sample[torch.randperm(len(self._sample), generator=generator).numpy()]
        return [order[b] for b in batch_indices(len(order), int(self.batch_size), shuffle=False, drop_last=True)]

    def training_step(self, idx, trainer):
        from ..nn.augment import color_jitter, random_resized_crop

        h, w = self.input_shape_[1:]
        idx_t = torch.from_numpy(np.asarray(idx))
        x = self._to_float(self._X8[idx_t], trainer.device)
        x = random_resized_crop(x, (h, w), scale=tuple(float(v) for v in self.crop_scale),
                                ratio=tuple(float(v) for v in self.crop_ratio), flip=bool(self.flip),
                                generator=self._aug_gen)
        if self.color_jitter:
            x = color_jitter(x, float(self.color_jitter), generator=self._aug_gen)
        feats = trainer.modules["net"](self._normalise(x))
        loss, _ = trainer.modules["head"](feats.float(), self._targets[idx_t].to(trainer.device))
        return loss

    def on_epoch_end(self, trainer, epoch: int) -> dict:
        return {"time_train": time.perf_counter() - self._t_train}

    def checkpoint_state(self) -> dict:
        return self._pseudo.state()

    def on_resume(self, arrays) -> None:
        self._pseudo.restore(arrays)

    def on_fit_end(self, trainer) -> None:
        for h in self.history_:
            if h.get("collapsed"):
                msg = f"deepcluster: collapse at epoch {h['epoch']} (largest cluster {h['largest_cluster']:.1%})"
                if not any(f"epoch {h['epoch']}" in m for m in self.warnings_):
                    self.warnings_.append(msg)
        labels = self._pseudo.labels
        self.pseudo_labels_ = np.zeros(0, np.int64) if labels is None else np.asarray(labels, np.int64)
        self._X8 = self._sample = self._targets = self._eval_labels = None

    # -- transform ----------------------------------------------------------------------------------------------
    def transform(self, ds: ImageSet) -> np.ndarray:
        self.require_fitted()
        view = self.input_view(ds)
        return self._features(self._images(view), gather="all",
                              desc="deepcluster features" if len(view) > 2000 else None, relu=self.output == "relu")

    # -- figures ----------------------------------------------------------------------------------------------
    def write_figures(self, result, out) -> dict:
        from pathlib import Path

        from ..io import write_json
        from ..report.figures import loss_curve

        out = Path(out)
        figs = {}
        hist = getattr(self, "history_", None) or []
        write_json(out / "history.json", hist)
        summary = {
            "arch": getattr(self, "arch_", self.arch),
            "k_train": int(self.k_train),
            "epochs": len(hist),
            "collapsed_epochs": [h["epoch"] for h in hist if h.get("collapsed")],
            "empty_repaired": [h.get("empty_repaired", 0) for h in hist],
            "nmi_prev": [h.get("nmi_prev") for h in hist],
            "warnings": list(getattr(self, "warnings_", [])),
            "seconds": {s: float(sum(h.get(f"time_{s}", 0.0) for h in hist)) for s in ("features", "kmeans", "train")},
        }
        write_json(out / "deepcluster.json", summary)
        if hist:
            figs["loss_curve"] = loss_curve(hist, out / "loss_curve.png", keys=("loss",), title="DeepCluster loss")
            figs["stability"] = loss_curve(hist, out / "deepcluster_nmi.png",
                                           keys=("nmi_prev", "nmi_labels", "acc_k", "largest_cluster"),
                                           title="DeepCluster: stability (NMI t-1), scores, largest cluster")
        return figs

