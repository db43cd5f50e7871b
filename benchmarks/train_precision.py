"""Training speed of the networks the recipes train, fp32 against bf16 autocast, with and without channels_last,
and what ``precision = "auto"`` resolves to on this machine.

Two measurements:
- ``steps``: training steps per second (forward, backward, optimizer step) of
  - the grey default's autoencoder (``hog-ae-umap``'s ``conv_digits``, 1x28x28, batch 64, Adam) and
  - the SimCLR ConvNet of ``scan``'s CPU preset (width 16, 3x32x32, 2 x 256 views, SGD),
  random inputs (the speed does not depend on the values), ``--seconds`` timed per cell after a warm-up;
- ``recipe``: one fit of the grey default on ``--data`` (its encode stage: HOG, the autoencoder's training
  and its code, the pixels) with ``encoder.views.autoencoder.precision`` set to each precision, in this
  process (an untimed fp32 fit first pays the imports, JIT and caches, so every timed row finds them paid).

Run (serialised with the other benchmarks):
    flock /tmp/imclust-bench.lock python benchmarks/train_precision.py --update train-precision
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

from _common import SUITE_SETS, cpu_model, load_average, results_head, table, update_section  # noqa: E402

from imclust.nn.train import autocast_context, resolve_precision  # noqa: E402

SETTINGS = (("fp32", False), ("fp32", True), ("bf16", False), ("bf16", True))


def networks():
    """(name, module factory, input shape, batch, optimizer factory) of each network timed."""
    from imclust.nn.autoencoders import make_autoencoder
    from imclust.nn.contrastive_nets import ProjectionHead, make_backbone

    def simclr():
        net = make_backbone("convnet", 3, 16)
        return torch.nn.Sequential(net, ProjectionHead(net.out_dim, max(net.out_dim, 128), 128))

    return [
        ("grey default's autoencoder (conv_digits, 1x28x28, batch 64, Adam)",
         lambda: make_autoencoder("conv_digits", (1, 28, 28), 10), (1, 28, 28), 64,
         lambda p: torch.optim.Adam(p, lr=1e-3)),
        ("scan CPU preset's SimCLR ConvNet (width 16, 3x32x32, 2 x 256 views, SGD)",
         simclr, (3, 32, 32), 512, lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9)),
    ]


def step_rate(make, shape, batch, make_opt, precision, channels_last, seconds) -> float:
    torch.manual_seed(0)
    net = make()
    x = torch.randn(batch, *shape)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    opt = make_opt(net.parameters())
    dev = torch.device("cpu")

    def step():
        opt.zero_grad(set_to_none=True)
        with autocast_context(dev, precision):
            out = net(x)
        out = out[0] if isinstance(out, tuple) else out
        out.float().square().mean().backward()
        opt.step()

    step()  # warm-up
    n, t0 = 0, time.perf_counter()
    while True:
        step()
        n += 1
        if time.perf_counter() - t0 >= seconds:
            break
    return n / (time.perf_counter() - t0)


def recipe_encode_seconds(ds, k: int, precision: str) -> float:
    from imclust.api import build_pipeline, fit_pipeline

    pipe, _ = build_pipeline("hog-ae-umap", [f'encoder.views.autoencoder.precision="{precision}"'], 0)
    fit_pipeline(pipe, ds, k)
    return float(pipe.timings_["encode"])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=10.0, help="timed seconds per step-rate cell")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    ap.add_argument("--data", default="fashion-mnist-1k", choices=sorted(SUITE_SETS),
                    help="suite set for the recipe's encode stage")
    ap.add_argument("--no-recipe", action="store_true", help="step rates only")
    ap.add_argument("--update", metavar="SECTION", help="write the tables into the named block of benchmarks/RESULTS.md")
    args = ap.parse_args()
    os.environ.setdefault("IMCLUST_QUIET", "1")
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = load_average()
    auto = resolve_precision("auto", torch.device("cpu"))
    print(f"CPU: {cpu_model()}; precision 'auto' resolves to {auto}", flush=True)

    rows = []
    for name, make, shape, batch, make_opt in networks():
        rates = {}
        for precision, cl in SETTINGS:
            rates[precision, cl] = step_rate(make, shape, batch, make_opt, precision, cl, args.seconds)
            print(f"{name}: {precision}{' + channels_last' if cl else ''}: {rates[precision, cl]:.2f} steps/s", flush=True)
        best_bf16, best_fp32 = max(rates["bf16", False], rates["bf16", True]), max(rates["fp32", False], rates["fp32", True])
        rows.append([name] + [f"{rates[s]:.2f}" for s in SETTINGS] + [f"{best_bf16 / best_fp32:.2f}x"])
    steps = table(rows, ["network", "fp32", "fp32 + CL", "bf16", "bf16 + CL", "best bf16 ÷ best fp32"])

    recipe = ""
    if not args.no_recipe:
        from imclust.data import load_source

        ds = load_source(str(SUITE_SETS[args.data]))
        k = len(np.unique(ds.labels))
        recipe_encode_seconds(ds, k, "fp32")  # imports, JIT and caches paid once, not by the first timed row
        secs = {p: recipe_encode_seconds(ds, k, p) for p in ("fp32", "bf16", "auto")}
        for p, s in secs.items():
            print(f"hog-ae-umap encode on {args.data}, autoencoder precision {p}: {s:.1f} s", flush=True)
        recipe = ("\n\nThe grey default (`hog-ae-umap`, channels_last as the recipe has it) on "
                  f"{args.data} ({len(ds)} images): seconds of its encode stage, one fit each, in this process.\n\n"
                  + table([[p + (f" (resolves to {auto})" if p == "auto" else ""), f"{s:.1f}",
                            f"{s / secs['fp32']:.2f}x"] for p, s in secs.items()],
                          ["autoencoder precision", "encode s", "÷ fp32"]))

    body = (results_head(load_before, command_prefix="flock /tmp/imclust-bench.lock ") + f"`precision = \"auto\"` resolves to **{auto}** here. Training steps per second (forward, backward, "
            f"optimizer step), random inputs, {args.seconds:.0f} s timed per cell; CL: channels_last.\n\n"
            + steps + recipe)
    print(body)
    if args.update:
        update_section(args.update, body)


if __name__ == "__main__":
    main()
