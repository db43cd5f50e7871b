"""Encoders: ``fit(imageset)``, ``transform(imageset) -> (n, d) float32``; the trainable base; encoders that own clusters.

:class:`Encoder`
    The interface. Untrained encoders (pixels, HOG, a pretrained CNN) implement ``fit``/``transform``.
:class:`TrainableEncoder`
    The base of every encoder that trains a network, in the spirit of Lightning's ``LightningModule``. It
    owns the shared training parameters (``epochs``, ``batch_size``, ``lr``, ``weight_decay``,
    ``optimizer``, ``momentum``, ``grad_clip``, ``seed``, ``device``, ``precision``, ``channels_last``,
    ``checkpoint_dir``, ``checkpoint_every``, ``resume``, ``workers``), builds the
    :class:`~imclust.nn.train.TrainConfig` and the resume fingerprint once, drives the shared
    :class:`~imclust.nn.train.Trainer` from the method's hooks, saves the modules with the pipeline, and
    runs every inference pass through :func:`~imclust.nn.train.extract_features`. A method declares its own
    parameters as annotated class attributes and defines hooks; see ``DEVELOPING.md`` ("Adding a deep
    clustering method") and :mod:`imclust.encoders.dec` for a complete one.
:class:`ClusteringEncoder`
    The encoder-owned-clusters protocol: an encoder that learns its own ``n_clusters`` clusters. After
    ``fit(ds)`` it has ``labels_`` ((n,) int64, the training images' clusters) and ``n_clusters_`` (the k it
    used); ``predict_proba(ds) -> (n, k) float32`` and ``predict(ds) -> (n,) int64`` work on any images,
    new ones included; ``transform(ds)`` still returns the features. A recipe takes these clusters with
    ``[clusterer] type = "encoder"`` (see :class:`imclust.pipeline.Pipeline`).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from ..base import Component, Declared
from ..data import ImageSet
from ..errors import UserError
from ..kselect import is_auto, parse_auto
from ..progress import log


class Encoder(Component):
    """Base encoder. Subclasses implement ``fit`` and ``transform`` on ImageSets."""

    kind = "encoder"

    def fit(self, ds: ImageSet, y=None):
        return self

    def transform(self, ds: ImageSet) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def fit_transform(self, ds: ImageSet, y=None) -> np.ndarray:
        return self.fit(ds).transform(ds)

    def input_view(self, ds: ImageSet) -> ImageSet:
        """The set resized to the shape the encoder was fitted on (new images of other sizes are resized)."""
        shape = getattr(self, "input_shape_", None)
        if shape is None:
            return ds
        return ds.resized((int(shape[1]), int(shape[2])), int(shape[0]))


def _whole(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


class TrainableEncoder(Declared, Encoder):
    """An encoder that trains torch modules through the shared Trainer, driven by hooks.

    ``fit(ds)`` runs, in order:

    1. :meth:`check_params` (the shared parameters, then :meth:`check_method_params`);
    2. :meth:`prepare_data` (decode, resize, keep what training needs; set ``input_shape_``; return the
       number of training samples);
    3. the seed, then :meth:`build_modules` (``{"net": ..., "head": ...}``; each becomes the attribute
       ``net_``, ``head_`` and is saved with the model, unless ``saved_modules`` names fewer);
    4. the Trainer: every epoch calls the :meth:`callbacks` (LR schedules, warm-ups), :meth:`on_epoch_start`,
       then :meth:`training_step` on each batch of :meth:`make_batches` (each batch passed through
       :meth:`load_batch`, in ``workers`` threads when asked), then :meth:`on_epoch_end`. Checkpoints hold
       the modules, the optimizer and :meth:`checkpoint_state`; a resumed run gets it back in
       :meth:`on_resume`;
    5. :meth:`on_fit_end`, then the modules go to eval mode and the history lands in ``history_``.

    The resume fingerprint is every parameter except those in ``RESUMABLE`` (``resume``, ``epochs``,
    ``checkpoint_dir``, ``checkpoint_every``, ``device``, ``workers``, plus a method's inference-only
    options), with the data's size and shape: so training longer is a resume, and anything else that
    changed is refused with the first difference named.
    """

    epochs: int = 10
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.0
    optimizer: str = "adam"
    momentum: float = 0.9
    grad_clip: float | None = None
    seed: int | None = 0
    device: str = "auto"
    precision: str = "fp32"
    channels_last: bool = False
    checkpoint_dir: str | None = None
    checkpoint_every: int = 10
    resume: bool = False
    workers: int = 0

    #: parameters that may differ between an interrupted run and its resumption
    RESUMABLE: ClassVar[tuple] = ("resume", "epochs", "checkpoint_dir", "checkpoint_every", "device", "workers")
    #: a method's own parameters that only affect inference (also left out of the fingerprint)
    INFERENCE_ONLY: ClassVar[tuple] = ()
    #: modules saved with the model (None: every module build_modules returns)
    saved_modules: ClassVar[tuple | None] = None
    #: the fewest epochs a run may ask for
    min_epochs: ClassVar[int] = 1
    #: history keys drawn in loss_curve.png
    curve_keys: ClassVar[tuple] = ("loss",)
    OPTIMIZERS: ClassVar[tuple] = ("adam", "adamw", "sgd")

    # -- hooks a method defines -----------------------------------------------------------------------------
    def check_method_params(self) -> None:
        """Validate the method's own parameters (raise UserError with one line)."""

    def prepare_data(self, ds: ImageSet) -> int:  # pragma: no cover - abstract
        """Load what training needs from ``ds`` (kept in private attributes), set ``input_shape_``; return n."""
        raise NotImplementedError

    def build_modules(self) -> dict:  # pragma: no cover - abstract
        """The torch modules, from parameters and fitted attributes only (also called when a model is loaded)."""
        raise NotImplementedError

    def training_step(self, batch, trainer):  # pragma: no cover - abstract
        """The loss of one batch (call modules as ``trainer.modules[name]``: under DDP they are wrapped)."""
        raise NotImplementedError

    def make_batches(self, epoch: int, generator):
        """The epoch's batches of sample indices (default: a shuffled pass over the ``n`` samples)."""
        from ..nn.train import batch_indices

        return batch_indices(self.n_train_, int(self.batch_size), generator)

    def load_batch(self, indices):
        """Turn a batch from :meth:`make_batches` into what :meth:`training_step` takes (no random numbers here:
        with ``workers`` it runs in background threads). Default: the indices themselves."""
        return indices

    def on_epoch_start(self, trainer, epoch: int) -> dict | None:
        """Before the epoch's batches (pseudo-labels, targets); a dict goes into the epoch's history."""

    def on_epoch_end(self, trainer, epoch: int) -> dict | None:
        """After the epoch's batches; a dict goes into the epoch's history."""

    def callbacks(self) -> list:
        """Trainer callbacks (:class:`imclust.nn.train.Callback`): learning-rate schedules, warm-ups."""
        return []

    def configure_optimizer(self, modules: dict, config):
        """The optimizer (default: ``optimizer`` over every trainable parameter)."""
        from ..nn.train import default_optimizer

        return default_optimizer(modules, config)

    def checkpoint_state(self) -> dict:
        """Arrays to save with each checkpoint besides modules and optimizer (e.g. the last pseudo-labels)."""
        return {}

    def on_resume(self, arrays: dict) -> None:
        """Restore what :meth:`checkpoint_state` saved (called once, when a run resumes)."""

    def on_fit_end(self, trainer) -> None:
        """After the last epoch (set fitted attributes, drop training data)."""

    def planned_epochs(self, n: int) -> int:
        """How many epochs to train (default: ``epochs``)."""
        return int(self.epochs)

    def describe(self) -> str:
        """A few words on the model for the log line that starts training (e.g. the architecture)."""
        return ""

    # -- the template ---------------------------------------------------------------------------------------
    def check_params(self) -> None:
        from ..nn.train import PRECISIONS

        name = self.component_name

        def bad(what, v, want):
            raise UserError(f"{name}: {what} must be {want}, got {v!r} (set it with --set encoder.{what}=...)")

        for what, lo in (("epochs", self.min_epochs), ("batch_size", 2), ("checkpoint_every", 1), ("workers", 0)):
            v = getattr(self, what)
            if not _whole(v) or v < lo:
                bad(what, v, f"a whole number of at least {lo}")
        if isinstance(self.lr, bool) or not isinstance(self.lr, (int, float)) or not self.lr > 0:
            bad("lr", self.lr, "a positive number")
        if isinstance(self.weight_decay, bool) or not isinstance(self.weight_decay, (int, float)) or self.weight_decay < 0:
            bad("weight_decay", self.weight_decay, "zero or a positive number")
        if self.optimizer not in self.OPTIMIZERS:
            bad("optimizer", self.optimizer, " or ".join(self.OPTIMIZERS))
        if self.precision not in PRECISIONS:
            bad("precision", self.precision, ", ".join(PRECISIONS))
        if self.seed is not None and not _whole(self.seed):
            bad("seed", self.seed, "a whole number")
        if self.grad_clip is not None and not (isinstance(self.grad_clip, (int, float)) and self.grad_clip > 0):
            bad("grad_clip", self.grad_clip, "a positive number (or unset)")
        self.check_method_params()

    def train_config(self, epochs: int):
        from ..nn.train import TrainConfig

        return TrainConfig(epochs=int(epochs), batch_size=int(self.batch_size), lr=float(self.lr),
                           weight_decay=float(self.weight_decay), optimizer=self.optimizer,
                           momentum=float(self.momentum), seed=int(self.seed or 0), device=self.device,
                           precision=self.precision, channels_last=bool(self.channels_last),
                           checkpoint_dir=self.checkpoint_dir, checkpoint_every=int(self.checkpoint_every),
                           resume=bool(self.resume), grad_clip=None if self.grad_clip is None else float(self.grad_clip),
                           workers=int(self.workers))

    def resume_fingerprint(self, n: int) -> dict:
        """What must match for a checkpoint to be resumed: the parameters (less RESUMABLE and INFERENCE_ONLY)
        and the data's size and shape."""
        from ..nn.train import pick_device, resolve_precision

        skip = set(self.RESUMABLE) | set(self.INFERENCE_ONLY)
        params = {k: v for k, v in self.get_params(deep=False).items() if k not in skip}
        if "precision" in params:  # what ran: a pretext trained in bf16 is not an fp32 one
            params["precision"] = resolve_precision(self.precision, pick_device(self.device))
        return {"method": self.component_name, "params": params,
                "data": {"n": int(n), "shape": list(getattr(self, "input_shape_", []) or [])}}

    def fit(self, ds: ImageSet, y=None):
        from ..base import seed_everything
        from ..nn.train import Trainer

        self.check_params()
        self.n_train_ = int(self.prepare_data(ds))
        seed_everything(int(self.seed or 0))
        modules = self.build_modules()
        self._set_modules(modules)
        self.epochs_ = int(self.planned_epochs(self.n_train_))
        trainer = Trainer(modules, self.train_config(self.epochs_), optimizer_factory=self.configure_optimizer,
                          fingerprint=self.resume_fingerprint(self.n_train_), desc=self.component_name,
                          callbacks=[_resume_hook(self), *self.callbacks()])
        self.device_ = trainer.device
        what = self.describe()
        log(f"{self.component_name}: {self.n_train_} images {tuple(getattr(self, 'input_shape_', ()))}, {self.epochs_} epochs"
            + (f", {what}" if what else "")
            + (f", precision auto -> {trainer.config.precision}" if self.precision == "auto" else "")
            + (f", {trainer.world_size} processes (DDP)" if trainer.distributed else ""))
        history = trainer.fit(self.training_step, self.make_batches, on_epoch_start=self.on_epoch_start,
                              on_epoch_end=self.on_epoch_end, extra_state=self.checkpoint_state,
                              load_batch=self.load_batch)
        self.history_ = [dict(h) for h in history]
        self.on_fit_end(trainer)
        for m in modules.values():
            m.eval()
        return self

    def write_figures(self, result, out) -> dict:
        """``history.json`` and ``loss_curve.png`` (the history's ``curve_keys``) for the run's report."""
        from pathlib import Path

        from ..io import write_json
        from ..report.figures import loss_curve

        hist = getattr(self, "history_", None)
        if not hist:
            return {}
        write_json(Path(out) / "history.json", hist)
        return {"loss_curve": loss_curve(hist, Path(out) / "loss_curve.png", keys=self.curve_keys,
                                         title=f"{self.component_name}: " + ", ".join(self.curve_keys))}

    # -- modules, inference, state ----------------------------------------------------------------------------
    def _set_modules(self, modules: dict) -> None:
        self.module_names_ = list(modules)
        for name, m in modules.items():
            setattr(self, f"{name}_", m)

    def modules(self) -> dict:
        return {name: getattr(self, f"{name}_") for name in getattr(self, "module_names_", [])}

    def require_fitted(self) -> None:
        if not getattr(self, "module_names_", None):
            raise UserError(f"the {self.component_name} encoder is not trained yet; fit it (imclust run) first")

    def inference_device(self):
        """The device of the last fit, or (after loading) the ``device`` parameter's choice."""
        dev = getattr(self, "device_", None)
        if dev is None:
            from ..nn import distributed as ddp
            from ..nn.train import pick_device

            dev = self.device_ = ddp.device_for_rank(pick_device(self.device))
        return dev

    def features(self, fn, data, *, prepare=None, batch_size: int = 512, desc: str | None = None,
                 gather: str = "all"):
        """``fn`` over ``data`` in eval mode with this encoder's device, precision and channels_last (one helper
        for every encoder: :func:`imclust.nn.train.extract_features`)."""
        from ..nn.train import extract_features

        dev = self.inference_device()
        mods = self.modules()
        for m in mods.values():
            m.to(dev)
        return extract_features(fn, data, batch_size=batch_size, device=dev, precision=self.precision,
                                channels_last=bool(self.channels_last), prepare=prepare, modules=mods, desc=desc,
                                gather=gather)

    def get_state(self):
        from ..nn.train import module_arrays

        arrays, extra = super().get_state()
        extra.pop("module_names_", None)
        built = getattr(self, "module_names_", None) or []
        saved = [n for n in built if self.saved_modules is None or n in self.saved_modules]
        for name in saved:
            arrays.update(module_arrays(getattr(self, f"{name}_"), f"{name}."))
        if saved:
            extra["module_names_"] = saved
        return arrays, extra

    def set_state(self, arrays, extra):
        from ..nn.train import load_module_arrays

        extra = dict(extra)
        # models saved before module_names_ existed: the modules are the dotted prefixes of the arrays
        names = extra.pop("module_names_", None) or sorted({k.split(".", 1)[0] for k in arrays if "." in k})
        own = {k: v for k, v in arrays.items() if not any(k.startswith(f"{n}.") for n in names)}
        super().set_state(own, extra)
        if not names:
            return
        modules = self.build_modules()
        for name in names:
            load_module_arrays(modules[name], arrays, f"{name}.")
            modules[name].eval()
        self._set_modules({n: modules[n] for n in names})
        self.device_ = None


def _resume_hook(encoder):
    """A Trainer callback that hands a resumed checkpoint's extra arrays to ``encoder`` before the first epoch
    (made here, not at import: the Trainer's module imports torch, which a torch-free run never needs)."""
    from ..nn.train import Callback

    class ResumeHook(Callback):
        def on_fit_start(self, trainer):
            if getattr(trainer, "resumed_extra", None):
                encoder.on_resume(trainer.resumed_extra)

    return ResumeHook()


class ClusteringEncoder(Declared, Encoder):
    """An encoder that learns its own clusters (the protocol in the module docstring).

    Subclasses set ``labels_`` and ``n_clusters_`` in ``fit`` and implement :meth:`predict_proba`.
    ``n_clusters = "auto"`` (or ``"auto:MIN-MAX"``) asks the encoder to choose k itself; :meth:`resolve_n_clusters`
    does that on features the method picks (the choice goes to ``n_clusters_`` and the evidence to ``k_selection_``;
    ``n_clusters`` stays as asked).
    """

    n_clusters: int | str = 10

    def predict_proba(self, ds: ImageSet) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def predict(self, ds: ImageSet) -> np.ndarray:
        return np.asarray(self.predict_proba(ds), np.float32).argmax(1).astype(np.int64)

    def fit_predict(self, ds: ImageSet, y=None) -> np.ndarray:
        return np.asarray(self.fit(ds).labels_, np.int64)

    def check_n_clusters(self, n: int) -> None:
        k = self.n_clusters
        if is_auto(k):
            parse_auto(k, n)  # bad bounds fail before training
            return
        if not _whole(k) or k < 2:
            raise UserError(f"{self.component_name}: n_clusters must be a whole number of at least 2 or 'auto', "
                            f"got {k!r}")
        if k > n:
            raise UserError(f"{self.component_name}: n_clusters={k} is larger than the number of images ({n}); "
                            f"choose k at most {n}")

    def resolve_n_clusters(self, Z: np.ndarray) -> int:
        """``n_clusters``, or for ``"auto"`` the k chosen on ``Z`` (stored in ``n_clusters_`` either way)."""
        from ..cluster import resolve_n_clusters

        self.n_clusters_ = resolve_n_clusters(self.n_clusters, Z, random_state=int(getattr(self, "seed", 0) or 0),
                                              owner=self)
        return self.n_clusters_
