"""Colour photos without pretrained weights: the ``photo-umap`` recipe against its peers, in the same run.

``photo-umap`` is colour histograms plus grey HOG -> PCA-50 -> UMAP -> GMM: nothing is trained and no weights
are needed (the weightless colour default, ``photo-simclr-umap``, adds a SimCLR view beside these features; its
table is the suite's). For each dataset and seed, measured in the same run:

- ours (``photo-umap``);
- ``hog-umap``, the grey-shape default, which colour photos got before ``photo-umap`` existed;
- raw-pixel k-means (the pixels at 32x32, k-means++, 10 restarts);
- PCA-50 -> UMAP -> GMM on the same 32x32 pixels.

k = number of classes; labels are read only to score. Mean over seeds; ratios as in ``ae_accuracy.py``.

    flock /tmp/imclust-bench.lock python benchmarks/photo_accuracy.py --datasets flowers5 cifar10-test --seeds 0 1 2 --write
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("IMCLUST_QUIET", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import load_average, results_head, update_section  # noqa: E402
from ae_accuracy import DATA, measure, summarise  # noqa: E402

from imclust.data import load_source  # noqa: E402
from imclust.recipes import load_recipe  # noqa: E402

SOURCES = {"flowers5": DATA / "flowers5", "cifar10-test": DATA / "cifar10" / "test"}
PIXELS_32 = {"type": "pixels", "size": 32}


def methods() -> dict[str, dict]:
    def spec(name):
        cfg = load_recipe(name)
        return {"encoder": cfg["encoder"], "reducers": cfg.get("reducers", []), "clusterer": cfg["clusterer"]}

    return {
        "ours (photo-umap)": spec("photo-umap"),
        "hog-umap (grey shape)": spec("hog-umap"),
        "raw-pixel k-means": {"encoder": PIXELS_32, "reducers": [], "clusterer": {"type": "kmeans", "n_init": 10}},
        "PCA-50 -> UMAP -> GMM": {"encoder": PIXELS_32,
                                  "reducers": [{"type": "pca", "n_components": 50},
                                               {"type": "umap", "n_components": 10, "n_neighbors": 15, "min_dist": 0.0}],
                                  "clusterer": {"type": "gmm"}},
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=list(SOURCES), choices=list(SOURCES))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--only", nargs="+", default=None, help="run only methods whose name starts with these")
    ap.add_argument("--write", action="store_true", help="replace the table in benchmarks/RESULTS.md")
    args = ap.parse_args(argv)
    load_before = load_average()
    rows = []
    for name in args.datasets:
        if not SOURCES[name].is_dir():
            sys.exit(f"{SOURCES[name]}: dataset folder not found; this benchmark reads ../shared/data")
        rows += measure(name, load_source(str(SOURCES[name])), methods(), args.seeds, args.only)
    table = summarise(rows)
    print(table)
    if args.write:
        update_section("photo-umap", results_head(load_before) + f"\nNo method here uses torch.\n\n{table}")


if __name__ == "__main__":
    main()
