"""DEC (Xie et al., ICML 2016) and IDEC (Guo et al., IJCAI 2017): refine an autoencoder's code for clustering.

1. Pretrain one of our autoencoders (the ``autoencoder`` encoder, options in ``pretrain``; by default the DEC
   network D-500-500-2000-10), checkpointed in ``checkpoint_dir/pretrain`` so a resume reuses it.
2. k-means (``n_init`` restarts) on the codes gives the centres μ (``init_labels_``; "auto" k is chosen there).
3. Each epoch is one period of ``update_interval`` iterations (None: one pass). At its start the Student's t
   assignments of every image, ``q_ij ∝ (1 + |z_i − μ_j|²/α)^(−(α+1)/2)``, give the target
   ``p_ij ∝ q_ij² / Σ_i q_ij``; training stops once fewer than ``tol`` of the images changed cluster. The loss
   is KL(P‖Q) on the encoder and μ (DEC; the decoder is frozen), or MSE + ``gamma`` · KL(P‖Q) (IDEC).

Both own their clusters (``labels_``; ``predict_proba`` is q for any images); ``transform`` gives the code.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..base import build, register
from ..data import ImageSet
from ..errors import UserError
from ..nn.autoencoders import make_autoencoder
from ..nn.pseudolabels import student_t, target_distribution
from ..nn.train import batch_indices
from .base import ClusteringEncoder, TrainableEncoder


class StudentT(nn.Module):
    """Learnable cluster centres; ``forward(z)`` is the Student's t soft assignment of the codes to them."""

    def __init__(self, n_clusters: int, dim: int, alpha: float = 1.0):
        super().__init__()
        self.alpha = float(alpha)
        self.centres = nn.Parameter(torch.zeros(int(n_clusters), int(dim)))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return student_t(z, self.centres, self.alpha)


@register("dec")
class DECEncoder(ClusteringEncoder, TrainableEncoder):
    """DEC (module doc). ``pretrain``: options of the pretraining ``autoencoder`` (over ``PRETRAIN``); ``alpha``:
    Student's t degrees of freedom; ``n_init``: k-means restarts; ``update_interval``, ``tol``; ``epochs``: the
    most target refreshes; other training parameters as :class:`TrainableEncoder` (Adam 1e-3, batch 256)."""

    PRETRAIN = {"arch": "dec", "code_dim": 10, "epochs": 50, "min_steps": 2000, "lr": 1e-3}

    pretrain: dict | None = None
    alpha: float = 1.0
    n_init: int = 20
    update_interval: int | None = None
    tol: float = 0.001
    epochs: int = 200

    reconstruct = False  # IDEC trains the decoder too
    curve_keys = ("loss", "changed")

    def check_method_params(self):
        if not self.alpha > 0 or not 0 <= self.tol < 1:
            raise UserError(f"{self.component_name}: alpha must be positive and tol in [0, 1)")
        if self.update_interval is not None and int(self.update_interval) < 1:
            raise UserError(f"{self.component_name}: update_interval must be at least 1 (or unset: one pass)")

    def _pretrain_options(self) -> dict:
        opts = {**self.PRETRAIN, **(self.pretrain or {})}
        for shared in ("seed", "device", "precision", "channels_last", "workers", "resume"):
            opts.setdefault(shared, getattr(self, shared))
        if self.checkpoint_dir:
            opts.setdefault("checkpoint_dir", str(Path(self.checkpoint_dir) / "pretrain"))
        return opts

    def prepare_data(self, ds: ImageSet) -> int:
        from ..cluster import KMeans

        self.check_n_clusters(len(ds))
        ae = self._ae = build({"type": "autoencoder", **self._pretrain_options()}, kind="encoder").fit(ds)
        self.input_shape_, self.pretrain_history_ = list(ae.input_shape_), ae.history_
        self._X = torch.from_numpy(ae._array(ds))
        codes = ae.encode_array(self._X.numpy())
        km = KMeans(self.resolve_n_clusters(codes), n_init=int(self.n_init), random_state=int(self.seed or 0)).fit(codes)
        self.init_labels_, self._init_centres, self._previous = km.labels_, km.cluster_centers_, None
        return len(self._X)

    def build_modules(self) -> dict:
        opts = self._pretrain_options()
        net = make_autoencoder(opts["arch"], self.input_shape_, opts.get("code_dim"))
        dim = int(np.prod(net.encode(torch.zeros((1, *self.input_shape_))).shape[1:]))
        clusters = StudentT(int(self.n_clusters_), dim, self.alpha)
        if getattr(self, "_ae", None) is not None:  # fitting: start from the pretrained net and the k-means centres
            net.load_state_dict(self._ae.net_.state_dict())
            clusters.centres.data.copy_(torch.from_numpy(self._init_centres))
        if not self.reconstruct:  # DEC discards the decoder: freeze what the code does not depend on
            params = list(net.parameters())
            grads = torch.autograd.grad(net.encode(torch.zeros((2, *self.input_shape_))).sum(), params, allow_unused=True)
            for p, g in zip(params, grads):
                p.requires_grad_(g is not None)
        return {"net": net, "clusters": clusters}

    def _array(self, ds: ImageSet) -> np.ndarray:
        lo, hi = self.net_.input_range
        x = self.input_view(ds).to_array(desc="decode")
        return x if (lo, hi) == (0.0, 1.0) else (x * (hi - lo) + lo).astype(np.float32)

    def _soft_assignments(self, X) -> np.ndarray:
        net, clusters = self.net_, self.clusters_
        return self.features(lambda x: clusters(net.encode(x)), X, batch_size=1024)

    def on_epoch_start(self, trainer, epoch):
        q = self._soft_assignments(self._X)
        labels = q.argmax(1)
        rec = {"largest_cluster": float(np.bincount(labels).max() / len(q))}
        if self._previous is not None:
            rec["changed"] = float((labels != self._previous).mean())
            if rec["changed"] < float(self.tol):
                self.converged_ = {"epoch": int(epoch), "changed": rec["changed"]}
                trainer.request_stop(f"{rec['changed']:.4%} of the assignments changed, fewer than tol={self.tol}")
        self._previous, self._target = labels, torch.from_numpy(target_distribution(q))
        return rec

    def make_batches(self, epoch, generator):
        n, bs, t = self.n_train_, int(self.batch_size), self.update_interval
        if t is None:
            return batch_indices(n, bs, generator)
        order = torch.cat([torch.randperm(n, generator=generator) for _ in range(-(-int(t) * bs // n))])
        return [order[i * bs:(i + 1) * bs].numpy() for i in range(int(t))]

    def training_step(self, idx, trainer):
        x = trainer.to_device(self._X[idx])
        if self.reconstruct or trainer.distributed:  # under DDP the whole forward (the frozen decoder is ignored)
            z, recon = trainer.modules["net"](x)
        else:
            z, recon = trainer.raw("net").encode(x), None
        q = trainer.modules["clusters"](z)
        kl = F.kl_div(q.clamp_min(1e-12).log(), trainer.to_device(self._target[idx]), reduction="batchmean")
        return F.mse_loss(recon.float(), x.float()) + float(self.gamma) * kl if self.reconstruct else kl

    def checkpoint_state(self) -> dict:
        return {} if self._previous is None else {"previous": self._previous}

    def on_resume(self, arrays) -> None:
        if "previous" in arrays:
            self._previous = np.asarray(arrays["previous"], np.int64)

    def on_fit_end(self, trainer):
        self.labels_ = self._soft_assignments(self._X).argmax(1).astype(np.int64)
        self._X = self._ae = self._target = None

    def predict_proba(self, ds: ImageSet) -> np.ndarray:
        self.require_fitted()
        return self._soft_assignments(self._array(ds)).astype(np.float32)

    def transform(self, ds: ImageSet) -> np.ndarray:
        self.require_fitted()
        z = self.features(self.net_.encode, self._array(ds), batch_size=1024)
        return z.reshape(len(z), -1).astype(np.float32)

    def write_figures(self, result, out) -> dict:
        from ..report.figures import loss_curve

        figs = super().write_figures(result, out)  # history.json, loss_curve.png (loss, changed)
        if getattr(self, "pretrain_history_", None):
            figs["pretrain_loss"] = loss_curve(self.pretrain_history_, Path(out) / "pretrain_loss_curve.png",
                                               title="autoencoder pretraining: reconstruction loss")
        return figs


@register("idec")
class IDECEncoder(DECEncoder):
    """IDEC: DEC's clustering loss, weighted by ``gamma``, plus the autoencoder's reconstruction loss, which keeps
    the code's local structure (the decoder keeps training)."""

    gamma: float = 0.1

    reconstruct = True

    def check_method_params(self):
        super().check_method_params()
        if not self.gamma > 0:
            raise UserError(f"idec: gamma must be positive, got {self.gamma!r}")
