"""DeepCluster (Caron et al., ECCV 2018): alternate k-means pseudo-labels and ConvNet training.

Each epoch, in :meth:`DeepClusterEncoder._epoch_start` (a hook of the shared training loop):

1. features of every image, without augmentation (eval mode; the last hidden layer before its ReLU);
2. PCA to ``pca_dim`` (256) dimensions with whitening, then L2 normalisation;
3. k-means with ``k_train`` clusters (:func:`kmeans_split`: faiss's exact search for the assignment step
   when faiss is installed, numpy otherwise; empty clusters are re-seeded by splitting a large one, and the
   number re-seeded is logged);
4. the assignments become pseudo-labels;
5. a sampler draws ``n`` images uniformly over the non-empty clusters (so a giant cluster cannot dominate);
6. the classifier head is re-initialised (fresh weights, no momentum carried over);
7. the ConvNet and head train with cross-entropy on augmented views (random resized crop, optional flip
   and colour jitter) by SGD (lr 0.05, momentum 0.9, weight decay 1e-5 by default).

Each epoch logs the NMI between this epoch's pseudo-labels and the previous epoch's (stability), the share
of the largest cluster (a collapse, over 90 %, is reported loudly and kept in the history), and the number
of re-seeded clusters. When the image set carries labels, the epoch also logs NMI of the pseudo-labels and
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
import torch.nn.functional as F
from torch import nn

from ..base import register
from ..data import ImageSet
from ..errors import UserError
from ..nn import distributed as ddp
from ..progress import log, progress
from .base import Encoder

COLLAPSE_SHARE = 0.9


# -- k-means with empty-cluster splitting --------------------------------------------------------------------
def _assign(X: np.ndarray, C: np.ndarray, use_faiss: bool) -> tuple[np.ndarray, np.ndarray]:
    if use_faiss:
        import faiss

        index = faiss.IndexFlatL2(C.shape[1])
        index.add(np.ascontiguousarray(C, dtype=np.float32))
        d, i = index.search(np.ascontiguousarray(X, dtype=np.float32), 1)
        return i[:, 0].astype(np.int64), d[:, 0]
    from ..cluster import nearest_centre

    return nearest_centre(X, C)


def kmeans_split(X: np.ndarray, k: int, n_iter: int = 20, seed: int = 0, backend: str = "auto",
                 eps: float = 1e-3) -> tuple[np.ndarray, np.ndarray, int]:
    """Lloyd's k-means from ``k`` distinct random points; returns (labels, centres, clusters re-seeded).

    After each update, every empty cluster is re-seeded by splitting the largest cluster: the two centres
    become the large centre nudged in opposite random directions (scale ``eps``), as in faiss and the
    DeepCluster code. The final assignment is repaired the same way, so every cluster ends non-empty.
    """
    from ..cluster import faiss_available

    if backend not in ("auto", "faiss", "numpy"):
        raise UserError(f"unknown k-means backend {backend!r}; use auto, faiss or numpy")
    use_faiss = faiss_available() if backend == "auto" else backend == "faiss"
    if backend == "faiss" and not use_faiss:
        from ..errors import NotInstalledError

        raise NotInstalledError("faiss-cpu", "DeepCluster k-means with kmeans_backend='faiss'")
    from ..pipeline import check_finite

    X = np.ascontiguousarray(check_finite(X, "DeepCluster k-means (the network's features)"))  # faiss aborts on NaN
    n, d = X.shape
    if k > n:
        raise UserError(f"k-means with {k} clusters needs at least {k} images, got {n}")
    from scipy import sparse

    ones, rows = np.ones(n, np.float32), np.arange(n)
    rs = np.random.RandomState(seed)
    C = X[rs.choice(n, k, replace=False)].copy()
    reseeded = 0

    def split_empty(labels, C):
        nonlocal reseeded
        counts = np.bincount(labels, minlength=k)
        for j in np.flatnonzero(counts == 0):
            big = int(np.argmax(counts))
            if counts[big] < 2:
                break
            delta = eps * rs.standard_normal(d).astype(np.float32) * (np.abs(C[big]).mean() + 1e-8)
            C[j] = C[big] + delta
            C[big] = C[big] - delta
            # members of the split cluster go to whichever of the two new centres is nearer
            members = np.flatnonzero(labels == big)
            closer = ((X[members] - C[j]) ** 2).sum(1) < ((X[members] - C[big]) ** 2).sum(1)
            if closer.all() or not closer.any():  # a symmetric split failed: give half the members
                closer = np.zeros(len(members), bool)
                closer[rs.permutation(len(members))[: len(members) // 2]] = True
            labels[members[closer]] = j
            counts[j], counts[big] = int(closer.sum()), int((~closer).sum())
            reseeded += 1
        return labels, C

    labels = None
    for _ in range(max(1, n_iter)):
        labels, _ = _assign(X, C, use_faiss)
        counts = np.bincount(labels, minlength=k)
        sums = sparse.csr_matrix((ones, (labels, rows)), shape=(k, n)) @ X  # per-cluster sums
        nonempty = counts > 0
        C[nonempty] = (sums[nonempty] / counts[nonempty, None]).astype(np.float32)
        labels, C = split_empty(labels, C)
    labels, _ = _assign(X, C, use_faiss)
    labels, C = split_empty(labels, C)
    return labels, C, reseeded


def uniform_cluster_sample(labels: np.ndarray, n: int, generator: torch.Generator) -> np.ndarray:
    """``n`` indices drawn uniformly over the non-empty clusters (with replacement inside small clusters)."""
    clusters = np.unique(labels)
    per = int(np.ceil(n / len(clusters)))
    out = []
    for c in clusters:
        members = np.flatnonzero(labels == c)
        if len(members) >= per:
            pick = torch.randperm(len(members), generator=generator)[:per].numpy()
        else:
            pick = torch.randint(len(members), (per,), generator=generator).numpy()
        out.append(members[pick])
    out = np.concatenate(out)
    return out[torch.randperm(len(out), generator=generator).numpy()][:n]


# -- heads ----------------------------------------------------------------------------------------------------
class SoftmaxHead(nn.Module):
    """The paper's classifier: one linear layer and cross-entropy. ``forward(features, targets) -> (loss, logits)``."""

    def __init__(self, in_dim: int, n_classes: int):
        super().__init__()
        self.fc = nn.Linear(in_dim, n_classes)
        nn.init.normal_(self.fc.weight, 0, 0.01)
        nn.init.zeros_(self.fc.bias)

    def logits(self, features):
        return self.fc(features)

    def forward(self, features, targets):
        logits = self.fc(features)
        return F.cross_entropy(logits.float(), targets), logits


def make_classifier_head(name: str, in_dim: int, n_classes: int) -> nn.Module:
    """``softmax``: :class:`SoftmaxHead`; any other name comes from :func:`imclust.nn.heads.make_head`."""
    if name == "softmax":
        return SoftmaxHead(in_dim, n_classes)
    from ..nn.heads import make_head

    return make_head(name, in_dim, n_classes)


# -- the encoder ----------------------------------------------------------------------------------------------
@register("deepcluster")
class DeepClusterEncoder(Encoder):
    """DeepCluster: a ConvNet trained on its own k-means pseudo-labels; features = its last hidden layer.

    Parameters (recipe ``[encoder]`` options)
    ----------
    arch : ``auto`` (convnet below 64 px, AlexNet-BN from 64 px), ``convnet``, ``alexnet`` or ``vgg16``.
    size, channels : resize / convert the images first (default: the source's own shape).
    sobel : the fixed Sobel input filter.
    k_train : clusters of the per-epoch k-means (over-clustering: more than the final k).
    pca_dim : PCA dimensions (whitened) before the k-means.
    epochs, batch_size, lr, momentum, weight_decay : SGD training (paper: lr 0.05, momentum 0.9, wd 1e-5).
    crop_scale, crop_ratio, flip, color_jitter : augmentations of the training views.
    head : ``softmax`` (linear + cross-entropy) or a name from ``imclust.nn.heads`` (center, arcface, ...).
    width, feat_dim : network width and feature size (None: the architecture's default).
    kmeans_iter, kmeans_backend : k-means iterations; ``auto`` / ``faiss`` / ``numpy`` assignment step.
    device, precision, channels_last : as the shared training loop.
    checkpoint_dir, checkpoint_every, resume : checkpoints and resumption (shared training loop).
    feature_batch : batch size of the feature pass.
    output : what ``transform`` returns: ``relu`` (the head's input) or ``pre_relu`` (the per-epoch k-means input).
    seed : fixes initialisation, k-means, sampling and augmentation.
    """

    trainable = True

    def __init__(self, arch: str = "auto", size=None, channels: int | None = None, sobel: bool = False,
                 k_train: int = 100, pca_dim: int = 256, epochs: int = 20, batch_size: int = 256, lr: float = 0.05,
                 momentum: float = 0.9, weight_decay: float = 1e-5, crop_scale=(0.08, 1.0),
                 crop_ratio=(3 / 4, 4 / 3), flip: bool = True, color_jitter: float = 0.0, head: str = "softmax",
                 width: int | None = None, feat_dim: int | None = None, kmeans_iter: int = 20,
                 kmeans_backend: str = "auto", device: str = "auto", precision: str = "fp32",
                 channels_last: bool = False, checkpoint_dir: str | None = None, checkpoint_every: int = 5,
                 resume: bool = False, feature_batch: int = 512, output: str = "relu", seed: int = 0):
        self.arch = arch
        self.size = size
        self.channels = channels
        self.sobel = sobel
        self.k_train = k_train
        self.pca_dim = pca_dim
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.crop_scale = crop_scale
        self.crop_ratio = crop_ratio
        self.flip = flip
        self.color_jitter = color_jitter
        self.head = head
        self.width = width
        self.feat_dim = feat_dim
        self.kmeans_iter = kmeans_iter
        self.kmeans_backend = kmeans_backend
        self.device = device
        self.precision = precision
        self.channels_last = channels_last
        self.checkpoint_dir = checkpoint_dir
        self.checkpoint_every = checkpoint_every
        self.resume = resume
        self.feature_batch = feature_batch
        self.output = output
        self.seed = seed

    # -- building ------------------------------------------------------------------------------------------
    def _check_params(self, n: int):
        def whole(name, v, lo=1):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
                raise UserError(f"deepcluster: {name} must be a whole number of at least {lo}, got {v!r} "
                                f"(set it with --set encoder.{name}=...)")

        whole("k_train", self.k_train, 2)
        whole("epochs", self.epochs, 0)
        whole("batch_size", self.batch_size)
        whole("pca_dim", self.pca_dim)
        if self.k_train > n:
            raise UserError(f"deepcluster: k_train={self.k_train} is larger than the number of images ({n}); "
                            f"choose k_train at most {n} (--set encoder.k_train=...)")
        cs, cr = tuple(self.crop_scale), tuple(self.crop_ratio)
        if len(cs) != 2 or not 0 < cs[0] <= cs[1] <= 1:
            raise UserError(f"deepcluster: crop_scale must be [min, max] with 0 < min <= max <= 1, got {list(cs)}")
        if len(cr) != 2 or not 0 < cr[0] <= cr[1]:
            raise UserError(f"deepcluster: crop_ratio must be [min, max] with 0 < min <= max, got {list(cr)}")
        if self.output not in ("relu", "pre_relu"):
            raise UserError(f"deepcluster: output must be 'relu' or 'pre_relu', got {self.output!r}")
        if self.lr <= 0:
            raise UserError(f"deepcluster: lr must be positive, got {self.lr}")

    def _build_net(self):
        from ..nn.deepcluster_nets import DeepClusterNet, auto_arch

        c, h, w = self.input_shape_
        arch = auto_arch((h, w)) if self.arch == "auto" else self.arch
        self.arch_ = arch
        return DeepClusterNet(arch, c, (h, w), sobel=self.sobel, width=self.width, feat_dim=self.feat_dim)

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
    @torch.no_grad()
    def _features(self, X8: torch.Tensor, device, gather: str = "all", desc: str | None = "features",
                  relu: bool = False) -> np.ndarray | None:
        """Features of every image (no augmentation). Under DDP each rank computes its share of the batches;
        ``gather='main'`` returns them on rank 0 only (None elsewhere), ``'all'`` on every rank."""
        net = self.net_
        was_training = net.training
        net.eval()
        n, bs = len(X8), int(self.feature_batch)
        batches = ddp.rank_batches([np.arange(s, min(s + bs, n)) for s in range(0, n, bs)])
        outs = []
        ctx = (torch.autocast(device_type=device.type, dtype=torch.bfloat16) if self.precision == "bf16"
               else torch.autocast(device_type=device.type, enabled=False))
        bar = progress(batches, desc=desc, unit="batch") if desc and len(batches) > 4 else batches
        for idx in bar:
            x = self._normalise(self._to_float(X8[torch.from_numpy(idx)], device))
            with ctx:
                f = net.embed(x)
                outs.append((torch.relu(f) if relu else f).float().cpu().numpy())
        net.train(was_training)
        local = np.concatenate(outs) if outs else np.zeros((0, net.out_dim), np.float32)
        if gather == "main":
            return ddp.gather_rows(local, bs, n)
        return ddp.all_gather_rows(local, bs, n)

    # -- one epoch's clustering (a hook of the training loop) ---------------------------------------------------
    def _cluster_features(self, feats: np.ndarray, epoch: int) -> tuple[np.ndarray, int]:
        from ..reduce import PCA

        pca = PCA(n_components=min(self.pca_dim, feats.shape[1], len(feats) - 1), whiten=True,
                  random_state=self._seed_for(epoch, 1))
        Z = pca.fit_transform(feats)
        Z /= np.maximum(np.linalg.norm(Z, axis=1, keepdims=True), 1e-12)
        labels, _, reseeded = kmeans_split(Z, int(self.k_train), n_iter=self.kmeans_iter,
                                           seed=self._seed_for(epoch, 2), backend=self.kmeans_backend)
        return labels, reseeded

    def _seed_for(self, epoch: int, stream: int) -> int:
        return int((int(self.seed) * 1_000_003 + epoch * 7919 + stream * 104_729) % (2**31 - 1))

    def _epoch_start(self, trainer, epoch: int) -> dict:
        from sklearn.metrics import normalized_mutual_info_score as nmi_score

        rec: dict = {}
        t0 = time.perf_counter()
        feats = self._features(self._X8, trainer.device, gather="main", desc=f"features {epoch + 1}")
        rec["time_features"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        if trainer.is_main:
            labels, reseeded = self._cluster_features(feats, epoch)
        else:
            labels, reseeded = None, 0
        rec["time_kmeans"] = time.perf_counter() - t1
        labels = ddp.broadcast_array(labels)
        reseeded = int(ddp.broadcast_array(np.array([reseeded], np.int64))[0])
        counts = np.bincount(labels, minlength=int(self.k_train))
        largest = float(counts.max() / len(labels))
        rec.update({"empty_reseeded": reseeded, "largest_cluster": largest, "clusters_used": int((counts > 0).sum())})
        if self._prev_labels is not None:
            rec["nmi_prev"] = float(nmi_score(self._prev_labels, labels))
            trainer.postfix["nmi_prev"] = f"{rec['nmi_prev']:.3f}"
        if largest > COLLAPSE_SHARE:
            rec["collapsed"] = True
            msg = (f"deepcluster: COLLAPSE at epoch {epoch + 1}: one cluster holds {largest:.1%} of the images "
                   f"(more than {COLLAPSE_SHARE:.0%}); the representation is degenerate")
            self.warnings_.append(msg)
            log(msg)
        if self._eval_labels is not None and trainer.is_main:
            rec.update(self._evaluate(feats, labels, epoch))
        self._prev_labels = labels
        self.pseudo_labels_ = labels
        # a sampler uniform over the clusters
        g = torch.Generator()
        g.manual_seed(self._seed_for(epoch, 3))
        self._sample = uniform_cluster_sample(labels, len(labels), g)
        self._targets = torch.from_numpy(labels)
        # a fresh classifier head: new weights (the same on every rank), no momentum carried over
        head = trainer.raw("head")
        fresh = make_classifier_head(self.head, self.net_.out_dim, int(self.k_train)).to(trainer.device)
        head.load_state_dict(fresh.state_dict())
        ddp.broadcast_module(head)
        for p in head.parameters():
            trainer.optimizer.state.pop(p, None)
        self._aug_gen = torch.Generator()
        self._aug_gen.manual_seed(self._seed_for(epoch, 4) + 7 * trainer.rank)
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
        lab_k = KMeans(k, n_init=1, random_state=self._seed_for(epoch, 5)).fit_predict(Z)
        out["acc_k"] = cluster_acc(y, lab_k)
        out["nmi_k"] = nmi(y, lab_k)
        return out

    def _epoch_end(self, trainer, epoch: int) -> dict:
        return {"time_train": time.perf_counter() - self._t_train}

    # -- fit / transform --------------------------------------------------------------------------------------
    def fit(self, ds: ImageSet, y=None):
        from ..nn.train import TrainConfig, Trainer, batch_indices

        view = ds.resized(self.size, self.channels)
        self._check_params(len(view))
        self.input_shape_ = list(view.shape)
        self.warnings_ = []
        self.pseudo_labels_ = None
        self._X8 = self._images(view)
        # per-channel statistics for normalisation (of the images only)
        xf = self._X8[: min(len(self._X8), 20000)].float().div_(255.0)
        self.mean_ = xf.mean(dim=(0, 2, 3)).numpy().astype(np.float32)
        self.std_ = np.maximum(xf.std(dim=(0, 2, 3)).numpy(), 1e-3).astype(np.float32)
        del xf
        torch.manual_seed(int(self.seed))
        self.net_ = self._build_net()
        head = make_classifier_head(self.head, self.net_.out_dim, int(self.k_train))
        # labels, when the set has them, only score each epoch's clusters (see _evaluate); never used to fit
        self._eval_labels = None if ds.labels is None else np.asarray(ds.labels)
        self._prev_labels = None
        cfg = TrainConfig(epochs=int(self.epochs), batch_size=int(self.batch_size), lr=float(self.lr),
                          weight_decay=float(self.weight_decay), optimizer="sgd", momentum=float(self.momentum),
                          seed=int(self.seed), device=self.device, precision=self.precision,
                          channels_last=bool(self.channels_last), checkpoint_dir=self.checkpoint_dir,
                          checkpoint_every=int(self.checkpoint_every), resume=bool(self.resume))
        fp = {"deepcluster": {k: v for k, v in self.get_params().items()
                              if k not in ("epochs", "checkpoint_dir", "checkpoint_every", "resume", "device")},
              "n": len(view), "shape": self.input_shape_}
        trainer = Trainer({"net": self.net_, "head": head}, cfg, fingerprint=fp, desc="deepcluster")
        self._trainer = trainer
        log(f"deepcluster: {self.arch_} on {len(view)} images {tuple(self.input_shape_)}, k_train={self.k_train}, "
            f"{self.epochs} epochs" + (f", {trainer.world_size} processes (DDP)" if trainer.distributed else ""))

        def make_batches(epoch, g):
            order = self._sample[torch.randperm(len(self._sample), generator=g).numpy()]
            return [order[b] for b in batch_indices(len(order), int(self.batch_size), shuffle=False, drop_last=True)]

        cs, cr = tuple(float(v) for v in self.crop_scale), tuple(float(v) for v in self.crop_ratio)
        h, w = self.input_shape_[1:]

        def train_step(idx, t):
            from ..nn.augment import color_jitter, random_resized_crop

            idx_t = torch.from_numpy(np.asarray(idx))
            x = self._to_float(self._X8[idx_t], t.device)
            x = random_resized_crop(x, (h, w), scale=cs, ratio=cr, flip=bool(self.flip), generator=self._aug_gen)
            if self.color_jitter:
                x = color_jitter(x, float(self.color_jitter), generator=self._aug_gen)
            x = self._normalise(x)
            feats = t.modules["net"](x)
            loss, _ = t.modules["head"](feats.float(), self._targets[idx_t].to(t.device))
            return loss

        def extra_state():
            return {"prev_labels": self._prev_labels} if self._prev_labels is not None else {}

        def on_start(t, e):
            if t.resumed_extra and self._prev_labels is None and "prev_labels" in t.resumed_extra:
                self._prev_labels = np.asarray(t.resumed_extra["prev_labels"], dtype=np.int64)
            return self._epoch_start(t, e)

        history = trainer.fit(train_step, make_batches, on_epoch_start=on_start, on_epoch_end=self._epoch_end,
                              extra_state=extra_state)
        self.history_ = [dict(h) for h in history]
        for h in self.history_:
            if h.get("collapsed"):
                msg = f"deepcluster: collapse at epoch {h['epoch']} (largest cluster {h['largest_cluster']:.1%})"
                if not any(f"epoch {h['epoch']}" in m for m in self.warnings_):
                    self.warnings_.append(msg)
        if self.pseudo_labels_ is None:  # zero epochs to run, or every epoch restored from a checkpoint
            prev = trainer.resumed_extra.get("prev_labels") if trainer.resumed_extra else None
            self.pseudo_labels_ = np.zeros(0, np.int64) if prev is None else np.asarray(prev, np.int64)
        self.net_.eval()
        self._device = trainer.device
        self._X8 = None
        self._sample = self._targets = None
        return self

    def transform(self, ds: ImageSet) -> np.ndarray:
        if not hasattr(self, "net_"):
            raise UserError("the deepcluster encoder is not fitted; fit it (imclust run) before transform")
        view = self.input_view(ds)
        X8 = self._images(view)
        device = getattr(self, "_device", None) or _infer_device(self.device)
        self.net_.to(device)
        return self._features(X8, device, gather="all", desc="deepcluster features" if len(view) > 2000 else None,
                              relu=self.output == "relu")

    # -- state (no pickle) --------------------------------------------------------------------------------------
    def get_state(self):
        from ..nn.train import module_arrays

        arrays = {"mean_": self.mean_, "std_": self.std_, "pseudo_labels_": np.asarray(self.pseudo_labels_, np.int64)}
        arrays.update(module_arrays(self.net_, "net."))
        extra = {"input_shape_": list(self.input_shape_), "arch_": self.arch_, "history_": self.history_,
                 "warnings_": list(self.warnings_)}
        return arrays, extra

    def set_state(self, arrays, extra):
        from ..nn.train import load_module_arrays

        self.input_shape_ = list(extra["input_shape_"])
        self.history_ = extra.get("history_", [])
        self.warnings_ = extra.get("warnings_", [])
        self.mean_ = np.asarray(arrays["mean_"], np.float32)
        self.std_ = np.asarray(arrays["std_"], np.float32)
        self.pseudo_labels_ = np.asarray(arrays.get("pseudo_labels_", np.zeros(0)), np.int64)
        net = self._build_net()
        load_module_arrays(net, {k: v for k, v in arrays.items() if k.startswith("net.")}, "net.")
        self.net_ = net.eval()

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
            "empty_reseeded": [h.get("empty_reseeded", 0) for h in hist],
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


def _infer_device(name: str) -> torch.device:
    from ..nn.train import pick_device

    return ddp.device_for_rank(pick_device(name))
