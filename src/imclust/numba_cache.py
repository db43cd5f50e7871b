"""numba's on-disk cache for the umap-learn backend of the ``umap`` reducer.

umap-learn 0.5 compiles its numba functions in every new process; of the functions a Euclidean fit runs, only
``umap.layouts.rdist`` asks numba to cache its machine code. :func:`enable_umap_cache` compiles the others
with ``cache=True`` as well, so a second process loads them from disk instead of compiling them again:

- ``umap.umap_.smooth_knn_dist`` and ``umap.umap_.compute_membership_strengths`` (the fuzzy simplicial set);
- ``umap.utils.fast_knn_indices`` (the exact neighbours umap-learn takes below 4,096 points),
  ``umap.utils.tau_rand_int``;
- ``umap.layouts.clip`` and the layout epoch ``umap.layouts._nb_optimize_layout_euclidean_single_epoch``
  (and its ``_parallel`` twin, used when ``random_state`` is not set).

The cache lives in ``NUMBA_CACHE_DIR`` (default ``~/.cache/imclust/numba``). What numba cannot cache stays
compiled per process: pynndescent's neighbour descent (used from 4,096 points on) receives its distance
function as an argument, and numba does not cache functions that take other compiled functions as values
(``benchmarks/speed.py`` measures what is left).
"""

from __future__ import annotations

import os
from pathlib import Path

CACHED = {
    "umap.umap_": ("smooth_knn_dist", "compute_membership_strengths"),
    "umap.utils": ("fast_knn_indices", "tau_rand_int"),
    "umap.layouts": ("clip", "_nb_optimize_layout_euclidean_single_epoch",
                     "_nb_optimize_layout_euclidean_single_epoch_parallel"),
}
_done = False


def cache_dir() -> Path:
    return Path(os.environ.get("NUMBA_CACHE_DIR") or Path.home() / ".cache" / "imclust" / "numba")


def enable_umap_cache() -> list[str]:
    """Recompile umap-learn's uncached numba functions (listed in :data:`CACHED`) with ``cache=True``.

    Call before the first fit in the process (functions already compiled keep their in-memory code).
    Returns the qualified names now cached.
    """
    global _done
    names = [f"{m}.{f}" for m, fs in CACHED.items() for f in fs]
    if _done:
        return names
    directory = cache_dir()
    directory.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("NUMBA_CACHE_DIR", str(directory))
    import importlib

    import numba

    numba.config.CACHE_DIR = os.environ["NUMBA_CACHE_DIR"]
    for module_name, functions in CACHED.items():
        module = importlib.import_module(module_name)
        for name in functions:
            dispatcher = getattr(module, name)
            options = {k: v for k, v in dispatcher.targetoptions.items() if k not in ("cache", "nopython")}
            setattr(module, name, numba.njit(cache=True, **options)(dispatcher.py_func))
    _done = True
    return names
