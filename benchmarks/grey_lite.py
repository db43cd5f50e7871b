"""A pretrained view for grey images: ``hog-ae-lite-umap`` (the grey default with ``imclust[photos]``) against
``hog-ae-umap`` (the grey default without it) on the suite's ten grey sets, in the same run, seeds 0–2.

``hog-ae-lite-umap`` is ``hog-ae-umap`` with one more view, EfficientNet-Lite0's ImageNet features, which joins the
fuzzy intersection of its neighbour graphs, is left out of it, or is laid out alone: whichever graph's k groups are
cut most cleanly (the UMAP reducer's ``optional_view``; the table says per seed which graph was laid out: with
Lite0, without it, Lite0's alone, or the pixels' subspace graph). Everything else is the same, so both recipes are
measured on one fit of the views: for each set and seed, ``hog-ae-lite-umap`` runs as a whole
(built as ``imclust run`` builds it), and ``hog-ae-umap`` reuses the columns of its own views from that fit (the same HOG, the same autoencoder, the
same pixels: the views are fitted one after another in name order, so the autoencoder is trained with the same
seed state either way) and fits its own UMAP and GMM, seeded as its own run seeds them. The script checks that
the two recipes differ only by that view before it measures anything. One autoencoder trains per set and seed
instead of two, and the comparison is paired: any difference comes from the pretrained view.

Peer in the same run: raw-pixel k-means (``KMeans(n_init=10)`` on the pixels as loaded, as in the suite
scoreboard). k = the number of classes; labels are read only for that and to score. Lite0's features come from
the content-hash feature cache when an earlier run left them there (``photo_pretrained.py --features-only
--datasets ...`` fills it), so the seconds column is the rest of the run; the Lite0 pass itself costs what the
throughput table says (images ÷ images per second).

    flock /tmp/imclust-bench.lock python benchmarks/grey_lite.py --seeds 0 1 2 --update
"""

from __future__ import annotations

import argparse
import copy
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

from _common import SUITE_SETS, by_dataset_and_method, load_average, measured_rows, recipe_pipeline, require_sets, results_head, score_cells, table, update_section  # noqa: E402
from imclust import components  # noqa: E402,F401  (registers the parts)
from imclust.base import seed_everything  # noqa: E402
from imclust.cluster import KMeans  # noqa: E402
from imclust.data import load_source  # noqa: E402
from imclust.metrics import evaluate  # noqa: E402
from imclust.pipeline import Pipeline  # noqa: E402
from imclust.recipes import load_recipe  # noqa: E402
from imclust.reduce import UMAP  # noqa: E402

GREY = ("digits", "mnist-test", "usps", "fashion-mnist-1k", "umist", "pie27", "mpeg7", "mednist", "kannada-test",
        "notmnist-test")
WITH, WITHOUT, PIXELS = "hog-ae-lite-umap", "hog-ae-umap", "raw-pixel k-means"


def extra_view(with_view: str, without: str) -> str:
    """The one view that recipe ``with_view`` adds to recipe ``without``; stops the script if their parts differ
    otherwise."""
    a, b = ({part: copy.deepcopy(load_recipe(r).get(part)) for part in ("encoder", "reducers", "clusterer")}
            for r in (with_view, without))
    added = sorted(set(a["encoder"]["views"]) - set(b["encoder"]["views"]))
    if len(added) != 1:
        sys.exit(f"{WITH} should add exactly one view to {WITHOUT}; it adds {added or 'none'}")
    del a["encoder"]["views"][added[0]]
    if a.get("reducers") and a["reducers"][0].get("optional_view") == added[0]:
        del a["reducers"][0]["optional_view"]  # the view joins the graph only where that cuts it more cleanly
    if a != b:
        sys.exit(f"{WITH} and {WITHOUT} differ in more than the view {added[0]!r}: this paired comparison needs them "
                 "equal otherwise")
    return added[0]


def without_view(pipe: Pipeline, drop: str, k: int, seed: int) -> tuple[np.ndarray, float]:
    """``hog-ae-umap``'s labels from the fitted ``hog-ae-lite-umap`` pipeline's views, less ``drop``."""
    names, dims = list(pipe.encoder.view_names_), list(pipe.encoder.view_dims_)
    bounds = np.cumsum([0] + dims)
    keep = [n for n in names if n != drop]
    cols = np.concatenate([np.arange(bounds[names.index(n)], bounds[names.index(n) + 1]) for n in keep])
    other = recipe_pipeline(WITHOUT, k, seed)  # its reducers and clusterer, seeded as in its run
    t = time.perf_counter()
    seed_everything(seed)
    X = pipe.features_[:, cols]
    reducer = other.reducers[0]
    reducer.set_views([dims[names.index(n)] for n in keep], keep)
    reducer.set_n_clusters(k)
    for r in other.reducers:
        X = r.fit_transform(X)
    labels = np.asarray(other.clusterer.fit_predict(X), dtype=np.int64)
    return labels, time.perf_counter() - t


def measure(name: str, seeds) -> list[dict]:
    ds = load_source(str(SUITE_SETS[name]))
    y = np.asarray(ds.labels)
    k = int(len(np.unique(y)))
    unlabelled = ds.with_labels(None)  # the recipes never see the labels
    pixels = ds.to_array(desc=None).reshape(len(ds), -1)
    drop = extra_view(WITH, WITHOUT)
    rows = []

    def record(method, seed, labels, secs, extra=None):
        m = evaluate(labels, y)
        row = {"dataset": name, "n": len(y), "method": method, "seed": seed, "acc": m["acc"], "nmi": m["nmi"],
               "ari": m["ari"], "seconds": secs, **(extra or {})}
        rows.append(row)
        print(json.dumps(row), flush=True)

    for seed in seeds:
        t = time.perf_counter()
        pipe = recipe_pipeline(WITH, k, seed).fit(unlabelled)
        secs = time.perf_counter() - t
        choice = getattr(pipe.reducers[0], "graph_choice_", None) or {}
        record(WITH, seed, pipe.labels_, secs, {"graph": choice.get("chosen"), "optional_view": choice.get("optional_view"),
                                                "conductance": choice.get("mean_conductance")})
        labels, own = without_view(pipe, drop, k, seed)
        shared = pipe.timings_["encode"]  # the views they share, and Lite0's (from the cache when it holds them)
        record(WITHOUT, seed, labels, own + shared, {"graph": None})
        t = time.perf_counter()
        record(PIXELS, seed, KMeans(k, n_init=10, random_state=seed).fit_predict(pixels), time.perf_counter() - t)
    return rows


def graph_laid_out(rs) -> str:
    """Per seed (in seed order), the graph ``hog-ae-lite-umap`` laid out: with Lite0, without it, Lite0's alone,
    or the subspace graph of the pixels."""
    view = rs[0].get("optional_view") or "lite0"  # rows of runs before it was recorded: the recipe's lite0
    short = {UMAP.SHARED: "with", UMAP.WITHOUT.format(view=view): "without", UMAP.ALONE.format(view=view): "alone",
             UMAP.SUBSPACE: "subspace"}
    return "/".join(short[r["graph"]] for r in sorted(rs, key=lambda r: r["seed"]))


def summarise(rows) -> str:
    out = []
    for d, m, rs in by_dataset_and_method(rows):
        acc = np.mean([r["acc"] for r in rs])
        base = [r["acc"] for r in rows if r["dataset"] == d and r["method"] == WITHOUT]
        pix = [r["acc"] for r in rows if r["dataset"] == d and r["method"] == PIXELS]
        out.append([f"{d} (n={rs[0]['n']})", m, *score_cells(rs), f"{np.mean([r['seconds'] for r in rs]):.0f}",
                    len(rs), f"{acc - np.mean(base):+.3f}" if base else "–",
                    f"{acc / np.mean(pix):.2f}×" if pix else "–", graph_laid_out(rs) if m == WITH else "–"])
    return table(out, ["dataset", "method", "ACC (mean ± sd)", "NMI", "ARI", "s/run", "seeds",
                       f"ACC − {WITHOUT}", f"ACC ÷ {PIXELS}", "Lite0 in the graph (per seed)"])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=list(GREY), choices=list(GREY))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1: the machine is shared)")
    ap.add_argument("--rows", metavar="PATH", help="also write every measured row to this JSON-lines file")
    ap.add_argument("--summarise", nargs="+", metavar="PATH", help="build the table from JSON-lines files of rows")
    ap.add_argument("--update", action="store_true", help="write the table into benchmarks/RESULTS.md")
    ap.add_argument("--section", default="grey-lite", help="name of the RESULTS.md block")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if not args.summarise:
        require_sets(SUITE_SETS, args.datasets)
    load_before = load_average()
    rows = measured_rows(args.summarise, args.datasets, GREY, lambda name: measure(name, args.seeds), args.rows)
    body = summarise(rows)
    print(body)
    if args.update:
        head = results_head(load_before) + "Lite0 features from the feature cache where earlier runs left them.\n\n"
        update_section(args.section, head + body)


if __name__ == "__main__":
    main()
