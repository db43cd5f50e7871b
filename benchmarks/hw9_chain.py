"""Tutorial 1's chain on 9,000 CIFAR-10 training images: our KernelPCA + t-SNE + MiniBatchKMeans against
the tutorial's own scikit-learn calls, on the same latents, in the same run.

Data: 900 images per class from ``cifar10/train`` (the first 900 files of each class folder, sorted),
scored as a binary task: vehicles (airplane, automobile, ship, truck) against animals. ACC uses the
Hungarian matching, which for two clusters is the tutorial's max(acc, 1 - acc).

Latents: the tutorial's conv autoencoder (``conv_hw9``), trained here only briefly (``--epochs``, default 2,
at lr 1e-3, bf16 + channels_last) because the tutorial's 100 epochs at lr 1e-5 take hours on this CPU.
The latents are flattened to 4096-d, as in the tutorial. Labels are read only to score.

Tutorial (scikit-learn): KernelPCA(n_components=200, kernel='rbf', n_jobs=-1) -> TSNE(n_components=2) ->
MiniBatchKMeans(n_clusters=2, random_state=0).
Ours (imclust): kernel_pca (float32 kernel, randomized eigensolver) -> tsne (openTSNE, FFT) ->
minibatch_kmeans(k=2), i.e. the reducers of the ``hw9`` recipe.

    flock /tmp/imclust-bench.lock python benchmarks/hw9_chain.py --seeds 0 1 2 --write
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("IMCLUST_QUIET", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from _common import load_average, results_head, update_section  # noqa: E402

from imclust import components  # noqa: E402,F401
from imclust.metrics import evaluate  # noqa: E402

DATA = Path(os.environ.get("IMCLUST_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
VEHICLES = {"airplane", "automobile", "ship", "truck"}


def load_cifar_9000(per_class: int = 900):
    from PIL import Image

    root = DATA / "cifar10" / "train"
    xs, ys = [], []
    for c in CLASSES:
        files = sorted((root / c).glob("*.jpg"))[:per_class]
        if len(files) < per_class:
            raise SystemExit(f"{root / c}: only {len(files)} images, need {per_class}")
        for f in files:
            xs.append(np.asarray(Image.open(f).convert("RGB"), dtype=np.uint8))
            ys.append(int(c in VEHICLES))
    return np.stack(xs), np.array(ys)


def latents(x_uint8: np.ndarray, epochs: int, seed: int) -> tuple[np.ndarray, float, list]:
    from imclust.data.imageset import ImageSet
    from imclust.encoders.autoencoder import AutoencoderEncoder

    x = (np.transpose(x_uint8, (0, 3, 1, 2)).astype(np.float32) / 255.0)
    ds = ImageSet([str(i) for i in range(len(x))], lambda idx: x[np.asarray(idx)], x.shape[1:], kind="array")
    t = time.perf_counter()
    enc = AutoencoderEncoder(arch="conv_hw9", epochs=epochs, batch_size=64, lr=1e-3, weight_decay=1e-5, seed=seed,
                             precision="bf16", channels_last=True).fit(ds)
    z = enc.transform(ds)
    return z, time.perf_counter() - t, enc.history_


def tutorial_chain(Z: np.ndarray):
    from sklearn.cluster import MiniBatchKMeans
    from sklearn.decomposition import KernelPCA
    from sklearn.manifold import TSNE

    t = {}
    s = time.perf_counter()
    kpca = KernelPCA(n_components=200, kernel="rbf", n_jobs=-1).fit_transform(Z)
    t["kernel_pca"] = time.perf_counter() - s
    s = time.perf_counter()
    emb = TSNE(n_components=2).fit_transform(kpca)
    t["tsne"] = time.perf_counter() - s
    s = time.perf_counter()
    pred = MiniBatchKMeans(n_clusters=2, random_state=0).fit(emb).labels_
    t["minibatch_kmeans"] = time.perf_counter() - s
    return np.asarray(pred), t


def our_chain(Z: np.ndarray, seed: int):
    from imclust.cluster import MiniBatchKMeans
    from imclust.reduce import TSNE, KernelPCA

    t = {}
    s = time.perf_counter()
    kpca = KernelPCA(n_components=200, kernel="rbf", method="exact", store_training_data=False,
                     random_state=seed).fit_transform(Z)
    t["kernel_pca"] = time.perf_counter() - s
    s = time.perf_counter()
    emb = TSNE(n_components=2, random_state=seed, out_of_sample="none").fit_transform(kpca)
    t["tsne"] = time.perf_counter() - s
    s = time.perf_counter()
    pred = MiniBatchKMeans(n_clusters=2, random_state=0).fit_predict(emb)
    t["minibatch_kmeans"] = time.perf_counter() - s
    return np.asarray(pred), t


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2],
                    help="seeds of our chain and of the tutorial chain's repeat (numpy global seed)")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--torch-threads", type=int, default=1)
    ap.add_argument("--write", action="store_true", help="replace the table in benchmarks/RESULTS.md")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.torch_threads)
    load_before = load_average()
    x, y = load_cifar_9000()
    Z, ae_s, hist = latents(x, args.epochs, 0)
    print(f"latents {Z.shape} in {ae_s:.0f} s; loss per epoch {[round(h['loss'], 4) for h in hist]}", flush=True)
    rows = []
    for seed in args.seeds:
        np.random.seed(seed)  # the tutorial's TSNE has no random_state: it draws from numpy's global state
        p_t, t_t = tutorial_chain(Z)
        p_o, t_o = our_chain(Z, seed)
        r = {"seed": seed, "tutorial": {**evaluate(p_t, y), "times": t_t}, "ours": {**evaluate(p_o, y), "times": t_o}}
        rows.append(r)
        print(json.dumps({"seed": seed, "acc_tutorial": r["tutorial"]["acc"], "acc_ours": r["ours"]["acc"],
                          "s_tutorial": sum(t_t.values()), "s_ours": sum(t_o.values()), "t_tut": t_t, "t_ours": t_o}),
              flush=True)
    st = np.array([sum(r["tutorial"]["times"].values()) for r in rows])
    so = np.array([sum(r["ours"]["times"].values()) for r in rows])
    at = np.array([r["tutorial"]["acc"] for r in rows])
    ao = np.array([r["ours"]["acc"] for r in rows])

    def stage(name, who):
        return np.mean([r[who]["times"][name] for r in rows])

    lines = ["| chain | KernelPCA s | t-SNE s | MiniBatchKMeans s | total s | binary ACC (mean ± sd) | NMI | ARI |",
             "|---|---|---|---|---|---|---|---|"]
    for who, label in (("tutorial", "tutorial's scikit-learn calls"), ("ours", "imclust (hw9 reducers)")):
        lines.append(f"| {label} | {stage('kernel_pca', who):.1f} | {stage('tsne', who):.1f} | "
                     f"{stage('minibatch_kmeans', who):.2f} | {np.mean([sum(r[who]['times'].values()) for r in rows]):.1f} | "
                     f"{np.mean([r[who]['acc'] for r in rows]):.3f} ± {np.std([r[who]['acc'] for r in rows]):.3f} | "
                     f"{np.mean([r[who]['nmi'] for r in rows]):.3f} | {np.mean([r[who]['ari'] for r in rows]):.3f} |")
    summary = (f"Speed-up (tutorial time / our time, mean over {len(rows)} seeds): **{st.mean() / so.mean():.2f}×**; "
               f"ACC difference (ours − tutorial): {ao.mean() - at.mean():+.3f}. Latents: conv_hw9 trained "
               f"{args.epochs} epoch(s) at lr 1e-3 in {ae_s:.0f} s (final loss {hist[-1]['loss']:.4f}), not the "
               f"tutorial's 100 epochs at lr 1e-5.")
    table = "\n".join(lines)
    print(table + "\n" + summary)
    if args.write:
        update_section("hw9-chain", results_head(load_before) + "\n9,000 CIFAR-10 train images (900/class), vehicles "
                       f"vs animals.\n\n{table}\n\n{summary}")


if __name__ == "__main__":
    main()
