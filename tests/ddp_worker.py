"""Run by tests/test_distributed.py, once as a plain process and once under torchrun with 2 CPU processes.

It trains (a) a small regression net through the shared Trainer and (b) DeepCluster for one epoch, and
gathers a small JSON record from every rank, and writes what the test compares into OUT/<world size>/.
"""

import json
import os
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from conftest import blobs_images  # noqa: E402
from imclust.data.sources import _array_imageset  # noqa: E402
from imclust.encoders.deepcluster import DeepClusterEncoder  # noqa: E402
from imclust.nn import distributed as ddp  # noqa: E402
from imclust.nn.train import TrainConfig, Trainer, batch_indices  # noqa: E402


def main(out: Path):
    world = int(os.environ.get("WORLD_SIZE", "1"))
    out = out / str(world)
    # (a) the shared loop: 2 ranks with half a batch each and averaged gradients = one process, whole batches
    rs = np.random.RandomState(0)
    X = rs.rand(64, 6).astype(np.float32)
    Y = X @ rs.rand(6, 2).astype(np.float32)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 2))
    tr = Trainer({"net": net}, TrainConfig(epochs=2, batch_size=16, lr=0.1, optimizer="sgd", seed=1,
                                            checkpoint_dir=str(out / "ckpt"), checkpoint_every=1))
    step = lambda idx, t: ((t.modules["net"](t.to_device(X[idx])) - t.to_device(Y[idx])) ** 2).mean()
    hist = tr.fit(step, lambda e, g: batch_indices(len(X), 16, g))
    # (b) DeepCluster, one epoch: features on each rank's share, k-means on rank 0, labels broadcast
    Xi, _ = blobs_images(n_per=24, k=3, size=12)
    ds = _array_imageset(Xi, None, "blobs", "array")
    enc = DeepClusterEncoder(k_train=8, epochs=1, batch_size=16, pca_dim=16, width=4, feat_dim=16,
                             flip=False, kmeans_iter=5, feature_batch=10, device="cpu", seed=3).fit(ds)
    feats = enc.transform(ds)
    # (c) small records (a rank's unreadable files) gathered as JSON, in rank order
    records = ddp.all_gather_json({str(ddp.rank() * 10 + 3): f"rank {ddp.rank()}: bad file"})
    if ddp.is_main():
        out.mkdir(parents=True, exist_ok=True)
        (out / "records.json").write_text(json.dumps(records))
        np.save(out / "trainer_weights.npy", np.concatenate([p.detach().numpy().ravel() for p in net.parameters()]))
        np.save(out / "trainer_loss.npy", np.array([h["loss"] for h in hist]))
        np.save(out / "pseudo_labels.npy", enc.pseudo_labels_)
        np.save(out / "features.npy", feats)
    else:
        np.save(out.parent / f"rank{ddp.rank()}_pseudo_labels.npy", enc.pseudo_labels_)
    ddp.barrier()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
