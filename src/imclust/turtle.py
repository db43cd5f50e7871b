"""TURTLE: the labelling that linear classifiers learn best in every feature space (Gadetsky, Jiang and Brbić,
"Let Go of Your Labels with Unsupervised Transfer", ICML 2024).

A clusterer like k-means (``fit(X)``, ``predict(X)``, ``predict_proba(X)``), so any encoder's features can feed
it; it owns its clusters (the trained task encoder assigns new points). ``X`` may hold several feature spaces
side by side: by default (``spaces = "views"``) the column blocks of a ``views`` encoder, which the pipeline
passes on when no reducer stands between them (the two networks of ``photo-lite-pair``, say), else one space; a
list of widths names the blocks by hand. TURTLE looks for the labelling that a linear classifier in *each*
space can learn, which is where its gain over k-means on the joined features comes from. What it does:

1. Each space's block of columns is centred, projected on its first ``n_components`` principal axes (0: kept
   whole), L2-normalised and scaled by the square root of the number of axes kept, so every row of a space has
   the same norm and its axes have a mean square of 1 on average. The means and axes are kept for new points.
2. A *task encoder* gives each point a soft labelling: one linear map per space (weight-normalised) to
   ``n_clusters`` logits, the softmaxes averaged over the spaces.
3. Each iteration draws ``batch_size`` points (all of them on a smaller set) and
   - trains one linear classifier per space, ``inner_steps`` Adam steps on the cross-entropy against the
     current (fixed) labelling, warm-started from the previous iteration (the inner loop);
   - then moves the task encoder to lower the classifiers' cross-entropy against its labelling, minus
     ``gamma`` times the entropy of each space's mean labelling (which keeps the clusters from merging).
   The gradient of the outer loss reaches the task encoder through the labelling only (the classifiers are
   held fixed there), the first-order form of the paper's bilevel problem.
4. The clusters are the argmax of the task encoder's labelling.

Training runs in :class:`imclust.nn.train.Trainer` (device, per-epoch seeding, progress bar, NaN stop). The
fitted state is arrays (each space's mean, axes, and the task encoder's weights) in safetensors and the rest in
JSON. Nothing reads labels.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sklearn.utils.validation import check_is_fitted

from .base import Clusterer, check_input, register
from .errors import UserError
from .progress import log


@register("turtle")
class TURTLE(Clusterer):
    """TURTLE on frozen features; see the module docstring for the method.

    Parameters
    ----------
    n_clusters : number of clusters (``"auto"``: chosen on the joined, prepared features).
    spaces : ``"views"`` (the encoder's view blocks when the pipeline gives them, :meth:`set_views`; else one
        space), ``"one"`` (all columns one space) or the widths of the blocks laid side by side in ``X``.
    n_components : principal axes kept per space (0: none dropped; at most the space's width and the number of
        points).
    iterations : outer iterations (task-encoder steps), whatever the number of points.
    inner_steps : classifier steps per iteration.
    gamma : weight of the entropy of the mean labelling.
    lr, inner_lr : Adam learning rates of the task encoder and of the classifiers.
    batch_size : points per iteration (a random draw each time; the whole set when it is smaller).
    device : ``auto``/``cpu``/``cuda``.
    random_state : seed of the projections, the initial weights and the draws.
    """

    def __init__(self, n_clusters: int = 8, spaces: str | list = "views", n_components: int = 256,
                 iterations: int = 1000, inner_steps: int = 10, gamma: float = 10.0, lr: float = 1e-3,
                 inner_lr: float = 1e-3, batch_size: int = 10000, device: str = "auto",
                 random_state: int | None = 0):
        self.n_clusters = n_clusters
        self.spaces = spaces
        self.n_components = n_components
        self.iterations = iterations
        self.inner_steps = inner_steps
        self.gamma = gamma
        self.lr = lr
        self.inner_lr = inner_lr
        self.batch_size = batch_size
        self.device = device
        self.random_state = random_state

    # -- checks and input ------------------------------------------------------------------------------
    def set_views(self, dims, names=None) -> None:
        """The column blocks of the encoder's views (None: the encoder has none), for ``spaces = "views"``."""
        self._view_dims = None if dims is None else [int(d) for d in dims]

    def _space_widths(self, d: int) -> list[int]:
        if self.spaces in ("views", "one"):
            dims = getattr(self, "_view_dims", None) if self.spaces == "views" else None
            return list(dims) if dims and sum(dims) == d else [d]
        widths = list(self.spaces) if isinstance(self.spaces, (list, tuple)) else None
        if not widths or any(not isinstance(w, (int, np.integer)) or isinstance(w, bool) or w < 1 for w in widths):
            raise UserError(f"turtle spaces must be \"views\", \"one\" or a list of feature widths (whole numbers "
                            f"of at least 1), got {self.spaces!r}")
        if sum(widths) != d:
            raise UserError(f"turtle spaces {widths} add up to {sum(widths)} features, but the input has {d}; "
                            "give the widths of the feature blocks in the order the encoder lays them out")
        return [int(w) for w in widths]

    def _check(self) -> None:
        for name in ("iterations", "inner_steps", "batch_size"):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
                raise UserError(f"turtle {name} must be a whole number of at least 1, got {v!r}")
        if not isinstance(self.n_components, (int, np.integer)) or isinstance(self.n_components, bool) \
                or self.n_components < 0:
            raise UserError(f"turtle n_components must be a whole number (0: keep every axis), got {self.n_components!r}")
        for name in ("lr", "inner_lr"):
            if not float(getattr(self, name)) > 0:
                raise UserError(f"turtle {name} must be positive, got {getattr(self, name)!r}")
        if not float(self.gamma) >= 0:
            raise UserError(f"turtle gamma must be 0 or more, got {self.gamma!r}")

    def _prepared(self, X: np.ndarray) -> list[np.ndarray]:
        """Each space's block centred, projected, L2-normalised and scaled by the square root of its axes' count."""
        out, start = [], 0
        for width, mean, axes in zip(self.space_widths_, self._means, self._axes):
            Z = (X[:, start : start + width] - mean) @ axes.T
            Z /= np.maximum(np.linalg.norm(Z, axis=1, keepdims=True), 1e-12)
            out.append((Z * math.sqrt(Z.shape[1])).astype(np.float32))
            start += width
        return out

    # -- fitting ----------------------------------------------------------------------------------------
    def fit(self, X, y=None):
        from sklearn.decomposition import PCA

        from .cluster import resolve_n_clusters
        from .nn.train import TrainConfig, Trainer

        X = check_input(self, X, reset=True, min_samples=2)
        self._check()
        n = len(X)
        self.space_widths_ = self._space_widths(X.shape[1])
        seed = 0 if self.random_state is None else int(self.random_state)
        self._means, self._axes, start = [], [], 0
        for width in self.space_widths_:
            block = X[:, start : start + width].astype(np.float64)
            start += width
            mean = block.mean(0)
            keep = min(int(self.n_components), width, n) if self.n_components else width
            if keep < width:
                axes = PCA(keep, random_state=seed).fit(block - mean).components_
            else:
                axes = np.eye(width)
            self._means.append(mean.astype(np.float32))
            self._axes.append(axes.astype(np.float32))
        Zs = self._prepared(X)
        k = self.n_clusters_ = resolve_n_clusters(self.n_clusters, np.concatenate(Zs, 1), seed, owner=self)

        torch.manual_seed(seed)
        encoders = nn.ModuleList(nn.utils.parametrizations.weight_norm(nn.Linear(z.shape[1], k)) for z in Zs)
        classifiers = nn.ModuleList(nn.Linear(z.shape[1], k) for z in Zs)
        bs = int(min(self.batch_size, n))
        # the iterations run in (at most) 20 rounds, the Trainer's "epochs"
        rounds = int(min(20, int(self.iterations)))
        per_round = int(math.ceil(int(self.iterations) / rounds))
        cfg = TrainConfig(epochs=rounds, batch_size=bs, lr=float(self.lr), optimizer="adam", seed=seed,
                          device=self.device)
        trainer = Trainer({"task": encoders}, cfg, desc="turtle")
        dev = trainer.device
        classifiers.to(dev)
        inner_opt = torch.optim.Adam(classifiers.parameters(), lr=float(self.inner_lr))
        Zt = [torch.from_numpy(z).to(dev) for z in Zs]
        gamma = float(self.gamma)

        def make_batches(epoch, gen):
            return [torch.randperm(n, generator=gen)[:bs] if bs < n else None for _ in range(per_round)]

        def train_step(idx, tr):
            zb = Zt if idx is None else [z[idx.to(dev)] for z in Zt]
            per_space = [F.softmax(enc(z), dim=1) for enc, z in zip(tr.modules["task"], zb)]
            labelling = torch.stack(per_space).mean(0)
            target = labelling.detach()
            for _ in range(int(self.inner_steps)):
                inner_opt.zero_grad(set_to_none=True)
                sum(F.cross_entropy(c(z), target) for c, z in zip(classifiers, zb)).backward()
                inner_opt.step()
            with torch.no_grad():
                logits = [c(z) for c, z in zip(classifiers, zb)]
            fit_error = sum(F.cross_entropy(lg, labelling) for lg in logits)
            balance = sum(torch.special.entr(p.mean(0)).sum() for p in per_space)
            return fit_error - gamma * balance

        history = trainer.fit(train_step, make_batches)
        self.history_ = [float(h["loss"]) for h in history]
        task = trainer.raw("task").cpu().eval()
        with torch.no_grad():
            self.weights_ = [enc.weight.detach().numpy().astype(np.float32) for enc in task]
            self.biases_ = [enc.bias.detach().numpy().astype(np.float32) for enc in task]
        self.labels_ = self.predict(X)
        used = len(np.unique(self.labels_))
        log(f"turtle: {len(Zs)} feature space(s) of {self.space_widths_} columns; final loss {self.history_[-1]:.4f}; "
            f"{used} of {k} clusters in use")
        return self

    # -- inference ---------------------------------------------------------------------------------------
    def predict_proba(self, X) -> np.ndarray:
        """``(n, k)`` cluster probabilities: the task encoder's softmax in each space, averaged over the spaces."""
        from scipy.special import softmax

        check_is_fitted(self, "weights_")
        Zs = self._prepared(check_input(self, X, reset=False))
        P = sum(softmax(z.astype(np.float64) @ w.T.astype(np.float64) + b, axis=1)
                for z, w, b in zip(Zs, self.weights_, self.biases_))
        return (P / len(Zs)).astype(np.float32)

    def predict(self, X) -> np.ndarray:
        return np.asarray(self.predict_proba(X).argmax(1), dtype=np.int64)

    def fit_predict(self, X, y=None):
        return self.fit(X).labels_

    # -- state -------------------------------------------------------------------------------------------
    def get_state(self):
        arrays, extra = super().get_state()
        for i, (mean, axes, w, b) in enumerate(zip(self._means, self._axes, self.weights_, self.biases_)):
            arrays.update({f"space{i}.mean": mean, f"space{i}.axes": axes, f"space{i}.weight": w, f"space{i}.bias": b})
        return arrays, extra

    def set_state(self, arrays, extra):
        spaces = {k: v for k, v in arrays.items() if k.startswith("space")}
        super().set_state({k: v for k, v in arrays.items() if not k.startswith("space")}, extra)
        count = len(self.space_widths_)
        self._means = [np.asarray(spaces[f"space{i}.mean"], np.float32) for i in range(count)]
        self._axes = [np.asarray(spaces[f"space{i}.axes"], np.float32) for i in range(count)]
        self.weights_ = [np.asarray(spaces[f"space{i}.weight"], np.float32) for i in range(count)]
        self.biases_ = [np.asarray(spaces[f"space{i}.bias"], np.float32) for i in range(count)]
