"""Our UMAP (``backend = "imclust"``, the default) against umap-learn, inside the recipes that use UMAP.

For each dataset, recipe and seed, the recipe's features (its encoder and PCA-50, computed once) go through
the recipe's ``umap`` reducer with each backend and then the recipe's GMM with the same seed, so the two
sides differ only in the UMAP implementation. Recipes: ``hog-umap`` (the default for grey images) and
``umap-gmm`` (pixels -> PCA-50 -> UMAP -> GMM, the peer). k = number of classes; labels are read only to
score. Times are the UMAP step in this process (umap-learn's one-off numba compilation falls in its first
run; ``benchmarks/speed.py`` times fresh processes).

    python benchmarks/umap_accuracy.py --seeds 0 1 2 --write
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("IMCLUST_QUIET", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from _common import available, load_average, results_head, table, update_section  # noqa: E402

from imclust import components  # noqa: E402,F401
from imclust.base import build  # noqa: E402
from imclust.data import load_source  # noqa: E402
from imclust.metrics import evaluate  # noqa: E402
from imclust.recipes import load_recipe  # noqa: E402

SETS = ["digits", "mnist-test", "usps", "fashion-1k", "umist", "pie27", "mednist"]
RECIPES = ["hog-umap", "umap-gmm"]
BACKENDS = ["imclust", "umap-learn"]


def features(ds, recipe: str) -> tuple[np.ndarray, dict, dict]:
    """The recipe's input to UMAP (encoder, then its reducers before the umap one), its umap and GMM specs."""
    cfg = load_recipe(recipe)
    reducers = cfg.get("reducers", [])
    at = [r["type"] for r in reducers].index("umap")
    X = build(cfg["encoder"]).fit_transform(ds)
    for spec in reducers[:at]:
        X = build(spec).fit_transform(X)
    return np.asarray(X, dtype=np.float32), reducers[at], cfg["clusterer"]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=SETS, choices=SETS)
    ap.add_argument("--recipes", nargs="+", default=RECIPES, choices=RECIPES)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--write", action="store_true", help="replace the fast-umap-accuracy block of RESULTS.md")
    args = ap.parse_args(argv)
    load_start = load_average()
    rows, means = [], {b: [] for b in BACKENDS}
    for name, src in available(args.datasets).items():
        ds = load_source(src)
        k = len(np.unique(ds.labels))
        for recipe in args.recipes:
            X, umap_spec, gmm_spec = features(ds, recipe)
            res = {b: [] for b in BACKENDS}
            for seed in args.seeds:
                for backend in BACKENDS:
                    red = build({**umap_spec, "backend": backend, "random_state": seed})
                    t = time.perf_counter()
                    E = red.fit_transform(X)
                    seconds = time.perf_counter() - t
                    labels = build({**gmm_spec, "n_clusters": k, "random_state": seed}).fit_predict(E)
                    m = evaluate(labels, ds.labels)
                    res[backend].append((m["acc"], m["nmi"], m["ari"], seconds))
                    print(f"{name} {recipe} seed {seed} {backend}: ACC {m['acc']:.4f} ({seconds:.1f}s)", flush=True)
            mean = {b: np.mean(res[b], axis=0) for b in BACKENDS}
            for b in BACKENDS:
                means[b].append(mean[b][0])
            ours, peer = mean["imclust"], mean["umap-learn"]
            rows.append([name, len(X), recipe, *(f"{v:.4f}" for v in ours[:3]), f"{ours[3]:.1f}",
                         *(f"{v:.4f}" for v in peer[:3]), f"{peer[3]:.1f}", f"{ours[0] - peer[0]:+.4f}"])
    rows.append(["**mean**", "", "", f"**{np.mean(means['imclust']):.4f}**", "", "", "", 
                 f"**{np.mean(means['umap-learn']):.4f}**", "", "", "",
                 f"**{np.mean(means['imclust']) - np.mean(means['umap-learn']):+.4f}**"])
    header = ["dataset", "n", "recipe", "ours ACC", "ours NMI", "ours ARI", "ours UMAP s", "umap-learn ACC",
              "umap-learn NMI", "umap-learn ARI", "umap-learn UMAP s", "ACC ours - umap-learn"]
    body = ("## Our UMAP against umap-learn inside the recipes (issue 15)\n\n"
            + results_head(load_start) +
            f"Mean over seeds {args.seeds}. Same features (the recipe's encoder and PCA-50) and the same GMM on both "
            "sides; only the UMAP implementation differs. Times are the UMAP step inside one process "
            "(umap-learn's first run in the process includes its numba compilation).\n\n" + table(rows, header))
    print(body)
    if args.write:
        update_section("fast-umap-accuracy", body)


if __name__ == "__main__":
    main()
