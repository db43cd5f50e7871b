"""``imclust embed``: a supervised discriminative embedding of labelled images (tutorial 4), as one call.

    from imclust.embed import embed
    res = embed("mnist-test/", head="arcface", dim=2, out="runs/arc")
    res.metrics["acc"]          # k-means ACC on the held-out part's embedding

Steps: load the source with its labels (``labels=`` file, else the source's own: an npz's ``y``, the IDX
labels file next to the images, or class subfolders); split off a seeded, stratified held-out part
(``test_size``, 20 % by default); train the network + head on the rest through the shared Trainer; embed
both parts; cluster the held-out embedding with k-means (k = number of classes) and score it (ACC with
Hungarian matching, NMI, ARI); fit a k-means on the *training* embedding and save it with the encoder as an
ordinary pipeline (safetensors + JSON), so ``imclust predict OUT/model NEW_IMAGES`` places new images.

Figures (``plot=True``): the held-out embedding after every epoch (``epochs/epoch_NNN.png``, coloured by
class, as in the tutorial, which plotted the training features), an animated GIF of all epochs
(``embedding.gif``), the loss curve, and the usual run figures.
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import components  # noqa: F401  (registers every component)
from .api import RunResult
from .data import ImageSet, load_source
from .errors import UserError
from .progress import log, progress

LABELS_HELP = ("labels to train on: a .npy, IDX or CSV file (file,label or one per line); by default the source's "
               "own labels: an .npz's y/labels array, the IDX labels file next to the images "
               "(t10k-labels-idx1-ubyte for t10k-images-idx3-ubyte), or a folder's class subfolders")


@dataclass
class EmbedResult:
    metrics: dict
    pipeline: object
    embedding: np.ndarray
    labels: np.ndarray
    train_index: np.ndarray
    heldout_index: np.ndarray
    history: list
    frames: list
    out: Path | None


def split_indices(y: np.ndarray, test_size: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded, stratified split into (train, held-out) indices."""
    n = len(y)
    if test_size == 0:
        return np.arange(n), np.zeros(0, np.int64)
    classes, counts = np.unique(y, return_counts=True)
    if counts.min() < 2:
        c = classes[int(counts.argmin())]
        raise UserError(f"class {c!r} has a single image, so it cannot be split into training and held-out parts; "
                        "add images or pass --test-size 0")
    n_test = int(round(n * test_size))
    if n_test < len(classes) or n - n_test < len(classes):
        raise UserError(f"--test-size {test_size} leaves {n_test} held-out and {n - n_test} training images for "
                        f"{len(classes)} classes; each part needs at least one image per class")
    from sklearn.model_selection import StratifiedShuffleSplit

    sss = StratifiedShuffleSplit(n_splits=1, test_size=n_test, random_state=seed)
    tr, te = next(sss.split(np.zeros(n), y))
    return np.sort(tr), np.sort(te)


def _plot_view(Z: np.ndarray, dim: int) -> np.ndarray:
    if dim in (2, 3):
        return Z
    from .report.figures import map_2d

    return map_2d(Z)


def render_frame(Z: np.ndarray, y: np.ndarray, title: str, names=None, size=(5.6, 5.0), dpi=100) -> np.ndarray:
    """One frame: the embedding coloured by class, as an RGB array of a fixed size (for the GIF)."""
    from .report.figures import _plt

    plt = _plt()
    classes = np.unique(y)
    cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
    fig = plt.figure(figsize=size, dpi=dpi)
    three = Z.shape[1] == 3
    ax = fig.add_subplot(111, projection="3d") if three else fig.add_subplot(111)
    for i, c in enumerate(classes):
        sel = y == c
        name = str(names[int(c)]) if names is not None and 0 <= int(c) < len(names) else str(c)
        pts = [Z[sel, 0], Z[sel, 1]] + ([Z[sel, 2]] if three else [])
        ax.scatter(*pts, s=3, color=cmap(i % cmap.N), label=name, alpha=0.8, linewidths=0)
    if len(classes) <= 20:
        ax.legend(loc="upper left" if three else "upper right", fontsize=7, markerscale=3, frameon=False)
    ax.set_title(title)
    fig.tight_layout()
    fig.canvas.draw()
    arr = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return arr


def write_gif(frames: list[np.ndarray], path, ms_per_frame: int = 400) -> Path:
    """An animated GIF of equally sized RGB frames (Pillow), written atomically; loops forever."""
    from PIL import Image

    from .io import write_bytes

    if not frames:
        raise UserError("no frames to animate")
    ims = [Image.fromarray(f).convert("P", palette=Image.ADAPTIVE, colors=255) for f in frames]
    buf = io.BytesIO()
    ims[0].save(buf, format="GIF", save_all=True, append_images=ims[1:], duration=ms_per_frame, loop=0)
    return write_bytes(path, buf.getvalue())


def check_options(**opts) -> None:
    """Refuse impossible training options before any work (one line each, naming the flag)."""
    import math

    from .recipes import check_seed

    def number(name, v, lo=None, lo_open=False, whole=False, allow_none=False):
        flag = "--" + name.replace("_", "-")
        if v is None and allow_none:
            return
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
            raise UserError(f"{flag} {v!r}: give a number")
        if not math.isfinite(float(v)):
            raise UserError(f"{flag} {v}: give a finite number")
        if whole and float(v) != int(v):
            raise UserError(f"{flag} {v}: give a whole number")
        if lo is not None and (v <= lo if lo_open else v < lo):
            raise UserError(f"{flag} {v}: must be {'above' if lo_open else 'at least'} {lo}")

    number("dim", opts["dim"], 1, whole=True)
    if opts["dim"] > 4096:
        raise UserError(f"--dim {opts['dim']}: at most 4096 dimensions")
    number("epochs", opts["epochs"], 1, whole=True)
    number("batch_size", opts["batch_size"], 2, whole=True)  # BatchNorm trains on two images at least
    number("lr", opts["lr"], 0, lo_open=True)
    number("test_size", opts["test_size"], 0)
    if not float(opts["test_size"]) < 1:
        raise UserError(f"--test-size {opts['test_size']}: give a fraction in [0, 1), e.g. 0.2")
    number("margin", opts["margin"], 0, allow_none=True)
    number("scale", opts["scale"], 0, lo_open=True, allow_none=True)
    number("margin_warmup", opts["margin_warmup"], 0, whole=True)
    number("center_lr", opts["center_lr"], 0)
    number("center_weight", opts["center_weight"], 0, allow_none=True)
    number("augment_shift", opts["augment_shift"], 0, whole=True)
    check_seed(opts["seed"])


def embed(source, labels=None, head: str = "softmax", dim: int = 2, net: str = "auto", epochs: int = 20,
          batch_size: int = 128, lr: float = 1e-3, lr_schedule: str = "cosine", test_size: float = 0.2, seed: int = 0, out=None,
          plot: bool = True, gif: bool = True, margin=None, scale=None, easy_margin: bool = False, weight_init: str = "auto",
          margin_warmup: int = 0,
          center_lr: float = 0.05, center_weight=None, center_form=None, augment_shift: int = 0,
          device: str = "auto", precision: str = "fp32", channels_last: bool = False, size=None, channels=None,
          image_key=None, label_key=None, layout: str = "auto", max_plot_points: int = 4000) -> EmbedResult:
    """Train a supervised embedding of ``source`` and evaluate it on a held-out split (see the module doc)."""
    from .cluster import KMeans
    from .encoders.embedding import EmbeddingEncoder
    from .metrics import cluster_acc, evaluate
    from .pipeline import Pipeline

    t0 = time.perf_counter()
    check_options(dim=dim, epochs=epochs, batch_size=batch_size, lr=lr, test_size=test_size, seed=seed,
                  margin=margin, scale=scale, margin_warmup=margin_warmup, center_lr=center_lr,
                  center_weight=center_weight, augment_shift=augment_shift)
    dim = int(dim)
    if plot and dim < 2:
        raise UserError(f"--dim {dim} cannot be plotted: a scatter plot needs at least 2 dimensions; "
                        "use --dim 2 (or 3), or pass --no-plot")
    from .rundir import check_out

    out = None if out is None else check_out(out, sources=[source, labels])
    ds = load_source(source, size=size, channels=channels, labels=labels, image_key=image_key,
                     label_key=label_key, layout=layout, exclude=[] if out is None else [out])
    if ds.labels is None:
        raise UserError(f"{source}: no labels to train on; 'imclust embed' is supervised: pass --labels FILE, or use a "
                        "source that carries labels (an .npz with y, IDX images with their labels file beside them, "
                        "or a folder with one subfolder per class)")
    log(f"loaded {ds}")
    if ds.failed:
        keep = np.array([i not in ds.failed for i in range(len(ds))])
        ds = ds.subset(np.flatnonzero(keep))
    y_all = np.asarray(ds.labels)
    classes = np.unique(y_all)
    if len(classes) < 2:
        raise UserError(f"{source}: the labels hold a single class; an embedding needs at least two")
    tr, te = split_indices(y_all, float(test_size), int(seed))
    ds_tr, ds_te = ds.subset(tr), ds.subset(te)
    view_idx = te if len(te) else tr
    rs = np.random.RandomState(seed)
    plot_idx = np.sort(rs.choice(len(view_idx), min(len(view_idx), max_plot_points), replace=False))
    ds_view = ds.subset(view_idx[plot_idx])
    y_view = y_all[view_idx[plot_idx]]

    enc = EmbeddingEncoder(head=head, dim=dim, net=net, epochs=epochs, batch_size=batch_size, lr=lr, lr_schedule=lr_schedule,
                           margin=margin,
                           scale=scale, easy_margin=easy_margin, weight_init=weight_init, margin_warmup=margin_warmup, center_lr=center_lr, center_weight=center_weight,
                           center_form=center_form, augment_shift=augment_shift, size=size, channels=channels,
                           seed=seed, device=device, precision=precision, channels_last=channels_last)
    snapshots: list[np.ndarray] = []
    X_view: dict = {}

    def snapshot(encoder, epoch):
        if not plot:
            return None
        if "x" not in X_view:
            X_view["x"] = encoder.input_view(ds_view).to_array(desc=None)
        snapshots.append(encoder._features(X_view["x"]))
        return None

    t_train = time.perf_counter()
    enc.fit(ds_tr, y_all[tr], epoch_callback=snapshot)
    train_s = time.perf_counter() - t_train
    Z_tr = enc.transform(ds_tr)
    k = len(classes)
    clusterer = KMeans(k, n_init=10, random_state=seed).fit(Z_tr)
    pipe = Pipeline(enc, [], clusterer, name=f"embed-{head}", seed=seed)
    metrics: dict = {}
    if len(te):
        Z_te = enc.transform(ds_te)
        km_te = KMeans(k, n_init=10, random_state=seed).fit_predict(Z_te)
        metrics.update(evaluate(km_te, y_all[te], Z_te, random_state=seed))
        metrics["heldout_placement_acc"] = cluster_acc(y_all[te], clusterer.predict(Z_te))
        cls = enc.classes_[enc.predict_classes(ds_te)]
        metrics["heldout_classifier_acc"] = float((cls == y_all[te]).mean())
    metrics["train_acc"] = cluster_acc(y_all[tr], clusterer.labels_)
    metrics.update({"n_train": int(len(tr)), "n_heldout": int(len(te)), "train_seconds": train_s,
                    "head": head, "dim": dim, "net": enc._net_name(enc.input_shape_), "epochs": int(epochs)})
    metrics["evaluated_on"] = "heldout" if len(te) else "train"
    if not len(te):
        metrics.update({k_: v for k_, v in evaluate(clusterer.labels_, y_all[tr], Z_tr, random_state=seed).items()})
    # every image's embedding and cluster under the saved model (what 'imclust predict' gives)
    Z_all = np.empty((len(ds), Z_tr.shape[1]), np.float32)
    Z_all[tr] = Z_tr
    if len(te):
        Z_all[te] = Z_te
    lab_all = clusterer.predict(Z_all)
    metrics["seconds"] = time.perf_counter() - t0

    frames = []
    out_p = Path(out) if out is not None else None
    if out_p is not None:
        from .api import write_outputs
        from .io import write_csv
        from .report.figures import save_png, scatter_3d

        cfg = {"name": f"embed-{head}", "encoder": enc.to_spec(), "reducers": [], "clusterer": clusterer.to_spec(),
               "test_size": float(test_size)}
        result = RunResult(ids=list(ds.ids), labels=lab_all, embedding=Z_all, metrics=metrics, pipeline=pipe,
                           skipped=list(ds.skipped), true_labels=y_all, class_names=ds.class_names,
                           recipe_name=cfg["name"], config=cfg, seed=seed, k=k, timings={"train": train_s},
                           source=str(source), source_kind=ds.kind, dataset=ds)

        def add_figures(folder: Path) -> None:
            is_te = np.zeros(len(ds), bool)
            is_te[te] = True
            write_csv(folder / "split.csv", ["id", "split"],
                      ((ds.ids[i], "heldout" if is_te[i] else "train") for i in range(len(ds))))
            if plot:
                part = "held-out" if len(te) else "training"
                for e, Z in enumerate(progress(snapshots, desc="frames", unit="frame")):
                    f = render_frame(_plot_view(Z, dim), y_view, f"{head}, {part} images, epoch {e + 1}", ds.class_names)
                    save_png(f, folder / "epochs" / f"epoch_{e + 1:03d}.png")
                    frames.append(f)
                if gif and frames:
                    write_gif(frames, folder / "embedding.gif")
                if dim == 3:
                    scatter_3d(Z_all[view_idx[plot_idx]], y_view, folder / "scatter_3d.png", f"{head} embedding (3-D)")
                # the page was built with the run's other outputs; build it again so it shows these figures too
                from .outputs import rebuild_report

                rebuild_report(folder, final=out_p)

        write_outputs(out_p, result, None, kind="embed", extra=add_figures)
    log(f"embed[{head}]: held-out k-means ACC={metrics.get('acc', float('nan')):.4f} in {metrics['seconds']:.1f}s")
    return EmbedResult(metrics=metrics, pipeline=pipe, embedding=Z_all, labels=lab_all, train_index=tr,
                       heldout_index=te, history=enc.history_, frames=frames, out=out_p)
