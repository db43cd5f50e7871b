"""DeepCluster on CIFAR-10 (the JPEG folders), for a GPU; against raw-pixel k-means measured in the same run.

Target (issue 5): ACC >= 0.40 in under 20 minutes on one H200 (the published rerun reached 0.374). Not yet
measured: no GPU was available when this was written (see benchmarks/RESULTS.md). On one GPU:

    flock /tmp/imclust-bench.lock env PYTHONPATH=src python benchmarks/deepcluster_cifar10.py --split test --epochs 60

on several GPUs of one machine (PyTorch DDP, nccl; rank 0 prints):

    torchrun --nproc_per_node=8 benchmarks/deepcluster_cifar10.py --split train+test --epochs 60

``--limit N`` takes N images at random (a quick check on a CPU). Settings: the small ConvNet at 32 px
(width 64), Sobel input, k_train 100, flip and random resized crops (scale 0.2-1), colour jitter 0.4,
bf16 + channels_last, batch 256, SGD lr 0.05 as the paper. Per-stage times come from the training history.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("IMCLUST_SHARED_DATA", ROOT.parent / "shared" / "data")) / "cifar10"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--split", default="test", choices=("test", "train", "train+test"))
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--k-train", type=int, default=100)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--limit", type=int, default=None, help="only N random images (a quick check)")
    args = ap.parse_args()
    from imclust import api
    from imclust.data import load_source
    from imclust.metrics import evaluate
    from imclust.nn.distributed import is_main

    splits = ["train", "test"] if args.split == "train+test" else [args.split]
    for s in splits:
        if not (DATA / s).is_dir():
            sys.exit(f"CIFAR-10 folder not found: {DATA / s}")
    t0 = time.perf_counter()
    sets = [load_source(str(DATA / s)) for s in splits]
    ds = sets[0] if len(sets) == 1 else _concat(sets)
    if args.limit:
        ds = ds.subset(np.sort(np.random.RandomState(args.seed).choice(len(ds), min(args.limit, len(ds)), replace=False)))
    load_s = time.perf_counter() - t0
    overrides = [f"encoder.epochs={args.epochs}", f"encoder.k_train={args.k_train}", f"encoder.width={args.width}",
                 "encoder.sobel=true", "encoder.crop_scale=[0.2, 1.0]", "encoder.color_jitter=0.4",
                 'encoder.precision="bf16"', "encoder.channels_last=true", f'encoder.device="{args.device}"']
    pipe, _ = api.build_pipeline("deepcluster", overrides, seed=args.seed)
    t1 = time.perf_counter()
    api.fit_pipeline(pipe, ds, 10)
    fit_s = time.perf_counter() - t1
    m = evaluate(pipe.labels_, ds.labels)
    t2 = time.perf_counter()
    peer, _ = api.build_pipeline("baseline", (), seed=args.seed)
    api.fit_pipeline(peer, ds, 10)
    pm = evaluate(peer.labels_, ds.labels)
    peer_s = time.perf_counter() - t2
    if not is_main():
        return
    hist = pipe.encoder.history_
    print(json.dumps({
        "split": args.split, "n": len(ds), "epochs": args.epochs, "seed": args.seed, "device": args.device,
        "acc": m["acc"], "nmi": m["nmi"], "ari": m["ari"], "load_seconds": load_s, "fit_seconds": fit_s,
        "stage_seconds": {s: sum(h.get(f"time_{s}", 0.0) for h in hist) for s in ("features", "kmeans", "train")},
        "peer_pixels_kmeans": {"acc": pm["acc"], "nmi": pm["nmi"], "ari": pm["ari"], "seconds": peer_s},
        "collapse": [h["epoch"] for h in hist if h.get("collapsed")],
        "per_epoch": hist,
    }, indent=2, default=float))


def _concat(sets):
    from imclust.data import ImageSet

    offsets = np.cumsum([0] + [len(s) for s in sets])

    def loader(idx):
        idx = np.asarray(idx)
        out = np.empty((len(idx), *sets[0].shape), np.float32)
        for j, s in enumerate(sets):
            sel = (idx >= offsets[j]) & (idx < offsets[j + 1])
            if sel.any():
                out[sel] = s.load(idx[sel] - offsets[j])
        return out

    return ImageSet(sum((list(s.ids) for s in sets), []), loader, sets[0].shape,
                    labels=np.concatenate([s.labels for s in sets]), class_names=sets[0].class_names,
                    source="cifar10", kind="folder")


if __name__ == "__main__":
    main()
