"""TEMI: a clustering head trained on frozen features (Adaloglou et al., "Exploring the limits of deep image
clustering using pretrained models", BMVC 2023).

A clusterer like k-means (``fit(X)``, ``predict(X)``, ``predict_proba(X)``), so any encoder's features can
feed it; it owns its clusters (the trained head assigns new points). What it does:

1. The features are centred (the training mean, kept for new points) and L2-normalised, and each point's
   ``knn`` nearest neighbours by cosine similarity are found once.
2. ``n_heads`` independent heads (MLP ``d → hidden → hidden → bottleneck``, L2-normalised, then a
   weight-normalised layer to ``n_clusters`` outputs, whose directions start at k-means++ picks among the
   head's initial embeddings, so no cluster starts empty) are trained as students; a teacher copy of each
   follows the student by an exponential moving average (momentum ``teacher_momentum`` rising to 1 on a
   cosine schedule).
3. Each step pairs every point x of a batch with one of its neighbours x' at random. With q_s the
   students' softmax at temperature ``student_temp``, q_t the teachers' at ``teacher_temp`` and q̃ a running
   mean of the teachers' cluster sizes (momentum ``prior_momentum``), the loss of one head is the
   β-weighted pointwise mutual information of the pair,

       pmi = log Σ_c (q_s(c|x) · q_t(c|x'))^β / q̃(c),

   symmetrised over (x, x'), weighted by how much all teacher heads agree that x and x' belong together
   (w = 1/H Σ_h Σ_c q_t(c|x) q_t(c|x')), negated and averaged over heads. Dividing by q̃ keeps clusters
   from collapsing into one; β < 1 softens over-confident pairs.
4. At the end one head is kept, without labels: the one whose (teacher's) clusters carry the most
   information about the clusters of each point's neighbours (:func:`neighbour_information`; the paper
   keeps the head of lowest loss, but that loss rewards the soft tails of near-empty clusters, so it is a
   poor judge of heads). Its teacher gives the clusters.

Training runs in :class:`imclust.nn.train.Trainer` (device, bf16, per-epoch seeding, progress bar, NaN
stop). The fitted state is the kept head's weights and the centring mean: arrays in safetensors, the rest
in JSON. Nothing reads labels.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sklearn.utils.validation import check_is_fitted

from .base import Clusterer, check_input, register
from .errors import UserError
from .nn.contrastive import mine_neighbours
from .progress import log


class MultiHead(nn.Module):
    """``H`` independent cluster heads evaluated together: ``(B, d)`` → ``(H, B, k)`` cosine logits."""

    def __init__(self, d: int, k: int, heads: int, hidden: int, bottleneck: int):
        super().__init__()
        self.w1 = nn.Parameter(torch.empty(heads, d, hidden))
        self.b1 = nn.Parameter(torch.zeros(heads, 1, hidden))
        self.w2 = nn.Parameter(torch.empty(heads, hidden, hidden))
        self.b2 = nn.Parameter(torch.zeros(heads, 1, hidden))
        self.w3 = nn.Parameter(torch.empty(heads, hidden, bottleneck))
        self.b3 = nn.Parameter(torch.zeros(heads, 1, bottleneck))
        self.v = nn.Parameter(torch.empty(heads, bottleneck, k))  # last layer's directions (weight norm, g = 1)
        for w in (self.w1, self.w2, self.w3):
            nn.init.trunc_normal_(w, std=0.02)
        nn.init.normal_(self.v, std=1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.gelu(torch.einsum("bd,hde->hbe", x, self.w1) + self.b1)
        h = F.gelu(torch.bmm(h, self.w2) + self.b2)
        z = F.normalize(torch.bmm(h, self.w3) + self.b3, dim=-1)
        return torch.bmm(z, F.normalize(self.v, dim=1))

    def keep(self, h: int) -> "MultiHead":
        """A one-head copy holding head ``h``."""
        one = copy.deepcopy(self)
        for name, p in one.named_parameters():
            p.data = p.data[h : h + 1].clone()
        return one


@torch.no_grad()
def seed_directions(heads: MultiHead, Z: np.ndarray, seed: int, sample: int = 5000) -> None:
    """Start each head's cluster directions at k-means++ picks (its own draw) among the head's initial embeddings
    of the points, so every cluster starts with points: with random directions a few clusters take all points
    and the others never receive any."""
    from sklearn.cluster import kmeans_plusplus

    rs = np.random.RandomState(seed)
    idx = rs.choice(len(Z), min(sample, len(Z)), replace=False)
    x = torch.from_numpy(Z[idx])
    h = F.gelu(torch.einsum("bd,hde->hbe", x, heads.w1) + heads.b1)
    h = F.gelu(torch.bmm(h, heads.w2) + heads.b2)
    z = F.normalize(torch.bmm(h, heads.w3) + heads.b3, dim=-1).numpy()
    k = heads.v.shape[2]
    for i in range(heads.v.shape[0]):
        centres, _ = kmeans_plusplus(z[i], k, random_state=int(rs.randint(0, 2**31 - 1)))
        heads.v[i] = torch.from_numpy(centres.T.astype(np.float32))


def neighbour_information(labels: np.ndarray, nbrs: np.ndarray, k: int) -> float:
    """Mutual information (nats) between a point's cluster and its neighbours' clusters, over all (point,
    neighbour) pairs: ln k at best (balanced clusters that neighbours never leave), lower when clusters merge,
    stay empty or cut through neighbourhoods. Reads no labels."""
    a = np.repeat(labels, nbrs.shape[1])
    b = labels[nbrs.reshape(-1)]
    joint = np.bincount(a * k + b, minlength=k * k).reshape(k, k).astype(np.float64)
    joint = (joint + joint.T) / (2 * joint.sum())
    pa = joint.sum(1)
    nz = joint > 0
    return float((joint[nz] * np.log(joint[nz] / np.outer(pa, pa)[nz])).sum())


@register("temi")
class TEMI(Clusterer):
    """TEMI cluster head on frozen features; see the module docstring for the method and its options.

    Parameters
    ----------
    n_clusters : number of clusters (the head's outputs).
    n_heads : heads trained together; one is kept (see step 4 above).
    knn : neighbours per point from which the training pairs are drawn.
    steps, batch_size, lr, weight_decay : AdamW training of the students for ``steps`` optimizer steps
        (whatever the number of points, so every set gets the same training; a small set is seen more often).
    hidden, bottleneck : head widths.
    beta : exponent β of the pointwise mutual information.
    student_temp, teacher_temp : softmax temperatures.
    teacher_momentum : start of the teacher's moving-average momentum (rises to 1 by the end).
    prior_momentum : momentum of the running cluster-size estimate q̃.
    center : subtract the training mean before L2-normalising (for features that are all positive, like a
        CNN's pooled activations, cosine similarity is otherwise dominated by the mean).
    device, precision : as for the trainable encoders (``auto``/``cpu``/``cuda``; ``fp32``/``bf16``/``auto``).
    random_state : seed of the initialisation, the batches and the neighbour draws.
    """

    def __init__(self, n_clusters: int = 8, n_heads: int = 8, knn: int = 25, steps: int = 1000,
                 batch_size: int = 256, lr: float = 1e-4, weight_decay: float = 1e-4, hidden: int = 256,
                 bottleneck: int = 128, beta: float = 0.6, student_temp: float = 0.1, teacher_temp: float = 0.04,
                 teacher_momentum: float = 0.996, prior_momentum: float = 0.996, center: bool = True,
                 device: str = "auto", precision: str = "fp32", random_state: int | None = 0):
        self.n_clusters = n_clusters
        self.n_heads = n_heads
        self.knn = knn
        self.steps = steps
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.hidden = hidden
        self.bottleneck = bottleneck
        self.beta = beta
        self.student_temp = student_temp
        self.teacher_temp = teacher_temp
        self.teacher_momentum = teacher_momentum
        self.prior_momentum = prior_momentum
        self.center = center
        self.device = device
        self.precision = precision
        self.random_state = random_state

    # -- checks and input ------------------------------------------------------------------------------
    def _check(self, n: int) -> None:
        for name in ("n_heads", "knn", "steps", "batch_size", "hidden", "bottleneck"):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
                raise UserError(f"temi {name} must be a whole number of at least 1, got {v!r}")
        for name in ("lr", "student_temp", "teacher_temp"):
            if not float(getattr(self, name)) > 0:
                raise UserError(f"temi {name} must be positive, got {getattr(self, name)!r}")
        if not 0 < float(self.beta) <= 1:
            raise UserError(f"temi beta must be in (0, 1], got {self.beta!r}")
        for name in ("teacher_momentum", "prior_momentum"):
            if not 0 <= float(getattr(self, name)) < 1:
                raise UserError(f"temi {name} must be in [0, 1), got {getattr(self, name)!r}")

    def _inputs(self, X) -> np.ndarray:
        """Centred (with ``center``) and L2-normalised rows of an already checked ``X``."""
        X = X - self.mean_
        n = np.linalg.norm(X, axis=1, keepdims=True)
        return (X / np.maximum(n, 1e-12)).astype(np.float32)

    # -- the loss ---------------------------------------------------------------------------------------
    def _pair_loss(self, s_x, s_y, t_x, t_y, prior):
        """Per-head loss (H,) of pairs; ``s_*`` student logits, ``t_*`` teacher probabilities, all (H, B, k)."""
        beta = float(self.beta)
        log_prior = prior.log()[:, None, :]  # (H, 1, k)
        ls_x = F.log_softmax(s_x / self.student_temp, dim=-1)
        ls_y = F.log_softmax(s_y / self.student_temp, dim=-1)
        lt_x, lt_y = t_x.clamp_min(1e-12).log(), t_y.clamp_min(1e-12).log()
        pmi_xy = torch.logsumexp(beta * (ls_x + lt_y) - log_prior, dim=-1)  # log Σ_c (q_s(c|x) q_t(c|y))^β / q̃(c)
        pmi_yx = torch.logsumexp(beta * (ls_y + lt_x) - log_prior, dim=-1)
        weight = (t_x * t_y).sum(-1).mean(0)  # teacher agreement averaged over heads, (B,)
        return -(weight[None] * 0.5 * (pmi_xy + pmi_yx)).mean(1)

    # -- fitting ----------------------------------------------------------------------------------------
    def fit(self, X, y=None):
        from .nn.train import TrainConfig, Trainer

        from .cluster import resolve_n_clusters

        X = check_input(self, X, reset=True, min_samples=3)  # neighbours need a few points
        n = len(X)
        self._check(n)
        self.mean_ = X.mean(0).astype(np.float32) if self.center else np.zeros(X.shape[1], np.float32)
        Z = self._inputs(X)
        nbrs = mine_neighbours(Z, min(int(self.knn), n - 1))  # cosine; Z's rows are unit vectors
        seed = 0 if self.random_state is None else int(self.random_state)
        k = self.n_clusters_ = resolve_n_clusters(self.n_clusters, Z, seed)
        H = int(self.n_heads)
        torch.manual_seed(seed)
        student = MultiHead(Z.shape[1], k, H, int(self.hidden), int(self.bottleneck))
        seed_directions(student, Z, seed)
        teacher = copy.deepcopy(student)
        for p in teacher.parameters():
            p.requires_grad_(False)
        bs = int(min(self.batch_size, n))
        # the steps run in (at most) 20 rounds, the Trainer's "epochs", each drawing its batches from fresh
        # permutations of the points (whole batches only: the cluster-size estimate wants full batches)
        rounds = int(min(20, int(self.steps)))
        per_round = int(math.ceil(int(self.steps) / rounds))
        cfg = TrainConfig(epochs=rounds, batch_size=bs, lr=float(self.lr),
                          weight_decay=float(self.weight_decay), optimizer="adamw", seed=seed, device=self.device,
                          precision=self.precision)
        trainer = Trainer({"student": student}, cfg, desc="temi")
        dev = trainer.device
        teacher.to(dev)
        Zt = torch.from_numpy(Z).to(dev)
        nb = torch.from_numpy(nbrs).to(dev)
        total = rounds * per_round
        state = {"step": 0, "prior": torch.full((H, k), 1.0 / k, device=dev)}

        def ema(step):
            m = 1 - (1 - float(self.teacher_momentum)) * (math.cos(math.pi * step / total) + 1) / 2
            with torch.no_grad():
                for pt, ps in zip(teacher.parameters(), trainer.raw("student").parameters()):
                    pt.mul_(m).add_(ps.detach(), alpha=1 - m)

        def make_batches(epoch, gen):
            per_perm = n // bs
            perms = [torch.randperm(n, generator=gen)[: per_perm * bs] for _ in range(-(-per_round // per_perm))]
            order = torch.cat(perms)
            pick = torch.randint(0, nb.shape[1], (len(order),), generator=gen)
            return [(order[j * bs : (j + 1) * bs], pick[j * bs : (j + 1) * bs]) for j in range(per_round)]

        def train_step(batch, tr):
            if state["step"]:  # the teacher follows the step the optimizer took after the previous batch
                ema(state["step"])
            idx, pick = batch
            idx = idx.to(dev)
            x, y = Zt[idx], Zt[nb[idx, pick.to(dev)]]
            net = tr.modules["student"]
            s_x, s_y = net(x), net(y)
            with torch.no_grad():
                t_x = F.softmax(teacher(x).float() / self.teacher_temp, dim=-1)
                t_y = F.softmax(teacher(y).float() / self.teacher_temp, dim=-1)
                batch_mean = 0.5 * (t_x.mean(1) + t_y.mean(1))
            loss = self._pair_loss(s_x.float(), s_y.float(), t_x, t_y, state["prior"]).mean()
            with torch.no_grad():
                pm = float(self.prior_momentum)
                state["prior"] = state["prior"] * pm + (1 - pm) * batch_mean
            state["step"] += 1
            return loss

        history = trainer.fit(train_step, make_batches)
        ema(state["step"])
        self.history_ = [float(h["loss"]) for h in history]
        # keep the head whose clusters carry the most information about each point's neighbours' clusters
        teacher.eval()
        with torch.no_grad():
            hard = torch.cat([teacher(Zt[s : s + 1024]).argmax(-1) for s in range(0, n, 1024)], dim=1).cpu().numpy()
        self.head_scores_ = np.array([neighbour_information(h, nbrs, k) for h in hard], dtype=np.float64)
        self.best_head_ = int(np.argmax(self.head_scores_))
        self._head = teacher.keep(self.best_head_).cpu().eval()
        self.labels_ = self.predict(X)
        used = len(np.unique(self.labels_))
        log(f"temi: kept head {self.best_head_} of {H} (neighbour information {self.head_scores_[self.best_head_]:.3f} "
            f"nats, at most ln k = {math.log(k):.3f}); "
            f"{used} of {k} clusters in use")
        return self

    # -- inference ---------------------------------------------------------------------------------------
    def _fitted_head(self) -> MultiHead:
        check_is_fitted(self)
        return self._head

    @torch.no_grad()
    def predict_proba(self, X) -> np.ndarray:
        """``(n, k)`` cluster probabilities (the kept head's softmax at the student temperature)."""
        head = self._fitted_head()
        Z = torch.from_numpy(np.ascontiguousarray(self._inputs(check_input(self, X, reset=False)), np.float32))
        out = [F.softmax(head(Z[s : s + 4096])[0].float() / self.student_temp, dim=-1) for s in range(0, len(Z), 4096)]
        return torch.cat(out).numpy().astype(np.float32) if out else np.zeros((0, self.n_clusters_), np.float32)

    def predict(self, X) -> np.ndarray:
        return np.asarray(self.predict_proba(X).argmax(1), dtype=np.int64)

    def fit_predict(self, X, y=None):
        return self.fit(X).labels_

    # -- state -------------------------------------------------------------------------------------------
    def get_state(self):
        from .nn.train import module_arrays

        arrays, extra = super().get_state()
        arrays.update(module_arrays(self._fitted_head(), "head."))
        return arrays, extra

    def set_state(self, arrays, extra):
        head = {k: v for k, v in arrays.items() if k.startswith("head.")}
        rest = {k: v for k, v in arrays.items() if not k.startswith("head.")}
        super().set_state(rest, extra)
        if head:
            from .nn.train import load_module_arrays

            d, hidden = head["head.w1"].shape[1:]
            bottleneck, k = head["head.v"].shape[1:]
            module = MultiHead(int(d), int(k), 1, int(hidden), int(bottleneck))
            load_module_arrays(module, head, "head.")
            self._head = module.eval()
