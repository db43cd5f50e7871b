"""What randomly initialised CNN backbones give as features for k-means, against raw-pixel k-means.

No ImageNet weights can be downloaded on the benchmark machine, so this measures the *randomly
initialised* networks (seeded), which is the honest lower bound of the pretrained path: the published
weights would be passed with --weights / --pretrained. Peer in the same run: the ``baseline`` recipe
(raw pixels -> PCA 95% -> k-means), with the same k and seeds.

For each dataset and seed: ``imclust.api.run`` with recipe ``cnn-kmeans`` (feature cache off) and the
backbone / layer / input size below, and with recipe ``baseline``. Reports ACC (Hungarian), NMI, ARI
(mean ± std over seeds) and seconds.

Run (serialised with the other benchmarks):
    flock /tmp/imclust-bench.lock python benchmarks/pretrained_quality.py --update pretrained-quality-flowers5
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import load_average, results_head, update_section  # noqa: E402

from imclust import api  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def one(source, recipe, k, seed, overrides=(), enc=None, size=None):
    r = api.run(str(source), recipe=recipe, k=k, seed=seed, overrides=list(overrides), encoder_options=enc, size=size)
    return r.metrics["acc"], r.metrics["nmi"], r.metrics["ari"], r.metrics["seconds"]


def fmt(vals):
    a = np.asarray(vals)
    if len(a) == 1:
        return f"{a[0]:.3f}"
    return f"{a.mean():.3f} ± {a.std():.3f}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--datasets", nargs="+", default=["flowers5", "cifar10-test"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--models", nargs="+", default=["resnet18:avgpool:64"],
                    help="BACKBONE:LAYER:SIZE (standard preprocessing at that input size)")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--per-class", type=int, default=0,
                    help="use only the first N files (sorted by name) of each class folder, linked into a temporary folder")
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast + channels_last for the CNN")
    ap.add_argument("--pixel-size", type=int, default=32, help="image size of the raw-pixel peer (bounded runtime)")
    ap.add_argument("--update", metavar="SECTION", help="write the table into the named block of benchmarks/RESULTS.md")
    args = ap.parse_args()
    load_before = load_average()
    os.environ.setdefault("IMCLUST_QUIET", "1")
    sources = {"flowers5": (DATA / "flowers5", 5), "cifar10-test": (DATA / "cifar10" / "test", 10)}
    rows = []
    import tempfile

    tmp = tempfile.TemporaryDirectory(prefix="imclust-bench-")
    for name in args.datasets:
        src, k = sources[name]
        if args.per_class:
            sub = Path(tmp.name) / name
            for cls in sorted(p for p in src.iterdir() if p.is_dir()):
                (sub / cls.name).mkdir(parents=True)
                for f in sorted(cls.iterdir())[: args.per_class]:
                    (sub / cls.name / f.name).symlink_to(f)
            src = sub
        peer = [one(src, "baseline", k, s, size=args.pixel_size) for s in args.seeds]
        print(name, "raw-pixel k-means", [f"{p[0]:.3f}" for p in peer], flush=True)
        rows.append((name + (f" (first {args.per_class}/class)" if args.per_class else ""), f"raw pixels {args.pixel_size}x{args.pixel_size} -> PCA 95% -> k-means (`baseline`)", peer, None))
        for spec in args.models:
            arch, layer, size = spec.split(":")
            over = [f'encoder.backbone="{arch}"', f'encoder.layer="{layer}"', f"encoder.size={int(size)}",
                    f"encoder.workers={args.workers}"]
            if args.bf16:
                over += ['encoder.precision="bf16"', "encoder.channels_last=true"]
            ours = [one(src, "cnn-kmeans", k, s, over, {"cache": False}) for s in args.seeds]
            print(name, spec, [f"{o[0]:.3f}" for o in ours], flush=True)
            prec = ", bf16+channels_last" if args.bf16 else ""
            rows.append((name + (f" (first {args.per_class}/class)" if args.per_class else ""), f"{arch} random init, `{layer}`, input {size}px{prec} -> k-means", ours, peer))
    lines = ["| dataset | method | ACC | NMI | ARI | ACC ratio to pixels | seconds per run |", "|---|---|---|---|---|---|---|"]
    for name, label, res, peer in rows:
        acc, nmi, ari, sec = (list(x) for x in zip(*res))
        ratio = "1.00" if peer is None else f"{np.mean(acc) / np.mean([p[0] for p in peer]):.2f}"
        lines.append(f"| {name} | {label} | {fmt(acc)} | {fmt(nmi)} | {fmt(ari)} | {ratio} | {np.mean(sec):.0f} |")
    table = "\n".join(lines)
    print(table)
    if args.update:
        update_section(args.update, results_head(load_before) + f"Seeds {args.seeds} "
                       f"(mean ± std); k = number of classes; feature cache off.\n\n{table}")


if __name__ == "__main__":
    main()
