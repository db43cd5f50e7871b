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
    Successive assignments are matched to the previous ones (Hungarian), so the head's classes and Center
    Loss centres keep their meaning; batches sample the pseudo-classes uniformly (DeepCluster's guard
    against one cluster swallowing the others); empty clusters are re-seeded by splitting the largest.

The network is tutorial 4's MLP or residual CNN (:mod:`imclust.nn.embedding_nets`), the head any of
:func:`imclust.nn.heads.make_head`. Training runs in the shared :class:`~imclust.nn.train.Trainer`, with
the heads' parameter groups (Center Loss centres at their own learning rate).

``transform`` returns the feature layer; with an angular head (ArcFace, CosFace) the features are
L2-normalised (``normalize="auto"``), because class membership lives in their direction only.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..base import register
from ..data import ImageSet
from ..errors import UserError
from ..nn.embedding_nets import make_net
from ..nn.heads import HEAD_NAMES, make_head, optimizer_factory
from ..nn.train import TrainConfig, Trainer, load_module_arrays, module_arrays, pick_device, predict_batches
from ..progress import log
from .base import Encoder


def random_shift(x: torch.Tensor, max_shift: int) -> torch.Tensor:
    """Translate each image by up to ``max_shift`` pixels (zero padding); uses torch's global RNG."""
    if max_shift <= 0:
        return x
    b, c, h, w = x.shape
    p = int(max_shift)
    padded = F.pad(x, (p, p, p, p))
    dy = torch.randint(0, 2 * p + 1, (b,))
    dx = torch.randint(0, 2 * p + 1, (b,))
    rows = (dy[:, None] + torch.arange(h)[None]).to(x.device)  # (b, h)
    cols = (dx[:, None] + torch.arange(w)[None]).to(x.device)  # (b, w)
    bi = torch.arange(b, device=x.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[bi, rows[:, :, None], cols[:, None, :]]  # (b, h, w, c)
    return out.permute(0, 3, 1, 2).contiguous()


class _HeadEncoder(Encoder):
    """Shared machinery: network + head, training through the Trainer, state as safetensors."""

    trainable = True

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

    def _check_params(self):
        if self.head not in HEAD_NAMES:
            raise UserError(f"unknown head {self.head!r}; use one of {', '.join(HEAD_NAMES)}")
        if int(self.dim) < 1:
            raise UserError(f"dim must be at least 1, got {self.dim}")
        if int(self.epochs) < 1:
            raise UserError(f"epochs must be at least 1, got {self.epochs}")
        if self.normalize not in ("auto", True, False):
            raise UserError(f"normalize must be auto, true or false, got {self.normalize!r}")

    def _net_name(self, shape) -> str:
        if self.net == "auto":
            return "cnn" if min(shape[1], shape[2]) >= 16 else "mlp"
        return self.net

    def _build(self, shape, n_classes: int):
        torch.manual_seed(int(self.seed or 0))
        net = make_net(self._net_name(shape), shape, int(self.dim))
        head = make_head(self.head, int(self.dim), int(n_classes), **self._head_kwargs())
        return net, head

    def _config(self) -> TrainConfig:
        return TrainConfig(epochs=int(self.epochs), batch_size=int(self.batch_size), lr=float(self.lr),
                           weight_decay=float(self.weight_decay), optimizer=self.optimizer, seed=int(self.seed or 0),
                           device=self.device, precision=self.precision, channels_last=bool(self.channels_last),
                           checkpoint_dir=self.checkpoint_dir, resume=bool(self.resume))

    @property
    def normalized_(self) -> bool:
        if self.normalize == "auto":
            return bool(getattr(self, "head_", None) is not None and self.head_.angular)
        return bool(self.normalize)

    def _prepare(self, ds: ImageSet) -> np.ndarray:
        view = ds.resized(self.size, self.channels)
        self.input_shape_ = list(view.shape)
        return view.to_array(desc="decode")

    def _features(self, X: np.ndarray) -> np.ndarray:
        net = self.net_
        net.eval()
        dev = next(net.parameters()).device
        Z = predict_batches(net, X, batch_size=1024, device=dev, precision=self.precision,
                            channels_last=bool(self.channels_last), desc="embed" if len(X) > 20000 else None)
        if self.normalized_:
            Z = Z / np.maximum(np.linalg.norm(Z, axis=1, keepdims=True), 1e-12)
        return Z.astype(np.float32)

    def transform(self, ds: ImageSet) -> np.ndarray:
        if not hasattr(self, "net_"):
            raise UserError(f"the {self.component_name} encoder is not fitted yet")
        return self._features(self.input_view(ds).to_array(desc="decode"))

    def predict_classes(self, ds: ImageSet) -> np.ndarray:
        """The head's class (or pseudo-class) for each image: argmax of its logits, no margin."""
        X = self.input_view(ds).to_array(desc="decode")
        net, head = self.net_, self.head_
        net.eval()
        head.eval()
        dev = next(net.parameters()).device
        logits = predict_batches(lambda xb: head.logits(net(xb).float()), X, device=dev)
        return logits.argmax(1)

    def _train(self, X: np.ndarray, targets_for_epoch: Callable, n_classes: int, on_epoch_end=None,
               on_epoch_start=None, sample_weights_for_epoch=None, desc="embed") -> list[dict]:
        shape = self.input_shape_
        net, head = self._build(shape, n_classes)
        self.net_, self.head_, self.n_classes_ = net, head, int(n_classes)
        trainer = Trainer({"net": net, "head": head}, self._config(), optimizer_factory=optimizer_factory,
                          fingerprint={"encoder": self.to_spec(), "n": int(len(X)), "shape": list(shape)}, desc=desc)
        shift = int(self.augment_shift)
        bs = int(self.batch_size)

        def step(idx, t):
            xb = t.to_device(X[idx])
            yb = t.to_device(targets_for_epoch()[idx])
            if shift:
                xb = random_shift(xb, shift)
            feats = t.modules["net"](xb)
            loss, _ = t.modules["head"](feats.float(), yb)
            return loss

        def batches(epoch, g):
            n = len(X)
            w = sample_weights_for_epoch() if sample_weights_for_epoch else None
            if w is None:
                order = torch.randperm(n, generator=g).numpy()
            else:
                order = torch.multinomial(torch.from_numpy(w), n, replacement=True, generator=g).numpy()
            out = [order[s:s + bs] for s in range(0, n, bs)]
            if len(out) > 1 and len(out[-1]) < 2:  # BatchNorm needs two samples
                out = out[:-1]
            return out

        schedule = self.lr_schedule
        if schedule not in ("constant", "cosine"):
            raise UserError(f"unknown lr_schedule {schedule!r}; use constant or cosine")

        full_margin: dict = {}

        def start(t, epoch):
            rec = {}
            margin_head = getattr(head, "classifier", head)
            if int(self.margin_warmup) > 0 and hasattr(margin_head, "set_margin"):
                if "m" not in full_margin:
                    full_margin["m"] = margin_head.margin
                f = min(1.0, epoch / int(self.margin_warmup))
                margin_head.set_margin(full_margin["m"] * f)
                rec["margin"] = margin_head.margin
            if schedule == "cosine":
                f = 0.5 * (1.0 + math.cos(math.pi * epoch / max(1, int(self.epochs))))
                for g in t.optimizer.param_groups:
                    g.setdefault("base_lr", g["lr"])
                    g["lr"] = g["base_lr"] * f
                rec["lr_factor"] = f
            rec.update((on_epoch_start(t, epoch) or {}) if on_epoch_start else {})
            return rec

        self.history_ = trainer.fit(step, batches, on_epoch_start=start, on_epoch_end=on_epoch_end)
        if full_margin:
            getattr(head, "classifier", head).set_margin(full_margin["m"])
        self.trainer_device_ = str(trainer.device)
        net.eval()
        head.eval()
        return self.history_

    # -- state (safetensors through the pipeline) ---------------------------------------------------
    def get_state(self):
        if not hasattr(self, "net_"):
            return {}, {}
        arrays = {**module_arrays(self.net_, "net."), **module_arrays(self.head_, "head.")}
        extra = {"input_shape_": list(self.input_shape_), "n_classes_": int(self.n_classes_),
                 "history_": getattr(self, "history_", [])}
        return arrays, extra

    def set_state(self, arrays, extra):
        if "input_shape_" not in extra:
            return
        self.input_shape_ = list(extra["input_shape_"])
        self.n_classes_ = int(extra["n_classes_"])
        self.history_ = list(extra.get("history_", []))
        net, head = self._build(self.input_shape_, self.n_classes_)
        load_module_arrays(net, arrays, "net.")
        load_module_arrays(head, arrays, "head.")
        dev = pick_device(self.device)
        self.net_, self.head_ = net.to(dev).eval(), head.to(dev).eval()

    # -- figures (called for every run that uses this encoder) --------------------------------------
    def write_figures(self, result, out) -> dict[str, Path]:
        from ..io import write_json
        from ..report.figures import loss_curve

        out = Path(out)
        hist = getattr(self, "history_", None)
        if not hist:
            return {}
        write_json(out / "history.json", hist)
        return {"loss_curve": loss_curve(hist, out / "loss_curve.png", title=f"{self.head} loss")}


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
"""


@register("embedding")
class EmbeddingEncoder(_HeadEncoder):
    __doc__ = "Supervised discriminative embedding: trains on true labels (``fit(images, y)``)." + _COMMON_DOC

    def __init__(self, head: str = "softmax", dim: int = 2, net: str = "auto", epochs: int = 20, batch_size: int = 128,
                 lr: float = 1e-3, weight_decay: float = 0.0, optimizer: str = "adam", lr_schedule: str = "cosine", margin=None, scale=None,
                 easy_margin: bool = False, weight_init: str = "auto", margin_warmup: int = 0, center_lr: float = 0.05, center_weight=None,
                 center_form=None, augment_shift: int = 0, normalize="auto", size=None, channels=None, seed: int | None = 0,
                 device: str = "auto", precision: str = "fp32", channels_last: bool = False,
                 checkpoint_dir=None, resume: bool = False):
        self.head = head
        self.dim = dim
        self.net = net
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.optimizer = optimizer
        self.lr_schedule = lr_schedule
        self.margin = margin
        self.scale = scale
        self.easy_margin = easy_margin
        self.weight_init = weight_init
        self.margin_warmup = margin_warmup
        self.center_lr = center_lr
        self.center_weight = center_weight
        self.center_form = center_form
        self.augment_shift = augment_shift
        self.normalize = normalize
        self.size = size
        self.channels = channels
        self.seed = seed
        self.device = device
        self.precision = precision
        self.channels_last = channels_last
        self.checkpoint_dir = checkpoint_dir
        self.resume = resume

    def fit(self, ds: ImageSet, y=None, epoch_callback: Callable | None = None):
        """Train on images ``ds`` with class ids ``y`` (required). ``epoch_callback(encoder, epoch)`` may
        return a dict that is added to the epoch's history record."""
        if y is None:
            raise UserError("the supervised 'embedding' encoder needs labels; use 'imclust embed SOURCE --labels FILE', "
                            "or the 'selflabel' encoder to learn without labels")
        self._check_params()
        y = np.asarray(y).reshape(-1)
        if len(y) != len(ds):
            raise UserError(f"{len(y)} labels for {len(ds)} images; give exactly one label per image")
        classes, yi = np.unique(y, return_inverse=True)
        if len(classes) < 2:
            raise UserError("the labels hold a single class; a discriminative embedding needs at least two")
        self.classes_ = classes
        X = self._prepare(ds)
        targets = yi.astype(np.int64)

        def end(trainer, epoch):
            return epoch_callback(self, epoch) if epoch_callback else None

        self._train(X, lambda: targets, len(classes), on_epoch_end=end, desc=f"embed[{self.head}]")
        return self

    def get_state(self):
        arrays, extra = super().get_state()
        if hasattr(self, "classes_"):
            extra["classes_"] = [c.item() if hasattr(c, "item") else c for c in self.classes_]
        return arrays, extra

    def set_state(self, arrays, extra):
        super().set_state(arrays, extra)
        if "classes_" in extra:
            self.classes_ = np.asarray(extra["classes_"])


@register("selflabel")
class SelfLabelEncoder(_HeadEncoder):
    __doc__ = ("Self-labelling embedding: k-means pseudo-labels on the current embedding, refreshed every epoch; "
               "labels are never read.\n    n_clusters : number of pseudo-classes (DeepCluster uses more than the "
               "number of classes)\n    first_labels : where the first epoch's pseudo-labels come from: ``pca`` (k-means on PCA-50 of the "
               "pixels; default) or ``features`` (k-means on the randomly initialised network's features, as DeepCluster)\n"
               "    uniform_sampling : sample batches uniformly over pseudo-classes" + _COMMON_DOC)

    def __init__(self, head: str = "softmax", dim: int = 32, n_clusters: int = 10, net: str = "auto", epochs: int = 15,
                 batch_size: int = 256, lr: float = 1e-3, weight_decay: float = 0.0, optimizer: str = "adam",
                 lr_schedule: str = "cosine", margin=None, scale=None, easy_margin: bool = False, weight_init: str = "auto", margin_warmup: int = 0,
                 center_lr: float = 0.05, center_weight=None, center_form=None, augment_shift: int = 2, normalize="auto",
                 uniform_sampling: bool = True, first_labels: str = "pca",
                 size=None, channels=None, seed: int | None = 0, device: str = "auto", precision: str = "fp32",
                 channels_last: bool = False, checkpoint_dir=None, resume: bool = False):
        self.head = head
        self.dim = dim
        self.n_clusters = n_clusters
        self.net = net
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.optimizer = optimizer
        self.lr_schedule = lr_schedule
        self.margin = margin
        self.scale = scale
        self.easy_margin = easy_margin
        self.weight_init = weight_init
        self.margin_warmup = margin_warmup
        self.center_lr = center_lr
        self.center_weight = center_weight
        self.center_form = center_form
        self.augment_shift = augment_shift
        self.normalize = normalize
        self.uniform_sampling = uniform_sampling
        self.first_labels = first_labels
        self.size = size
        self.channels = channels
        self.seed = seed
        self.device = device
        self.precision = precision
        self.channels_last = channels_last
        self.checkpoint_dir = checkpoint_dir
        self.resume = resume

    def fit(self, ds: ImageSet, y=None, epoch_callback: Callable | None = None):
        """Fit without labels (``y`` is ignored by design: pseudo-labels come from k-means)."""
        from ..cluster import KMeans
        from ..metrics import nmi

        self._check_params()
        k = int(self.n_clusters)
        if k < 2 or k > len(ds):
            raise UserError(f"n_clusters={k}: must be between 2 and the number of images ({len(ds)})")
        X = self._prepare(ds)
        state = {"labels": None, "weights": None}
        seed = int(self.seed or 0)

        if self.first_labels not in ("features", "pca"):
            raise UserError(f"first_labels must be 'features' or 'pca', got {self.first_labels!r}")

        def refresh(trainer, epoch):
            if epoch == 0 and self.first_labels == "pca":
                from ..reduce import PCA

                flat = X.reshape(len(X), -1)
                Z = PCA(min(50, flat.shape[1], len(X) - 1), random_state=seed).fit_transform(flat)
            else:
                Z = self._features(X)
            km = KMeans(k, n_init=3, random_state=seed + epoch).fit(Z)
            lab = km.labels_.astype(np.int64)
            lab, n_split = _fill_empty(lab, Z, k, seed + epoch)
            rec = {"n_refilled": n_split}
            if state["labels"] is not None:
                rec["pseudo_nmi"] = nmi(state["labels"], lab)
                lab = _align(state["labels"], lab, k)
            counts = np.bincount(lab, minlength=k).astype(np.float64)
            state["labels"] = lab
            state["weights"] = (1.0 / counts[lab]) if self.uniform_sampling else None
            rec["largest_cluster"] = float(counts.max() / len(lab))
            return rec

        def end(trainer, epoch):
            return epoch_callback(self, epoch) if epoch_callback else None

        # the network must exist before the first refresh: _train builds it, then calls refresh at epoch start
        self._train(X, lambda: state["labels"], k, on_epoch_start=refresh, on_epoch_end=end,
                    sample_weights_for_epoch=lambda: state["weights"], desc=f"selflabel[{self.head}]")
        self.pseudo_labels_ = state["labels"]
        return self

    def get_state(self):
        arrays, extra = super().get_state()
        return arrays, extra


def _align(prev: np.ndarray, new: np.ndarray, k: int) -> np.ndarray:
    """Renumber ``new`` clusters to agree most with ``prev`` (Hungarian matching on the overlap)."""
    from scipy.optimize import linear_sum_assignment

    table = np.zeros((k, k), np.int64)
    np.add.at(table, (new, prev), 1)
    rows, cols = linear_sum_assignment(-table)
    lut = np.empty(k, np.int64)
    lut[rows] = cols
    return lut[new]


def _fill_empty(labels: np.ndarray, Z: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, int]:
    """Give every empty cluster half of the largest one (split along its principal direction)."""
    labels = labels.copy()
    n_split = 0
    for _ in range(k):
        counts = np.bincount(labels, minlength=k)
        empty = np.flatnonzero(counts == 0)
        if len(empty) == 0 or counts.max() < 2:
            break
        big = int(counts.argmax())
        members = np.flatnonzero(labels == big)
        zc = Z[members] - Z[members].mean(0)
        direction = np.linalg.svd(zc, full_matrices=False)[2][0] if len(members) > 2 else np.ones(Z.shape[1])
        proj = zc @ direction
        labels[members[proj > np.median(proj)]] = empty[0]
        if (labels == empty[0]).sum() == 0:  # all projections equal: split by order
            labels[members[: len(members) // 2]] = empty[0]
        n_split += 1
    return labels, n_split
