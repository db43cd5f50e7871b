"""Choosing the number of clusters from the embedding alone: ``--k auto`` and ``--k auto:MIN-MAX``.

Two criteria read the same sample of the run's embedding, and k is their consensus.

The **stability gap.** For each candidate k, k-means is fitted on several random subsamples of the sample and
the fits are compared on the same points with the adjusted Rand index (ARI): a k that matches real groups gives
the same partition whichever subsample it was fitted on. Some k are stable on any data (k-means cuts an
elongated cloud the same way every time), so the same measurement is repeated on a reference sample that has
no clusters, a Gaussian with the embedding's mean and covariance, and the score of k is the difference: how
much more stable the data's partition is than a structureless cloud's. A cloud only gets less stable as k
grows, so the reference curve is replaced by its best non-increasing fit (this removes the luck of single fits
at small k). The score is this gap smoothed with weights 1-2-1 over neighbouring candidates that have a
positive gap (a k less stable than the cloud scores 0); this criterion's k is the smallest candidate whose
score reaches :data:`PLATEAU` of the best one: among the k the data support about equally well, the coarsest.

**Reproducible clusters** (Tibshirani and Walther's prediction strength, read per cluster). The sample is cut
in random halves; k-means is fitted on each half, and a cluster of one half is reproduced when the other half's
centroids keep at least :data:`TOGETHER` of its pairs of points together. This criterion's k is the largest at
which at least :data:`REPRODUCED` of the clusters are reproduced (both ways, every halving) while the same
Gaussian cloud does not reach that share: the finest partition whose every group stands on its own.

The two err in opposite directions: the stability gap takes the coarsest k of a plateau, reproducible clusters
the finest k that holds. **The chosen k is the candidate nearest (on a log scale) to the geometric mean of
the two.** The runner-up is the best stability-gap score clearly apart from the chosen k. When the two
criteria's k differ by :data:`DISAGREE` or more, the embedding holds groups at more than one scale (objects and
their categories, people and their poses) and the compromise between them is uncertain: the log and the report
say so and name both ends, so that a user who knows which grain they want can rerun there.
When the best score is the largest candidate's, the curve does not show where it stops rising: the log and the
report say so and give a range reaching twice as far (:func:`wider_range`).

Nothing here reads labels, and nothing refits the encoder: only the embedding the clusterer sees is used.
An embedding wider than :data:`MAX_DIMS` (pretrained features: 384–1,280 dimensions) is compared on the
sample's leading :data:`MAX_DIMS` principal components, the width the manifold recipes reduce to as well:
k-means partitions are decided by the leading directions, and hundreds of k-means fits per candidate in
1,280 dimensions would cost minutes where the run with k given takes seconds.
Candidates are every k up to 20, then steps of about :data:`GRID_STEP` (the grid the report draws).
"""

from __future__ import annotations

import re
import time
import warnings
from dataclasses import asdict, dataclass

import numpy as np

from .errors import UserError
from .progress import log, progress

CRITERION = "stability gap and reproducible clusters"
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
HALVED_SAMPLE = 3000  # points the reproducible-clusters criterion cuts in halves (more when k_max asks for it)
POINTS_PER_HALF_CLUSTER = 15  # each half holds at least this many points per cluster of k_max
HALVINGS = 3  # random halvings per candidate (each fits k-means on both halves)
TOGETHER = 0.7  # a cluster is reproduced when the other half's fit keeps this share of its pairs of points together
REPRODUCED = 0.95  # the reproducible-clusters k: the largest at which this share of the clusters is reproduced
DISAGREE = 2.0  # the criteria's k differ by this factor or more: the choice between them is uncertain
GRID_STEP = 1.1  # above 20, each candidate is this factor (rounded up) above the previous one

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
    """Every k up to 20, then steps of :data:`GRID_STEP` (rounded up) up to ``k_max`` (always included)."""
    ks = list(range(k_min, min(k_max, 20) + 1)) or [k_min]
    k = max(20, k_min)
    while k < k_max:
        k = min(k_max, int(np.ceil(k * GRID_STEP)))
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
    score: list  # the stability gap, smoothed over candidates with a positive gap
    gap: list  # stability - reference, before smoothing
    stability: list  # mean ARI between fits on the embedding
    reference: list  # the same on the structureless reference sample (its non-increasing fit)
    stability_sd: list
    reproduced: list  # share of the clusters reproduced across halvings of the embedding's sample
    reproduced_reference: list  # the same on the structureless reference sample (None: not needed, not fitted)
    k_stability: int  # the stability gap's choice
    k_reproduced: int  # the reproducible-clusters choice
    criterion: str = CRITERION
    plateau: float = PLATEAU
    sample_size: int = 0
    halved_sample_size: int = 0
    halvings: int = HALVINGS
    together: float = TOGETHER
    reproduced_share: float = REPRODUCED
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
        """True when no candidate scored :data:`WEAK` or more (:func:`scores_weak`)."""
        return scores_weak(self.score)

    @property
    def peaks_at_top(self) -> bool:
        """True when the largest candidate scored above every other (:func:`scores_peak_at_top`)."""
        return scores_peak_at_top(self.score)

    @property
    def uncertain(self) -> bool:
        """True when the two criteria's k differ by :data:`DISAGREE` or more (:func:`criteria_disagree`)."""
        return criteria_disagree(self.k_stability, self.k_reproduced)


def scores_weak(score) -> bool:
    """True when there was a choice (two candidates or more) and no candidate's score reached :data:`WEAK`: the
    embedding shows no groups clearly more reproducible than a cloud without any."""
    return len(score) > 1 and max(float(v) for v in score) < WEAK


def scores_peak_at_top(score) -> bool:
    """True when there was a choice and the largest candidate scored above every other: the curve still rises
    where the candidates end, so it does not show whether finer groupings score higher still. A tie (a flat
    curve, every score 0 on a cloud without groups) is not a rise."""
    values = [float(v) for v in score]
    return len(values) > 1 and values[-1] > max(values[:-1])


def wider_range(k_min: int, k_max: int, n: int) -> str | None:
    """``auto:MIN-MAX`` reaching twice as far as ``k_max`` (at most half the ``n`` images, :func:`parse_auto`'s
    limit); None when ``k_max`` is already that limit."""
    hi = min(n // 2, 2 * k_max)
    return f"auto:{k_min}-{hi}" if hi > k_max else None


def criteria_disagree(k_stability: int, k_reproduced: int) -> bool:
    """True when the stability gap's k and the reproducible clusters' k differ by :data:`DISAGREE` or more: the
    embedding supports groups at two scales, and the chosen k, between them, is a compromise."""
    return max(k_stability, k_reproduced) / min(k_stability, k_reproduced) >= DISAGREE


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


def _kmeans(X: np.ndarray, k: int, random_state: int):
    """The k-means fit both criteria make: :data:`N_INIT` k-means++ starts, at most 100 iterations."""
    from sklearn.cluster import KMeans

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a few duplicate points may leave a cluster empty
        return KMeans(int(k), n_init=N_INIT, max_iter=100, random_state=random_state).fit(X)


def _stability_at(X: np.ndarray, k: int, subsets, seed: int) -> tuple[float, float]:
    """Mean and standard deviation over pairs of fits of the ARI between k-means fits on ``subsets``."""
    labels = [_kmeans(X[idx], k, seed + 7919 * i + k).predict(X) for i, idx in enumerate(subsets)]
    r = len(subsets)
    a = [adjusted_rand(labels[p], labels[q]) for p in range(r) for q in range(p + 1, r)]
    return float(np.mean(a)), float(np.std(a))


def pairs_kept_together(labels: np.ndarray, other: np.ndarray) -> np.ndarray:
    """For each cluster of ``labels`` with at least two points: the share of its pairs of points that ``other``
    (another clustering of the same points) also puts in one cluster."""
    from .metrics import contingency

    table = contingency(other, labels)[0].astype(np.float64)  # clusters of labels × clusters of other
    size = table.sum(1)
    judged = size >= 2
    return (table * (table - 1)).sum(1)[judged] / (size * (size - 1))[judged]


def _reproduced_at(X: np.ndarray, k: int, halves, seed: int) -> float:
    """The mean share, over halvings and both directions, of one half's k-means clusters that the other half's
    fit reproduces (keeps :data:`TOGETHER` of their pairs together)."""
    shares = []
    for i, (a, b) in enumerate(halves):
        fa, fb = _kmeans(X[a], k, seed + 2 * i), _kmeans(X[b], k, seed + 2 * i + 1)
        for fit, other, half in ((fa, fb, a), (fb, fa, b)):
            kept = pairs_kept_together(fit.labels_, other.predict(X[half]))
            shares.append(float((kept >= TOGETHER).mean()) if len(kept) else 0.0)
    return float(np.mean(shares))


def _curves(sample, reference, halved, halved_reference, ks, subsets, halves, seed: int):
    """Every candidate's fits for both criteria, on the data and on the reference. The fits are independent, so
    they run in a pool of the thread policy's size, each on one thread (k-means on a few thousand points is too
    small to share); each fit's seed is fixed, so the curves do not depend on the number of threads.

    The cloud's reproducible-clusters share only decides whether the largest k the data reproduces counts, so it
    is fitted where the data's share reaches :data:`REPRODUCED`, from the largest such k down, until a k the cloud
    does not reproduce turns up; the other candidates keep ``None``. Only when none turns up is the whole curve
    fitted (the criterion then compares the two curves everywhere)."""
    from concurrent.futures import ThreadPoolExecutor

    from threadpoolctl import threadpool_limits

    from .threads import get_threads

    def one_openmp_thread():  # OpenMP's thread count is per thread: each worker sets its own
        threadpool_limits(1, user_api="openmp")

    width = max(1, get_threads())
    with progress(total=0, desc="choose k", unit="fit-set") as bar, threadpool_limits(1, user_api="blas"), \
            ThreadPoolExecutor(width, initializer=one_openmp_thread) as pool:
        def fit_all(jobs):  # (name, fit-set function, points, subsets or halves, k) -> {(name, k): result}
            jobs = sorted(jobs, key=lambda job: -job[4])  # the largest k first: the pool ends with short jobs
            bar.total += len(jobs)
            bar.refresh()

            def one(job):
                _, fn, Z, parts, k = job
                out = fn(Z, k, parts, seed)
                bar.update(1)
                return out

            return dict(zip([(job[0], job[4]) for job in jobs], pool.map(one, jobs)))

        def cloud_kept(some_ks):
            fits = fit_all([("cloud", _reproduced_at, halved_reference, halves, k) for k in some_ks])
            return {k: v for (_, k), v in fits.items()}

        fits = fit_all([(name, fn, Z, parts, k) for name, fn, Z, parts in (
            ("stability", _stability_at, sample, subsets), ("reference", _stability_at, reference, subsets),
            ("reproduced", _reproduced_at, halved, halves)) for k in ks])
        kept_ref: dict = {}
        todo = sorted((k for k in ks if fits["reproduced", k] >= REPRODUCED), reverse=True)
        while todo and all(v >= REPRODUCED for v in kept_ref.values()):
            kept_ref.update(cloud_kept(todo[:width]))
            todo = todo[width:]
        if all(v >= REPRODUCED for v in kept_ref.values()):
            kept_ref.update(cloud_kept([k for k in ks if k not in kept_ref]))
    stab = np.array([fits["stability", k] for k in ks])
    return (stab[:, 0], stab[:, 1], np.array([fits["reference", k][0] for k in ks]),
            np.array([fits["reproduced", k] for k in ks]), [kept_ref.get(k) for k in ks])


def _nearest_candidate(ks, value: float) -> int:
    """The candidate nearest to ``value`` on a log scale (the smaller one on a tie)."""
    logs = np.abs(np.log(np.asarray(ks, dtype=float)) - np.log(value))
    return int(ks[int(np.flatnonzero(logs <= logs.min() + 1e-12)[0])])


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
    """Choose k for the embedding ``X`` (n, d) by the stability gap and reproducible clusters (the module's
    docstring); ``k`` is ``"auto"`` or ``"auto:MIN-MAX"``."""
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
        return KSelection(ks[0], None, k_min, k_max, ks, z, z, z, z, z, z, z, ks[0], ks[0], sample_size=0, seed=seed,
                          seconds=time.perf_counter() - t0)
    rs = np.random.RandomState(seed)
    m = min(n, max(SAMPLE, POINTS_PER_CLUSTER * k_max))
    m_halved = min(n, max(m, HALVED_SAMPLE, 2 * POINTS_PER_HALF_CLUSTER * k_max))
    # one random order: the stability sample is the first m points of the halved one, and its reference
    # the first m points of the halved one's
    order = rs.permutation(n)[:m_halved] if m_halved < n else np.arange(n)
    halved = X[order]
    dims = None
    if halved.shape[1] > MAX_DIMS:
        from .reduce import PCA

        dims = int(min(MAX_DIMS, m_halved))
        halved = PCA(dims, random_state=seed).fit_transform(halved)
    halved = halved.astype(np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a flat direction makes the covariance only semi-definite: fine here
        halved_reference = rs.multivariate_normal(halved.mean(0), np.atleast_2d(np.cov(halved, rowvar=False)),
                                                  size=m_halved)
    sample, reference = halved[:m], halved_reference[:m]
    subsets = [np.sort(rs.choice(m, int(SUBSAMPLE * m), replace=False)) for _ in range(REPEATS)]
    halves = [(p[: m_halved // 2], p[m_halved // 2:]) for p in (rs.permutation(m_halved) for _ in range(HALVINGS))]
    stab, stab_sd, ref, kept, kept_ref = _curves(sample, reference, halved, halved_reference, ks, subsets, halves, seed)
    ref = _non_increasing(np.asarray(ks, dtype=float), ref)
    gap = stab - ref
    score = _smooth(gap)
    best = float(score.max())
    if best > 0:
        k_stability = int(ks[int(np.flatnonzero(score >= PLATEAU * best)[0])])
    else:  # nothing is more stable than a structureless cloud: take the least bad
        k_stability = int(ks[int(np.argmax(gap))])
    held = [kk for kk, d, r in zip(ks, kept, kept_ref) if d >= REPRODUCED and r is not None and r < REPRODUCED]
    k_reproduced = int(max(held)) if held else int(ks[int(np.argmax(kept - np.array(kept_ref, dtype=float)))])
    chosen = _nearest_candidate(ks, float(np.sqrt(k_stability * k_reproduced)))
    apart = [j for j, kk in enumerate(ks) if max(kk, chosen) / min(kk, chosen) >= APART]
    runner_up = int(ks[max(apart, key=lambda j: score[j])]) if apart else None
    sel = KSelection(chosen, runner_up, k_min, k_max, [int(v) for v in ks], _round(score), _round(gap),
                     _round(stab), _round(ref), _round(stab_sd), _round(kept), _round(kept_ref), k_stability,
                     k_reproduced, sample_size=int(m), halved_sample_size=int(m_halved), dims=dims, seed=seed,
                     seconds=time.perf_counter() - t0)
    wider = wider_range(k_min, k_max, n)
    log(f"chose k={chosen} among {k_min}-{k_max}: the geometric mean of the stability gap's k={k_stability} and "
        f"the reproducible clusters' k={k_reproduced}" +
        (f" (on the embedding's {dims} leading principal components)" if dims else "") +
        (f"; runner-up k={runner_up}" if runner_up is not None else "") + (
            f"; the two criteria disagree by {max(k_stability, k_reproduced) / min(k_stability, k_reproduced):.1f}x, "
            f"so k is uncertain: the embedding holds groups at more than one scale, and k={min(k_stability, k_reproduced)}"
            f" and k={max(k_stability, k_reproduced)} are each supported by one criterion; if you know the grain you "
            "want, rerun with that end (the report gives the command)" if sel.uncertain else "") + (
            "; no k gave groups clearly more reproducible than a cloud without clusters, so this choice is weak"
            if sel.weak else "") + (
            f"; the score is highest at the largest candidate, k={ks[-1]}, so finer groupings were not examined"
            + (f" (--k {wider} looks further)" if wider else "") if sel.peaks_at_top else ""))
    return sel


def _round(v) -> list:
    return [None if x is None else round(float(x), 5) for x in v]


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
