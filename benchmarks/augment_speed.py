"""Time of the batched augmentations per training step: the SimCLR views of a pretext step against the strong
views of a SCAN step (anchors and their neighbours), on one device.

Rows, each the median milliseconds of ``--repeats`` timed calls after a warm-up, on ``--batch`` images of
``--size`` px (random pixels: no operation's cost depends on the values):
- ``pretext views``: two :class:`ContrastiveAugment` calls on the batch, as the ``simclr`` encoder makes them;
- ``strong views, anchors and neighbours in two calls``: two :class:`StrongAugment` calls of ``--batch``;
- ``strong views, anchors and neighbours in one call``: one call on both (``2 x --batch`` images), as the
  ``scan`` stage makes it when its backbone trains;
- ``weak view``: one :class:`WeakAugment` call (self-labelling's target view).

Columns: the median time, and the operations that run on the batch's device (counted once on shape-only
``meta`` tensors: no views, no random draws on the CPU). On a GPU each is about one kernel launch, and at
CIFAR sizes the launches, not the arithmetic, set the time. Both ratios divide by the pretext row of the same
run. On a GPU each timed call ends with a synchronise.

    flock /tmp/imclust-bench.lock python benchmarks/augment_speed.py --update
    python benchmarks/augment_speed.py --device cuda --batch 512
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))

from _common import load_average, results_head, table, update_section  # noqa: E402

from imclust.nn.augment import ContrastiveAugment, StrongAugment, WeakAugment  # noqa: E402


def images(n: int, size: int) -> torch.Tensor:
    """``n`` colour images of random pixels in [0, 1] at ``size`` px (no operation's cost depends on the values)."""
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(0))


class _DeviceOpCounter(TorchDispatchMode):
    """Counts the operations that compute on the batch's device: not views, not the CPU's random draws."""

    def __init__(self, device_type: str):
        super().__init__()
        self.device_type, self.count = device_type, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        tensors = tree_flatten((args, kwargs or {}, out))[0]
        if not func.is_view and any(isinstance(t, torch.Tensor) and t.device.type == self.device_type
                                    for t in tensors):
            self.count += 1
        return out


def kernel_launches(make_cases, batch: int, size: int) -> dict[str, int]:
    """Per case, the operations that run on the batch's device, counted on ``meta`` tensors (shapes without
    data): on a GPU each is about one kernel launch."""
    x = torch.empty(2 * batch, 3, size, size, device="meta")
    counts = {}
    for name, fn in make_cases(x).items():
        with _DeviceOpCounter("meta") as counter:
            fn()
        counts[name] = counter.count
    return counts


def median_ms(fn, device: torch.device, repeats: int) -> float:
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    fn()
    sync()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return 1000 * float(np.median(times))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--update", action="store_true", help="write the table into benchmarks/RESULTS.md")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    x = images(2 * args.batch, args.size).to(device)
    pretext, strong, weak = ContrastiveAugment(), StrongAugment(), WeakAugment()

    def make_cases(x):
        anchors, neighbours = x[: args.batch], x[args.batch:]
        gen = torch.Generator().manual_seed(0)
        return {
            "pretext views (2 calls)": lambda: (pretext(anchors, gen), pretext(anchors, gen)),
            "strong views, anchors and neighbours in two calls": lambda: (strong(anchors, gen),
                                                                          strong(neighbours, gen)),
            "strong views, anchors and neighbours in one call": lambda: strong(x, gen),
            "weak view (1 call)": lambda: weak(anchors, gen),
        }

    load_before = load_average()
    cases = make_cases(x)
    ms = {name: median_ms(fn, device, args.repeats) for name, fn in cases.items()}
    ops = kernel_launches(make_cases, args.batch, args.size)
    base = "pretext views (2 calls)"
    rows = [[name, f"{ms[name]:.1f}", f"{ms[name] / ms[base]:.2f}×", ops[name], f"{ops[name] / ops[base]:.2f}×"]
            for name in cases]
    body = table(rows, ["augmentation of one step", "ms (median)", "÷ pretext views", "device operations",
                        "÷ pretext views"])
    print(body)
    if args.update:
        head = (results_head(load_before) + f"Device {device}. Batch {args.batch} images of "
                f"{args.size} px (random pixels), median of {args.repeats} calls after a warm-up.\n\n")
        update_section("augment-speed", head + body)


if __name__ == "__main__":
    main()
