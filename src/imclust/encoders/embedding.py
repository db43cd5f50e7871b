"""Discriminative embeddings (tutorial 4): a network with a d-dimensional feature layer trained through a head.

Two encoders share everything but where the class ids come from:

``embedding`` (:class:`EmbeddingEncoder`)
    Supervised: ``fit(images, y)`` with true labels. It is what ``imclust embed`` trains to *visualise*
    labelled data; it refuses to fit without labels, so it can never sneak labels into ``imclust run``.
``selflabel`` (:class:`SelfLabelEncoder`)
    Self-labelling: before every epoch, k-means on the current embedding of all images gives pseudo-labels
    (``n_clusters`` of them); the network and head then train on them for one epoch. Labels are never read.
    The first epoch's pseudo-labels come from k-means on PCA-50 of the pixels (``first_labels="pca"``) or,
    as in DeepCluster, on the randomly initialised network's features (``first_labels="features"``).
    The pseudo-label tools are :mod:`imclust.nn.pseudolabels`: successive assignments are matched to the
    previous ones (Hungarian), so the head's classes and Center Loss centres keep their meaning; batches
    sample the pseudo-classes uniformly (DeepCluster's guard against one cluster swallowing the others);
    empty clusters are repaired by splitting the largest. It owns its clusters
    (:class:`~imclust.encoders.base.ClusteringEncoder`): after training, one more k-means on the trained
    features gives ``labels_`` and ``cluster_centers_``; ``predict`` assigns new images to those centres, so a
    recipe may take them with ``[clusterer] type = "encoder"``.

The network is tutorial 4's MLP or residual CNN (:mod:`imclust.nn.embedding_nets`), the head any of
:func:`imclust.nn.heads.make_head`. Both are :class:`~imclust.encoders.base.TrainableEncoder` s: the
heads' parameter groups (Center Loss centres at their own learning rate) come from
:func:`imclust.nn.heads.optimizer_factory`, the margin warm-up and the cosine learning rate are Trainer
callbacks.

``transform`` returns the feature layer; with an angular head (ArcFace, CosFace) the features are
L2-normalised (``normalize="auto"``), because class membership lives in their direction only.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from ..base import register
from ..data import ImageSet
from ..errors import UserError
from ..nn.augment import random_shift
from ..nn.embedding_nets import make_net
from ..nn.heads import MarginWarmup, head_names, make_head, optimizer_factory
from ..nn.train import LRSchedule
from .base import ClusteringEncoder, TrainableEncoder


class _HeadEncoder(TrainableEncoder):
    """Shared machinery: network + head trained on class ids (``self._targets``)."""

    head: str = "softmax"
    dim: int = 2
    net: str = "auto"
    lr_schedule: str = "cosine"
    margin: float | None = None
    scale: float | None = None
    easy_margin: bool = False
    weight_init: str = "auto"
    margin_warmup: int = 0
    center_lr: float = 0.05
    center_weight: float | None = None
    center_form: str | None = None
    augment_shift: int = 0
    normalize: object = "auto"
    size: object = None
    channels: int | None = None
    epochs: int = 20
    batch_size: int = 128

    def _head_kwargs(self) -> dict:
        kw = {}
        base = self.head.split("+")[0]
        if base in ("arcface", "cosface"):
            if self.margin is not None:
                kw["margin"] = float(self.margin)
            if self.scale is not None:
                kw["scale"] = float(self.scale)
            if base == "arcface" and self.easy_margin:
                kw["easy_margin"] = True
            kw["weight_init"] = self.weight_init
        elif self.margin is not None or self.scale is not None:
            raise UserError(f"head {self.head!r} takes no margin or scale; they belong to arcface and cosface")
        elif self.weight_init != "auto":
            raise UserError(f"head {self.head!r} takes no weight_init; it belongs to arcface and cosface")
        if "center" in self.head:
            kw["center_lr"] = float(self.center_lr)
            if self.center_weight is not None:
                kw["center_weight"] = float(self.center_weight)
            if self.center_form is not None:
                kw["center_form"] = self.center_form
        return kw

    def check_method_params(self):
        if self.head not in head_names():
            raise UserError(f"unknown head {self.head!r}; use one of {', '.join(head_names())}")
        if int(self.dim) < 1:
            raise UserError(f"dim must be at least 1, got {self.dim}")
        if self.normalize not in ("auto", True, False):
            raise UserError(f"normalize must be auto, true or false, got {self.normalize!r}")
        if self.lr_schedule not in LRSchedule.SCHEDULES:
            raise UserError(f"unknown lr_schedule {self.lr_schedule!r}; use {' or '.join(LRSchedule.SCHEDULES)}")

    def _net_name(self, shape) -> str:
        if self.net == "auto":
            return "cnn" if min(shape[1], shape[2]) >= 16 else "mlp"
        return self.net

    @property
    def normalized_(self) -> bool:
        if self.normalize == "auto":
            return bool(getattr(self, "head_", None) is not None and self.head_.angular)
        return bool(self.normalize)

    # -- training hooks ----------------------------------------------------------------------------------
    def _prepare(self, ds: ImageSet) -> np.ndarray:
        view = ds.resized(self.size, self.channels)
        self.input_shape_ = list(view.shape)
        return view.to_array(desc="decode")

    def build_modules(self) -> dict:
        net = make_net(self._net_name(self.input_shape_), self.input_shape_, int(self.dim))
        head = make_head(self.head, int(self.dim), int(self.n_classes_), **self._head_kwargs())
        return {"net": net, "head": head}

    def configure_optimizer(self, modules, config):
        return optimizer_factory(modules, config)

    def callbacks(self) -> list:
        return [MarginWarmup(self.head_, int(self.margin_warmup)), LRSchedule(self.lr_schedule)]

    def make_batches(self, epoch, generator):
        order = self._order(epoch, generator)
        bs = int(self.batch_size)
        out = [order[s:s + bs] for s in range(0, len(order), bs)]
        if len(out) > 1 and len(out[-1]) < 2:  # BatchNorm needs two samples
            out = out[:-1]
        return out

    def _order(self, epoch, generator) -> np.ndarray:
        return torch.randperm(len(self._X), generator=generator).numpy()

    def training_step(self, idx, trainer):
        xb = trainer.to_device(self._X[idx])
        yb = trainer.to_device(self._targets[idx])
        if int(self.augment_shift):
            xb = random_shift(xb, int(self.augment_shift))
        feats = trainer.modules["net"](xb)
        loss, _ = trainer.modules["head"](feats.float(), yb)
        return loss

    def on_fit_end(self, trainer):
        self._X = self._targets = None

    # -- inference -----------------------------------------------------------------------------------------
    def _features(self, X: np.ndarray) -> np.ndarray:
        Z = self.features(self.net_, X, batch_size=1024, desc="embed" if len(X) > 20000 else None)
        if self.normalized_:
            Z = Z / np.maximum(np.linalg.norm(Z, axis=1, keepdims=True), 1e-12)
        return Z.astype(np.float32)

    def transform(self, ds: ImageSet) -> np.ndarray:
        self.require_fitted()
        return self._features(self.input_view(ds).to_array(desc="decode"))

    def class_logits(self, ds: ImageSet) -> np.ndarray:
        """The head's class (or pseudo-class) scores for each image, without any margin."""
        self.require_fitted()
        X = self.input_view(ds).to_array(desc="decode")
        net, head = self.net_, self.head_
        return self.features(lambda xb: head.logits(net(xb).float()), X, batch_size=512)

    def predict_classes(self, ds: ImageSet) -> np.ndarray:
        """The head's class (or pseudo-class) for each image: argmax of its logits."""
        return self.class_logits(ds).argmax(1)


_COMMON_DOC = """
    Parameters
    ----------
    head : softmax | center | softmax+center | arcface | cosface | arcface+center | cosface+center
    dim : size of the feature layer (2 or 3 to plot it directly, larger for clustering)
    net : ``mlp`` (784-512-256-128-d), ``cnn`` (tutorial's residual CNN) or ``auto`` (cnn for images of 16 px and more)
    margin, scale, easy_margin : ArcFace/CosFace options (None: ArcFace m=0.5, CosFace m=0.35, s=10)
    weight_init : ArcFace/CosFace class directions at the start: ``spread`` (as far apart as possible; in 2-D evenly
        around the circle), ``xavier`` (random), or ``auto`` (default: ``spread`` for dim 2 and 3, ``xavier`` above)
    margin_warmup : epochs over which the margin rises linearly from 0 to its value (0: full margin from the start)
    center_lr, center_weight, center_form : Center Loss options (centres' own learning rate, λ, mean/batch_count)
    lr_schedule : ``cosine`` (learning rates decay to 0 over the epochs; default) or ``constant`` (the tutorial's)
    augment_shift : random translation of up to this many pixels during training (0: none)
    normalize : L2-normalise the output features (``auto``: for angular heads)
    size, channels : resize / convert the images first
    and the training parameters of :class:`~imclust.encoders.base.TrainableEncoder`.
"""


@register("embedding")
class EmbeddingEncoder(_HeadEncoder):
    __doc__ = "Supervised discriminative embedding: trains on true labels (``fit(images, y)``)." + _COMMON_DOC

    def fit(self, ds: ImageSet, y=None, epoch_callback: Callable | None = None):
        """Train on images ``ds`` with class ids ``y`` (required). ``epoch_callback(encoder, epoch)`` may
        return a dict that is added to the epoch's history record."""
        if y is None:
            raise UserError("the supervised 'embedding' encoder needs labels; use 'imclust embed SOURCE --labels FILE', "
                            "or the 'selflabel' encoder to learn without labels")
        y = np.asarray(y).reshape(-1)
        if len(y) != len(ds):
            raise UserError(f"{len(y)} labels for {len(ds)} images; give exactly one label per image")
        classes, yi = np.unique(y, return_inverse=True)
        if len(classes) < 2:
            raise UserError("the labels hold a single class; a discriminative embedding needs at least two")
        self._y, self._epoch_callback = yi.astype(np.int64), epoch_callback
        self.classes_ = classes
        return super().fit(ds)

    def prepare_data(self, ds: ImageSet) -> int:
        self._X, self._targets = self._prepare(ds), self._y
        self.n_classes_ = int(len(self.classes_))
        return len(self._X)

    def on_epoch_end(self, trainer, epoch):
        return self._epoch_callback(self, epoch) if self._epoch_callback else None

    def get_state(self):
        arrays, extra = super().get_state()
        arrays.pop("classes_", None)
        if hasattr(self, "classes_"):
            extra["classes_"] = [c.item() if hasattr(c, "item") else c for c in self.classes_]
        return arrays, extra

    def set_state(self, arrays, extra):
        super().set_state(arrays, extra)
        if "classes_" in extra:
            self.classes_ = np.asarray(extra["classes_"])


@register("selflabel")
class SelfLabelEncoder(ClusteringEncoder, _HeadEncoder):
    __doc__ = ("Self-labelling embedding: k-means pseudo-labels on the current embedding, refreshed every epoch; "
               "labels are never read.\n    n_clusters : number of pseudo-classes (DeepCluster uses more than the "
               "number of classes; 'auto' chooses k on PCA-50 of the pixels)\n    first_labels : where the first "
               "epoch's pseudo-labels come from: ``pca`` (k-means on PCA-50 of the pixels; default) or ``features`` "
               "(k-means on the randomly initialised network's features, as DeepCluster)\n"
               "    uniform_sampling : sample batches uniformly over pseudo-classes" + _COMMON_DOC)

    dim: int = 32
    epochs: int = 15
    batch_size: int = 256
    augment_shift: int = 2
    uniform_sampling: bool = True
    first_labels: str = "pca"

    def check_method_params(self):
        super().check_method_params()
        if self.first_labels not in ("features", "pca"):
            raise UserError(f"first_labels must be 'features' or 'pca', got {self.first_labels!r}")

    def _pixel_pca(self) -> np.ndarray:
        from ..reduce import PCA

        flat = self._X.reshape(len(self._X), -1)
        return PCA(min(50, flat.shape[1], len(flat) - 1), random_state=int(self.seed or 0)).fit_transform(flat)

    def prepare_data(self, ds: ImageSet) -> int:
        from ..nn.pseudolabels import PseudoLabels

        self.check_n_clusters(len(ds))
        self._X = self._prepare(ds)
        self.n_classes_ = self.resolve_n_clusters(self._pixel_pca() if self.n_clusters == "auto" else None)
        self._pseudo = PseudoLabels(self.n_classes_, int(self.seed or 0), align=True, n_init=3, max_iter=100)
        self._targets = None
        return len(self._X)

    def resolve_n_clusters(self, Z):
        if Z is None:
            self.n_clusters_ = int(self.n_clusters)
            return self.n_clusters_
        return super().resolve_n_clusters(Z)

    def on_epoch_start(self, trainer, epoch):
        first = epoch == 0 and self.first_labels == "pca"
        rec = self._pseudo.update(self._pixel_pca() if first else self._features(self._X), epoch)
        self._targets = self._pseudo.labels
        return rec

    def _order(self, epoch, generator) -> np.ndarray:
        if not self.uniform_sampling:
            return super()._order(epoch, generator)
        sample = self._pseudo.sample(len(self._X), epoch)
        return sample[torch.randperm(len(sample), generator=generator).numpy()]

    def checkpoint_state(self) -> dict:
        return self._pseudo.state()

    def on_resume(self, arrays) -> None:
        self._pseudo.restore(arrays)

    def on_fit_end(self, trainer):
        from ..nn.pseudolabels import STREAM_KMEANS, kmeans_labels
        from ..nn.train import epoch_seed

        self.pseudo_labels_ = self._pseudo.labels
        # the encoder's own clusters: one more k-means, on the trained features
        seed = epoch_seed(int(self.seed or 0), trainer.epoch, STREAM_KMEANS)
        self.labels_, self.cluster_centers_, _ = kmeans_labels(self._features(self._X), self.n_classes_, seed, n_init=3,
                                                               max_iter=100)
        super().on_fit_end(trainer)

    def predict_proba(self, ds: ImageSet) -> np.ndarray:
        """Soft assignments to the final k-means centres (Student's t kernel, as DEC's)."""
        from ..nn.pseudolabels import student_t

        return student_t(self.transform(ds), self.cluster_centers_)
