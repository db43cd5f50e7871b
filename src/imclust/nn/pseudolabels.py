"""Pseudo-label tools for methods that train on their own clusters (DeepCluster, selflabel, DEC's start, ...).

* :func:`kmeans_labels`: k-means through :class:`imclust.cluster.KMeans` (faiss when installed, else
  scikit-learn), then :func:`repair_empty`, so every one of the ``k`` clusters holds images;
* :func:`repair_empty`: each empty cluster takes half of the largest one, split at the median of its
  principal direction;
* :func:`uniform_cluster_sample`: ``n`` indices drawn uniformly over the non-empty clusters (DeepCluster's
  guard against one cluster swallowing the others);
* :func:`align_labels`: renumber a new assignment to agree most with the previous one (Hungarian), so a
  head's classes keep their meaning from epoch to epoch;
* :func:`student_t` (soft assignments of points to centres with Student's t kernel, as DEC's) and
  :func:`target_distribution` (DEC's sharpened target);
* :class:`PseudoLabels`: the per-epoch bookkeeping built from these: k-means seeded from ``(seed, epoch)``
  (:func:`imclust.nn.train.epoch_seed`, one stream per use), NMI with the previous epoch's assignment,
  the largest cluster's share, the number repaired, and the sampler. Its state (the last assignment) goes
  into checkpoints, so a resumed run goes on exactly.

Nothing here reads true labels.
"""

from __future__ import annotations

import numpy as np
import torch

from .train import epoch_seed

#: random streams of an epoch (stream 0 is the Trainer's own epoch seed)
STREAM_KMEANS, STREAM_SAMPLER = 2, 3


def repair_empty(labels: np.ndarray, Z: np.ndarray, k: int) -> tuple[np.ndarray, int]:
    """Give every empty cluster half of the largest one (split along its principal direction).

    Returns the new labels and the number of clusters repaired."""
    labels = np.asarray(labels, np.int64).copy()
    Z = np.asarray(Z, np.float64).reshape(len(Z), -1)
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


def kmeans_labels(Z: np.ndarray, k: int, seed: int, n_init: int = 1, max_iter: int = 20,
                  backend: str = "auto") -> tuple[np.ndarray, np.ndarray, int]:
    """k-means on ``Z`` with every cluster non-empty: (labels, centres, number of clusters repaired).

    The centres are those k-means found (a repaired cluster's centre is the mean of its new members)."""
    from ..cluster import KMeans

    Z = np.ascontiguousarray(np.asarray(Z, np.float32).reshape(len(Z), -1))
    km = KMeans(int(k), n_init=int(n_init), max_iter=int(max_iter), random_state=int(seed), backend=backend).fit(Z)
    labels, repaired = repair_empty(km.labels_, Z, int(k))
    centres = km.cluster_centers_.copy()
    if repaired:
        for j in range(int(k)):
            centres[j] = Z[labels == j].mean(0)
    return labels, centres, repaired


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


def align_labels(prev: np.ndarray, new: np.ndarray, k: int) -> np.ndarray:
    """Renumber ``new`` clusters to agree most with ``prev`` (Hungarian matching on the overlap)."""
    from scipy.optimize import linear_sum_assignment

    table = np.zeros((k, k), np.int64)
    np.add.at(table, (np.asarray(new), np.asarray(prev)), 1)
    rows, cols = linear_sum_assignment(-table)
    lut = np.empty(k, np.int64)
    lut[rows] = cols
    return lut[np.asarray(new)]


def nmi_between(a: np.ndarray, b: np.ndarray) -> float:
    """NMI (arithmetic normalisation) of two assignments of the same images: stability between epochs."""
    from sklearn.metrics import normalized_mutual_info_score

    return float(normalized_mutual_info_score(a, b))


def student_t(z, centres, alpha: float = 1.0):
    """Soft assignments ``q_ij ∝ (1 + |z_i − μ_j|²/α)^(−(α+1)/2)`` of rows ``z`` to ``centres`` (rows sum to 1).

    Works on numpy arrays and on torch tensors (computed in float32 outside autocast, differentiable)."""
    if isinstance(z, np.ndarray):
        d2 = ((z.reshape(len(z), -1)[:, None, :] - centres[None]) ** 2).sum(2)
        q = (1.0 + d2 / alpha) ** (-(alpha + 1.0) / 2.0)
        return (q / q.sum(1, keepdims=True)).astype(np.float32)
    with torch.autocast(device_type=z.device.type, enabled=False):
        d2 = ((z.float().flatten(1).unsqueeze(1) - centres.float().unsqueeze(0)) ** 2).sum(2)
        q = (1.0 + d2 / alpha).pow(-(alpha + 1.0) / 2.0)
        return q / q.sum(1, keepdim=True)


def target_distribution(q: np.ndarray) -> np.ndarray:
    """DEC's target: q squared, divided by each cluster's total soft assignment, renormalised per row."""
    w = q.astype(np.float64) ** 2 / q.sum(0)
    return (w / w.sum(1, keepdims=True)).astype(np.float32)


class PseudoLabels:
    """One assignment per epoch, with the statistics every self-labelling method logs.

    ``update(Z, epoch)`` clusters ``Z`` into ``k`` non-empty clusters (seeded from ``seed`` and ``epoch``),
    renumbers them to match the previous epoch when ``align`` is set, and returns the epoch's record:
    ``nmi_prev`` (from the second epoch on), ``largest_cluster`` (share of the images), ``clusters_used``
    and ``empty_repaired``. ``labels`` holds the assignment; ``sample(n, epoch)`` draws a uniform-over-
    clusters sample from it. ``state()``/``restore()`` carry the assignment through checkpoints.
    """

    def __init__(self, k: int, seed: int = 0, align: bool = False, n_init: int = 1, max_iter: int = 20,
                 backend: str = "auto"):
        self.k, self.seed, self.align = int(k), int(seed), bool(align)
        self.n_init, self.max_iter, self.backend = int(n_init), int(max_iter), backend
        self.labels: np.ndarray | None = None

    def seed_for(self, epoch: int, stream: int) -> int:
        return epoch_seed(self.seed, epoch, stream)

    def set(self, labels: np.ndarray) -> dict:
        """Take ``labels`` as this epoch's assignment (aligned to the last one when asked); the epoch's record."""
        labels = np.asarray(labels, np.int64)
        rec: dict = {}
        if self.labels is not None and len(self.labels) == len(labels):
            rec["nmi_prev"] = nmi_between(self.labels, labels)
            if self.align:
                labels = align_labels(self.labels, labels, self.k)
        counts = np.bincount(labels, minlength=self.k)
        rec["largest_cluster"] = float(counts.max() / max(len(labels), 1))
        rec["clusters_used"] = int((counts > 0).sum())
        self.labels = labels
        return rec

    def update(self, Z: np.ndarray, epoch: int) -> dict:
        labels, _, repaired = kmeans_labels(Z, self.k, self.seed_for(epoch, STREAM_KMEANS), n_init=self.n_init,
                                            max_iter=self.max_iter, backend=self.backend)
        return {"empty_repaired": repaired, **self.set(labels)}

    def sample(self, n: int, epoch: int) -> np.ndarray:
        g = torch.Generator()
        g.manual_seed(self.seed_for(epoch, STREAM_SAMPLER))
        return uniform_cluster_sample(self.labels, int(n), g)

    def state(self) -> dict[str, np.ndarray]:
        return {} if self.labels is None else {"pseudo_labels": self.labels}

    def restore(self, arrays: dict[str, np.ndarray]) -> None:
        if "pseudo_labels" in arrays:
            self.labels = np.asarray(arrays["pseudo_labels"], np.int64)
