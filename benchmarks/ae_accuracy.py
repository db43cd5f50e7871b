"""Accuracy of our default recipe against its peers, in the same run (mean over seeds).

For each dataset and seed: our recipe (``--recipe``, default: the default recipe), raw-pixel k-means
(k-means++, 10 restarts, on the pixels) and PCA-50 -> UMAP -> GMM (left out when it is the same pipeline
as ours, as for the recipe ``umap-gmm``). Labels are read only to score.
Times are wall-clock seconds for the whole fit of one run in this process (umap-learn's one-off numba
JIT, ~30 s per process, falls in the first UMAP run).

    python benchmarks/ae_accuracy.py --datasets digits mnist usps fashion1k --seeds 0 1 2 --section ae-accuracy-hog-umap

Wrap timed runs in ``flock /tmp/imclust-bench.lock`` on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("IMCLUST_QUIET", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import load_average, results_head, update_section  # noqa: E402

import torch  # noqa: E402

from imclust import components  # noqa: E402,F401
from imclust.data import load_source  # noqa: E402
from imclust.metrics import evaluate  # noqa: E402
from imclust.pipeline import Pipeline  # noqa: E402
from imclust.recipes import default_recipe, load_recipe  # noqa: E402

DATA = Path(os.environ.get("IMCLUST_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
SOURCES = {
    "digits": "digits",
    "mnist": str(DATA / "mnist-test" / "t10k-images-idx3-ubyte.gz"),
    "usps": str(DATA / "usps" / "usps.npz"),
    "fashion1k": str(DATA / "fashion-mnist-1k" / "fashion_mnist_test_1k.npz"),
    # Not a target: a held-out check for settings chosen on sklearn digits. MNIST-test brought to digits'
    # 8x8 form the way sklearn's digits were made (a 32x32 bitmap averaged over 4x4 blocks).
    "mnist8": "mnist",
}


def load(name: str):
    """The dataset ``name`` of ``SOURCES`` as an ImageSet (labels kept for scoring only)."""
    if name != "mnist8":
        return load_source(SOURCES[name])
    from imclust.data.sources import _array_imageset

    ds = load_source(SOURCES["mnist"])
    x = np.pad(ds.to_array(desc=None)[:, 0], ((0, 0), (2, 2), (2, 2)))  # 28x28 -> 32x32
    x8 = x.reshape(len(x), 8, 4, 8, 4).mean(axis=(2, 4))
    return _array_imageset(x8.astype(np.float32), ds.labels, "mnist-test at 8x8", "array")


def methods(recipe: str, overrides: list[str]) -> dict[str, dict]:
    from imclust.recipes import apply_override

    cfg = load_recipe(recipe)
    for o in overrides:
        apply_override(cfg, o)
    ours = {"encoder": cfg["encoder"], "reducers": cfg.get("reducers", []), "clusterer": cfg["clusterer"]}
    out = {
        f"ours ({recipe})": ours,
        "raw-pixel k-means": {"encoder": {"type": "pixels"}, "reducers": [],
                              "clusterer": {"type": "kmeans", "n_init": 10}},
        "PCA-50 -> UMAP -> GMM": {"encoder": {"type": "pixels"},
                                  "reducers": [{"type": "pca", "n_components": 50},
                                               {"type": "umap", "n_components": 10, "n_neighbors": 15, "min_dist": 0.0}],
                                  "clusterer": {"type": "gmm"}},
    }
    if out["PCA-50 -> UMAP -> GMM"] == ours:
        del out["PCA-50 -> UMAP -> GMM"]
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=["digits", "mnist", "usps", "fashion1k"], choices=list(SOURCES),
                    help="mnist8 (MNIST-test averaged to 8x8) is a held-out check, not a target")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--recipe", default=None, help="our recipe (default: the default recipe)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="override, as imclust run --set")
    ap.add_argument("--only", nargs="+", default=None, help="run only methods whose name starts with these")
    ap.add_argument("--torch-threads", type=int, default=1,
                    help="torch threads (default 1: on a shared 2-core machine two contended threads train small "
                         "networks several times slower than one)")
    ap.add_argument("--section", default=None,
                    help="write the table as this named block of benchmarks/RESULTS.md (replacing the block's last run)")
    ap.add_argument("--json", default=None, help="also write the raw results here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.torch_threads)
    recipe = args.recipe or default_recipe()
    load_before = load_average()
    rows = []
    for name in args.datasets:
        rows += measure(name, load(name), methods(recipe, args.overrides), args.seeds, args.only)
    table = summarise(rows)
    print(table)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    if args.section:
        update_section(args.section, "\n".join([
            f"## Clustering accuracy of the `{recipe}` recipe against its peers (`ae_accuracy.py`)", "",
            results_head(load_before) + f"Recipe `{recipe}`"
            + (f" with {', '.join(args.overrides)}" if args.overrides else "")
            + "; k = number of classes; labels read only to score.", "", table]))


def measure(name: str, ds, methods: dict[str, dict], seeds, only=None) -> list[dict]:
    """Fit each method (a pipeline spec) on ``ds`` once per seed, k = number of classes; one row per fit.

    Labels are read only to set k and to score. ``only`` keeps the methods whose name starts with one of its
    strings. Each row is printed as JSON as soon as it is measured.
    """
    k = len(np.unique(ds.labels))
    rows = []
    for mname, spec in methods.items():
        if only and not any(mname.startswith(o) for o in only):
            continue
        for seed in seeds:
            spec_k = json.loads(json.dumps(spec))
            spec_k["clusterer"]["n_clusters"] = k
            t = time.perf_counter()
            pipe = Pipeline.from_spec(spec_k, name=mname, seed=seed).fit(ds)
            secs = time.perf_counter() - t
            m = evaluate(pipe.labels_, ds.labels)
            row = {"dataset": name, "n": len(ds), "method": mname, "seed": seed, "acc": m["acc"], "nmi": m["nmi"],
                   "ari": m["ari"], "seconds": secs}
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def summarise(rows) -> str:
    out = ["| dataset | method | ACC (mean ± sd) | NMI | ARI | seconds per run (max) | seeds | ACC ÷ raw-pixel k-means | "
           "time ÷ PCA-50 -> UMAP -> GMM |",
           "|---|---|---|---|---|---|---|---|---|"]
    keys = []
    for r in rows:
        if (r["dataset"], r["method"]) not in keys:
            keys.append((r["dataset"], r["method"]))
    for d, m in keys:
        rs = [r for r in rows if r["dataset"] == d and r["method"] == m]
        acc = np.array([r["acc"] for r in rs])
        secs = np.mean([r["seconds"] for r in rs])
        km = [r["acc"] for r in rows if r["dataset"] == d and r["method"] == "raw-pixel k-means"]
        um = [r["seconds"] for r in rows if r["dataset"] == d and r["method"] == "PCA-50 -> UMAP -> GMM"]
        acc_ratio = f"{acc.mean() / np.mean(km):.2f}×" if km else "–"
        time_ratio = f"{secs / np.mean(um):.2f}×" if um else "–"
        out.append(f"| {d} (n={rs[0]['n']}) | {m} | {acc.mean():.3f} ± {acc.std():.3f} | "
                   f"{np.mean([r['nmi'] for r in rs]):.3f} | {np.mean([r['ari'] for r in rs]):.3f} | "
                   f"{secs:.0f} ({max(r['seconds'] for r in rs):.0f}) | {len(rs)} | {acc_ratio} | {time_ratio} |")
    return "\n".join(out)


if __name__ == "__main__":
    main()
