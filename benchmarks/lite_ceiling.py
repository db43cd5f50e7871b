"""How far EfficientNet-Lite features can carry a clustering: neighbour agreement of each feature layer.

For each colour set and each feature (``BACKBONE`` or ``BACKBONE@LAYER``; layers as :class:`PretrainedEncoder`
names them: ``avgpool`` is the default pooled 1,280-d feature, ``stage6``/``stage7`` the pooled outputs of the
last two block stages, ``fc`` the 1,000 ImageNet logits; backbones joined by ``+`` are their features side by side,
as in ``photo_pretrained.py`` (``efficientnet-lite0+efficientnet-lite2``, the encoder of ``photo-lite-pair``); a
``+sqrt`` suffix power-normalises the feature first: signed square root, L2, centred on the set's mean, L2 again, a
transform that reads no labels; a ``+unfolded`` suffix runs the network with ``fold_batchnorm = false``, its
BatchNorms as separate steps, where the encoder's ``auto`` folds them into the convolutions in fp32):

- **20-NN agreement**: the share of each image's 20 nearest neighbours (cosine, all images) that carry its own
  label. This is a diagnostic that reads labels, not a clustering. It measures how often the features put
  an image beside its own class, which is what methods that learn from neighbours (SCAN, TEMI) build on. It
  is a guide, not a bound: a clustering can score above it where the classes are compact blobs;
- **PCA-50 -> GMM ACC**: ``photo-lite``'s own clustering stage on the same features, seeds 0–2 (labels read
  only to score);
- **feature s**: the seconds the features took (set ``$IMCLUST_CACHE_DIR`` to an empty folder to time every
  pass: else features already in the cache are read back).

    python benchmarks/lite_ceiling.py --datasets cifar10-test flowers5 intel-scenes --update
    python benchmarks/lite_ceiling.py --datasets cifar10-test flowers5 intel-scenes eth80 \
        --features efficientnet-lite0 efficientnet-lite0+sqrt --update --section lite-sqrt
    IMCLUST_CACHE_DIR=$(mktemp -d) python benchmarks/lite_ceiling.py --datasets intel-scenes eth80 flowers5 umist \
        digits --features efficientnet-lite0 efficientnet-lite0+unfolded --precision fp32 --update --section lite-fold

Features come from (and go to) the content-hash feature cache, as in ``photo_pretrained.py``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("IMCLUST_QUIET", "1")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from _common import load_average, require_sets, results_head, table, update_section  # noqa: E402
from imclust.data import load_source  # noqa: E402
from imclust.errors import UserError  # noqa: E402
from imclust.metrics import evaluate  # noqa: E402
from imclust.nn.contrastive import mine_neighbours  # noqa: E402
from photo_pretrained import SOURCES, STAGES, features, fit_stage  # noqa: E402

FEATURES = ["efficientnet-lite0", "efficientnet-lite0@stage6", "efficientnet-lite0@stage7", "efficientnet-lite0@fc",
            "efficientnet-lite2"]
NEIGHBOURS = 20


def neighbour_agreement(X: np.ndarray, y: np.ndarray, k: int = NEIGHBOURS) -> float:
    """Share of the k nearest neighbours (cosine; the image itself excluded) that carry the image's label."""
    return float((y[mine_neighbours(X, k)] == y[:, None]).mean())


def power_normalise(X: np.ndarray) -> np.ndarray:
    """Signed square root, L2, centred on the mean of the rows, L2 again (no labels read)."""
    from sklearn.preprocessing import normalize

    Z = normalize(np.sign(X) * np.sqrt(np.abs(X)))
    return normalize(Z - Z.mean(0)).astype(np.float32)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=["cifar10-test", "flowers5", "intel-scenes"], choices=list(SOURCES))
    ap.add_argument("--features", nargs="+", default=FEATURES)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                    help="the encoder's precision (auto: bf16 where the CPU computes it natively)")
    ap.add_argument("--update", action="store_true", help="write the table into benchmarks/RESULTS.md")
    ap.add_argument("--section", default="lite-ceiling", help="the RESULTS.md block that --update rewrites")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    require_sets(SOURCES, args.datasets)
    load_before = load_average()
    lines = []
    for name in args.datasets:
        ds = load_source(str(SOURCES[name]))
        for path in ds.paths or []:  # read once, untimed: the first feature pass would pay for the disk alone
            Path(path).read_bytes()
        y = np.asarray(ds.labels)
        k = len(np.unique(y))
        for feature in args.features:
            transform = "sqrt" if feature.endswith("+sqrt") else ""
            unfolded = feature.endswith("+unfolded")
            backbone, _, layer = feature.removesuffix("+sqrt").removesuffix("+unfolded").partition("@")
            try:
                X, secs, _ = features(ds, backbone, layer or None,
                                      {"precision": args.precision, **({"fold_batchnorm": False} if unfolded else {})})
            except UserError as e:
                sys.exit(f"feature {feature!r}: {e}")
            if transform:
                X = power_normalise(X)
            accs = [evaluate(fit_stage(X, STAGES["PCA-50 -> GMM"], k, seed), y)["acc"] for seed in args.seeds]
            lines.append([f"{name} (n={len(y)})", feature, X.shape[1], f"{neighbour_agreement(X, y):.3f}",
                          f"{np.mean(accs):.3f} ± {np.std(accs):.3f}", f"{secs:.1f}"])
            print(" | ".join(map(str, lines[-1])), flush=True)
    body = table(lines, ["dataset", "feature", "dims", f"{NEIGHBOURS}-NN agreement", "PCA-50 -> GMM ACC", "feature s"])
    print(body)
    if args.update:
        head = results_head(load_before) + (f"Features computed with precision {args.precision} and channels_last; "
                                            f"seeds {args.seeds}.\n\n")
        update_section(args.section, head + body)


if __name__ == "__main__":
    main()
