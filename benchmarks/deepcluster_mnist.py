"""DeepCluster on MNIST-test (10,000 images), against raw-pixel k-means measured in the same run.

Usage (from the repository root; wrap timed runs in flock so only one benchmark runs at a time):

    flock /tmp/imclust-bench.lock env OMP_NUM_THREADS=1 PYTHONPATH=src \\
        python benchmarks/deepcluster_mnist.py --epochs 8 --seeds 0 1 2 --section deepcluster-mnist

It runs the ``deepcluster`` recipe with the MNIST settings below (no flip: a mirrored digit is another
shape; crops of 30-100 % of the area; bf16 + channels_last), the ``baseline`` recipe (raw pixels -> PCA 95 %
-> k-means) as the peer, and prints ACC / NMI / ARI, the time per stage (feature passes, k-means, training)
summed over epochs, and the per-epoch log. It also scores the paper-style final clustering (PCA-256 whitened
-> L2 -> k-means on the pre-ReLU features) on the same network, for comparison. With ``--section`` the table
(one row per seed and their mean) becomes that named block of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import load_average, results_head, update_section  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("IMCLUST_SHARED_DATA", ROOT.parent / "shared" / "data")) / "mnist-test" / "t10k-images-idx3-ubyte.gz"

MNIST_SETTINGS = ["encoder.flip=false", "encoder.crop_scale=[0.3, 1.0]", 'encoder.precision="bf16"',
                  "encoder.channels_last=true"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--section", default=None, help="write the table as this named block of benchmarks/RESULTS.md")
    ap.add_argument("--k-train", type=int, default=100)
    ap.add_argument("--out", default="runs/bench-deepcluster-mnist")
    args = ap.parse_args()
    if not DATA.exists():
        sys.exit(f"MNIST-test not found at {DATA}")
    load0 = load_average()
    lines = []
    rows = [one(args, seed) for seed in args.seeds]
    for r in rows:
        lines.append(r["line"])
    if len(rows) > 1:
        mean = {k: np.mean([r[k] for r in rows]) for k in ("acc", "nmi", "ari", "seconds")}
        lines.append(f"| **mean** | {args.epochs} | {args.k_train} | **{mean['acc']:.4f}** | {mean['nmi']:.4f} | "
                     f"{mean['ari']:.4f} | {mean['seconds']:.0f} s | "
                     f"{np.mean([r['paper_final_whitened']['acc'] for r in rows]):.4f} | "
                     f"{np.mean([r['peer_pixels_kmeans']['acc'] for r in rows]):.4f} / "
                     f"{np.mean([r['peer_pixels_kmeans']['nmi'] for r in rows]):.4f} | "
                     f"{np.mean([r['acc_ratio_vs_peer'] for r in rows]):.2f} |")
    head = ("| seed | epochs | k_train | ACC | NMI | ARI | DeepCluster time (features / k-means / training) | "
            "same network, paper-style final (whitened PCA-256) ACC | peer ACC / NMI | ACC ratio vs peer |\n"
            "|---|---|---|---|---|---|---|---|---|---|")
    table = head + "\n" + "\n".join(lines)
    print(table)
    if args.section:
        update_section(args.section, "\n".join([
            "## DeepCluster on MNIST-test (10,000 images): the recipe end to end (`deepcluster_mnist.py`)", "",
            results_head(load0, command_prefix="env OMP_NUM_THREADS=1 PYTHONPATH=src ")
            + f"Settings: the `deepcluster` recipe with {', '.join(MNIST_SETTINGS)}; peer in the same run: the "
            "`baseline` recipe (raw pixels -> PCA 95 % -> k-means). Per-epoch k-means: `cluster.KMeans` "
            "(faiss) through `nn.pseudolabels`.", "", table]))


def one(args, seed: int) -> dict:
    from imclust import api
    from imclust.cluster import KMeans
    from imclust.metrics import external_metrics
    from imclust.reduce import PCA

    overrides = MNIST_SETTINGS + [f"encoder.epochs={args.epochs}", f"encoder.k_train={args.k_train}"]
    t0 = time.perf_counter()
    res = api.run(str(DATA), recipe="deepcluster", k=10, seed=seed, overrides=overrides, out=f"{args.out}-s{seed}")
    dc_s = time.perf_counter() - t0
    enc = res.pipeline.encoder
    hist = enc.history_
    stages = {s: sum(h.get(f"time_{s}", 0.0) for h in hist) for s in ("features", "kmeans", "train")}
    # the same network, clustered the paper's way (whitened PCA-256 of the pre-ReLU layer)
    enc.set_params(output="pre_relu")
    pre = enc.transform(res.dataset)
    enc.set_params(output="relu")
    Z = PCA(256, whiten=True, random_state=seed).fit_transform(pre)
    Z /= np.linalg.norm(Z, axis=1, keepdims=True)
    paper_final = external_metrics(res.true_labels, KMeans(10, n_init=10, random_state=seed).fit_predict(Z))
    t1 = time.perf_counter()
    peer = api.run(str(DATA), recipe="baseline", k=10, seed=seed)
    peer_s = time.perf_counter() - t1
    m, pm = res.metrics, peer.metrics
    row = {
        "seed": seed, "epochs": args.epochs, "k_train": args.k_train,
        "acc": m["acc"], "nmi": m["nmi"], "ari": m["ari"], "seconds": dc_s,
        "stage_seconds": stages, "final_other_seconds": res.timings,
        "paper_final_whitened": {k: paper_final[k] for k in ("acc", "nmi", "ari")},
        "peer_pixels_kmeans": {"acc": pm["acc"], "nmi": pm["nmi"], "ari": pm["ari"], "seconds": peer_s},
        "acc_ratio_vs_peer": m["acc"] / pm["acc"],
        "collapse": [h["epoch"] for h in hist if h.get("collapsed")],
        "per_epoch": [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in h.items()} for h in hist],
    }
    print(json.dumps(row, indent=2), flush=True)
    row["line"] = (f"| {seed} | {args.epochs} | {args.k_train} | {m['acc']:.4f} | {m['nmi']:.4f} | {m['ari']:.4f} | "
                   f"{dc_s:.0f} s ({stages['features']:.0f} / {stages['kmeans']:.0f} / {stages['train']:.0f} s) | "
                   f"{paper_final['acc']:.4f} | {pm['acc']:.4f} / {pm['nmi']:.4f} | {m['acc'] / pm['acc']:.2f} |")
    return row


if __name__ == "__main__":
    main()
