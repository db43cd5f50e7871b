"""Losses and neighbour mining for contrastive pretext training and SCAN.

- :func:`nt_xent`: SimCLR's normalised temperature-scaled cross-entropy over the 2B views of a batch (each
  view's positive is the other view of its image; the other 2B-2 views are its negatives). Under DDP the
  projections of every rank are gathered (with their gradients), so each view has the negatives of the
  whole global batch, as in one process.
- :func:`scan_loss`: SCAN's clustering loss: ``-mean log <p(anchor), p(neighbour)>`` (neighbours agree) minus
  ``entropy_weight`` times the entropy of the mean prediction (spread the images over the clusters).
- :func:`self_label_loss`: SCAN's self-labelling: the prediction on a weak view, where its top probability
  exceeds ``threshold``, is the target of the cross-entropy on a strong view, weighted inversely to each
  class's share of the confident images.
- :func:`mine_neighbours`: the k nearest neighbours of every row by cosine similarity (faiss's exact inner
  product search on L2-normalised rows, or a blocked torch matmul), the row itself excluded.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from . import distributed as ddp


def _gather_rows_with_grad(z: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Every rank's rows, concatenated in rank order, with gradients flowing back to this rank's rows; and
    the offset of this rank's rows. Ranks may hold different numbers of rows."""
    if not ddp.is_distributed():
        return z, 0
    import torch.distributed as dist
    from torch.distributed.nn.functional import all_gather

    n = torch.tensor([len(z)], device=z.device)
    sizes = [torch.zeros_like(n) for _ in range(ddp.world_size())]
    dist.all_gather(sizes, n)
    sizes = [int(s) for s in sizes]
    pad = max(sizes) - len(z)
    zp = torch.cat([z, z.new_zeros(pad, *z.shape[1:])]) if pad else z
    parts = all_gather(zp)
    out = torch.cat([p[:s] for p, s in zip(parts, sizes)])
    return out, sum(sizes[: ddp.rank()])


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """NT-Xent for two ``(B, d)`` batches of projections of the same B images (row i of each is one image).

    Rows are L2-normalised; the loss is the mean over all 2B views of
    ``-log exp(s(i, pos)/t) / sum_{j != i} exp(s(i, j)/t)``, computed in float32.
    """
    z1 = F.normalize(z1.float(), dim=1)
    z2 = F.normalize(z2.float(), dim=1)
    b = len(z1)
    a1, off = _gather_rows_with_grad(z1)
    a2, _ = _gather_rows_with_grad(z2)
    n = len(a1)
    every = torch.cat([a1, a2])  # (2N, d): all views of the global batch
    local = torch.cat([z1, z2])  # (2B, d): this rank's views
    logits = local @ every.t() / float(temperature)
    rows = torch.arange(b, device=z1.device)
    own = torch.cat([rows + off, rows + off + n])  # where each local view sits among all views
    pos = torch.cat([rows + off + n, rows + off])  # and its other view
    logits[torch.arange(2 * b, device=z1.device), own] = float("-inf")
    return F.cross_entropy(logits, pos)


def entropy(p: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Entropy (nats) of a probability vector, or of each row of a matrix."""
    p = p.clamp(min=eps)
    return -(p * p.log()).sum(dim=-1)


def scan_loss(anchor_logits: torch.Tensor, neighbour_logits: torch.Tensor,
              entropy_weight: float = 5.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SCAN's loss; returns ``(total, consistency, entropy of the mean prediction)``.

    ``consistency = -mean_i log sum_c p_ic q_ic`` (p: anchor, q: neighbour probabilities);
    ``total = consistency - entropy_weight * H(mean_i p_i)``. Computed in float32.
    """
    p = F.softmax(anchor_logits.float(), dim=1)
    q = F.softmax(neighbour_logits.float(), dim=1)
    similarity = (p * q).sum(dim=1)
    consistency = -torch.log(similarity.clamp(min=1e-7)).mean()
    ent = entropy(p.mean(dim=0))
    return consistency - float(entropy_weight) * ent, consistency, ent


def self_label_loss(weak_logits: torch.Tensor, strong_logits: torch.Tensor, threshold: float = 0.99,
                    balance: bool = True) -> tuple[torch.Tensor, int]:
    """Cross-entropy of the strong view towards the weak view's class where that class's probability exceeds
    ``threshold``; returns ``(loss, number of confident images)``. With ``balance``, each class is weighted by
    the inverse of its count among the confident images (so a large cluster cannot swallow the others)."""
    with torch.no_grad():
        prob = F.softmax(weak_logits.float(), dim=1)
        top, target = prob.max(dim=1)
        mask = top > float(threshold)
    n = int(mask.sum())
    if n == 0:
        return strong_logits.float().sum() * 0.0, 0
    t = target[mask]
    weight = None
    if balance:
        k = weak_logits.shape[1]
        counts = torch.bincount(t, minlength=k).float()
        weight = torch.where(counts > 0, 1.0 / counts.clamp(min=1), torch.zeros_like(counts))
        weight = weight / weight[counts > 0].mean() if bool((counts > 0).any()) else None
    return F.cross_entropy(strong_logits.float()[mask], t, weight=weight), n


def mine_neighbours(features: np.ndarray, k: int, backend: str = "faiss", block: int = 4096,
                    device: str | torch.device = "cpu") -> np.ndarray:
    """Indices ``(n, k)`` of each row's k nearest other rows by cosine similarity, nearest first.

    ``backend="faiss"``: an exact inner-product index (``IndexFlatIP``) on the L2-normalised rows;
    ``"torch"``: the same by blocked matrix products on ``device`` (the brute-force reference on the CPU; on
    a GPU, the exact search that faiss-gpu's flat index would make). A row is never its own neighbour, even
    when duplicates make another row equally near.
    """
    X = np.ascontiguousarray(features, dtype=np.float32)
    n = len(X)
    if not 1 <= k < n:
        raise ValueError(f"mine_neighbours: k must be between 1 and n-1={n - 1}, got {k}")
    X = X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
    if backend == "faiss":
        from ..threads import import_faiss

        faiss = import_faiss()
        index = faiss.IndexFlatIP(X.shape[1])
        index.add(X)
        _, idx = index.search(X, k + 1)
    elif backend == "torch":
        T = torch.from_numpy(X).to(device)
        out = []
        for s in range(0, n, block):
            sim = T[s : s + block] @ T.t()
            out.append(sim.topk(k + 1, dim=1).indices.cpu().numpy())
        idx = np.concatenate(out)
    else:
        raise ValueError(f"mine_neighbours: unknown backend {backend!r}; use faiss or torch")
    rows = np.arange(n)[:, None]
    keep = idx != rows
    # drop the row itself; where it was not among the k+1 (ties), drop the last candidate instead
    keep[keep.all(axis=1), -1] = False
    return idx[keep].reshape(n, k).astype(np.int64)
