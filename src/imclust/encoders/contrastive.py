"""SimCLR (Chen et al., ICML 2020): a network learns features by telling two augmented views of each image apart
from the views of every other image in the batch (NT-Xent, :func:`imclust.nn.contrastive.nt_xent`).

Each training step takes a batch of images, makes two views of each on the batch's device
(:class:`imclust.nn.augment.ContrastiveAugment`: random resized crop, flip, colour jitter, grayscale,
optional blur and solarize), passes both through the backbone (:mod:`imclust.nn.contrastive_nets`) and a
projection head, and minimises NT-Xent. ``transform`` returns the backbone's pooled features (the projection
head is only for training, as in the paper).

The encoder trains through :class:`~imclust.encoders.base.TrainableEncoder` (bf16 + channels_last,
checkpoints and exact resume, DDP under torchrun with the negatives gathered from every process, a cosine
learning-rate schedule with warm-up). It is SCAN's pretext stage (:mod:`imclust.encoders.scan`) and can also
stand alone (``type = "simclr"``, followed by any reducer and clusterer).

**Pretext cache.** A trained pretext is stored under ``<cache>/pretext/<key>/`` (``$IMCLUST_CACHE_DIR``,
default ``~/.cache/imclust``; ``cache_dir`` overrides, ``cache = false`` turns it off), where the key is the
sha256 of the training images' contents (in order) and every setting that changes the training. A later fit
with the same images and settings (another SCAN run, another clusterer, a rerun) loads the network and its
features instead of training again, and says so.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from ..base import register
from ..data import ImageSet
from ..errors import UserError
from ..nn.augment import ContrastiveAugment
from ..progress import log
from .base import TrainableEncoder

CACHE_FORMAT = "imclust-pretext/1"


# -- images in memory ---------------------------------------------------------------------------------------------
def images_uint8(ds: ImageSet, desc: str | None = "decode") -> torch.Tensor:
    """Every image of ``ds`` as one ``(n, C, H, W)`` uint8 tensor (a quarter of float32's memory)."""
    out = torch.empty((len(ds), *ds.shape), dtype=torch.uint8)
    for idx, batch in ds.iter_batches(1024, desc=desc if len(ds) > 2000 else None):
        out[torch.from_numpy(idx)] = torch.from_numpy(np.clip(batch * 255.0 + 0.5, 0, 255).astype(np.uint8))
    return out


def in_memory(ds: ImageSet, desc: str | None = "decode") -> ImageSet:
    """The images of ``ds`` decoded once and held as uint8, as an ImageSet without labels (what a method that
    reads the images several times trains on; labels are not carried, so nothing downstream can read them)."""
    X8 = images_uint8(ds, desc)

    def loader(idx):
        return X8[torch.from_numpy(np.asarray(idx, np.int64))].float().div_(255.0).numpy()

    view = ImageSet(ds.ids, loader, ds.shape, source=ds.source, kind=ds.kind)
    view.uint8 = X8
    return view


def uint8_of(ds: ImageSet) -> torch.Tensor:
    """The uint8 images of ``ds`` (already held when ``ds`` came from :func:`in_memory`)."""
    X8 = getattr(ds, "uint8", None)
    return X8 if X8 is not None else images_uint8(ds)


def content_digest(X8: torch.Tensor) -> str:
    """sha256 of the images, in order (the pretext cache's key for the data)."""
    h = hashlib.sha256(str(tuple(X8.shape)).encode())
    h.update(memoryview(np.ascontiguousarray(X8.numpy())).cast("B"))
    return h.hexdigest()


def channel_stats(X8: torch.Tensor, limit: int = 20000) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation of the images (for normalisation)."""
    xf = X8[: min(len(X8), limit)].float().div_(255.0)
    mean = xf.mean(dim=(0, 2, 3)).numpy().astype(np.float32)
    std = np.maximum(xf.std(dim=(0, 2, 3)).numpy(), 1e-3).astype(np.float32)
    return mean, std


class ImageNormaliser:
    """Turns uint8 image rows into the normalised float input of a network, on a device."""

    def __init__(self, mean, std):
        self.mean = torch.as_tensor(np.asarray(mean, np.float32)).view(1, -1, 1, 1)
        self.std = torch.as_tensor(np.asarray(std, np.float32)).view(1, -1, 1, 1)

    def to_float(self, rows, device) -> torch.Tensor:
        x = rows if isinstance(rows, torch.Tensor) else torch.from_numpy(np.asarray(rows))
        return x.to(device, non_blocking=True).float().div_(255.0)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.to(x.device, x.dtype)) / self.std.to(x.device, x.dtype)

    def prepare(self, rows, device) -> torch.Tensor:
        return self(self.to_float(rows, device))


def aug_generator(seed: int, epoch: int, rank: int, stream: int) -> torch.Generator:
    """The augmentation generator of one epoch and process (a resumed epoch draws the same views)."""
    from ..nn.train import epoch_seed

    g = torch.Generator()
    g.manual_seed(epoch_seed(int(seed), int(epoch), int(stream)) + 7919 * int(rank))
    return g


# -- the pretext cache ------------------------------------------------------------------------------------------
class PretextCache:
    """A trained pretext network, its training images' features and its history, under a content+settings key."""

    def __init__(self, root, config: dict):
        self.config = {"format": CACHE_FORMAT, **config}
        text = json.dumps(self.config, sort_keys=True, default=str)
        self.key = hashlib.sha256(text.encode()).hexdigest()[:32]
        self.dir = Path(root).expanduser() / self.key

    def load(self) -> tuple[dict[str, np.ndarray], dict] | None:
        from ..io import load_tensors

        meta_path, arrays_path = self.dir / "meta.json", self.dir / "pretext.safetensors"
        if not (meta_path.exists() and arrays_path.exists()):
            return None
        try:
            meta = json.loads(meta_path.read_text())
            arrays = load_tensors(arrays_path)
        except Exception as e:  # a damaged entry: say so and train again
            log(f"pretext cache: ignoring unreadable entry {self.dir} ({e})")
            return None
        if meta.get("config") != json.loads(json.dumps(self.config, default=str)):
            return None
        return arrays, meta

    def store(self, arrays: dict[str, np.ndarray], meta: dict) -> None:
        from ..io import save_tensors, write_json

        self.dir.mkdir(parents=True, exist_ok=True)
        save_tensors(self.dir / "pretext.safetensors", arrays)
        write_json(self.dir / "meta.json", {**meta, "config": self.config})  # written last: marks the entry whole


def pretext_cache_root(cache_dir: str | None) -> Path:
    from ..nn.weights import cache_root

    return Path(cache_dir).expanduser() if cache_dir else cache_root() / "pretext"


# -- the encoder --------------------------------------------------------------------------------------------------
@register("simclr")
class SimCLREncoder(TrainableEncoder):
    """SimCLR pretext training; ``transform`` gives the backbone's features (module doc).

    Parameters: ``arch`` (``convnet``, ``resnet18``, ``resnet10``; :mod:`imclust.nn.contrastive_nets`) and
    ``width``; ``size`` (side of the square working images; None: the images' own) and ``channels``;
    ``temperature`` of NT-Xent; ``proj_dim``/``proj_hidden`` of the projection head; the views:
    ``crop_scale``, ``crop_ratio``, ``flip``, ``jitter`` (brightness/contrast/saturation strength), ``hue``,
    ``jitter_p``, ``grayscale_p``, ``blur_p``, ``solarize_p``; ``view_scale``: the views' side as a fraction of
    the working side (below 1 trains on smaller views, which costs less; features are always computed at the
    working side. A random resized crop enlarges objects, so smaller views bring their size in training
    closer to their size in the whole images, the FixRes observation); training: ``epochs`` (at least; ``min_steps``
    adds epochs for small sets), ``batch_size``, ``lr`` (SGD with momentum by default), ``lr_schedule``
    (``cosine`` or ``constant``), ``warmup_epochs`` and the other :class:`TrainableEncoder` parameters;
    ``cache``/``cache_dir``: the pretext cache; ``feature_batch``: batch size of feature passes.
    """

    arch: str = "convnet"
    width: int | None = None
    size: int | None = None
    channels: int | None = None
    temperature: float = 0.2
    proj_dim: int = 128
    proj_hidden: int | None = None
    # the views' defaults are the SimCLR policy's own (one place to change them)
    crop_scale: tuple = ContrastiveAugment.crop_scale
    crop_ratio: tuple = ContrastiveAugment.crop_ratio
    flip: bool = ContrastiveAugment.flip
    jitter: float = ContrastiveAugment.jitter
    hue: float = ContrastiveAugment.hue
    jitter_p: float = ContrastiveAugment.jitter_p
    grayscale_p: float = ContrastiveAugment.grayscale_p
    blur_p: float = ContrastiveAugment.blur_p
    solarize_p: float = ContrastiveAugment.solarize_p
    view_scale: float = 1.0
    epochs: int = 30
    min_steps: int = 0
    batch_size: int = 256
    lr: float = 0.5
    optimizer: str = "sgd"
    weight_decay: float = 5e-4
    lr_schedule: str = "cosine"
    warmup_epochs: int = 1
    cache: bool = True
    cache_dir: str | None = None
    feature_batch: int = 512

    INFERENCE_ONLY = ("cache", "cache_dir", "feature_batch")
    saved_modules = ("net",)  # the projection head only serves training

    # -- parameters ------------------------------------------------------------------------------------------
    def check_method_params(self):
        from ..nn.contrastive_nets import ARCHS

        name = self.component_name
        if self.arch not in ARCHS:
            raise UserError(f"{name}: arch must be one of {', '.join(ARCHS)}, got {self.arch!r}")
        if not self.temperature > 0:
            raise UserError(f"{name}: temperature must be positive, got {self.temperature!r}")
        cs, cr = tuple(self.crop_scale), tuple(self.crop_ratio)
        if len(cs) != 2 or not 0 < cs[0] <= cs[1] <= 1:
            raise UserError(f"{name}: crop_scale must be [min, max] with 0 < min <= max <= 1, got {list(cs)}")
        if len(cr) != 2 or not 0 < cr[0] <= cr[1]:
            raise UserError(f"{name}: crop_ratio must be [min, max] with 0 < min <= max, got {list(cr)}")
        for p in ("jitter_p", "grayscale_p", "blur_p", "solarize_p"):
            if not 0 <= getattr(self, p) <= 1:
                raise UserError(f"{name}: {p} is a probability (0 to 1), got {getattr(self, p)!r}")
        if self.size is not None and int(self.size) < 8:
            raise UserError(f"{name}: size must be at least 8 px, got {self.size!r}")
        if not 0.25 <= float(self.view_scale) <= 1:
            raise UserError(f"{name}: view_scale must be between 0.25 and 1, got {self.view_scale!r}")
        if int(self.min_steps) < 0 or int(self.warmup_epochs) < 0:
            raise UserError(f"{name}: min_steps and warmup_epochs must be 0 or more")

    def augment_policy(self):
        return ContrastiveAugment(crop_scale=tuple(self.crop_scale), crop_ratio=tuple(self.crop_ratio),
                                  flip=bool(self.flip), jitter=float(self.jitter), hue=float(self.hue),
                                  jitter_p=float(self.jitter_p), grayscale_p=float(self.grayscale_p),
                                  blur_p=float(self.blur_p), solarize_p=float(self.solarize_p))

    # -- hooks -----------------------------------------------------------------------------------------------
    def prepare_data(self, ds: ImageSet) -> int:
        view = ds.resized(None if self.size is None else int(self.size), self.channels)
        self.input_shape_ = list(view.shape)
        self._X8 = uint8_of(view)
        self.mean_, self.std_ = channel_stats(self._X8)
        self._norm = ImageNormaliser(self.mean_, self.std_)
        self._policy = self.augment_policy()
        if len(self._X8) < 2:
            raise UserError(f"{self.component_name}: contrastive training needs at least 2 images, got {len(self._X8)}")
        return len(self._X8)

    def build_modules(self) -> dict:
        from ..nn.contrastive_nets import ProjectionHead, make_backbone

        net = make_backbone(self.arch, int(self.input_shape_[0]), self.width)
        hidden = self.proj_hidden or max(net.out_dim, 128)
        return {"net": net, "proj": ProjectionHead(net.out_dim, hidden, int(self.proj_dim))}

    def describe(self) -> str:
        return f"{self.arch} (width {self.width or 'default'}), NT-Xent t={self.temperature}"

    def steps_per_epoch(self, n: int) -> int:
        return max(1, n // int(self.batch_size)) if n >= int(self.batch_size) else 1

    def planned_epochs(self, n: int) -> int:
        return max(int(self.epochs), -(-int(self.min_steps) // self.steps_per_epoch(n)))

    def callbacks(self) -> list:
        from ..nn.train import LRSchedule

        return [LRSchedule(self.lr_schedule, int(self.warmup_epochs))]

    def make_batches(self, epoch, generator):
        from ..nn.train import batch_indices

        n, bs = self.n_train_, int(self.batch_size)
        # whole batches only (a last batch of a few images gives NT-Xent almost no negatives)
        return batch_indices(n, min(bs, n), generator, drop_last=True)

    def load_batch(self, idx):
        return self._X8[torch.from_numpy(np.asarray(idx, np.int64))]

    def on_epoch_start(self, trainer, epoch):
        self._gen = aug_generator(self.seed or 0, epoch, trainer.rank, stream=11)

    def two_views(self, x8: torch.Tensor, device) -> torch.Tensor:
        """Both views of a uint8 batch, normalised, stacked as ``(2B, C, H, W)`` (augmented in float32)."""
        x = self._norm.to_float(x8, device)
        h, w = x.shape[-2:]
        size = (max(8, round(h * float(self.view_scale))), max(8, round(w * float(self.view_scale))))
        with torch.autocast(device_type=device.type, enabled=False):
            v = torch.cat([self._policy(x, self._gen, size), self._policy(x, self._gen, size)])
            return self._norm(v)

    def training_step(self, x8, trainer):
        from ..nn.contrastive import nt_xent

        v = trainer.to_device(self.two_views(x8, trainer.device))
        z = trainer.modules["proj"](trainer.modules["net"](v))
        b = len(x8)
        return nt_xent(z[:b], z[b:], float(self.temperature))

    def on_fit_end(self, trainer):
        self._features = self.embed_uint8(self._X8)

    def train_features(self) -> np.ndarray:
        """The backbone features of the images of the last ``fit`` (computed once at its end, or cached)."""
        return self._features

    # -- features ----------------------------------------------------------------------------------------
    def embed_uint8(self, X8: torch.Tensor, desc: str | None = "features") -> np.ndarray:
        """Backbone features of uint8 images at the working shape (eval mode, no augmentation)."""
        norm = getattr(self, "_norm", None) or ImageNormaliser(self.mean_, self.std_)
        return self.features(self.net_, X8, prepare=norm.prepare, batch_size=int(self.feature_batch),
                             desc=desc if len(X8) > 2000 else None)

    def transform(self, ds: ImageSet) -> np.ndarray:
        self.require_fitted()
        return self.embed_uint8(uint8_of(self.input_view(ds)))

    # -- fit with the pretext cache ------------------------------------------------------------------------
    def cache_config(self, n: int, digest: str) -> dict:
        return {"fingerprint": self.resume_fingerprint(n), "epochs": self.planned_epochs(n), "data": digest}

    def fit(self, ds: ImageSet, y=None):
        from ..nn.train import load_module_arrays, module_arrays

        self.check_params()
        if getattr(ds, "uint8", None) is None:  # decode once: the cache key and the training both read the images
            ds = in_memory(ds.resized(None if self.size is None else int(self.size), self.channels))
        cache = None
        if self.cache:
            n = self.n_train_ = self.prepare_data(ds)
            cache = PretextCache(pretext_cache_root(self.cache_dir), self.cache_config(n, content_digest(self._X8)))
            hit = cache.load()
            if hit is not None:
                arrays, meta = hit
                modules = self.build_modules()
                for name, m in modules.items():
                    load_module_arrays(m, arrays, f"{name}.")
                    m.eval()
                self._set_modules(modules)
                self.epochs_ = int(meta.get("epochs", self.planned_epochs(n)))
                self.history_ = list(meta.get("history", []))
                self._features = np.asarray(arrays["features"], np.float32)
                self.cache_key_, self.from_cache_ = cache.key, True
                log(f"{self.component_name}: pretext loaded from the cache ({cache.dir}); nothing to train")
                return self
        super().fit(ds)
        self.from_cache_ = False
        if cache is not None:
            from ..nn import distributed as ddp

            self.cache_key_ = cache.key
            if ddp.is_main():
                arrays = {"features": self._features}
                for name, m in self.modules().items():
                    arrays.update(module_arrays(m, f"{name}."))
                cache.store(arrays, {"epochs": self.epochs_, "history": self.history_})
                log(f"{self.component_name}: pretext stored in the cache ({cache.dir})")
        return self

    def write_figures(self, result, out) -> dict:
        from ..io import write_json
        from ..report.figures import loss_curve

        out = Path(out)
        hist = getattr(self, "history_", None) or []
        write_json(out / "history.json", hist)
        return {"loss_curve": loss_curve(hist, out / "loss_curve.png", keys=("loss",), title="SimCLR: NT-Xent loss")} if hist else {}
