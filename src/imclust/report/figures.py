"""Figures as PNG files, written atomically. Matplotlib runs headless (Agg).

Shared by every recipe and by the HTML report: 2-D and 3-D scatter plots, per-cluster montages (nearest
to the centre first), originals-against-reconstructions grids and loss curves.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

import numpy as np

from ..io import write_bytes


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path) -> Path:
    plt = _plt()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return write_bytes(path, buf.getvalue())


def _colors(values) -> tuple[np.ndarray, list]:
    values = np.asarray(values)
    uniq = list(np.unique(values))
    idx = np.searchsorted(uniq, values)
    return idx, uniq


def scatter_2d(emb, values, path, title: str = "", names: Sequence[str] | None = None, max_points: int = 20000,
               seed: int = 0) -> Path:
    """2-D scatter of ``emb[:, :2]`` coloured by ``values`` (cluster ids or labels)."""
    plt = _plt()
    emb = np.asarray(emb, dtype=np.float32)
    if emb.shape[1] < 2:
        emb = np.hstack([emb, np.zeros((len(emb), 1), np.float32)])
    sel = np.arange(len(emb))
    if len(sel) > max_points:
        sel = np.sort(np.random.RandomState(seed).choice(len(emb), max_points, replace=False))
    idx, uniq = _colors(np.asarray(values)[sel])
    cmap = plt.get_cmap("tab10" if len(uniq) <= 10 else "tab20" if len(uniq) <= 20 else "nipy_spectral")
    fig, ax = plt.subplots(figsize=(6.4, 5.6))
    sc = ax.scatter(emb[sel, 0], emb[sel, 1], c=idx, cmap=cmap, s=4 if len(sel) > 2000 else 10, alpha=0.8,
                    vmin=-0.5, vmax=len(uniq) - 0.5, linewidths=0)
    if len(uniq) <= 20:
        labels = [str(names[int(u)]) if names is not None and 0 <= int(u) < len(names) else str(u) for u in uniq]
        handles = [plt.Line2D([], [], marker="o", ls="", color=cmap(i / max(1, (len(uniq) - 1)) if cmap.N > 20 else i), label=l)
                   for i, l in enumerate(labels)]
        ax.legend(handles=handles, fontsize=7, markerscale=1.2, loc="best", frameon=False, ncol=1 + len(uniq) // 11)
    else:
        fig.colorbar(sc, ax=ax)
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    return _save(fig, path)


def scatter_3d(emb, values, path, title: str = "", max_points: int = 5000, annotate: bool = False) -> Path:
    """3-D scatter of ``emb[:, :3]``; with ``annotate`` each point is drawn as its value (tutorial 5 style)."""
    plt = _plt()
    emb = np.asarray(emb, dtype=np.float32)[:max_points]
    values = np.asarray(values)[:max_points]
    idx, uniq = _colors(values)
    cmap = plt.get_cmap("tab10" if len(uniq) <= 10 else "tab20")
    fig = plt.figure(figsize=(6.4, 5.6))
    ax = fig.add_subplot(111, projection="3d")
    if annotate:
        for (x, y, z), v, i in zip(emb[:, :3], values, idx):
            ax.text(x, y, z, str(v), color=cmap(i % cmap.N), fontsize=8)
        lo, hi = emb[:, :3].min(0), emb[:, :3].max(0)
        ax.set_xlim(lo[0], hi[0]); ax.set_ylim(lo[1], hi[1]); ax.set_zlim(lo[2], hi[2])
    else:
        ax.scatter(emb[:, 0], emb[:, 1], emb[:, 2], c=idx % cmap.N, cmap=cmap, s=6)
    ax.set_title(title)
    return _save(fig, path)


def image_grid(images: np.ndarray, ncols: int, pad: int = 2, bg: float = 1.0) -> np.ndarray:
    """Tile ``(B, C, H, W)`` images in [0, 1] into one ``(H', W', 3)`` uint8 array."""
    images = np.asarray(images, dtype=np.float32)
    b, c, h, w = images.shape
    if c == 1:
        images = np.repeat(images, 3, axis=1)
    ncols = max(1, min(ncols, b))
    nrows = (b + ncols - 1) // ncols
    grid = np.full((nrows * (h + pad) + pad, ncols * (w + pad) + pad, 3), bg, np.float32)
    for i in range(b):
        r, cc = divmod(i, ncols)
        y, x = pad + r * (h + pad), pad + cc * (w + pad)
        grid[y : y + h, x : x + w] = np.moveaxis(images[i, :3], 0, -1)
    return (np.clip(grid, 0, 1) * 255 + 0.5).astype(np.uint8)


def save_png(arr: np.ndarray, path, scale: int = 1) -> Path:
    from PIL import Image

    im = Image.fromarray(arr)
    if scale > 1:
        im = im.resize((im.width * scale, im.height * scale), Image.NEAREST)
    buf = io.BytesIO()
    im.save(buf, format="PNG")  # optimize=True costs 5x the time for a few per cent of bytes
    return write_bytes(path, buf.getvalue())


def order_by_centre(embedding: np.ndarray, labels: np.ndarray, cluster: int) -> np.ndarray:
    """Indices of ``cluster``'s members, nearest to the cluster's mean embedding first."""
    members = np.flatnonzero(labels == cluster)
    if len(members) == 0:
        return members
    e = np.asarray(embedding, dtype=np.float32)[members]
    d = ((e - e.mean(0)) ** 2).sum(1)
    return members[np.argsort(d, kind="stable")]


def cluster_montages(ds, labels, embedding, out_dir, per_cluster: int = 36, tile: int = 64,
                     ncols: int = 6) -> dict[int, Path]:
    """One montage PNG per cluster (``montage_<c>.png``): sample images, nearest to the centre first."""
    out_dir = Path(out_dir)
    labels = np.asarray(labels)
    paths = {}
    for c in np.unique(labels):
        idx = order_by_centre(embedding, labels, c)[:per_cluster]
        grid = image_grid(_tiles(ds.load(idx), tile), ncols)
        paths[int(c)] = save_png(grid, out_dir / f"montage_{int(c)}.png")
    return paths


def _tiles(images: np.ndarray, tile: int) -> np.ndarray:
    """``(B, C, H, W)`` images in [0, 1] as ``(B, 3, tile, tile)``, resized by PIL (bilinear, antialiased when
    shrinking; PIL rather than the dataset's torch resize, so that drawing needs no torch)."""
    from PIL import Image

    b, c, h, w = images.shape
    u8 = np.clip(np.moveaxis(images[:, :3], 1, -1) * 255 + 0.5, 0, 255).astype(np.uint8)
    out = np.empty((b, tile, tile, 3), np.uint8)
    for j in range(b):
        im = Image.fromarray(u8[j, ..., 0] if u8.shape[-1] == 1 else u8[j]).convert("RGB")
        out[j] = np.asarray(im if (h, w) == (tile, tile) else im.resize((tile, tile), Image.BILINEAR))
    return np.moveaxis(out, -1, 1).astype(np.float32) / 255.0


def recon_grid(originals: np.ndarray, reconstructions: np.ndarray, path, scale: int = 3) -> Path:
    """Originals on the top row, reconstructions on the bottom row."""
    n = len(originals)
    both = np.concatenate([np.asarray(originals), np.asarray(reconstructions)], axis=0)
    return save_png(image_grid(np.clip(both, 0, 1), ncols=n), path, scale=scale)


def loss_curve(history: list[dict], path, keys: Sequence[str] = ("loss",), title: str = "training loss") -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    epochs = [h.get("epoch", i + 1) for i, h in enumerate(history)]
    for k in keys:
        vals = [h.get(k) for h in history]
        if any(v is not None for v in vals):
            ax.plot(epochs, vals, marker="o", ms=3, label=k)
    ax.set_xlabel("epoch")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if len(keys) > 1:
        ax.legend()
    return _save(fig, path)


def map_2d(embedding: np.ndarray, seed: int = 0) -> np.ndarray:
    """A linear 2-D view of the embedding: itself when 2-D, else its first two principal components (stable
    from one epoch to the next, for the frames of a training animation; a run's map uses :func:`map_layout`)."""
    emb = np.asarray(embedding, dtype=np.float32).reshape(len(embedding), -1)
    if emb.shape[1] == 2:
        return emb
    if emb.shape[1] == 1:
        return np.hstack([emb, np.zeros_like(emb)])
    from ..reduce import PCA

    return PCA(2, random_state=seed).fit_transform(emb)


#: the report's map lays out at most this many points; the others are placed by their nearest laid-out points
MAP_LAYOUT_POINTS = 10_000


def map_layout(embedding: np.ndarray, seed: int = 0, max_points: int = MAP_LAYOUT_POINTS) -> tuple[np.ndarray, dict]:
    """The run's 2-D map and how it was made (the ``map`` entry of ``run.json``, which the report quotes).

    An embedding of more than two dimensions is laid out by the fast UMAP path (:mod:`imclust.manifold`: 50
    neighbours, min_dist 0.1, 200 epochs, seeded), so groups that are apart in the embedding are apart on the
    page. (Clusters in a UMAP embedding with min_dist 0 are so tight that 15 neighbours join each into a
    chain, which a 2-D layout tears apart; 50 keep each one whole.) Above ``max_points`` points a seeded sample is laid out and every other point is placed at the
    weighted mean of its 10 nearest sampled points. One or two dimensions are drawn as they are.
    """
    import time

    emb = np.asarray(embedding, dtype=np.float32).reshape(len(embedding), -1)
    n, d = emb.shape
    if d <= 2 or n < 4:
        return map_2d(emb, seed), {"method": "embedding", "dims": int(d)}
    from ..manifold import place_by_neighbours, umap_embedding

    t = time.perf_counter()
    sample = np.arange(n)
    if n > max_points:
        sample = np.sort(np.random.RandomState(seed).choice(n, max_points, replace=False))
    n_neighbors, min_dist, n_epochs = 50, 0.1, 200
    m2 = np.empty((n, 2), np.float32)
    m2[sample] = umap_embedding(emb[sample], n_components=2, n_neighbors=n_neighbors, min_dist=min_dist,
                                n_epochs=n_epochs, seed=seed, desc="map layout")
    if len(sample) < n:
        rest = np.setdiff1d(np.arange(n), sample)
        m2[rest] = place_by_neighbours(emb[sample], m2[sample], emb[rest], 10)
    return m2, {"method": "umap", "dims": int(d), "n_neighbors": n_neighbors, "min_dist": min_dist, "n_epochs": n_epochs,
                "laid_out": int(len(sample)), "placed": int(n - len(sample)), "seconds": time.perf_counter() - t}


def write_run_figures(result, out, m2: np.ndarray | None = None) -> dict[str, Path]:
    """The figures every run gets: 2-D maps by cluster (and by label) and one montage per cluster.

    ``m2`` is the run's 2-D map (:func:`map_layout`); it is made here when not given.
    """
    out = Path(out)
    if m2 is None:
        m2, _ = map_layout(result.embedding, seed=result.seed or 0)
    from ..io import write_npy

    write_npy(out / "map2d.npy", m2)
    figs = {"scatter_clusters": scatter_2d(m2, result.labels, out / "scatter_clusters.png", "clusters")}
    if result.true_labels is not None:
        figs["scatter_labels"] = scatter_2d(m2, result.true_labels, out / "scatter_labels.png", "true labels",
                                            names=result.class_names)
    if result.dataset is not None:
        ds = result.dataset
        if len(result.ids) != len(ds):  # some files failed to decode and were left out
            pos = {i: n for n, i in enumerate(ds.ids)}
            ds = ds.subset([pos[i] for i in result.ids])
        cluster_montages(ds, result.labels, result.embedding, out / "montages")
    enc = result.pipeline.encoder
    if hasattr(enc, "write_figures"):
        figs.update(enc.write_figures(result, out) or {})
    return figs
