"""Colour photos with pretrained features: EfficientNet-Lite features under several clustering stages, against
``photo-umap`` (no weights, nothing trained) and raw-pixel k-means, in the same run, on the five colour sets
(``--datasets`` takes any set of the suite: a grey image enters the networks as three equal channels, and a grey
set's peer in the run is raw-pixel k-means alone, since ``photo-umap`` is a colour recipe).

For each dataset the backbone's features are computed once (the content-hash feature cache keeps them, so a
rerun reads them back) and every clustering stage below runs on the same features, once per seed:

- ``k-means``: k-means (k-means++, 10 restarts) on the pooled features;
- ``PCA-256w+L2 -> k-means``: PCA to 256 dimensions with whitening, L2-normalised, then k-means;
- ``PCA-50 -> GMM``: PCA to 50 dimensions, then a full-covariance Gaussian mixture (10 starts);
- ``PCA-50 -> UMAP -> GMM``: the stage of ``photo-umap`` (UMAP to 10-D, 15 neighbours, min_dist 0);
- ``TEMI``: the TEMI cluster head (:mod:`imclust.temi`) with its default settings, on PCA-256 features;
- ``TURTLE``: :mod:`imclust.turtle` with its default settings on the features (each network of a joined
  backbone its own feature space, as in a pipeline with no reducer).

``--backbones`` takes backbone names, or names joined by ``+`` for their features side by side (the encoder of
``photo-lite-pair``: ``efficientnet-lite0+efficientnet-lite2``).

Peers in the same run: ``photo-umap`` (colour histograms and HOG, nothing trained: the weightless colour
default's hand-made view) and raw-pixel k-means (the pixels at 32x32, k-means++, 10 restarts). k = the number
of classes; labels are read only to score. The table gives the mean (± sd) over seeds and the ratio of ACC to each peer.

    python benchmarks/photo_pretrained.py --features-only                 # fill the feature cache first
    python benchmarks/photo_pretrained.py --seeds 0 1 2 --update          # the table, into RESULTS.md

The datasets may run as separate processes at the same time (``--datasets X --rows X.jsonl`` each), then
``--summarise *.jsonl --update`` builds the one table from their rows.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("IMCLUST_QUIET", "1")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from _common import SUITE_SETS, by_dataset_and_method, load_average, measured_rows, require_sets, results_head, score_cells, table, update_section  # noqa: E402
from imclust import components  # noqa: E402,F401
from imclust.base import build, seed_everything  # noqa: E402
from imclust.data import load_source  # noqa: E402
from imclust.metrics import evaluate  # noqa: E402
from imclust.pipeline import Pipeline  # noqa: E402
from imclust.recipes import load_recipe  # noqa: E402

#: the five colour sets of the suite (CIFAR-10 under its name in this table): the default ``--datasets``
COLOUR = ("cifar10-test", "flowers5", "intel-scenes", "eth80", "gtsrb-test")
#: every set of the suite, the colour sets first (a grey image enters the networks as three equal channels)
SOURCES = {**{name: SUITE_SETS["cifar10" if name == "cifar10-test" else name] for name in COLOUR},
           **{name: path for name, path in SUITE_SETS.items() if name != "cifar10" and name not in COLOUR}}

UMAP_GMM = {"reducers": [{"type": "pca", "n_components": 50},
                         {"type": "umap", "n_components": 10, "n_neighbors": 15, "min_dist": 0.0}],
            "clusterer": {"type": "gmm", "covariance_type": "full", "n_init": 10}}

STAGES = {
    "k-means": {"reducers": [], "clusterer": {"type": "kmeans", "n_init": 10}},
    "PCA-256w+L2 -> k-means": {"reducers": [{"type": "pca", "n_components": 256, "whiten": True}, {"type": "l2norm"}],
                               "clusterer": {"type": "kmeans", "n_init": 10}},
    "PCA-50 -> GMM": {"reducers": [{"type": "pca", "n_components": 50}],
                      "clusterer": {"type": "gmm", "covariance_type": "full", "n_init": 10}},
    "PCA-50 -> UMAP -> GMM": UMAP_GMM,
    "TEMI": {"reducers": [{"type": "pca", "n_components": 256}], "clusterer": {"type": "temi"}},
    "TURTLE": {"reducers": [], "clusterer": {"type": "turtle"}},
}

PEER_PHOTO_UMAP = "photo-umap (no weights)"
PEER_PIXELS = "raw-pixel k-means"


def encoder_spec(backbone: str, layer: str | None = None) -> dict:
    """The pretrained encoder of this table; ``layer`` None is the backbone's default feature layer.

    Backbones joined by ``+`` (``efficientnet-lite0+efficientnet-lite2``, the encoder of ``photo-lite-pair``)
    are the views of a ``views`` encoder: each backbone's features whole, centred and scaled, side by side."""
    if "+" in backbone:
        return {"type": "views", "pca": 0, "views": {b: encoder_spec(b, layer) for b in backbone.split("+")}}
    spec = {"type": "pretrained", "backbone": backbone, "pretrained": True, "precision": "auto",
            "channels_last": True, "batch_size": 32, "workers": 1}
    return {**spec, "layer": layer} if layer else spec


def peers(channels: int) -> dict[str, dict]:
    """The peers of a set: raw-pixel k-means, and for colour sets ``photo-umap`` (a colour recipe; for a grey set
    the recipe without pretrained weights to compare with is ``hog-ae-umap``, in the suite scoreboard)."""
    pixels = {PEER_PIXELS: {"encoder": {"type": "pixels", "size": 32}, "reducers": [],
                            "clusterer": {"type": "kmeans", "n_init": 10}}}
    if channels == 1:
        return pixels
    cfg = load_recipe("photo-umap")
    return {PEER_PHOTO_UMAP: {"encoder": cfg["encoder"], "reducers": cfg.get("reducers", []), "clusterer": cfg["clusterer"]},
            **pixels}


def features(ds, backbone: str, layer: str | None = None,
             options: dict | None = None) -> tuple[np.ndarray, float, list | None]:
    """The features of ``ds``, the seconds they took, and the column widths of a joined backbone's networks (None
    for one backbone); ``options`` are further encoder parameters (one backbone)."""
    enc = build({**encoder_spec(backbone, layer), **(options or {})})
    t = time.perf_counter()
    X = enc.fit_transform(ds)  # a views encoder's fit already encodes every view: once, not twice
    return X, time.perf_counter() - t, getattr(enc, "view_dims_", None)


def fit_stage(X: np.ndarray, stage: dict, k: int, seed: int, view_dims=None) -> np.ndarray:
    parts = [build(r) for r in stage["reducers"]] + [build({**stage["clusterer"], "n_clusters": k})]
    for p in parts:
        params = p.get_params(deep=False)
        if "random_state" in params:
            p.set_params(random_state=seed)
    if not stage["reducers"] and hasattr(parts[-1], "set_views"):
        parts[-1].set_views(view_dims)  # as the pipeline does: each network's columns are one feature space
    seed_everything(seed)
    for r in parts[:-1]:
        X = np.asarray(r.fit_transform(X), dtype=np.float32)
    return np.asarray(parts[-1].fit_predict(X), dtype=np.int64)


def measure(name: str, backbones, seeds, stages, with_peers: bool) -> list[dict]:
    ds = load_source(str(SOURCES[name]))
    k = len(np.unique(ds.labels))
    rows = []

    def record(method, seed, labels, secs, extra=None):
        m = evaluate(labels, ds.labels)
        row = {"dataset": name, "n": len(ds), "method": method, "seed": seed, "acc": m["acc"], "nmi": m["nmi"],
               "ari": m["ari"], "seconds": secs, **(extra or {})}
        rows.append(row)
        print(json.dumps(row), flush=True)

    if with_peers:
        for pname, spec in peers(ds.channels).items():
            for seed in seeds:
                spec_k = json.loads(json.dumps(spec))
                spec_k["clusterer"]["n_clusters"] = k
                t = time.perf_counter()
                pipe = Pipeline.from_spec(spec_k, name=pname, seed=seed).fit(ds)
                record(pname, seed, pipe.labels_, time.perf_counter() - t)
    for bb in backbones:
        X, feat_s, view_dims = features(ds, bb)
        for sname in stages:
            for seed in seeds:
                t = time.perf_counter()
                labels = fit_stage(X, STAGES[sname], k, seed, view_dims)
                record(f"{bb} + {sname}", seed, labels, time.perf_counter() - t, {"feature_seconds": feat_s})
    return rows


def summarise(rows) -> str:
    out = []
    for d, m, rs in by_dataset_and_method(rows):
        acc = np.mean([r["acc"] for r in rs])

        def ratio(peer):
            p = [r["acc"] for r in rows if r["dataset"] == d and r["method"] == peer]
            return f"{acc / np.mean(p):.2f}×" if p else "–"

        out.append([f"{d} (n={rs[0]['n']})", m, *score_cells(rs), f"{np.mean([r['seconds'] for r in rs]):.0f}",
                    len(rs), ratio(PEER_PHOTO_UMAP), ratio(PEER_PIXELS)])
    return table(out, ["dataset", "method", "ACC (mean ± sd)", "NMI", "ARI", "cluster s/run", "seeds",
                       "ACC ÷ photo-umap", "ACC ÷ raw-pixel k-means"])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=list(COLOUR), choices=list(SOURCES))
    ap.add_argument("--backbones", nargs="+", default=["efficientnet-lite0"])
    ap.add_argument("--stages", nargs="+", default=list(STAGES), choices=list(STAGES))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--no-peers", action="store_true", help="skip photo-umap and raw-pixel k-means")
    ap.add_argument("--features-only", action="store_true", help="only compute (and cache) the features")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1: the machine is shared)")
    ap.add_argument("--update", action="store_true", help="write the table into benchmarks/RESULTS.md")
    ap.add_argument("--section", default="photo-pretrained", help="name of the RESULTS.md block")
    ap.add_argument("--rows", metavar="PATH", help="also write every measured row to this JSON-lines file")
    ap.add_argument("--summarise", nargs="+", metavar="PATH", help="build the table from JSON-lines files of rows")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    load_before = load_average()
    require_sets(SOURCES, args.datasets)
    if args.features_only:
        for name in args.datasets:
            ds = load_source(str(SOURCES[name]))
            for bb in args.backbones:
                X, secs = features(ds, bb)
                print(f"{name} {bb}: {X.shape} in {secs:.0f}s", flush=True)
        return
    def measure_one(name):
        return measure(name, args.backbones, args.seeds, args.stages, not args.no_peers)

    rows = measured_rows(args.summarise, args.datasets, SOURCES, measure_one, args.rows)
    body = summarise(rows)
    print(body)
    if args.update:
        head = results_head(load_before) + ("Accuracy only; features from the feature cache, computed with bf16 "
                                            "autocast and channels_last.\n\n")
        update_section(args.section, head + body)


if __name__ == "__main__":
    main()
