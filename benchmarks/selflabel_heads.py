"""Self-labelling with tutorial 4's heads on MNIST-test: does ArcFace or Center Loss beat plain softmax?

The ``selflabel`` encoder trains a network on k-means pseudo-labels of its own embedding, refreshed every
epoch (labels are never read); the head is the only thing that changes between rows. After training, k-means
(k=10) on the learned features is scored against the true digits. Peer in the same run: k-means on raw
pixels of the same images. Mean ± standard deviation over seeds.

    flock /tmp/imclust-bench.lock python benchmarks/selflabel_heads.py --heads softmax arcface center --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

os.environ.setdefault("IMCLUST_QUIET", "1")
sys.path.insert(0, os.path.dirname(__file__))

from _common import DATASETS, command, machine, today, update_section  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--heads", nargs="+", default=["softmax", "arcface", "center"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--dim", type=int, default=32)
    ap.add_argument("--net", default="mlp")
    ap.add_argument("--augment-shift", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--section", default="selflabel-heads")
    ap.add_argument("--locked", action="store_true", help="say that the run held /tmp/imclust-bench.lock (timings honest)")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from imclust.cluster import KMeans
    from imclust.data import load_source
    from imclust.encoders.embedding import SelfLabelEncoder
    from imclust.metrics import external_metrics

    ds = load_source(str(DATASETS["mnist-test"]))
    y = ds.labels
    unlabelled = ds.with_labels(None)  # the encoder never sees the labels
    X = ds.to_array().reshape(len(ds), -1)
    results: dict[str, list] = {h: [] for h in args.heads}
    pix = []
    for seed in args.seeds:
        t = time.perf_counter()
        pix.append((external_metrics(y, KMeans(10, n_init=10, random_state=seed).fit_predict(X)), time.perf_counter() - t))
        for head in args.heads:
            t, c = time.perf_counter(), time.process_time()
            enc = SelfLabelEncoder(head=head, dim=args.dim, n_clusters=10, net=args.net, epochs=args.epochs,
                                   augment_shift=args.augment_shift, seed=seed).fit(unlabelled)
            Z = enc.transform(unlabelled)
            m = external_metrics(y, KMeans(10, n_init=10, random_state=seed).fit_predict(Z))
            m["pseudo_acc"] = external_metrics(y, enc.pseudo_labels_)["acc"]
            wall, cpu = time.perf_counter() - t, time.process_time() - c
            results[head].append((m, wall, cpu))
            print(f"{head} seed {seed}: ACC={m['acc']:.4f} NMI={m['nmi']:.4f} ARI={m['ari']:.4f} "
                  f"last pseudo-label ACC={m['pseudo_acc']:.4f} wall={wall:.0f}s cpu={cpu:.0f}s", flush=True)

    def ms(vals):
        return f"{np.mean(vals):.4f} ± {np.std(vals):.4f}"

    pix_acc = np.mean([p[0]["acc"] for p in pix])
    lines = [
        "## Self-labelling with softmax, ArcFace and Center Loss heads on MNIST-test (issue 6)",
        "",
        f"Command: `{'flock /tmp/imclust-bench.lock ' if args.locked else ''}{command()}`  ",
        f"Machine: 2-core CPU, 24 GiB, no GPU ({machine()}); shared with other jobs, so wall times are inflated"
        + ("" if args.locked else "; this run did not hold the benchmark lock, so its times are indicative only") + ".  ",
        f"Date: {today()}  ",
        f"Setup: `selflabel` encoder, tutorial 4's {args.net.upper()} with a {args.dim}-d feature layer, {args.epochs} epochs, "
        f"k-means pseudo-labels (k=10) on the current embedding refreshed every epoch, uniform sampling over "
        f"pseudo-classes, random shifts of up to {args.augment_shift} px, Adam 1e-3 with cosine decay; all 10,000 "
        f"MNIST-test images, labels never read. ACC/NMI/ARI: k-means (k=10) on the final features. "
        f"Mean ± std over seeds {args.seeds}. Peer: k-means on raw pixels of the same images.",
        "",
        "| head | ACC | NMI | ARI | ACC / pixel k-means ACC | mean wall s | mean CPU s |",
        "|---|---|---|---|---|---|---|",
    ]
    for head, rs in results.items():
        accs = [r[0]["acc"] for r in rs]
        lines.append(f"| {head} | {ms(accs)} | {ms([r[0]['nmi'] for r in rs])} | {ms([r[0]['ari'] for r in rs])} | "
                     f"{np.mean(accs) / pix_acc:.2f}× | {np.mean([r[1] for r in rs]):.0f} | {np.mean([r[2] for r in rs]):.0f} |")
    lines.append(f"| *peer: k-means on raw pixels* | {ms([p[0]['acc'] for p in pix])} | {ms([p[0]['nmi'] for p in pix])} | "
                 f"{ms([p[0]['ari'] for p in pix])} | 1.00× | {np.mean([p[1] for p in pix]):.0f} | – |")
    lines += ["", "Per seed (ACC): " + "; ".join(
        f"{h}: " + ", ".join(f"{r[0]['acc']:.4f}" for r in rs) for h, rs in results.items())]
    body = "\n".join(lines)
    print(body)
    if not args.no_write:
        update_section(args.section, body)


if __name__ == "__main__":
    main()
