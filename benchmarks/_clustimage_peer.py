"""The peer for ``select_k.py``: clustimage with its defaults on an image array. Runs under the Python of the
virtual environment clustimage is installed in (it needs numpy and clustimage only, not imclust).

    python _clustimage_peer.py images.npy out.json SEED [K]

``images.npy``: (n, H, W, C) uint8. clustimage's defaults: the flattened pixels, PCA keeping 95 % of the
variance, agglomerative (Ward) clustering, k chosen by silhouette between 3 and 25; with K, k = K
(``min_clust = max_clust = K``). Writes the labels.
"""

import json
import sys

import numpy as np


def main():
    from clustimage import Clustimage

    images, out, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
    k = int(sys.argv[4]) if len(sys.argv) > 4 else None
    np.random.seed(seed)
    x = np.load(images, allow_pickle=False)
    n, h, w, c = x.shape
    grey = c == 1
    cl = Clustimage(grayscale=grey, dim=(h, w), verbose="error")
    res = cl.fit_transform(x.reshape(n, -1)) if k is None else cl.fit_transform(x.reshape(n, -1), min_clust=k, max_clust=k)
    labels = np.asarray(res["labels"]).astype(int)
    with open(out, "w") as fh:
        json.dump({"labels": labels.tolist()}, fh)


if __name__ == "__main__":
    main()
