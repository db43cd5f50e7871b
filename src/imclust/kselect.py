"""Choosing the number of clusters from the embedding alone: ``--k auto`` and ``--k auto:MIN-MAX``.

The criterion is the **stability gap**. For each candidate k, k-means is fitted on several random
subsamples of (a sample of) the run's embedding and the fits are compared on the same points with the
adjusted Rand index (ARI): a k that matches real groups gives the same partition whichever subsample it
was fitted on. Some k are stable on any data (k-means cuts an elongated cloud the same way every time),
so the same measurement is repeated on a reference sample that has no clusters, a Gaussian with the
embedding's mean and covariance, and the score of k is the difference: how much more stable the data's
partition is than a structureless cloud's. A cloud only gets less stable as k grows, so the reference curve
is replaced by its best non-increasing fit (this removes the luck of single fits at small k). The score is
this gap smoothed with weights 1-2-1 over neighbouring candidates that have a positive gap (a k less stable
than the cloud scores 0); the chosen k is the smallest candidate whose score reaches :data:`PLATEAU` of the
best one: among the k the data support about equally well, the coarsest.
The runner-up is the best-scoring candidate clearly apart from the chosen one.

Nothing here reads labels, and nothing refits the encoder: only the embedding the clusterer sees is used.
An embedding wider than :data:`MAX_DIMS` (pretrained features: 384–1,280 dimensions) is compared on the
sample's leading :data:`MAX_DIMS` principal components, the width the manifold recipes reduce to as well:
k-means partitions are decided by the leading directions, and hundreds of k-means fits per candidate in
1,280 dimensions would cost minutes where the run with k given takes seconds.
Candidates are every k up to 20, then steps of about 10 % (the grid the report draws).
"""

from __future__ import annotations

import re
import time
import warnings
from dataclasses import asdict, dataclass

import numpy as np

from .errors import UserError
from .progress import log, progress

CRITERION = "stability gap"
MAX_DEFAULT_K = 100  # the upper end of plain --k auto on large sets
IMAGES_PER_CLUSTER = 10  # plain --k auto looks at most at n / 10 clusters
SAMPLE = 2000  # points the candidates are evaluated on (more when k_max asks for it)
POINTS_PER_CLUSTER = 20  # the sample holds at least this many points per cluster of k_max
REPEATS = 5  # k-means fits per candidate (pairs compared: REPEATS * (REPEATS - 1) / 2)
N_INIT = 2  # k-means++ starts per fit
SUBSAMPLE = 0.8  # share of the sample each fit sees
PLATEAU = 0.9  # chosen: the smallest k whose smoothed score reaches this share of the best
APART = 1.25  # the runner-up differs from the chosen k by at least this factor
WEAK = 0.1  # a best score below this: the groups are barely more reproducible than in a cloud without any
MAX_DIMS = 50  # wider embeddings are compared on the sample's leading principal components (the recipes' PCA-50)

_AUTO = re.compile(r"auto(?::(\d+)-(\d+))?")


def is_auto(k) -> bool:
    """True for ``"auto"`` and ``"auto:MIN-MAX"`` (any string starting with ``auto``: bad bounds are
    reported by :func:`parse_auto`)."""
    return isinstance(k, str) and k.strip().lower().startswith("auto")


def default_k_max(n: int) -> int:
    """The upper end of plain ``--k auto``: about one cluster per ten images, at most 100."""
    return int(max(2, min(MAX_DEFAULT_K, n // IMAGES_PER_CLUSTER, n - 1)))


def parse_auto(text: str, n: int | None = None) -> tuple[int, int]:
    """``"auto"`` or ``"auto:MIN-MAX"`` -> (k_min, k_max). With ``n`` (the number of images) the bounds
    are checked against it and plain ``auto`` gets its default range; a bad value raises a one-line
    :class:`UserError`."""
    s = str(text).strip().lower()
    m = _AUTO.fullmatch(s)
    if m is None:
        raise UserError(f"--k {text}: write a whole number, 'auto', or 'auto:MIN-MAX' with whole numbers "
                        "(for example --k auto:2-30)")
    if n is not None and n < 3:
        raise UserError(f"--k {text}: cannot choose k automatically for {n} image(s); pass a number with --k")
    if m.group(1) is None:
        return 2, (default_k_max(n) if n is not None else MAX_DEFAULT_K)
    lo, hi = int(m.group(1)), int(m.group(2))
    if lo < 2:
        raise UserError(f"--k {text}: MIN must be at least 2 (one cluster needs no choosing); "
                        f"for example --k auto:2-{max(hi, 2)}")
    if lo > hi:
        raise UserError(f"--k {text}: MIN ({lo}) is larger than MAX ({hi}); write --k auto:{hi}-{lo}")
    if n is not None and hi > n // 2:
        raise UserError(f"--k {text}: MAX ({hi}) must be at most half the number of images ({n} images, so at most "
                        f"{n // 2}; k is chosen by comparing fits on subsamples); for example "
                        f"--k auto:{min(lo, max(2, n // 2))}-{max(2, min(n // 2, default_k_max(n)))}")
    return lo, hi


def candidates(k_min: int, k_max: int) -> list[int]:
    """Every k up to 20, then steps of about 10 % up to ``k_max`` (always included)."""
    ks = list(range(k_min, min(k_max, 20) + 1)) or [k_min]
    k = max(20, k_min)
    while k < k_max:
        k = min(k_max, int(np.ceil(k * 1.1)))
        ks.append(k)
    return sorted(set(ks))


@dataclass
class KSelection:
    """What :func:`select_k` found: the chosen k, the runner-up and the whole curve (one value per candidate)."""

    k: int
    runner_up: int | None
    k_min: int
    k_max: int
    candidates: list
    score: list  # the criterion: the stability gap, smoothed over candidates with a positive gap
    gap: list  # stability - reference, before smoothing
    stability: list  # mean ARI between fits on the embedding
    reference: list  # the same on the structureless reference sample (its non-increasing fit)
    stability_sd: list
    criterion: str = CRITERION
    plateau: float = PLATEAU
    sample_size: int = 0
    dims: int | None = None  # the principal components the sample was compared on; None: the embedding itself
    repeats: int = REPEATS
    seed: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    def scores(self) -> dict[int, float]:
        return dict(zip(self.candidates, self.score))

    @property
    def weak(self) -> bool:
        """True when no candidate scored :data:`WEAK` or more: the embedding shows no clear groups."""
        return len(self.candidates) > 1 and max(self.score) < WEAK


def adjusted_rand(a: np.ndarray, b: np.ndarray) -> float:
    """The adjusted Rand index of two labelings (0..k-1) of the same points; equal to scikit-learn's
    ``adjusted_rand_score``, computed from one ``bincount`` (hundreds of comparisons per choice)."""
    a, b = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
    n, kb = len(a), int(b.max()) + 1
    table = np.bincount(a * kb + b, minlength=(int(a.max()) + 1) * kb).reshape(-1, kb).astype(np.float64)

    def pairs(x):
        return float((x * (x - 1)).sum() / 2)

    both, rows, cols = pairs(table), pairs(table.sum(1)), pairs(table.sum(0))
    expected = rows * cols / (n * (n - 1) / 2) if n > 1 else 0.0
    top = (rows + cols) / 2
    return 1.0 if top == expected else (both - expected) / (top - expected)


def _stability(X: np.ndarray, ks, subsets, seed: int, bar) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation over pairs of fits of the ARI between k-means fits on ``subsets``."""
    from sklearn.cluster import KMeans

    mean, sd = np.zeros(len(ks)), np.zeros(len(ks))
    r = len(subsets)
    for j, k in enumerate(ks):
        labels = []
        for i, idx in enumerate(subsets):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # a few duplicate points may leave a cluster empty
                km = KMeans(int(k), n_init=N_INIT, max_iter=100, random_state=seed + 7919 * i + k).fit(X[idx])
            labels.append(km.predict(X))
        a = [adjusted_rand(labels[p], labels[q]) for p in range(r) for q in range(p + 1, r)]
        mean[j], sd[j] = float(np.mean(a)), float(np.std(a))
        bar.update(1)
    return mean, sd


def _non_increasing(ks: np.ndarray, v: np.ndarray) -> np.ndarray:
    """The least-squares non-increasing fit of ``v`` over ``ks`` (pool adjacent violators)."""
    from sklearn.isotonic import IsotonicRegression

    return IsotonicRegression(increasing=False).fit(ks, v).predict(ks)


def _smooth(gap: np.ndarray) -> np.ndarray:
    """The score: each candidate's gap averaged with weights 1-2-1 with its neighbours on the grid, counting only
    candidates with a positive gap (one less stable than the cloud is no support, and must not drag down a sharp
    peak next to it); a candidate with no positive gap scores 0."""
    w = (gap > 0).astype(float)
    v = np.concatenate([[0.0], gap * w, [0.0]])
    c = np.concatenate([[0.0], w, [0.0]])
    total = v[:-2] + 2 * v[1:-1] + v[2:]
    weight = c[:-2] + 2 * c[1:-1] + c[2:]
    return np.where(w > 0, total / np.maximum(weight, 1e-12), 0.0)


def select_k(X, k="auto", random_state: int | None = 0) -> KSelection:
    """Choose k for the embedding ``X`` (n, d) by the stability gap; ``k`` is ``"auto"`` or ``"auto:MIN-MAX"``."""
    t0 = time.perf_counter()
    X = np.asarray(X, dtype=np.float32).reshape(len(X), -1)
    n = len(X)
    k_min, k_max = parse_auto(k, n)
    if not np.all(np.isfinite(X)):
        raise UserError("the embedding holds NaN or inf values; k cannot be chosen on it")
    seed = int(random_state or 0)
    ks = candidates(k_min, k_max)
    if len(ks) == 1:
        log(f"k={ks[0]}: the only value allowed by --k {k}")
        z = [0.0]
        return KSelection(ks[0], None, k_min, k_max, ks, z, z, z, z, z, sample_size=0, seed=seed,
                          seconds=time.perf_counter() - t0)
    rs = np.random.RandomState(seed)
    m = min(n, max(SAMPLE, POINTS_PER_CLUSTER * k_max))
    sample = X[np.sort(rs.choice(n, m, replace=False))] if m < n else X
    dims = None
    if sample.shape[1] > MAX_DIMS:
        from .reduce import PCA

        dims = int(min(MAX_DIMS, m))
        sample = PCA(dims, random_state=seed).fit_transform(sample)
    sample = sample.astype(np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a flat direction makes the covariance only semi-definite: fine here
        reference = rs.multivariate_normal(sample.mean(0), np.atleast_2d(np.cov(sample, rowvar=False)), size=m)
    subsets = [np.sort(rs.choice(m, int(SUBSAMPLE * m), replace=False)) for _ in range(REPEATS)]
    with progress(total=2 * len(ks), desc="choose k", unit="fit-set") as bar:
        stab, stab_sd = _stability(sample, ks, subsets, seed, bar)
        ref, _ = _stability(reference, ks, subsets, seed, bar)
    ref = _non_increasing(np.asarray(ks, dtype=float), ref)
    gap = stab - ref
    score = _smooth(gap)
    best = float(score.max())
    if best > 0:
        chosen = int(ks[int(np.flatnonzero(score >= PLATEAU * best)[0])])
    else:  # nothing is more stable than a structureless cloud: take the least bad
        chosen = int(ks[int(np.argmax(gap))])
    apart = [j for j, kk in enumerate(ks) if max(kk, chosen) / min(kk, chosen) >= APART]
    runner_up = int(ks[max(apart, key=lambda j: score[j])]) if apart else None
    sel = KSelection(chosen, runner_up, k_min, k_max, [int(v) for v in ks], _round(score), _round(gap),
                     _round(stab), _round(ref), _round(stab_sd), sample_size=int(m), dims=dims, seed=seed,
                     seconds=time.perf_counter() - t0)
    log(f"chose k={chosen} by the {CRITERION} among {k_min}-{k_max}" +
        (f" (on the embedding's {dims} leading principal components)" if dims else "") +
        (f" (runner-up k={runner_up})" if runner_up is not None else "") + (
            "; no k gave groups clearly more reproducible than a cloud without clusters, so this choice is weak"
            if sel.weak else ""))
    return sel


def _round(v) -> list:
    return [round(float(x), 5) for x in v]


def rerun_template(argv, source: str, recipe: str, seed, out) -> str:
    """The shell command that repeats this run with another k, ``{k}`` marking where k goes.

    From the command line that ran (``imclust run ...`` or ``python -m imclust run ...``) with its ``--k``
    and ``--out`` replaced; for a run started from Python, the equivalent ``imclust run`` call.
    """
    import shlex
    from pathlib import Path

    argv = [str(a) for a in (argv or [])]
    out_k = shlex.quote(f"{str(out).rstrip('/')}-k") + "{k}"
    cli = len(argv) > 1 and Path(argv[0]).name in ("imclust", "__main__.py") and argv[1] == "run"
    if not cli:
        args = [source, "--recipe", recipe] + ([] if seed is None else ["--seed", str(seed)])
        return "imclust run " + " ".join(shlex.quote(a) for a in args) + f" --k {{k}} --out {out_k}"
    keep, skip = [], False
    for a in argv[2:]:
        if skip:
            skip = False
            continue
        if a in ("--k", "--out"):
            skip = True
            continue
        if a.startswith(("--k=", "--out=")):
            continue
        keep.append(a)
    return "imclust run " + " ".join(shlex.quote(a) for a in keep) + f" --k {{k}} --out {out_k}"
