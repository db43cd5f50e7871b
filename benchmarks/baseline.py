"""Issue 2 benchmark: the baseline recipe (pixels → PCA 95 % → k-means, faiss) against scikit-learn
``KMeans(n_init=10)`` on raw pixels, in the same run, on digits, MNIST-test, USPS and Fashion-MNIST-1k.

    python benchmarks/baseline.py [--seeds 0 1 2] [--datasets digits mnist-test usps fashion-1k]

Both are stochastic, so each is run with every seed and the mean is reported. Writes the 'baseline'
section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("IMCLUST_QUIET", "1")

from _common import available, command, machine, table, today, update_section  # noqa: E402

from imclust.api import run  # noqa: E402
from imclust.data import load_source  # noqa: E402
from imclust.metrics import external_metrics  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--datasets", nargs="+", default=["digits", "mnist-test", "usps", "fashion-1k"])
    args = ap.parse_args()
    from sklearn.cluster import KMeans

    rows = []
    for name, spec in available(args.datasets).items():
        ds = load_source(spec)
        X = ds.to_array(desc=None).reshape(len(ds), -1)
        k = len(np.unique(ds.labels))
        ours, peer = [], []
        for s in args.seeds:
            t = time.perf_counter()
            res = run(spec, recipe="baseline", k=k, seed=s)
            ours.append((res.metrics["acc"], res.metrics["nmi"], res.metrics["ari"], time.perf_counter() - t))
            t = time.perf_counter()
            pred = KMeans(k, n_init=10, random_state=s).fit_predict(X)
            dt = time.perf_counter() - t
            m = external_metrics(ds.labels, pred)
            peer.append((m["acc"], m["nmi"], m["ari"], dt))
        o, p = np.mean(ours, 0), np.mean(peer, 0)
        print(f"{name}: ours ACC {o[0]:.4f} NMI {o[1]:.4f} ARI {o[2]:.4f} {o[3]:.1f}s | "
              f"sklearn ACC {p[0]:.4f} NMI {p[1]:.4f} ARI {p[2]:.4f} {p[3]:.1f}s")
        rows.append([name, len(ds), f"{o[0]:.4f}", f"{o[1]:.4f}", f"{o[2]:.4f}", f"{o[3]:.1f}",
                     f"{p[0]:.4f}", f"{p[1]:.4f}", f"{p[2]:.4f}", f"{p[3]:.1f}", f"{p[3] / o[3]:.1f}×"])
    body = (
        "## Baseline: pixels → PCA → k-means vs scikit-learn KMeans on raw pixels (issue 2)\n\n"
        f"Command: `{command()}`  \nMachine: {machine()}  \nDate: {today()}  \n"
        f"Mean over seeds {args.seeds}. Our time is the whole `imclust.api.run` (load, PCA, k-means with faiss, "
        "metrics); scikit-learn's is `KMeans(n_init=10).fit_predict` alone on the already loaded pixels.\n\n"
        + table(rows, ["dataset", "n", "ours ACC", "ours NMI", "ours ARI", "ours s", "sklearn ACC", "sklearn NMI",
                       "sklearn ARI", "sklearn s", "speed-up"])
    )
    update_section("baseline", body)


if __name__ == "__main__":
    main()
