"""Discriminative embedding heads (tutorial 4): softmax, Center Loss, ArcFace, CosFace and their combinations.

A head sits on top of a network's feature layer (``in_dim`` features) and turns features and class ids
(true labels for the supervised ``embed`` mode, k-means pseudo-labels for self-labelling) into a loss:

    head = make_head("arcface", in_dim=2, n_classes=10)
    loss, logits = head(features, targets)      # training
    logits = head.logits(features)             # inference: class scores without any margin

Heads register with the :func:`register_head` decorator (a name and the options they take); every registered
head ``h`` is also available as ``h+center``. Names understood by :func:`make_head` (``head_names()``):

``softmax``
    A linear classifier and cross-entropy.
``center``
    Softmax plus Center Loss in its usual form (Wen et al., ECCV 2016): ``CE + λ · ½·mean‖x − c_y‖²``
    with ``λ = center_weight`` (default 0.01).
``softmax+center``
    The tutorial's preset: ``0.999 · CE + 0.001 · Σ_i ‖x_i − c_{y_i}‖ / n_{y_i}`` (distance to the class
    centre divided by the number of samples of that class in the batch). ``weights=(a, b)`` and
    ``center_form`` override it. ``arcface+center`` and ``cosface+center`` combine the same way.
``arcface``
    Additive angular margin (ArcFace / the tutorial's ArcSoftmax): the target logit is ``s·cos(θ + m)``,
    the others ``s·cos θ``, on L2-normalised features and class weights; cross-entropy on top.
``cosface``
    Additive cosine margin (CosFace / AM-Softmax): target logit ``s·(cos θ − m)``.

ArcFace's and CosFace's class directions start as far apart as possible when ``in_dim`` is 2 or 3 (in 2-D
evenly around the circle) and at random (Xavier) above: ``weight_init``, see :class:`MarginHead`.

What the tutorial gets wrong and this module does not copy:

* it divides cos θ by 10 "against gradient explosion" and takes ``acos`` without clamping. That
  changes the loss itself (all cosines squeezed into [-0.1, 0.1], so the margin acts on the wrong angles),
  and ``acos`` has an infinite derivative at ±1. Here cos θ is clamped to ``[-1 + eps, 1 - eps]`` and the
  target logit is computed with the identity ``cos(θ+m) = cos θ cos m − sin θ sin m``; where ``θ + m``
  would pass π the usual linear continuation ``cos θ − m·sin m`` keeps the target logit decreasing in θ.
  ``formulation="acos"`` computes ``cos(acos(clamped cos θ) + m)`` instead (same values; for tests).
* its centres share the network's optimizer setting and get a gradient scaled by 0.001, so they barely
  move. Here the centres form their own parameter group with their own learning rate
  (:meth:`param_groups`, used by :func:`optimizer_factory`), and by default they receive the gradient of
  the *unweighted* Center Loss (the weight scales only what the features feel), as in Wen et al.
"""

from __future__ import annotations

import math
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from .train import Callback

#: registered heads by name (see :func:`register_head`)
HEADS: dict[str, type] = {}


def register_head(name: str, options=()):
    """Class decorator: make a :class:`Head` buildable by ``make_head(name)`` (and ``name+center``) with the
    keyword ``options`` its ``__init__`` takes besides ``in_dim`` and ``n_classes``."""

    def deco(cls):
        cls.head_name = name
        cls.head_options = frozenset(options)
        HEADS[name] = cls
        return cls

    return deco


def head_names() -> tuple[str, ...]:
    """Every name :func:`make_head` understands: the registered heads, ``center`` (softmax plus Wen et al.'s
    Center Loss) and ``<head>+center`` (the tutorial's combination) for each registered head."""
    return (*HEADS, "center", *(f"{h}+center" for h in HEADS))

#: the tutorial's weights for cross-entropy and Center Loss
TUTORIAL_WEIGHTS = (0.999, 0.001)


class Head(nn.Module):
    """Base class: ``forward(features, targets) -> (loss, logits)`` and ``logits(features)``."""

    n_classes: int
    in_dim: int
    #: whether class membership lives in the direction of the features (margin heads): then the
    #: embedding used for clustering is best L2-normalised.
    angular = False

    def logits(self, features: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def param_groups(self, lr: float, weight_decay: float = 0.0) -> list[dict]:
        """Optimizer parameter groups; heads with their own learning rates override this."""
        params = [p for p in self.parameters() if p.requires_grad]
        return [{"params": params, "lr": lr, "weight_decay": weight_decay}] if params else []

    def reset_parameters(self) -> None:
        for m in self.modules():
            if m is not self and hasattr(m, "reset_parameters"):
                m.reset_parameters()


def _ce_dtype(logits: torch.Tensor) -> torch.Tensor:
    """Cross-entropy in at least float32 (bf16 autocast logits are upcast; float64 stays float64)."""
    return logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits


def _check_targets(features: torch.Tensor, targets: torch.Tensor, n_classes: int) -> torch.Tensor:
    if features.dim() != 2:
        raise UserError(f"a head expects features of shape (batch, dim), got {tuple(features.shape)}")
    targets = targets.long().reshape(-1)
    if len(targets) != len(features):
        raise UserError(f"{len(targets)} targets for {len(features)} feature vectors; give one class per sample")
    if len(targets) and (int(targets.min()) < 0 or int(targets.max()) >= n_classes):
        raise UserError(f"class ids must lie in 0..{n_classes - 1}; got {int(targets.min())}..{int(targets.max())}")
    return targets


@register_head("softmax", options=("bias", "init_std"))
class SoftmaxHead(Head):
    """A linear classifier (the tutorial's ``Linear(2, 10)``) trained with cross-entropy.

    ``init_std``: start the weights from N(0, init_std²) and the bias at 0 (DeepCluster's head uses 0.01);
    None keeps PyTorch's default initialisation.
    """

    def __init__(self, in_dim: int, n_classes: int, bias: bool = True, init_std: float | None = None):
        super().__init__()
        self.in_dim, self.n_classes = int(in_dim), int(n_classes)
        self.fc = nn.Linear(self.in_dim, self.n_classes, bias=bias)
        if init_std is not None:
            nn.init.normal_(self.fc.weight, 0, float(init_std))
            if bias:
                nn.init.zeros_(self.fc.bias)

    def logits(self, features):
        return self.fc(features)

    def forward(self, features, targets):
        targets = _check_targets(features, targets, self.n_classes)
        out = self.logits(features)
        return F.cross_entropy(_ce_dtype(out), targets), out


class CenterLoss(nn.Module):
    """Learnable class centres and the distance of each feature to its class centre.

    form
        ``"mean"`` (the usual one, Wen et al.): ``½ · mean_i ‖x_i − c_{y_i}‖²``.
        ``"batch_count"`` (the tutorial's): ``Σ_i ‖x_i − c_{y_i}‖ / n_{y_i}`` where ``n_j`` is the number of
        samples of class j in the batch, i.e. the sum over the classes present of their mean distance.
    center_lr
        The centres' own learning rate (see :meth:`Head.param_groups`).
    init
        ``"randn"`` (the tutorial's standard normal) or ``"zeros"``.
    """

    def __init__(self, n_classes: int, dim: int, form: str = "mean", center_lr: float = 0.05, init: str = "randn"):
        super().__init__()
        if form not in ("mean", "batch_count"):
            raise UserError(f"unknown Center Loss form {form!r}; use 'mean' or 'batch_count'")
        if init not in ("randn", "zeros"):
            raise UserError(f"unknown centre initialisation {init!r}; use 'randn' or 'zeros'")
        if not center_lr > 0:
            raise UserError(f"center_lr must be positive, got {center_lr}")
        self.n_classes, self.dim, self.form, self.center_lr, self.init = int(n_classes), int(dim), form, float(center_lr), init
        self.centers = nn.Parameter(torch.empty(self.n_classes, self.dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            if self.init == "zeros":
                self.centers.zero_()
            else:
                self.centers.normal_()

    def forward(self, features: torch.Tensor, targets: torch.Tensor, centers: torch.Tensor | None = None) -> torch.Tensor:
        targets = _check_targets(features, targets, self.n_classes)
        c = (self.centers if centers is None else centers)[targets].to(features.dtype)
        diff = features - c
        if self.form == "mean":
            return 0.5 * (diff * diff).sum(1).mean()
        # the tutorial's form; vector_norm's gradient at a zero distance is 0, not NaN
        dist = torch.linalg.vector_norm(diff, dim=1)
        count = torch.bincount(targets, minlength=self.n_classes).to(features.dtype)[targets]
        return (dist / count).sum()


#: weight initialisations of the margin heads (``weight_init``)
WEIGHT_INITS = ("auto", "spread", "xavier")


def spread_directions(n: int, dim: int, steps: int = 500, generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` unit vectors in ``dim`` dimensions, spread as far apart as possible (float32, ``(n, dim)``).

    In 2-D: the exact answer, angles ``2πk/n`` (k = 0 … n−1), neighbours ``2π/n`` apart. With ``n ≤ dim + 1``:
    the vertices of a regular simplex (every pair at cosine ``−1/(n−1)``), in a random orientation. Otherwise:
    random directions pushed apart by gradient descent on a soft maximum of the pairwise cosines, projected
    back onto the sphere after each step. Random parts use ``generator`` (else torch's global RNG).
    """
    n, dim = int(n), int(dim)
    if n < 1 or dim < 1:
        raise UserError(f"spread_directions needs n >= 1 and dim >= 1, got n={n}, dim={dim}")
    if dim == 1:
        return torch.tensor([[1.0] if k % 2 == 0 else [-1.0] for k in range(n)])
    if dim == 2:
        ang = torch.arange(n, dtype=torch.float64) * (2 * math.pi / n)
        return torch.stack([torch.cos(ang), torch.sin(ang)], 1).float()
    rot = torch.linalg.qr(torch.randn(dim, dim, generator=generator, dtype=torch.float64))[0]
    if n <= dim + 1:
        # centred standard basis of R^n: a regular simplex in an (n-1)-dim subspace, rotated into R^dim
        e = torch.eye(n, dtype=torch.float64) - 1.0 / n
        basis = torch.linalg.svd(e, full_matrices=False)[2][: max(n - 1, 1)]  # (n-1, n) orthonormal rows
        v = e @ basis.T  # (n, n-1)
        v = F.normalize(v, dim=1) if n > 1 else torch.ones(1, 1, dtype=torch.float64)
        return (v @ rot[: v.shape[1]]).float()
    v = F.normalize(torch.randn(n, dim, generator=generator, dtype=torch.float64), dim=1)
    mask = ~torch.eye(n, dtype=torch.bool)
    with torch.enable_grad():
        v = v.clone().requires_grad_(True)
        opt = torch.optim.Adam([v], lr=0.05)
        for _ in range(int(steps)):
            u = F.normalize(v, dim=1)
            energy = torch.logsumexp(20.0 * (u @ u.T)[mask], 0)
            opt.zero_grad()
            energy.backward()
            opt.step()
    return F.normalize(v.detach(), dim=1).float()


class MarginHead(Head):
    """Shared part of ArcFace and CosFace: cosines between normalised features and class weights.

    weight_init
        How the class directions (rows of ``weight``) start. ``"spread"``: as far apart as possible
        (:func:`spread_directions`; in 2-D evenly around the circle, ``2π/n_classes`` apart). ``"xavier"``:
        random (Xavier-uniform). ``"auto"`` (default): ``spread`` when ``in_dim`` is 2 or 3, ``xavier`` above.
        Why: random directions in 2-D (or 3-D) often start almost on top of each other; features lie on the
        circle and cannot pass through the other classes, so classes that start together tend to stay
        together (2-D ArcFace on MNIST: 2 of 3 seeds ended with three class directions within 3° of each
        other). In higher dimensions random directions are already nearly orthogonal.
    """

    angular = True

    def __init__(self, in_dim: int, n_classes: int, margin: float, scale: float, eps: float = 1e-6,
                 weight_init: str = "auto"):
        super().__init__()
        if not scale > 0:
            raise UserError(f"the scale s must be positive, got {scale}")
        if not 0 <= eps < 0.1:
            raise UserError(f"eps must lie in [0, 0.1), got {eps}")
        if weight_init not in WEIGHT_INITS:
            raise UserError(f"unknown weight_init {weight_init!r}; use one of {', '.join(WEIGHT_INITS)}")
        self.in_dim, self.n_classes = int(in_dim), int(n_classes)
        self.margin, self.scale, self.eps = float(margin), float(scale), float(eps)
        self.weight_init = weight_init
        self.weight = nn.Parameter(torch.empty(self.n_classes, self.in_dim))
        self.reset_parameters()

    @property
    def weight_init_(self) -> str:
        """The initialisation actually used (``auto`` resolved)."""
        if self.weight_init == "auto":
            return "spread" if self.in_dim in (2, 3) else "xavier"
        return self.weight_init

    def reset_parameters(self) -> None:
        if self.weight_init_ == "spread":
            with torch.no_grad():
                self.weight.copy_(spread_directions(self.n_classes, self.in_dim))
        else:
            nn.init.xavier_uniform_(self.weight)

    def cosine(self, features: torch.Tensor) -> torch.Tensor:
        """cos θ between each feature and each class weight, clamped to [-1 + eps, 1 - eps].

        Always computed in float32 or float64, outside any autocast: in bfloat16 ``1 - 1e-6`` rounds to 1,
        so the clamp would not keep ``sin θ`` away from 0 and the gradient would be infinite.
        """
        with torch.autocast(device_type=features.device.type, enabled=False):
            x = features if features.dtype == torch.float64 else features.float()
            x = F.normalize(x, dim=1)
            w = F.normalize(self.weight.to(x.dtype), dim=1)
            return F.linear(x, w).clamp(-1.0 + self.eps, 1.0 - self.eps)

    def logits(self, features):
        return self.scale * self.cosine(features)

    def target_logit(self, cos: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, features, targets):
        targets = _check_targets(features, targets, self.n_classes)
        with torch.autocast(device_type=features.device.type, enabled=False):
            cos = self.cosine(features)
            onehot = F.one_hot(targets, self.n_classes).to(torch.bool)
            out = self.scale * torch.where(onehot, self.target_logit(cos), cos)
            return F.cross_entropy(out, targets), out


@register_head("arcface", options=("margin", "scale", "easy_margin", "formulation", "eps", "weight_init"))
class ArcFaceHead(MarginHead):
    """Additive angular margin: target logit ``s·cos(θ + m)``, the others ``s·cos θ``.

    easy_margin
        Apply the margin only where cos θ > 0 (θ < 90°), leaving the target logit ``cos θ`` elsewhere.
    formulation
        ``"identity"`` (default): ``cos θ cos m − sin θ sin m`` with ``sin θ = √(1 − cos²θ)`` of the clamped
        cosine, and beyond θ > π − m the continuation ``cos θ − m·sin m``. ``"acos"``:
        ``cos(acos(cos θ) + m)`` on the same clamped cosine, with the same continuation.
    """

    def __init__(self, in_dim: int, n_classes: int, margin: float = 0.5, scale: float = 10.0, easy_margin: bool = False,
                 formulation: str = "identity", eps: float = 1e-6, weight_init: str = "auto"):
        if not 0 <= margin < math.pi / 2:
            raise UserError(f"the ArcFace margin m is an angle in radians in [0, π/2); got {margin}")
        if formulation not in ("identity", "acos"):
            raise UserError(f"unknown ArcFace formulation {formulation!r}; use 'identity' or 'acos'")
        super().__init__(in_dim, n_classes, margin, scale, eps, weight_init)
        self.easy_margin, self.formulation = bool(easy_margin), formulation
        self.set_margin(margin)

    def set_margin(self, margin: float) -> None:
        """Change m (e.g. a warm-up from 0), keeping the derived constants in step."""
        self.margin = float(margin)
        self._cos_m, self._sin_m = math.cos(self.margin), math.sin(self.margin)
        self._threshold = math.cos(math.pi - self.margin)  # θ + m > π beyond this cosine
        self._fallback = math.sin(math.pi - self.margin) * self.margin  # = m·sin m

    def target_logit(self, cos):
        if self.formulation == "acos":
            shifted = torch.cos(torch.acos(cos) + self.margin)
        else:
            sin = torch.sqrt((1.0 - cos * cos).clamp_min(0.0))
            shifted = cos * self._cos_m - sin * self._sin_m
        if self.easy_margin:
            return torch.where(cos > 0, shifted, cos)
        return torch.where(cos > self._threshold, shifted, cos - self._fallback)


@register_head("cosface", options=("margin", "scale", "eps", "weight_init"))
class CosFaceHead(MarginHead):
    """Additive cosine margin (CosFace / AM-Softmax): target logit ``s·(cos θ − m)``."""

    def __init__(self, in_dim: int, n_classes: int, margin: float = 0.35, scale: float = 10.0, eps: float = 1e-6,
                 weight_init: str = "auto"):
        if not 0 <= margin < 2:
            raise UserError(f"the CosFace margin m must lie in [0, 2); got {margin}")
        super().__init__(in_dim, n_classes, margin, scale, eps, weight_init)

    def set_margin(self, margin: float) -> None:
        self.margin = float(margin)

    def target_logit(self, cos):
        return cos - self.margin


class CenterCombinedHead(Head):
    """A classification head plus Center Loss: ``a · classification loss + b · Center Loss``.

    decouple
        When true (default) the weight ``b`` scales only the gradient the features receive; the centres
        get the gradient of the unweighted Center Loss and move at their own learning rate. When false,
        both see ``b · Center Loss`` (what the tutorial does).
    """

    def __init__(self, classifier: Head, center: CenterLoss, weights=(1.0, 0.01), decouple: bool = True):
        super().__init__()
        a, b = (float(w) for w in weights)
        if a < 0 or b < 0 or a + b == 0:
            raise UserError(f"loss weights must be non-negative and not both zero, got {weights}")
        self.classifier, self.center = classifier, center
        self.in_dim, self.n_classes = classifier.in_dim, classifier.n_classes
        self.weights, self.decouple = (a, b), bool(decouple)
        self.angular = classifier.angular

    def logits(self, features):
        return self.classifier.logits(features)

    def center_loss(self, features, targets) -> torch.Tensor:
        return self.center(features, targets)

    def forward(self, features, targets):
        a, b = self.weights
        cls_loss, out = self.classifier(features, targets)
        if self.decouple:
            # features feel b·L_C (centres held fixed); centres feel L_C (features held fixed)
            on_features = self.center(features, targets, centers=self.center.centers.detach())
            on_centers = self.center(features.detach(), targets)
            loss = a * cls_loss + b * on_features + (on_centers - on_centers.detach())
        else:
            loss = a * cls_loss + b * self.center(features, targets)
        return loss, out

    def param_groups(self, lr: float, weight_decay: float = 0.0) -> list[dict]:
        groups = self.classifier.param_groups(lr, weight_decay)
        groups.append({"params": [self.center.centers], "lr": self.center.center_lr, "weight_decay": 0.0})
        return groups

    def reset_parameters(self) -> None:
        self.classifier.reset_parameters()
        self.center.reset_parameters()


def make_head(name: str, in_dim: int, n_classes: int, **kw) -> Head:
    """Build a head by name (see the module docstring for names and defaults).

    Keyword options: ``margin``, ``scale``, ``easy_margin``, ``formulation`` (ArcFace), ``eps``,
    ``weight_init`` (``auto``/``spread``/``xavier``; ArcFace and CosFace, see :class:`MarginHead`);
    ``center_weight``, ``weights=(a, b)``, ``center_form`` (``mean``/``batch_count``), ``center_lr``,
    ``center_init``, ``decouple`` (Center Loss combinations); ``bias`` (softmax).
    """
    name = str(name).lower().replace(" ", "")
    if name not in head_names():
        raise UserError(f"unknown head {name!r}; use one of {', '.join(head_names())}")
    if int(in_dim) < 1 or int(n_classes) < 2:
        raise UserError(f"a head needs at least 1 input dimension and 2 classes, got in_dim={in_dim}, n_classes={n_classes}")
    kw = dict(kw)
    center_keys = ("center_weight", "weights", "center_form", "center_lr", "center_init", "decouple")
    ckw = {k: kw.pop(k) for k in center_keys if k in kw}
    base = "softmax" if name == "center" else name.split("+")[0]
    cls = HEADS[base]
    bad = sorted(set(kw) - cls.head_options) + (sorted(ckw) if "center" not in name else [])
    if bad:
        raise UserError(f"head {name!r} does not take option(s) {', '.join(bad)}")
    head = cls(int(in_dim), int(n_classes), **kw)
    if "center" not in name:
        return head
    tutorial = name != "center"
    if "weights" in ckw and "center_weight" in ckw:
        raise UserError("give either weights=(a, b) or center_weight, not both")
    if "weights" in ckw:
        w = ckw["weights"]
        weights = TUTORIAL_WEIGHTS if w == "tutorial" else tuple(w)
        if len(weights) != 2:
            raise UserError(f"weights must be two numbers (classification, centre), got {w!r}")
    elif "center_weight" in ckw:
        weights = (1.0, float(ckw["center_weight"]))
    else:
        weights = TUTORIAL_WEIGHTS if tutorial else (1.0, 0.01)
    center = CenterLoss(int(n_classes), int(in_dim), form=ckw.get("center_form", "batch_count" if tutorial else "mean"),
                        center_lr=float(ckw.get("center_lr", 0.05)), init=ckw.get("center_init", "randn"))
    return CenterCombinedHead(head, center, weights=weights, decouple=bool(ckw.get("decouple", True)))


def param_groups(modules: Iterable[nn.Module] | dict, lr: float, weight_decay: float = 0.0) -> list[dict]:
    """Parameter groups for every module: a module's own ``param_groups`` when it has them (heads with
    Center Loss give their centres their own learning rate), else all its parameters at ``lr``."""
    mods = modules.values() if isinstance(modules, dict) else modules
    groups: list[dict] = []
    for m in mods:
        if hasattr(m, "param_groups"):
            groups += m.param_groups(lr, weight_decay)
        else:
            ps = [p for p in m.parameters() if p.requires_grad]
            if ps:
                groups.append({"params": ps, "lr": lr, "weight_decay": weight_decay})
    # parameters shared between modules must appear in one group only
    seen: set[int] = set()
    out = []
    for g in groups:
        ps = [p for p in g["params"] if id(p) not in seen]
        seen.update(id(p) for p in ps)
        if ps:
            out.append({**g, "params": ps})
    return out


def optimizer_factory(modules: dict, config) -> torch.optim.Optimizer:
    """An optimizer factory for :class:`imclust.nn.train.Trainer` that honours heads' parameter groups."""
    groups = param_groups(modules, config.lr, config.weight_decay)
    if config.optimizer == "adam":
        return torch.optim.Adam(groups, lr=config.lr)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=config.lr)
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum)
    raise UserError(f"unknown optimizer {config.optimizer!r}; use adam, adamw or sgd")


class MarginWarmup(Callback):
    """The margin of an ArcFace/CosFace head (alone or inside ``+center``) rises linearly from 0 to its value
    over ``epochs`` epochs (epoch e uses ``m·e/epochs``); the full margin is back when training ends."""

    def __init__(self, head: nn.Module, epochs: int):
        self.head = getattr(head, "classifier", head)
        self.epochs = int(epochs)
        self.full = getattr(self.head, "margin", None)

    @property
    def active(self) -> bool:
        return self.epochs > 0 and hasattr(self.head, "set_margin")

    def on_epoch_start(self, trainer, epoch):
        if not self.active:
            return None
        self.head.set_margin(self.full * min(1.0, epoch / self.epochs))
        return {"margin": self.head.margin}

    def on_fit_end(self, trainer):
        if self.active:
            self.head.set_margin(self.full)
