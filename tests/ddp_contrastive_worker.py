"""Run by tests/test_contrastive.py under torchrun with 2 CPU processes (gloo), and once as a plain process.

(a) NT-Xent with the projections of a global batch split over the processes: the loss averaged over the
processes and the gradients (over the processes' rows) are written for comparison with one process;
(b) the SimCLR encoder trains one epoch through DDP, and its features are written.
"""

import os
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from conftest import blobs_images  # noqa: E402
from imclust import components  # noqa: E402,F401
from imclust.base import build  # noqa: E402
from imclust.data.sources import _array_imageset  # noqa: E402
from imclust.nn import distributed as ddp  # noqa: E402
from imclust.nn.contrastive import nt_xent  # noqa: E402


def main(out: Path):
    world = int(os.environ.get("WORLD_SIZE", "1"))
    out = out / str(world)
    ddp.init_from_env(torch.device("cpu"))
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(8, 5, generator=g), torch.randn(8, 5, generator=g)
    rows = np.array_split(np.arange(8), world)[ddp.rank()]
    a, b = z1[rows].clone().requires_grad_(True), z2[rows].clone().requires_grad_(True)
    loss = nt_xent(a, b, 0.3)
    loss.backward()
    mean_loss = ddp.mean_scalar(float(loss))
    grads = ddp.all_gather_rows(torch.cat([a.grad, b.grad], 1).numpy(), len(rows), 8)
    Xi, _ = blobs_images(n_per=16, k=2, size=12)
    enc = build({"type": "simclr", "width": 4, "epochs": 1, "batch_size": 16, "cache": False, "device": "cpu",
                 "seed": 2}, kind="encoder").fit(_array_imageset(Xi, None, "blobs", "array"))
    feats = enc.transform(_array_imageset(Xi, None, "blobs", "array"))
    if ddp.is_main():
        out.mkdir(parents=True, exist_ok=True)
        np.save(out / "loss.npy", np.array([mean_loss]))
        np.save(out / "grads.npy", grads)
        np.save(out / "features.npy", feats)
    ddp.barrier()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
