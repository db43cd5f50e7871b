"""Images per second of the pretrained-CNN encoder on this machine: by default ResNet-18 and VGG16 (``--archs``
chooses others, e.g. the EfficientNet-Lite models against ResNet-50), fp32 against bf16 autocast +
channels_last.

Two measurements per configuration:
- ``forward``: the network alone on preprocessed batches at the model's own input size (224x224; 240 and
  260 for EfficientNet-Lite1 and -Lite2), random weights and inputs (the speed does not depend on the values);
- ``end-to-end``: ``PretrainedEncoder.transform`` on real JPEGs (decode, the model's own resize and centre
  crop, normalise, forward), feature cache off.

Run (serialised with the other benchmarks):
    flock /tmp/imclust-bench.lock python benchmarks/pretrained_throughput.py --update pretrained-throughput
    flock /tmp/imclust-bench.lock python benchmarks/pretrained_throughput.py --threads 1 \
        --archs efficientnet-lite0 efficientnet-lite1 efficientnet-lite2 resnet50 --update photo-throughput
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import load_average, results_head, update_section  # noqa: E402

from imclust.data import load_source  # noqa: E402
from imclust.encoders.pretrained import PretrainedEncoder  # noqa: E402
from imclust.nn import backbones as bb  # noqa: E402


def input_size(arch: str) -> int:
    from imclust.nn import efficientnet

    return efficientnet.native_size(arch) if efficientnet.is_lite(arch) else 224


@torch.no_grad()
def forward_rate(arch: str, fast: bool, batch: int, seconds: float) -> float:
    torch.manual_seed(0)
    layer = bb.default_layer(arch)
    m = bb.build_backbone(arch, materialize=False)
    bb.truncate(m, layer)
    bb.initialize(m).eval()
    s = input_size(arch)
    x = torch.randn(batch, 3, s, s)
    if fast:
        m = m.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)

    def step():
        if fast:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return m(x, layer)
        return m(x, layer)

    step()  # warm-up
    n, t0 = 0, time.perf_counter()
    while True:
        step()
        n += batch
        if time.perf_counter() - t0 >= seconds:
            break
    return n / (time.perf_counter() - t0)


def end_to_end_rate(arch: str, fast: bool, ds, batch: int, workers: int) -> float:
    enc = PretrainedEncoder(backbone=arch, batch_size=batch, workers=workers, cache=False,
                            precision="bf16" if fast else "fp32", channels_last=fast)
    enc.fit(ds)
    enc._build()
    t0 = time.perf_counter()
    enc.transform(ds)
    return len(ds) / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "flowers5"))
    ap.add_argument("--n", type=int, default=0, help="images for the end-to-end run per model (0: 96 ResNet-18, 24 VGG16)")
    ap.add_argument("--seconds", type=float, default=15.0, help="timed seconds per forward measurement")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--archs", nargs="+", default=["resnet18", "vgg16"])
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    ap.add_argument("--update", metavar="SECTION", help="write the table into the named block of benchmarks/RESULTS.md")
    args = ap.parse_args()
    os.environ.setdefault("IMCLUST_QUIET", "1")
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = load_average()
    full = load_source(args.data)
    rows = []
    for arch in args.archs:
        n = args.n or (24 if arch.startswith("vgg") else 96)
        ds = full.subset(np.random.RandomState(0).choice(len(full), n, replace=False))
        res = {}
        for fast in (False, True):
            f = forward_rate(arch, fast, args.batch, args.seconds)
            e = end_to_end_rate(arch, fast, ds, args.batch, args.workers)
            res[fast] = (f, e)
            print(f"{arch} {'bf16+channels_last' if fast else 'fp32'}: forward {f:.1f} img/s, end-to-end {e:.1f} img/s ({n} images)",
                  flush=True)
        rows.append((arch, n, res))
    lines = ["| model (layer, input) | fp32 forward | bf16+CL forward | ratio | fp32 end-to-end | bf16+CL end-to-end | ratio |",
             "|---|---|---|---|---|---|---|"]
    for arch, n, res in rows:
        (f0, e0), (f1, e1) = res[False], res[True]
        lines.append(f"| {arch} ({bb.default_layer(arch)}, {input_size(arch)} px) | {f0:.1f} | {f1:.1f} | {f1 / f0:.2f}x | "
                     f"{e0:.1f} | {e1:.1f} | {e1 / e0:.2f}x |")
    if len(rows) > 1:
        ref = rows[-1]
        lines += ["", f"Relative to {ref[0]} (last row), forward img/s: " + ", ".join(
            f"{arch} {res[False][0] / ref[2][False][0]:.2f}x fp32 / {res[True][0] / ref[2][True][0]:.2f}x bf16+CL"
            for arch, n, res in rows[:-1]) + "."]
    table = "\n".join(lines)
    print(table)
    if args.update:
        update_section(args.update, results_head(load_before, command_prefix="flock /tmp/imclust-bench.lock ")
                       + "Images per second; "
                       f"random weights; batch {args.batch}, {args.workers} DataLoader worker(s); "
                       f"forward: {args.seconds:.0f} s timed per cell; end-to-end: {args.data}, "
                       f"a random subset (96 images per model).\n\n{table}")


if __name__ == "__main__":
    main()
